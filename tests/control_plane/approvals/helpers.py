"""A provisioned tenant with one member per role, and the tenant contexts they act through."""

from __future__ import annotations

from dataclasses import dataclass, field

from control_plane.models import Tenant, User
from control_plane.tenancy import api_keys, service
from control_plane.web.services import Services
from tenant_runtime.approvals import classes
from tenant_runtime.context import Actor, TenantContext
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import MadeUser, make_user
from tests.webhook_receiver import Receiver  # noqa: F401 - the approval tests' receiver

MEMBERS = {"admin": "Admin", "operator": "Operator", "approver": "Approver",
           "approver2": "Approver", "viewer": "Viewer", "compliance": "Compliance"}


@dataclass
class Team:
    services: Services
    tenant_id: int
    slug: str
    users: dict[str, MadeUser] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)

    def ctx(self, who: str) -> TenantContext:
        user = self.users[who]
        with self.services.session_factory() as s:
            return self.services.tenant_connections.context(
                s, s.get(Tenant, self.tenant_id),
                Actor("user", str(user.id), user.email, self.roles[who]))

    def system(self) -> TenantContext:
        with self.services.session_factory() as s:
            return self.services.tenant_connections.context(
                s, s.get(Tenant, self.tenant_id), Actor("system", None, "test"))

    def api_key(self, name: str = "agent", *, who: str = "owner",
                scopes: tuple[str, ...] = ("actions:request", "actions:execute")) -> str:
        """A key made by ``who`` (an Owner or Admin), holding ``scopes``."""
        with self.services.session_factory() as s, s.begin():
            creator = s.get(User, self.users[who].id)
            access = service.access_tenant(s, self.tenant_id, user=creator)
            _, key = api_keys.do_create_api_key(s, access, name=name, acting_user=creator,
                                                scopes=scopes)
            return key

    def add_class(self, name: str, **values: object) -> tuple[int, str | None]:
        ctx = self.ctx("owner")
        with ctx.session() as s, s.begin():
            row, secret = classes.do_add_action_class(s, ctx, classes.ClassInput(
                name=name, **values))  # type: ignore[arg-type]
            return row.id, secret


def make_team(services: Services, db, database_url: str, slug: str = "acme", *,
              prefix: str = "") -> Team:
    owner = make_user(db, f"{prefix}owner@example.com")
    tenant_id = create_tenant(services, owner.email, slug)
    run_pending_jobs(services, database_url)
    team = Team(services, tenant_id, slug, {"owner": owner}, {"owner": "Owner"})
    for who, role in MEMBERS.items():  # each in its own transaction (the platform chain)
        team.users[who] = make_user(db, f"{prefix}{who}@example.com", is_owner=False)
        team.roles[who] = role
    with services.session_factory() as s, s.begin():
        me = s.get(User, owner.id)
        access = service.access_tenant(s, tenant_id, user=me)
        for who, role in MEMBERS.items():
            service.do_add_member(s, access, email=team.users[who].email, role=role,
                                  acting_user=me)
    return team
