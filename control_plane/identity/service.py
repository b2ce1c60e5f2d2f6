"""Single sign-on's state changes: providers, the SSO policy, a sign-in from start to session,
linking, group-to-role mapping and back-channel logout. ``do_*`` write their audit event in
the caller's transaction and never commit.

A sign-in (``do_begin_sign_in`` → the provider → ``do_finish_sign_in``):

1. a row of ``sso_authorizations`` keeps the SHA-256 of ``state``, the ``nonce``, the sealed
   PKCE verifier and the SHA-256 of the browser's CSRF binding (its anonymous or session
   cookie), so the answer is taken only once, only from the browser that asked, within
   ``AUTHORIZATION_LIFETIME``;
2. the ID token is checked (``oidc.py``), then ``email_verified`` and the provider's allowed
   domains;
3. the account is the one bound to (``iss``, ``sub``) in ``external_identities``. An unknown
   subject whose e-mail belongs to a local account is *not* signed in as that account: the
   row waits (``link_*``) until the account's password is entered (``do_link_identity``). An
   unknown subject with an unknown e-mail gets an account without any tenant role when the
   provider creates accounts, else is refused;
4. the group mapping is applied (``apply_group_roles``): memberships the mapping gave are
   created, changed or removed to match the groups of this sign-in (the ID token's groups
   claim, else the groups the provider set over SCIM); memberships given by hand are never
   touched;
5. the session is the ordinary server-side session, marked with the provider, subject and
   ``sid`` for back-channel logout; it waits for TOTP when the account has TOTP and the
   provider's ``amr``/``acr`` is not trusted or does not show a second factor.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor, SsoEvents
from control_plane.auth import passwords, sessions
from control_plane.auth.ratelimit import LoginRateLimiter
from control_plane.db import utcnow
from control_plane.exceptions import Conflict, Forbidden, InvalidInput, NotFound
from control_plane.identity import replay
from control_plane.identity.oidc import (
    LOGOUT_TOKEN_MAX_AGE_SECONDS,
    OidcClient,
    OidcError,
    ProviderConfig,
    mfa_done,
)
from control_plane.identity.policy import get_policy
from control_plane.models import (
    ROLES,
    ExternalIdentity,
    IdentityProvider,
    Membership,
    ScimGroup,
    ScimGroupMember,
    ScimUser,
    SsoAuthorization,
    SsoPolicy,
    Tenant,
    User,
    WebSession,
)
from control_plane.sealing import ControlSealer
from control_plane.tenancy.service import other_active_owners, revoke_member_access
from tenant_runtime import permissions

AUTHORIZATION_LIFETIME = timedelta(minutes=10)
LINK_LIFETIME = timedelta(minutes=10)
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


class SsoRefused(Forbidden):
    """A sign-in refused after the provider answered; ``reason`` goes to the audit event."""

    def __init__(self, reason: str, message: str, *, provider_id: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.provider_id = provider_id


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _actor(user: User) -> Actor:
    return Actor.user(user.id, user.email)


def provider_actor(provider: IdentityProvider) -> Actor:
    """The provider as an audit actor: the system, acting on the provider's word."""
    return Actor("system", f"identity_provider:{provider.id}", provider.name)


def require_owner(acting_user: User) -> None:
    if not acting_user.is_owner:
        raise Forbidden("Only an Owner of this installation can manage single sign-on.")


# ------------------------------------------------------------------------------- providers


def provider_config(sealer: ControlSealer, provider: IdentityProvider) -> ProviderConfig:
    secret = None
    if provider.client_secret_sealed is not None:
        secret = sealer.open(provider.client_secret_sealed, table="identity_providers",
                             column="client_secret", row_key=provider.name).decode()
    return ProviderConfig(provider.id, provider.issuer, provider.discovery_url,
                          provider.client_id, secret)


def list_providers(s: Session, *, active_only: bool = False) -> list[IdentityProvider]:
    query = select(IdentityProvider).order_by(IdentityProvider.name)
    if active_only:
        query = query.where(IdentityProvider.is_active)
    return list(s.scalars(query))


def access_provider(s: Session, provider_id: int, *, acting_user: User) -> IdentityProvider:
    require_owner(acting_user)
    provider = s.get(IdentityProvider, provider_id)
    if provider is None:
        raise NotFound("No such identity provider.")
    return provider


def get_active_provider(s: Session, provider_id: int) -> IdentityProvider:
    provider = s.get(IdentityProvider, provider_id)
    if provider is None or not provider.is_active:
        raise NotFound("No such identity provider.")
    return provider


def parse_domains(text: str) -> list[str]:
    domains = sorted({d.strip().lower().lstrip("@") for d in text.replace(",", " ").split()
                      if d.strip()})
    for domain in domains:
        if "." not in domain or not all(part and all(c in NAME_CHARS for c in part)
                                        for part in domain.split(".")):
            raise InvalidInput(f"{domain!r} is not a domain name (write example.com).")
    return domains


def parse_mfa_values(text: str, *, what: str) -> list[str]:
    """The ``amr`` or ``acr`` values (comma or space separated) that stand for a second factor;
    each a short token without spaces, at most 20."""
    values = sorted({v.strip() for v in text.replace(",", " ").split() if v.strip()})
    limit = 40 if what == "amr" else 200
    for value in values:
        if len(value) > limit or not value.isprintable():
            raise InvalidInput(f"{value[:50]!r} is not an {what} value (printable, at most "
                               f"{limit} characters, no spaces).")
    if len(values) > 20:
        raise InvalidInput(f"Name at most 20 {what} values.")
    return values


def parse_group_roles(s: Session, text: str) -> list[dict[str, Any]]:
    """One mapping a line: ``group = tenant-slug : Role``."""
    mappings: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        group, sep, rest = line.partition("=")
        slug, sep2, role = rest.partition(":")
        group, slug, role = group.strip(), slug.strip(), role.strip()
        if not sep or not sep2 or not group or not slug or not role:
            raise InvalidInput(f"Line {number} of the group mapping is not "
                               "'group = tenant-slug : Role'.")
        if role not in ROLES:
            raise InvalidInput(f"Line {number}: the role must be one of {', '.join(ROLES)}.")
        tenant = s.scalars(select(Tenant).where(Tenant.slug == slug,
                                                Tenant.state != "deleted")).first()
        if tenant is None:
            raise InvalidInput(f"Line {number}: no tenant has the slug {slug!r}.")
        mappings.append({"group": group, "tenant_id": tenant.id, "role": role})
    return mappings


def format_group_roles(s: Session, mappings: list[dict[str, Any]]) -> str:
    """A mapping as the lines ``parse_group_roles`` reads (a deleted tenant's line is kept
    with its id, so saving the form unchanged refuses it rather than dropping it unseen)."""
    slugs: dict[int, str] = {tenant_id: slug for tenant_id, slug in s.execute(
        select(Tenant.id, Tenant.slug).where(
            Tenant.id.in_({int(m["tenant_id"]) for m in mappings})))}
    return "\n".join(f"{m['group']} = {slugs.get(int(m['tenant_id']), m['tenant_id'])} : "
                     f"{m['role']}" for m in mappings)


def _checked_name(s: Session, name: str) -> str:
    name = name.strip().lower()
    if not (2 <= len(name) <= 63) or not all(c in NAME_CHARS for c in name):
        raise InvalidInput("A provider's name is 2 to 63 lowercase letters, digits and '-'.")
    if s.scalars(select(IdentityProvider.id).where(IdentityProvider.name == name)).first():
        raise Conflict(f"A provider named {name} already exists.")
    return name


def _checked_client_id(client_id: str) -> str:
    if not client_id.strip():
        raise InvalidInput("Enter the client id the provider gave this application.")
    return client_id.strip()


def _discovered_issuer(oidc: OidcClient, discovery_url: str) -> str:
    try:
        return oidc.fetch_issuer(discovery_url.strip())
    except OidcError as exc:
        raise InvalidInput(exc.message) from None


def _sealed_secret(sealer: ControlSealer, secret: str, *, name: str) -> bytes:
    """The client secret at rest, bound to the provider's name (the row key)."""
    return sealer.seal(secret.encode(), table="identity_providers", column="client_secret",
                       row_key=name)


def do_create_provider(
    s: Session, *, name: str, discovery_url: str, client_id: str, client_secret: str,
    allowed_domains: list[str], create_accounts: bool, groups_claim: str | None,
    group_roles: list[dict[str, Any]], trust_idp_mfa: bool, oidc: OidcClient,
    sealer: ControlSealer, acting_user: User, mfa_amr_values: list[str] | None = None,
    mfa_acr_values: list[str] | None = None,
) -> IdentityProvider:
    """Add a provider; its discovery document is fetched now (through the egress policy) and
    names the issuer every token must carry."""
    require_owner(acting_user)
    name = _checked_name(s, name)
    client_id = _checked_client_id(client_id)
    issuer = _discovered_issuer(oidc, discovery_url)
    provider = IdentityProvider(
        name=name, discovery_url=discovery_url.strip(), issuer=issuer,
        client_id=client_id.strip(), allowed_domains=allowed_domains,
        create_accounts=create_accounts, groups_claim=(groups_claim or "").strip() or None,
        group_roles=group_roles, trust_idp_mfa=trust_idp_mfa, created_by=acting_user.id,
        mfa_amr_values=mfa_amr_values or [], mfa_acr_values=mfa_acr_values or [])
    if client_secret:
        provider.client_secret_sealed = _sealed_secret(sealer, client_secret, name=name)
    s.add(provider)
    s.flush()
    audit.record(s, SsoEvents.PROVIDER_CREATED, actor=_actor(acting_user),
                 target_type="identity_provider", target_id=provider.id,
                 details={"name": name, "issuer": issuer[:300],
                          "allowed_domains": allowed_domains,
                          "create_accounts": create_accounts,
                          "mappings": len(group_roles), "trust_idp_mfa": trust_idp_mfa,
                          "mfa_amr_values": mfa_amr_values or [],
                          "mfa_acr_values": mfa_acr_values or []})
    return provider


@dataclass(frozen=True)
class ProviderEdit:
    """What an Owner changes of a provider: ``None`` keeps a field as it is, and so does an
    empty ``client_secret`` (a secret is replaced, never shown back). ``groups_claim=""``
    stops reading groups from the ID token."""

    name: str | None = None
    discovery_url: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    allowed_domains: list[str] | None = None
    create_accounts: bool | None = None
    groups_claim: str | None = None
    group_roles: list[dict[str, Any]] | None = None
    trust_idp_mfa: bool | None = None
    mfa_amr_values: list[str] | None = None
    mfa_acr_values: list[str] | None = None


# the fields an edit sets as given (after their parse_* check), compared with the row's
_PLAIN_FIELDS = ("allowed_domains", "create_accounts", "group_roles", "trust_idp_mfa",
                 "mfa_amr_values", "mfa_acr_values")


def do_update_provider(s: Session, provider: IdentityProvider, *, edit: ProviderEdit,
                       oidc: OidcClient, sealer: ControlSealer, acting_user: User
                       ) -> list[str]:
    """Change a provider; answers the names of the fields that changed (none: nothing is
    written). What changed is audited (``sso.provider_updated``: each field's old and new
    value, and only ``"replaced"`` for the secret). Takes effect at the next sign-in.

    The issuer cannot change: accounts are bound to (``iss``, ``sub``), and another issuer's
    subjects are other people. A new discovery URL is fetched now and accepted only when it
    names the same issuer (a provider's other address for the same document); another issuer
    is another provider, added beside this one."""
    require_owner(acting_user)
    changed: dict[str, Any] = {}
    old_name = provider.name
    if edit.name is not None and edit.name.strip().lower() != provider.name:
        changed["name"] = _checked_name(s, edit.name)
    if edit.client_id is not None and edit.client_id.strip() != provider.client_id:
        changed["client_id"] = _checked_client_id(edit.client_id)
    if edit.groups_claim is not None and ((edit.groups_claim.strip() or None)
                                          != provider.groups_claim):
        changed["groups_claim"] = edit.groups_claim.strip() or None
    for field in _PLAIN_FIELDS:
        value = getattr(edit, field)
        if value is not None and value != getattr(provider, field):
            changed[field] = value
    if (edit.discovery_url is not None
            and edit.discovery_url.strip() != provider.discovery_url):
        issuer = _discovered_issuer(oidc, edit.discovery_url)
        if issuer != provider.issuer:
            raise InvalidInput(
                f"That discovery URL names the issuer {issuer[:200]}, not "
                f"{provider.issuer[:200]}: the accounts bound to this provider are that "
                "issuer's subjects. Add another provider for the new issuer.")
        changed["discovery_url"] = edit.discovery_url.strip()
    if not changed and not edit.client_secret:
        return []
    details: dict[str, Any] = {k: {"from": getattr(provider, k), "to": v}
                               for k, v in changed.items()}
    secret = edit.client_secret or None
    if secret is None and "name" in changed and provider.client_secret_sealed is not None:
        # the secret is bound to the name: a renamed provider's secret is sealed again
        secret = provider_config(sealer, provider).client_secret
    for key, value in changed.items():
        setattr(provider, key, value)
    if secret is not None:
        provider.client_secret_sealed = _sealed_secret(sealer, secret, name=provider.name)
    if edit.client_secret:
        details["client_secret"] = "replaced"  # noqa: S105 - never the secret, only that it changed
    audit.record(s, SsoEvents.PROVIDER_UPDATED, actor=_actor(acting_user),
                 target_type="identity_provider", target_id=provider.id,
                 details={"name": old_name, "changed": details})
    oidc.forget(provider.id)
    return sorted(details)


def do_set_provider_active(s: Session, provider: IdentityProvider, *, active: bool,
                           acting_user: User) -> None:
    require_owner(acting_user)
    if provider.is_active == active:
        return
    provider.is_active = active
    audit.record(s, SsoEvents.PROVIDER_ENABLED if active else SsoEvents.PROVIDER_DISABLED,
                 actor=_actor(acting_user), target_type="identity_provider",
                 target_id=provider.id, details={"name": provider.name})


# ------------------------------------------------------------------------------- policy


def do_set_policy(s: Session, *, sso_required: bool, break_glass_email: str,
                  acting_user: User) -> SsoPolicy:
    """Require single sign-on (password sign-in refused) for everyone but one named
    break-glass Owner, who must keep a password and TOTP."""
    require_owner(acting_user)
    policy = get_policy(s, lock=True)
    break_glass: User | None = None
    if break_glass_email.strip():
        break_glass = s.scalars(select(User).where(
            User.email == break_glass_email.strip().lower())).first()
        if break_glass is None or not break_glass.is_owner or not break_glass.is_active:
            raise InvalidInput("The break-glass account must be an active Owner of this "
                               "installation.")
    if sso_required:
        if break_glass is None:
            raise InvalidInput("Name a break-glass Owner before requiring single sign-on: "
                               "if the provider fails, that account still signs in.")
        if not break_glass.mfa_enabled:
            raise InvalidInput(f"{break_glass.email} must turn on multi-factor "
                               "authentication before it can be the break-glass account.")
        if not list_providers(s, active_only=True):
            raise InvalidInput("Add an identity provider before requiring single sign-on.")
    policy.sso_required = sso_required
    policy.break_glass_user_id = break_glass.id if break_glass else None
    audit.record(s, SsoEvents.POLICY_CHANGED, actor=_actor(acting_user),
                 target_type="sso_policy", target_id=1,
                 details={"sso_required": sso_required,
                          "break_glass_user_id": break_glass.id if break_glass else None})
    return policy



def do_set_tenant_policy(s: Session, tenant: Tenant, *, role: str, sso_required: bool,
                         break_glass_email: str, provider_name: str,
                         acting_user: User) -> bool:
    """Require single sign-on of one tenant's members (their password sign-in refused, on
    every tenant they belong to) but for one named break-glass Owner of the tenant, who keeps
    password + TOTP. Only the tenant's Owner changes it; answers whether it changed."""
    if not permissions.allows(role, "tenant.lifecycle"):
        raise Forbidden("Only an Owner of this tenant can require single sign-on.")
    break_glass: User | None = None
    if break_glass_email.strip():
        break_glass = s.scalars(select(User).join(
            Membership, Membership.user_id == User.id).where(
            User.email == break_glass_email.strip().lower(), Membership.tenant_id == tenant.id,
            Membership.role == "Owner", User.is_active)).first()
        if break_glass is None:
            raise InvalidInput("The break-glass account must be an active Owner of this "
                               "tenant.")
    provider: IdentityProvider | None = None
    if provider_name.strip():
        provider = s.scalars(select(IdentityProvider).where(
            IdentityProvider.name == provider_name.strip().lower(),
            IdentityProvider.is_active)).first()
        if provider is None:
            raise InvalidInput(f"No active identity provider is named "
                               f"{provider_name.strip()[:63]!r}.")
    if sso_required:
        if break_glass is None:
            raise InvalidInput("Name a break-glass Owner of this tenant before requiring "
                               "single sign-on: if the provider fails, that account still "
                               "signs in.")
        if not break_glass.mfa_enabled:
            raise InvalidInput(f"{break_glass.email} must turn on two-factor sign-in before "
                               "it can be the break-glass account.")
        if provider is None and not list_providers(s, active_only=True):
            raise InvalidInput("Add an identity provider before requiring single sign-on.")
    wanted = (sso_required, break_glass.id if break_glass else None,
              provider.id if provider else None)
    if (tenant.sso_required, tenant.sso_break_glass_user_id, tenant.sso_provider_id) == wanted:
        return False
    tenant.sso_required, tenant.sso_break_glass_user_id, tenant.sso_provider_id = wanted
    tenant.updated_at = utcnow()
    audit.record(s, SsoEvents.TENANT_POLICY_CHANGED, actor=_actor(acting_user),
                 target_type="tenant", target_id=tenant.id,
                 details={"sso_required": sso_required,
                          "break_glass_user_id": wanted[1],
                          "provider": provider.name if provider else None})
    return True


# ------------------------------------------------------------------------------- sign-in


def do_begin_sign_in(s: Session, provider: IdentityProvider, *, browser_binding: str,
                     next_path: str, redirect_uri: str, oidc: OidcClient,
                     sealer: ControlSealer) -> str:
    """Record a sign-in in flight; returns the provider's authorization URL."""
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = secrets.token_urlsafe(64)  # 86 characters (RFC 7636: 43 to 128)
    config = provider_config(sealer, provider)
    url = oidc.authorization_url(config, redirect_uri=redirect_uri, state=state, nonce=nonce,
                                 code_verifier=verifier)
    state_hash = _digest(state)
    s.add(SsoAuthorization(
        state_hash=state_hash, browser_hash=_digest(browser_binding),
        provider_id=provider.id, nonce=nonce,
        code_verifier_sealed=sealer.seal(verifier.encode(), table="sso_authorizations",
                                         column="code_verifier", row_key=state_hash),
        next_path=next_path, expires_at=utcnow() + AUTHORIZATION_LIFETIME))
    s.flush()
    return url


def _take_authorization(s: Session, state: str, browser_binding: str | None
                        ) -> SsoAuthorization:
    row = s.scalars(select(SsoAuthorization).where(
        SsoAuthorization.state_hash == _digest(state)).with_for_update()).first()
    if (row is None or browser_binding is None
            or not secrets.compare_digest(row.browser_hash, _digest(browser_binding))):
        raise SsoRefused("state_mismatch", "This sign-in answer does not belong to a sign-in "
                                           "this browser started (its state differs). Start "
                                           "again from the sign-in page.")
    if row.used_at is not None:
        raise SsoRefused("state_reused", "This sign-in answer was already used. Start again "
                                         "from the sign-in page.", provider_id=row.provider_id)
    if row.expires_at <= utcnow():
        raise SsoRefused("state_expired", "This sign-in took too long. Start again from the "
                                          "sign-in page.", provider_id=row.provider_id)
    row.used_at = utcnow()
    return row


@dataclass
class SsoResult:
    user: User | None = None
    token: str | None = None  # the new session's
    mfa_pending: bool = False
    link_state: str | None = None  # an account to prove before linking
    link_email: str | None = None
    next_path: str = "/"


def _email_of(provider: IdentityProvider, claims: dict[str, Any]) -> str:
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SsoRefused("no_email", "The provider did not share an e-mail address; allow the "
                                     "'email' scope for this application.",
                         provider_id=provider.id)
    if claims.get("email_verified") is not True:
        raise SsoRefused("email_unverified", "The provider has not verified this e-mail "
                                             "address, so it cannot identify you here.",
                         provider_id=provider.id)
    email = email.strip().lower()
    domain = email.rsplit("@", 1)[1]
    if provider.allowed_domains and domain not in provider.allowed_domains:
        raise SsoRefused("domain_not_allowed", f"Accounts of {domain} may not sign in with "
                                               f"{provider.name}.", provider_id=provider.id)
    return email


def groups_of(provider: IdentityProvider, claims: dict[str, Any]) -> list[str]:
    if not provider.groups_claim:
        return []
    value = claims.get(provider.groups_claim)
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return sorted({v for v in value if isinstance(v, str)})[:1000]


def do_finish_sign_in(
    s: Session, *, state: str, code: str, browser_binding: str | None, redirect_uri: str,
    client_ip: str, host: str, user_agent: str | None, oidc: OidcClient,
    sealer: ControlSealer,
) -> SsoResult:
    row = _take_authorization(s, state, browser_binding)
    provider = get_active_provider(s, row.provider_id)
    config = provider_config(sealer, provider)
    verifier = sealer.open(row.code_verifier_sealed, table="sso_authorizations",
                           column="code_verifier", row_key=row.state_hash).decode()
    try:
        id_token = oidc.exchange_code(config, code=code, redirect_uri=redirect_uri,
                                      code_verifier=verifier)
        claims = oidc.check_id_token(config, id_token, nonce=row.nonce)
    except OidcError as exc:
        raise SsoRefused(exc.reason, exc.message, provider_id=provider.id) from None
    _take_id_token_once(s, provider, claims)
    email = _email_of(provider, claims)
    identity = s.scalars(select(ExternalIdentity).where(
        ExternalIdentity.issuer == provider.issuer,
        ExternalIdentity.subject == claims["sub"])).first()
    if identity is None:
        local = s.scalars(select(User).where(User.email == email)).first()
        provisioned = local is not None and s.scalars(select(ScimUser.user_id).where(
            ScimUser.user_id == local.id, ScimUser.provider_id == provider.id)).first()
        if local is not None and provisioned:
            # an account this provider provisioned over SCIM: its first sign-in binds it
            identity = _bind(s, provider, claims, local)
            audit.record(s, SsoEvents.IDENTITY_LINKED, actor=_actor(local),
                         target_type="user", target_id=local.id,
                         details={"provider": provider.name, "by": "scim"})
        elif local is not None:
            # never a silent takeover by e-mail: the account proves its password first
            link_state = secrets.token_urlsafe(32)
            s.add(SsoAuthorization(
                state_hash=_digest("link:" + link_state), browser_hash=row.browser_hash,
                provider_id=provider.id, nonce=row.nonce,
                code_verifier_sealed=row.code_verifier_sealed, next_path=row.next_path,
                expires_at=utcnow() + LINK_LIFETIME, link_user_id=local.id,
                link_claims=_kept_claims(claims)))
            s.flush()
            return SsoResult(link_state=link_state, link_email=local.email,
                             next_path=row.next_path)
        elif not provider.create_accounts:
            raise SsoRefused("unknown_account", "No account here belongs to you, and "
                                                f"{provider.name} does not create accounts. "
                                                "Ask an Owner to create yours.",
                             provider_id=provider.id)
        else:
            user = _create_account(s, provider, claims, email)
            identity = _bind(s, provider, claims, user)
    return _sign_in(s, provider, identity, claims, row.next_path, client_ip=client_ip,
                    host=host, user_agent=user_agent)


def _take_id_token_once(s: Session, provider: IdentityProvider, claims: dict[str, Any]
                        ) -> None:
    """The ID token's nonce, and its ``jti`` when it has one, are taken once (replay.py)."""
    expires = float(claims["exp"])
    if not replay.take_once(s, kind="nonce", issuer=provider.issuer, value=claims["nonce"],
                            expires=expires):
        raise SsoRefused("nonce_replayed", "This ID token's nonce was already used; start "
                                           "again from the sign-in page.",
                         provider_id=provider.id)
    jti = claims.get("jti")
    if isinstance(jti, str) and jti and not replay.take_once(
            s, kind="id_jti", issuer=provider.issuer, value=jti, expires=expires):
        raise SsoRefused("token_replayed", "This ID token was already used (its jti); start "
                                           "again from the sign-in page.",
                         provider_id=provider.id)


def _kept_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """What a pending link keeps of the ID token: identity, groups, MFA and session claims."""
    return {k: v for k, v in claims.items()
            if isinstance(v, str | int | float | bool | list) and k not in ("nonce", "at_hash")}


def _create_account(s: Session, provider: IdentityProvider, claims: dict[str, Any],
                    email: str) -> User:
    name = claims.get("name") if isinstance(claims.get("name"), str) else email
    # a password nobody knows: this account signs in with its provider only
    user = User(email=email, display_name=str(name)[:200],
                password_hash=passwords.hash_password(secrets.token_urlsafe(32)),
                is_owner=False, must_change_password=False)
    s.add(user)
    s.flush()
    audit.record(s, SsoEvents.ACCOUNT_CREATED, actor=Actor("system"), target_type="user",
                 target_id=user.id, details={"provider": provider.name})
    return user


def _bind(s: Session, provider: IdentityProvider, claims: dict[str, Any], user: User
          ) -> ExternalIdentity:
    identity = ExternalIdentity(provider_id=provider.id, issuer=provider.issuer,
                                subject=claims["sub"], user_id=user.id)
    s.add(identity)
    s.flush()
    return identity


def _sign_in(s: Session, provider: IdentityProvider, identity: ExternalIdentity,
             claims: dict[str, Any], next_path: str, *, client_ip: str, host: str,
             user_agent: str | None) -> SsoResult:
    user = s.get(User, identity.user_id, with_for_update=True)
    if user is None or not user.is_active:
        raise SsoRefused("deactivated", "This account is deactivated.", provider_id=provider.id)
    identity.last_sign_in_at = utcnow()
    # the groups of the ID token's claim, else those the provider gave over SCIM: applied at
    # every sign-in, so a mapping changed since the last one takes effect now
    if provider.groups_claim:
        groups = groups_of(provider, claims)
        identity.groups = groups
    else:
        groups = scim_groups_of(s, provider.id, user.id)
    changes = apply_group_roles(s, provider, user, groups)
    idp_mfa = provider_did_mfa(provider, claims)
    # TOTP is still asked of an account that has it, unless the provider's word is taken;
    # a tenant requiring two-factor sign-in accepts the provider's (mfa_by_provider)
    need_totp = user.mfa_enabled and not idp_mfa
    sid = claims.get("sid")
    token = sessions.start_session(
        s, user, host=host, ip=client_ip, user_agent=user_agent, mfa_pending=need_totp,
        sso=(provider.id, identity.subject, sid[:255] if isinstance(sid, str) else None),
        mfa_by_provider=idp_mfa)
    if not need_totp:
        audit.record(s, SsoEvents.SIGN_IN, actor=_actor(user), target_type="user",
                     target_id=user.id,
                     details={"provider": provider.name, "ip": client_ip,
                              "idp_mfa": idp_mfa, "role_changes": changes})
    return SsoResult(user=user, token=token, mfa_pending=need_totp, next_path=next_path)


def provider_did_mfa(provider: IdentityProvider, claims: dict[str, Any]) -> bool:
    """Whether this provider's word on the second factor is taken, and its ID token gives it
    (an ``amr`` or ``acr`` value the provider's configuration accepts)."""
    return provider.trust_idp_mfa and mfa_done(claims, amr_values=provider.mfa_amr_values,
                                               acr_values=provider.mfa_acr_values)


def scim_groups_of(s: Session, provider_id: int, user_id: int) -> list[str]:
    """The names of the groups ``provider_id`` put ``user_id`` in over SCIM."""
    return list(s.scalars(select(ScimGroup.display_name)
                          .join(ScimGroupMember, ScimGroupMember.group_id == ScimGroup.id)
                          .where(ScimGroup.provider_id == provider_id,
                                 ScimGroupMember.user_id == user_id)))


def apply_group_roles(s: Session, provider: IdentityProvider, user: User,
                      groups: list[str]) -> int:
    """Make the memberships this provider's mapping manages match ``groups``: the highest
    role a group gives in each mapped tenant; a managed membership whose group is gone is
    removed (its API keys of that tenant revoked). A membership given by hand is left alone.
    Each change is audited; returns how many."""
    mapped_tenants = {int(m["tenant_id"]) for m in provider.group_roles}
    if not mapped_tenants:
        return 0
    wanted: dict[int, str] = {}
    for mapping in provider.group_roles:
        if mapping["group"] in groups:
            tenant_id, role = int(mapping["tenant_id"]), str(mapping["role"])
            held = wanted.get(tenant_id)
            if held is None or permissions.outranks(role, held):
                wanted[tenant_id] = role
    actor = provider_actor(provider)
    changes = 0
    existing = {m.tenant_id: m for m in s.scalars(select(Membership).where(
        Membership.user_id == user.id, Membership.tenant_id.in_(mapped_tenants))
        .with_for_update())}
    for tenant_id in sorted(mapped_tenants):
        membership, wanted_role = existing.get(tenant_id), wanted.get(tenant_id)
        tenant = s.get(Tenant, tenant_id)
        if tenant is None or tenant.state == "deleted":
            continue
        details: dict[str, Any] = {"user_id": user.id, "tenant_id": tenant_id,
                                   "provider": provider.name}
        if membership is None:
            if wanted_role is not None:
                s.add(Membership(user_id=user.id, tenant_id=tenant_id, role=wanted_role,
                                 sso_provider_id=provider.id))
                audit.record(s, SsoEvents.ROLE_GRANTED, actor=actor, target_type="tenant",
                             target_id=tenant_id, details={**details,
                                                       "role": wanted_role})
                changes += 1
            continue
        if membership.sso_provider_id != provider.id or membership.role == wanted_role:
            continue  # given by hand (or by another provider), or already right
        if (membership.role == "Owner" and wanted_role != "Owner"
                and other_active_owners(s, tenant_id, user.id) == 0):
            audit.record(s, SsoEvents.ROLE_KEPT, actor=actor, target_type="tenant",
                         target_id=tenant_id,
                         details={**details, "role": membership.role,
                                  "reason": "the tenant's last Owner"})
            continue
        if wanted_role is None:
            s.delete(membership)
            revoked = revoke_member_access(s, user.id, tenant_id=tenant_id,
                                           reason="group removed at the identity provider",
                                           actor=actor)
            audit.record(s, SsoEvents.ROLE_REMOVED, actor=actor, target_type="tenant",
                         target_id=tenant_id,
                         details={**details, "role": membership.role, **revoked})
        else:
            before, membership.role = membership.role, wanted_role
            audit.record(s, SsoEvents.ROLE_CHANGED, actor=actor, target_type="tenant",
                         target_id=tenant_id, details={**details, "from": before,
                                                       "to": wanted_role})
        changes += 1
    s.flush()
    return changes


def access_link(s: Session, link_state: str, browser_binding: str | None
                ) -> SsoAuthorization:
    row = s.scalars(select(SsoAuthorization).where(
        SsoAuthorization.state_hash == _digest("link:" + link_state)).with_for_update()).first()
    if (row is None or row.link_user_id is None or row.used_at is not None
            or row.expires_at <= utcnow() or browser_binding is None
            or not secrets.compare_digest(row.browser_hash, _digest(browser_binding))):
        raise SsoRefused("link_expired", "This account link is no longer open. Sign in with "
                                         "your provider again.")
    return row


def do_link_identity(s: Session, *, link_state: str, password: str,
                     browser_binding: str | None, client_ip: str, host: str,
                     user_agent: str | None, limiter: LoginRateLimiter) -> SsoResult:
    """Bind the waiting subject to the local account, once that account's password is
    entered; then sign in as in ``do_finish_sign_in``."""
    row = access_link(s, link_state, browser_binding)
    user = s.get(User, row.link_user_id)
    provider = get_active_provider(s, row.provider_id)
    if user is None:
        raise SsoRefused("link_expired", "This account no longer exists.")
    limiter.check(client_ip, user.email)
    if not user.is_active or not passwords.verify_password(user.password_hash, password):
        limiter.record_failure(client_ip, user.email)
        audit.record(s, SsoEvents.LINK_FAILED, actor=audit.SYSTEM, target_type="user",
                     target_id=user.id, details={"provider": provider.name, "ip": client_ip})
        return SsoResult(link_state=link_state, link_email=user.email,
                         next_path=row.next_path)
    limiter.record_success(client_ip, user.email)
    row.used_at = utcnow()
    claims = dict(row.link_claims or {})
    identity = _bind(s, provider, claims, user)
    audit.record(s, SsoEvents.IDENTITY_LINKED, actor=_actor(user), target_type="user",
                 target_id=user.id, details={"provider": provider.name})
    return _sign_in(s, provider, identity, claims, row.next_path, client_ip=client_ip,
                    host=host, user_agent=user_agent)


def do_record_refusal(s: Session, refusal: SsoRefused | OidcError, *,
                      provider_id: int | None, client_ip: str,
                      event: str = SsoEvents.SIGN_IN_REFUSED) -> None:
    """Audit a refused sign-in or logout (in its own transaction: the refused one rolled
    back)."""
    audit.record(s, event, actor=audit.SYSTEM,
                 target_type="identity_provider" if provider_id else None,
                 target_id=provider_id, details={"reason": refusal.reason, "ip": client_ip})


# ------------------------------------------------------------------------------- sign-out


def do_backchannel_logout(s: Session, provider: IdentityProvider, *, logout_token: str,
                          oidc: OidcClient, sealer: ControlSealer) -> int:
    """OpenID Connect Back-Channel Logout: revoke the sessions the token names (its ``sid``,
    else every session of its ``sub``) at once; returns how many."""
    claims = oidc.check_logout_token(provider_config(sealer, provider), logout_token)
    expires = float(claims.get("exp") or claims["iat"] + LOGOUT_TOKEN_MAX_AGE_SECONDS)
    if not replay.take_once(s, kind="logout_jti", issuer=provider.issuer, value=claims["jti"],
                            expires=expires):
        raise OidcError("token_replayed", "This logout token was already used (its jti).")
    stmt = update(WebSession).where(WebSession.sso_provider_id == provider.id,
                                    WebSession.revoked_at.is_(None))
    if isinstance(claims.get("sub"), str):
        stmt = stmt.where(WebSession.sso_subject == claims["sub"])
    if isinstance(claims.get("sid"), str):
        stmt = stmt.where(WebSession.sso_sid == claims["sid"])
    result = s.execute(stmt.values(revoked_at=utcnow()))
    count = int(getattr(result, "rowcount", 0) or 0)
    audit.record(s, SsoEvents.BACKCHANNEL_LOGOUT,
                 actor=provider_actor(provider),
                 target_type="identity_provider", target_id=provider.id,
                 details={"sessions": count, "by": "sid" if "sid" in claims else "sub"})
    return count


def sign_out_target(s: Session, session_row: WebSession, *, oidc: OidcClient,
                    sealer: ControlSealer, post_logout_redirect_uri: str) -> str | None:
    """RP-initiated logout: the provider's end-session URL for a session from single sign-on."""
    if session_row.sso_provider_id is None:
        return None
    provider = s.get(IdentityProvider, session_row.sso_provider_id)
    if provider is None or not provider.is_active:
        return None
    return oidc.end_session_url(provider_config(sealer, provider),
                                post_logout_redirect_uri=post_logout_redirect_uri)

