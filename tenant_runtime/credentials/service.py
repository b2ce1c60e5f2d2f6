"""Provider credentials: API keys and tokens for LLM providers, sealed under the tenant's data
key. The secret is never shown again after it is saved; only its last four characters."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.audit import CredentialEvents
from tenant_runtime.context import TenantContext
from tenant_runtime.exceptions import TenantInvalidInput, TenantNotFound
from tenant_runtime.models import GatewayRoute, ProviderCredential

PROVIDERS = ("openai", "anthropic", "azure-openai", "bedrock", "on-prem")
TABLE = "provider_credentials"


@dataclass(frozen=True)
class CredentialView:
    id: int
    name: str
    provider: str
    hint: str
    contact_email: str | None
    created_by: str | None


def do_add_credential(s: Session, ctx: TenantContext, *, name: str, provider: str,
                      secret: str, contact_email: str | None) -> ProviderCredential:
    name = name.strip()
    if provider not in PROVIDERS:
        raise TenantInvalidInput(f"The provider must be one of {', '.join(PROVIDERS)}.")
    if not name or len(name) > 100:
        raise TenantInvalidInput("The name is required (at most 100 characters).")
    if len(secret) < 8:
        raise TenantInvalidInput("The secret looks too short to be a provider credential.")
    row = ProviderCredential(name=name, provider=provider, secret_sealed=b"pending",
                             hint=secret[-4:], created_by=ctx.actor.name)
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:
        raise TenantInvalidInput(f"A credential named {name!r} already exists.") from None
    # sealed with the row id in the associated data, once the id is known
    row.secret_sealed = ctx.sealer.seal(secret, table=TABLE, column="secret_sealed",
                                        row_key=row.id)
    if contact_email:
        row.contact_email_sealed = ctx.sealer.seal(contact_email.strip(), table=TABLE,
                                                   column="contact_email_sealed", row_key=row.id)
    audit.record(s, CredentialEvents.ADDED, actor=ctx.actor, target_type="credential",
                 target_id=row.id, details={"provider": provider})
    return row


def list_credentials(s: Session, ctx: TenantContext) -> list[CredentialView]:
    views = []
    for row in s.scalars(select(ProviderCredential).order_by(ProviderCredential.id)):
        email = None
        if row.contact_email_sealed is not None:
            email = ctx.sealer.open_text(row.contact_email_sealed, table=TABLE,
                                         column="contact_email_sealed", row_key=row.id)
        views.append(CredentialView(row.id, row.name, row.provider, row.hint, email,
                                    row.created_by))
    return views


def reveal_secret(s: Session, ctx: TenantContext, credential_id: int) -> str:
    """The plaintext secret, for the gateway's provider adapters (never for display)."""
    row = s.get(ProviderCredential, credential_id)
    if row is None:
        raise TenantNotFound("No such credential.")
    return ctx.sealer.open_text(row.secret_sealed, table=TABLE, column="secret_sealed",
                                row_key=row.id)


def do_delete_credential(s: Session, ctx: TenantContext, credential_id: int) -> None:
    row = s.get(ProviderCredential, credential_id)
    if row is None:
        raise TenantNotFound("No such credential.")
    in_use = sorted(s.scalars(select(GatewayRoute.model_name)
                              .where(GatewayRoute.credential_id == credential_id)))
    if in_use:
        raise TenantInvalidInput(f"The credential {row.name!r} is used by the gateway route(s) "
                                 f"{', '.join(in_use)}; change or delete those first.")
    s.delete(row)
    audit.record(s, CredentialEvents.DELETED, actor=ctx.actor, target_type="credential",
                 target_id=credential_id, details={"provider": row.provider})
