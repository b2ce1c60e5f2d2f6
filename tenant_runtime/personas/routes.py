"""The personas page (Owners): define personas (teams, sources), edit and delete them, and give
them to or take them from the tenant's members. Every change is audited by the service."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response

from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantError
from tenant_runtime.personas import service
from tenant_runtime.personas.service import Member
from tenant_runtime.routing import TenantRoute
from tenant_runtime.signals.models import Source

# app.state.tenant_members: tenant id → [(control-plane user id, email, role)], set by the web
# app, since tenant code cannot read the control plane's members itself
TenantMembers = Callable[[int], list[tuple[str, str, str]]]


class _Form(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    csrf_token: str = ""


class PersonaForm(_Form):
    name: str = Field(max_length=200)
    teams: str = Field(default="", max_length=30_000)
    all_teams: bool = False
    sources: str = Field(default="", max_length=30_000)
    all_sources: bool = False


class MemberForm(_Form):
    user_id: str = Field(max_length=64)


class EmptyForm(_Form):
    pass


def _members(request: Request, ctx: TenantContext) -> list[Member]:
    lookup: TenantMembers = request.app.state.tenant_members
    return [Member(uid, email, role) for uid, email, role in lookup(ctx.tenant_id)]


def _page(request: Request, ctx: TenantContext, *, status_code: int = 200,
          **extra: object) -> Response:
    render = request.app.state.render
    members = _members(request, ctx)
    with ctx.session() as s, s.begin():
        personas = service.list_personas(s, members)
        sources = list(s.scalars(select(Source.name).order_by(Source.name)))
    context = {"personas": personas, "members": service.member_views(personas, members),
               "sources": sources, **extra}
    return render(request, "personas/personas.html",  # type: ignore[no-any-return]
                  context, status_code=status_code)


def personas_page(request: Request, ctx: TenantContext) -> Response:
    return _page(request, ctx)


def _persona_input(s: Session, form: PersonaForm) -> service.PersonaInput:
    return service.parse_persona(s, name=form.name, teams=form.teams, all_teams=form.all_teams,
                                 sources=form.sources, all_sources=form.all_sources)


def create_persona(request: Request, ctx: TenantContext) -> Response:
    form: PersonaForm = request.state.form
    try:
        with ctx.session() as s, s.begin():
            row = service.do_create_persona(s, ctx, _persona_input(s, form))
            name = row.name
    except TenantError as exc:
        return _page(request, ctx, status_code=exc.status_code, error=exc.message, form=form)
    return _page(request, ctx, status_code=201, notice=f"Persona {name!r} created.")


def update_persona(request: Request, ctx: TenantContext) -> Response:
    form: PersonaForm = request.state.form
    persona_id = int(request.path_params["persona_id"])
    try:
        with ctx.session() as s, s.begin():
            service.access_persona(s, persona_id)  # a missing id is 404 before the form's 422
            changed = service.do_update_persona(s, ctx, persona_id, _persona_input(s, form))
    except TenantError as exc:
        if exc.status_code == 404:
            raise
        return _page(request, ctx, status_code=exc.status_code, error=exc.message,
                     editing=persona_id, form=form)
    return _page(request, ctx, notice=f"Persona {form.name.strip()!r} saved." if changed
                 else "Nothing changed.")


def delete_persona(request: Request, ctx: TenantContext) -> Response:
    persona_id = int(request.path_params["persona_id"])
    with ctx.session() as s, s.begin():
        name = service.do_delete_persona(s, ctx, persona_id)
    return _page(request, ctx, notice=f"Persona {name!r} deleted; its members no longer hold "
                                      "it.")


def assign_persona(request: Request, ctx: TenantContext) -> Response:
    form: MemberForm = request.state.form
    persona_id = int(request.path_params["persona_id"])
    members = _members(request, ctx)
    try:
        with ctx.session() as s, s.begin():
            service.access_persona(s, persona_id)
            done = service.do_assign_persona(s, ctx, persona_id, form.user_id.strip(),
                                             members=members)
    except TenantError as exc:
        if exc.status_code == 404:
            raise
        return _page(request, ctx, status_code=exc.status_code, error=exc.message)
    return _page(request, ctx, notice="Persona given." if done
                 else "That member already holds this persona.")


def unassign_persona(request: Request, ctx: TenantContext) -> Response:
    form: MemberForm = request.state.form
    persona_id = int(request.path_params["persona_id"])
    with ctx.session() as s, s.begin():
        done = service.do_unassign_persona(s, ctx, persona_id, form.user_id.strip())
    return _page(request, ctx, notice="Persona taken away." if done
                 else "That member did not hold this persona.")


routes = [
    TenantRoute("/personas", personas_page, permission="personas.manage"),
    TenantRoute("/personas", create_persona, "POST", form=PersonaForm,
                permission="personas.manage"),
    TenantRoute("/personas/{persona_id:int}", update_persona, "POST", form=PersonaForm,
                permission="personas.manage"),
    TenantRoute("/personas/{persona_id:int}/delete", delete_persona, "POST", form=EmptyForm,
                permission="personas.manage"),
    TenantRoute("/personas/{persona_id:int}/assign", assign_persona, "POST", form=MemberForm,
                permission="personas.manage"),
    TenantRoute("/personas/{persona_id:int}/unassign", unassign_persona, "POST",
                form=MemberForm, permission="personas.manage"),
]
