"""A provisioned tenant with members, and keys made through the real service."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import select

from control_plane.models import User
from control_plane.tenancy import api_keys, service
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


def provisioned(services, db, database_url, slug: str = "cred",
                members: Sequence[tuple[str, str]] = ()) -> int:
    """A tenant owned by owner@<slug>.example (an installation Owner), with ``members``
    (email local part, role) added by that Owner."""
    owner = make_user(db, f"owner@{slug}.example")
    tenant_id = create_tenant(services, owner.email, slug)
    run_pending_jobs(services, database_url)
    for local, _ in members:
        make_user(db, f"{local}@{slug}.example", is_owner=False)
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        access = service.access_tenant(s, tenant_id, user=me)
        for local, role in members:
            service.do_add_member(s, access, email=f"{local}@{slug}.example", role=role,
                                  acting_user=me)
    return tenant_id


def user_id(services, email: str) -> int:
    with services.session_factory() as s:
        return s.scalars(select(User.id).where(User.email == email)).one()


def make_key(services, tenant_id: int, email: str, scopes: Sequence[str],
             name: str = "k") -> str:
    with services.session_factory() as s, s.begin():
        me = s.scalars(select(User).where(User.email == email)).one()
        access = service.access_tenant(s, tenant_id, user=me)
        return api_keys.do_create_api_key(s, access, name=name, acting_user=me,
                                          scopes=scopes)[1]


def set_role(services, tenant_id: int, actor_email: str, email: str, role: str) -> None:
    with services.session_factory() as s, s.begin():
        me = s.scalars(select(User).where(User.email == actor_email)).one()
        access = service.access_tenant(s, tenant_id, user=me)
        target = s.scalars(select(User).where(User.email == email)).one()
        membership = service.access_tenant(s, tenant_id, user=target).membership
        service.do_change_member_role(s, access, membership.id, role=role, acting_user=me)


def message(response) -> str:
    """The sentence of an error, whatever shape it came in (ours, OpenAI's, Anthropic's, or
    an HTML page)."""
    if response.headers.get("content-type", "").startswith("application/json"):
        error = response.json().get("error", "")
        return str(error.get("message", "") if isinstance(error, dict) else error)
    return " ".join(re.sub(r"<[^>]+>", " ", response.text).split())


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
