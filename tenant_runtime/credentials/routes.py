"""Provider credentials pages (tenant Owners and Admins add and delete; members see the list)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tenant_runtime.context import TenantContext
from tenant_runtime.credentials import service
from tenant_runtime.exceptions import TenantInvalidInput
from tenant_runtime.routing import TenantRoute


class AddCredentialForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""
    name: str = Field(max_length=100)
    provider: str = Field(max_length=30)
    secret: str = Field(max_length=4096)
    contact_email: EmailStr | None = None

    @field_validator("contact_email", mode="before")
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        return None if value == "" else value


class EmptyForm(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


def _render(request: Request, ctx: TenantContext, *, status_code: int = 200,
            **extra: object) -> Response:
    render = request.app.state.render
    with ctx.session() as s, s.begin():
        rows = service.list_credentials(s, ctx)
    return render(request, "tenants/credentials.html",  # type: ignore[no-any-return]
                  {"credentials": rows, "providers": service.PROVIDERS, **extra},
                  status_code=status_code, partial="tenants/_credentials.html")


def credentials_page(request: Request, ctx: TenantContext) -> Response:
    return _render(request, ctx)


def add_credential(request: Request, ctx: TenantContext) -> Response:
    form: AddCredentialForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            service.do_add_credential(s, ctx, name=form.name, provider=form.provider,
                                      secret=form.secret,
                                      contact_email=str(form.contact_email)
                                      if form.contact_email else None)
    except TenantInvalidInput as exc:
        return _render(request, ctx, status_code=422, error=exc.message)
    return _render(request, ctx, status_code=201, notice=f"Credential {form.name} saved.")


def delete_credential(request: Request, ctx: TenantContext) -> Response:
    with ctx.session() as s, s.begin():
        service.do_delete_credential(s, ctx, int(request.path_params["credential_id"]))
    return RedirectResponse(f"/tenants/{ctx.tenant_id}/credentials", 303)


routes = [
    TenantRoute("/credentials", credentials_page, permission="credentials.view"),
    TenantRoute("/credentials", add_credential, "POST", form=AddCredentialForm,
                permission="credentials.manage"),
    TenantRoute("/credentials/{credential_id:int}/delete", delete_credential, "POST",
                form=EmptyForm, permission="credentials.manage"),
]
