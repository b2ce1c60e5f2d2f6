"""SCIM 2.0 provisioning (RFC 7643, 7644) for one identity provider at a time: the token an
Owner made for the provider decides which provider's view a request sees and changes.

- A token's secret is shown once; only its SHA-256 is kept. It works while it is not revoked,
  its provider is active, it holds the ``scim`` scope, and its creator is still an active Owner
  (DESIGN.md, invariant 9).
- The Users a provider sees are the accounts it provisioned (``scim_users``). Creating one
  whose e-mail belongs to an existing account is a conflict (409): an existing account is
  linked by its owner signing in with the provider and proving the password, never by SCIM.
- ``active: false`` (PUT or PATCH) and DELETE deactivate the account through
  ``users.service.do_deactivate_account``: every session ends and every API key it made is
  revoked at once. DELETE also takes the account out of the provider's view (404 after);
  nothing is removed from the audit log.
- A Group's members get the roles the provider's group mapping gives its ``displayName``
  (``identity.service.apply_group_roles``), recomputed for every member a change touches.
- Every change is audited on the platform chain; the actor is the token (its label).
- ETags are weak and derived from the resource's representation; ``If-Match`` is checked on
  PUT, PATCH and DELETE (412 when it differs).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, exists, func, literal, or_, select, text, true
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from control_plane import audit
from control_plane.audit import Actor
from control_plane.auth import passwords
from control_plane.auth.credentials import presented_key
from control_plane.db import utcnow
from control_plane.exceptions import Conflict
from control_plane.identity.service import apply_group_roles, require_owner, scim_groups_of
from control_plane.models import (
    IdentityProvider,
    ScimGroup,
    ScimGroupMember,
    ScimToken,
    ScimUser,
    User,
)
from control_plane.scim import filters
from control_plane.users.service import do_deactivate_account, do_reactivate_account

SCOPE = "scim"
TOKEN_PREFIX = "mgscim_"  # noqa: S105 - the prefix, not a secret
MAX_COUNT = 200
PLACEHOLDER_DOMAIN = "scim.invalid"  # RFC 2606: never a real mailbox


class ScimEvents:
    TOKEN_CREATED = "scim.token_created"  # noqa: S105 - an event name
    TOKEN_REVOKED = "scim.token_revoked"  # noqa: S105 - an event name
    USER_CREATED = "scim.user_created"
    USER_UPDATED = "scim.user_updated"
    USER_DELETED = "scim.user_deleted"
    GROUP_CREATED = "scim.group_created"
    GROUP_UPDATED = "scim.group_updated"
    GROUP_DELETED = "scim.group_deleted"


class ScimError(Exception):
    """One SCIM error answer (RFC 7644 section 3.12)."""

    def __init__(self, status: int, detail: str, scim_type: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.scim_type = scim_type

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                                "status": str(self.status), "detail": self.detail}
        if self.scim_type:
            body["scimType"] = self.scim_type
        return body


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_actor(token: ScimToken) -> Actor:
    return Actor("api_key", f"scim:{token.id}", token.label)


# ------------------------------------------------------------------------------- tokens


def do_create_token(s: Session, provider: IdentityProvider, *, label: str,
                    acting_user: User) -> tuple[ScimToken, str]:
    """A new token for ``provider``; the secret is returned once and never stored."""
    require_owner(acting_user)
    label = label.strip()
    if not 1 <= len(label) <= 100:
        raise Conflict("Give the token a label of 1 to 100 characters (it names the token "
                       "in the audit log).")
    prefix = secrets.token_hex(4)
    secret = f"{TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    token = ScimToken(provider_id=provider.id, label=label, prefix=prefix,
                      secret_hash=_digest(secret), scopes=[SCOPE], created_by=acting_user.id)
    s.add(token)
    s.flush()
    audit.record(s, ScimEvents.TOKEN_CREATED, actor=Actor.user(acting_user.id, acting_user.email),
                 target_type="scim_token", target_id=token.id,
                 details={"provider": provider.name, "label": label, "prefix": prefix})
    return token, secret


def do_revoke_token(s: Session, token: ScimToken, *, acting_user: User) -> None:
    require_owner(acting_user)
    if token.revoked_at is not None:
        return
    token.revoked_at = utcnow()
    audit.record(s, ScimEvents.TOKEN_REVOKED, actor=Actor.user(acting_user.id, acting_user.email),
                 target_type="scim_token", target_id=token.id,
                 details={"label": token.label, "prefix": token.prefix})


def list_tokens(s: Session) -> list[ScimToken]:
    return list(s.scalars(select(ScimToken).order_by(ScimToken.id)))


def authenticate(s: Session, authorization: str | None) -> ScimToken:
    """The token a SCIM request presents, or ScimError 401."""
    secret = presented_key(authorization)
    if secret is None or not secret.startswith(TOKEN_PREFIX):
        raise ScimError(401, "Send a SCIM token: Authorization: Bearer mgscim_...")
    prefix = secret[len(TOKEN_PREFIX):].split("_", 1)[0]
    token = s.scalars(select(ScimToken).where(ScimToken.prefix == prefix)).first()
    if token is None or not secrets.compare_digest(token.secret_hash, _digest(secret)):
        raise ScimError(401, "This SCIM token is not valid.")
    creator = s.get(User, token.created_by) if token.created_by is not None else None
    if (token.revoked_at is not None or SCOPE not in token.scopes
            or not token.provider.is_active or creator is None or not creator.is_active
            or not creator.is_owner):
        raise ScimError(401, "This SCIM token no longer works (revoked, its provider disabled, "
                             "or its creator no longer an active Owner).")
    token.last_used_at = utcnow()
    return token


# ------------------------------------------------------------------------------- helpers


def etag(resource: dict[str, Any]) -> str:
    body = {k: v for k, v in resource.items() if k != "meta"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    return f'W/"{digest[:20]}"'


def check_if_match(if_match: str | None, resource: dict[str, Any]) -> None:
    if if_match is None or if_match.strip() == "*":
        return
    wanted = {tag.strip() for tag in if_match.split(",")}
    if etag(resource) not in wanted:
        raise ScimError(412, "The resource changed since you read it (If-Match differs).")


def _where(query: Any, filter_text: str | None, attributes: dict[str, filters.Attribute]
           ) -> Any:
    if filter_text is None or not filter_text.strip():
        return query
    try:
        return query.where(filters.compile_filter(filter_text, attributes))
    except filters.FilterError as exc:
        raise ScimError(400, f"The filter cannot be used: {exc}", "invalidFilter") from None


def _ordered(query: Any, sort: tuple[str | None, str | None],
             attributes: dict[str, filters.Attribute], tie: Any) -> Any:
    try:
        found = filters.sort_order(sort[0], sort[1], attributes)
    except filters.FilterError as exc:
        raise ScimError(400, str(exc), "invalidValue") from None
    if found is None:
        return query.order_by(tie)
    column, descending = found
    return query.order_by(column.desc().nulls_last() if descending
                          else column.asc().nulls_last(), tie)


def _text(column: Any, *, case_exact: bool) -> filters.Attribute:
    return filters.Attribute(
        filters.string_comparison(column, case_exact=case_exact),
        lambda: and_(column.is_not(None), column != ""),
        column if case_exact else func.lower(column))


def _email_values() -> filters.Attribute:
    """``emails.value``: the addresses the provider sent, or the account's own when it is not
    a placeholder (as ``user_resource`` shows them); without case."""
    element = func.jsonb_array_elements(ScimUser.emails, type_=JSONB).column_valued("sent_item")
    sent = func.jsonb_extract_path_text(element, "value")
    real = ~User.email.endswith("@" + PLACEHOLDER_DOMAIN)

    def compare(op: str, value: Any) -> Any:
        in_sent = exists(select(literal(1)).where(
            filters.string_comparison(sent, case_exact=False)(op, value)))
        own = and_(real, filters.string_comparison(User.email, case_exact=False)(op, value))
        return or_(in_sent, own)

    return filters.Attribute(compare, lambda: or_(ScimUser.emails != text("'[]'::jsonb"),
                                                  real), User.email)


def _time_attribute(column: Any) -> filters.Attribute:
    def compare(op: str, value: Any) -> Any:
        raise filters.FilterError("meta dates can be sorted on, not filtered.")

    return filters.Attribute(compare, lambda: column.is_not(None), column)


USER_ATTRIBUTES: dict[str, filters.Attribute] = {
    "username": _text(ScimUser.user_name, case_exact=False),
    "externalid": _text(ScimUser.external_id, case_exact=True),
    "displayname": _text(User.display_name, case_exact=False),
    "emails.value": _email_values(),
    "emails": _email_values(),
    "active": filters.Attribute(filters.boolean_comparison(User.is_active), true),
    "id": filters.Attribute(filters.id_comparison(User.id), true, User.id),
    "meta.created": _time_attribute(User.created_at),
    "meta.lastmodified": _time_attribute(ScimUser.updated_at),
}


def page(start_index: str | None, count: str | None) -> tuple[int, int]:
    try:
        start = max(1, int(start_index or 1))
        size = min(MAX_COUNT, max(0, int(count if count is not None else MAX_COUNT)))
    except ValueError:
        raise ScimError(400, "startIndex and count are whole numbers.", "invalidValue") from None
    return start, size


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ------------------------------------------------------------------------------- users


def user_resource(user: User, link: ScimUser, base: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": str(user.id), "userName": link.user_name, "active": user.is_active,
    }
    if user.display_name:
        body["displayName"] = user.display_name
    if link.emails:
        body["emails"] = link.emails
    elif not is_placeholder(user.email):
        body["emails"] = [{"value": user.email, "type": "work", "primary": True}]
    if link.external_id:
        body["externalId"] = link.external_id
    body["meta"] = {"resourceType": "User", "created": _time(user.created_at),
                    "lastModified": _time(link.updated_at),
                    "location": f"{base}/Users/{user.id}"}
    body["meta"]["version"] = etag(body)
    return body


def _users_query(token: ScimToken) -> Any:
    return (select(User, ScimUser).join(ScimUser, ScimUser.user_id == User.id)
            .where(ScimUser.provider_id == token.provider_id))


def access_user(s: Session, token: ScimToken, user_id: str, *, lock: bool = False
                ) -> tuple[User, ScimUser]:
    if not user_id.isdigit() or len(user_id) > 18:
        raise ScimError(404, "No such user.")
    query = _users_query(token).where(User.id == int(user_id))
    row = s.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise ScimError(404, "No such user.")
    return row[0], row[1]


def list_users(s: Session, token: ScimToken, *, filter_text: str | None, start: int,
               count: int, base: str, sort: tuple[str | None, str | None] = (None, None)
               ) -> dict[str, Any]:
    query = _where(_users_query(token), filter_text, USER_ATTRIBUTES)
    total = int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = _ordered(query, sort, USER_ATTRIBUTES, User.id)
    rows = s.execute(query.offset(start - 1).limit(count)).all()
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": total, "startIndex": start, "itemsPerPage": len(rows),
            "Resources": [user_resource(u, link, base) for u, link in rows]}


@dataclass
class UserFields:
    user_name: str
    display_name: str | None
    active: bool
    external_id: str | None
    emails: list[str]  # the primary first
    email_items: list[dict[str, Any]] | None = None  # as sent: value, type, primary


def _is_email(value: str) -> bool:
    local, at, domain = value.partition("@")
    return bool(at and local and domain and " " not in value and len(value) <= 320)


def is_placeholder(email: str) -> bool:
    return email.endswith("@" + PLACEHOLDER_DOMAIN)


def _email(fields: UserFields, current: str | None = None) -> str:
    """The account's e-mail: the userName when it is one (Entra ID's and Okta's default),
    else the primary of ``emails``; with neither, a placeholder under ``.invalid`` (such an
    account is provisioned, but no sign-in can ever match it by e-mail)."""
    for candidate in (fields.user_name, *fields.emails):
        if _is_email(candidate.strip()):
            return candidate.strip().lower()
    if current is not None and is_placeholder(current):
        return current
    return f"scim-{secrets.token_hex(8)}@{PLACEHOLDER_DOMAIN}"


def _check_user_name(s: Session, token: ScimToken, user_name: str, user_id: int | None
                     ) -> str:
    user_name = user_name.strip()
    if not user_name or len(user_name) > 320:
        raise ScimError(400, "userName is required (at most 320 characters).", "invalidValue")
    query = select(ScimUser.user_id).where(ScimUser.provider_id == token.provider_id,
                                           func.lower(ScimUser.user_name) == user_name.lower())
    if user_id is not None:
        query = query.where(ScimUser.user_id != user_id)
    if s.scalars(query).first() is not None:
        raise ScimError(409, f"Another user has userName {user_name}.", "uniqueness")
    return user_name


def do_create_user(s: Session, token: ScimToken, fields: UserFields, *, base: str
                   ) -> dict[str, Any]:
    user_name = _check_user_name(s, token, fields.user_name, None)
    email = _email(fields)
    if s.scalars(select(User.id).where(User.email == email)).first() is not None:
        raise ScimError(409, f"An account with userName {email} already exists; its owner "
                             "links it by signing in with the provider.", "uniqueness")
    user = User(email=email, display_name=(fields.display_name or "")[:200],
                password_hash=passwords.hash_password(secrets.token_urlsafe(32)),
                is_owner=False, must_change_password=False, is_active=True)
    s.add(user)
    s.flush()
    link = ScimUser(user_id=user.id, provider_id=token.provider_id, user_name=user_name,
                    external_id=fields.external_id, emails=fields.email_items or [],
                    updated_at=utcnow())
    s.add(link)
    s.flush()
    actor = token_actor(token)
    audit.record(s, ScimEvents.USER_CREATED, actor=actor, target_type="user",
                 target_id=user.id, details={"provider": token.provider.name})
    if not fields.active:
        do_deactivate_account(s, user, actor=actor)
    s.refresh(user)
    return user_resource(user, link, base)


def do_update_user(s: Session, token: ScimToken, user: User, link: ScimUser,
                   fields: UserFields, *, base: str) -> dict[str, Any]:
    actor = token_actor(token)
    changed: list[str] = []
    user_name = _check_user_name(s, token, fields.user_name, user.id)
    if user_name != link.user_name:
        link.user_name = user_name
        changed.append("userName")
    email = _email(fields, user.email)
    if email != user.email:
        if s.scalars(select(User.id).where(User.email == email)).first() is not None:
            raise ScimError(409, f"Another account has the e-mail {email}.", "uniqueness")
        user.email = email
        changed.append("emails")
    if (fields.display_name or "")[:200] != user.display_name:
        user.display_name = (fields.display_name or "")[:200]  # a replace without it clears it
        changed.append("displayName")
    if (fields.email_items or []) != link.emails:
        link.emails = fields.email_items or []
        changed.append("emails")
    if fields.external_id != link.external_id:
        link.external_id = fields.external_id
        changed.append("externalId")
    if fields.active != user.is_active:
        try:
            if fields.active:
                do_reactivate_account(s, user, actor=actor)
            else:
                do_deactivate_account(s, user, actor=actor)
        except Conflict as exc:
            raise ScimError(409, exc.message, "mutability") from None
        changed.append("active")
    if changed:
        link.updated_at = utcnow()
        audit.record(s, ScimEvents.USER_UPDATED, actor=actor, target_type="user",
                     target_id=user.id, details={"changed": changed})
    s.flush()
    return user_resource(user, link, base)


def do_delete_user(s: Session, token: ScimToken, user: User, link: ScimUser) -> None:
    actor = token_actor(token)
    if user.is_active:
        try:
            do_deactivate_account(s, user, actor=actor)
        except Conflict as exc:
            raise ScimError(409, exc.message, "mutability") from None
    groups = _groups_of(s, token, user.id)
    s.execute(delete(ScimGroupMember).where(
        ScimGroupMember.user_id == user.id,
        ScimGroupMember.group_id.in_(select(ScimGroup.id).where(
            ScimGroup.provider_id == token.provider_id))))
    s.delete(link)
    audit.record(s, ScimEvents.USER_DELETED, actor=actor, target_type="user",
                 target_id=user.id, details={"groups_left": len(groups)})
    apply_group_roles(s, token.provider, user, [])


# ------------------------------------------------------------------------------- groups


def _groups_of(s: Session, token: ScimToken, user_id: int) -> list[str]:
    return scim_groups_of(s, token.provider_id, user_id)


def group_resource(s: Session, group: ScimGroup, base: str) -> dict[str, Any]:
    members = s.execute(select(User.id, User.email)
                        .join(ScimGroupMember, ScimGroupMember.user_id == User.id)
                        .where(ScimGroupMember.group_id == group.id).order_by(User.id)).all()
    body: dict[str, Any] = {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
        "id": str(group.id), "displayName": group.display_name,
        "members": [{"value": str(uid), "display": email, "type": "User",
                     "$ref": f"{base}/Users/{uid}"} for uid, email in members],
    }
    if group.external_id:
        body["externalId"] = group.external_id
    body["meta"] = {"resourceType": "Group", "created": _time(group.created_at),
                    "lastModified": _time(group.updated_at),
                    "location": f"{base}/Groups/{group.id}"}
    body["meta"]["version"] = etag(body)
    return body


def access_group(s: Session, token: ScimToken, group_id: str, *, lock: bool = False
                 ) -> ScimGroup:
    if not group_id.isdigit() or len(group_id) > 18:
        raise ScimError(404, "No such group.")
    query = select(ScimGroup).where(ScimGroup.id == int(group_id),
                                    ScimGroup.provider_id == token.provider_id)
    group = s.scalars(query.with_for_update() if lock else query).first()
    if group is None:
        raise ScimError(404, "No such group.")
    return group


def _members_attribute() -> filters.Attribute:
    """``members`` / ``members.value``: the group has that user (eq) or not (ne), or has
    any member (pr)."""

    def compare(op: str, value: Any) -> Any:
        if op not in ("eq", "ne"):
            raise filters.FilterError("members is compared with eq or ne and a user's id.")
        has = exists(select(literal(1)).where(
            ScimGroupMember.group_id == ScimGroup.id,
            filters.id_comparison(ScimGroupMember.user_id)("eq", value)))
        return has if op == "eq" else ~has

    def present() -> Any:
        return exists(select(literal(1)).where(ScimGroupMember.group_id == ScimGroup.id))

    return filters.Attribute(compare, present)


GROUP_ATTRIBUTES: dict[str, filters.Attribute] = {
    "displayname": _text(ScimGroup.display_name, case_exact=False),
    "externalid": _text(ScimGroup.external_id, case_exact=True),
    "id": filters.Attribute(filters.id_comparison(ScimGroup.id), true, ScimGroup.id),
    "members": _members_attribute(),
    "members.value": _members_attribute(),
    "meta.created": _time_attribute(ScimGroup.created_at),
    "meta.lastmodified": _time_attribute(ScimGroup.updated_at),
}


def list_groups(s: Session, token: ScimToken, *, filter_text: str | None, start: int,
                count: int, base: str, sort: tuple[str | None, str | None] = (None, None)
                ) -> dict[str, Any]:
    query = _where(select(ScimGroup).where(ScimGroup.provider_id == token.provider_id),
                   filter_text, GROUP_ATTRIBUTES)
    total = int(s.scalar(select(func.count()).select_from(query.subquery())) or 0)
    query = _ordered(query, sort, GROUP_ATTRIBUTES, ScimGroup.id)
    groups = s.scalars(query.offset(start - 1).limit(count)).all()
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": total, "startIndex": start, "itemsPerPage": len(groups),
            "Resources": [group_resource(s, g, base) for g in groups]}


@dataclass
class GroupFields:
    display_name: str
    external_id: str | None
    member_ids: list[str] | None  # None: leave the members as they are


def _member_users(s: Session, token: ScimToken, ids: list[str]) -> set[int]:
    wanted = set()
    for value in ids:
        if not value.isdigit() or len(value) > 18:
            raise ScimError(400, f"No user has the id {value[:40]!r}.", "invalidValue")
        wanted.add(int(value))
    found = set(s.scalars(select(ScimUser.user_id).where(
        ScimUser.provider_id == token.provider_id, ScimUser.user_id.in_(wanted))))
    missing = wanted - found
    if missing:
        raise ScimError(400, f"No user has the id {min(missing)}.", "invalidValue")
    return found


def _set_members(s: Session, token: ScimToken, group: ScimGroup, wanted: set[int]) -> int:
    current = set(s.scalars(select(ScimGroupMember.user_id)
                            .where(ScimGroupMember.group_id == group.id)))
    for user_id in wanted - current:
        s.add(ScimGroupMember(group_id=group.id, user_id=user_id))
    for user_id in current - wanted:
        s.execute(delete(ScimGroupMember).where(
            ScimGroupMember.group_id == group.id, ScimGroupMember.user_id == user_id))
    s.flush()
    return _apply_roles(s, token, current ^ wanted)


def _apply_roles(s: Session, token: ScimToken, user_ids: set[int]) -> int:
    changes = 0
    for user_id in sorted(user_ids):
        user = s.get(User, user_id)
        if user is not None:
            changes += apply_group_roles(s, token.provider, user,
                                         _groups_of(s, token, user_id))
    return changes


def do_create_group(s: Session, token: ScimToken, fields: GroupFields, *, base: str
                    ) -> dict[str, Any]:
    name = fields.display_name.strip()
    if not name or len(name) > 255:
        raise ScimError(400, "displayName is required (at most 255 characters).",
                        "invalidValue")
    if s.scalars(select(ScimGroup.id).where(ScimGroup.provider_id == token.provider_id,
                                            ScimGroup.display_name == name)).first():
        raise ScimError(409, f"A group named {name} already exists.", "uniqueness")
    group = ScimGroup(provider_id=token.provider_id, display_name=name,
                      external_id=fields.external_id, updated_at=utcnow())
    s.add(group)
    s.flush()
    members = _member_users(s, token, fields.member_ids or [])
    changes = _set_members(s, token, group, members)
    audit.record(s, ScimEvents.GROUP_CREATED, actor=token_actor(token), target_type="scim_group",
                 target_id=group.id, details={"name": name, "members": len(members),
                                              "role_changes": changes})
    return group_resource(s, group, base)


def do_update_group(s: Session, token: ScimToken, group: ScimGroup, fields: GroupFields, *,
                    base: str) -> dict[str, Any]:
    name = fields.display_name.strip()
    if not name or len(name) > 255:
        raise ScimError(400, "displayName is required (at most 255 characters).",
                        "invalidValue")
    before = set(s.scalars(select(ScimGroupMember.user_id)
                           .where(ScimGroupMember.group_id == group.id)))
    renamed = name != group.display_name
    if renamed and s.scalars(select(ScimGroup.id).where(
            ScimGroup.provider_id == token.provider_id, ScimGroup.display_name == name,
            ScimGroup.id != group.id)).first():
        raise ScimError(409, f"A group named {name} already exists.", "uniqueness")
    group.display_name = name
    group.external_id = fields.external_id
    changes = 0
    wanted = before
    if fields.member_ids is not None:
        wanted = _member_users(s, token, fields.member_ids)
        changes += _set_members(s, token, group, wanted)
    if renamed:  # the mapping is by name: every member's roles may change
        changes += _apply_roles(s, token, wanted)
    group.updated_at = utcnow()
    audit.record(s, ScimEvents.GROUP_UPDATED, actor=token_actor(token), target_type="scim_group",
                 target_id=group.id,
                 details={"name": name, "added": len(wanted - before),
                          "removed": len(before - wanted), "renamed": renamed,
                          "role_changes": changes})
    return group_resource(s, group, base)


def do_delete_group(s: Session, token: ScimToken, group: ScimGroup) -> None:
    members = set(s.scalars(select(ScimGroupMember.user_id)
                            .where(ScimGroupMember.group_id == group.id)))
    name = group.display_name
    s.delete(group)
    s.flush()
    changes = _apply_roles(s, token, members)
    audit.record(s, ScimEvents.GROUP_DELETED, actor=token_actor(token), target_type="scim_group",
                 target_id=group.id, details={"name": name, "members": len(members),
                                              "role_changes": changes})
