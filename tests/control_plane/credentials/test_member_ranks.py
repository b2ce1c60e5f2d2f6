"""One rule for removing, demoting and deactivating members, on every surface (review issue 15,
finding 7): nobody removes or changes the role of a member whose role outranks theirs
(``permissions.outranks``: it holds a permission theirs lacks, read from the matrix), nobody
gives a role that outranks their own, and a tenant's last active Owner is never removed, demoted
or deactivated. The whole matrix, every actor role x every target role, through the dashboard,
the JSON API and the CLI (``magistrate member ...``); deactivation, an installation Owner's act,
through the users page and ``magistrate user deactivate``."""

from __future__ import annotations

import html
import re

import pytest
from sqlalchemy import select, update

from control_plane.models import Membership, User
from tenant_runtime import permissions
from tenant_runtime.permissions import ROLES
from tests.conftest import TEST_SECRET_KEY, run_cli
from tests.control_plane.credentials.helpers import message
from tests.control_plane.tenancy.helpers import create_tenant
from tests.factories import csrf_token, make_user, sign_in

SLUG = "rank"


def _email(kind: str, role: str) -> str:
    return f"{kind}-{role.lower()}@{SLUG}.example"


@pytest.fixture
def tenant(services, db, primary_server, local_kek) -> int:
    """A tenant (left provisioning: members need no tenant database) with one actor and one
    target per role; the actor Owner is the tenant's creator."""
    make_user(db, _email("actor", "Owner"))
    tenant_id = create_tenant(services, _email("actor", "Owner"), SLUG)
    for kind in ("actor", "target"):
        for role in ROLES:
            if (kind, role) != ("actor", "Owner"):
                make_user(db, _email(kind, role), is_owner=False)
    with services.session_factory() as s, s.begin():
        for kind in ("actor", "target"):
            for role in ROLES:
                if (kind, role) != ("actor", "Owner"):
                    uid = s.scalars(select(User.id).where(User.email == _email(kind, role))).one()
                    s.add(Membership(user_id=uid, tenant_id=tenant_id, role=role))
    return tenant_id


@pytest.fixture
def cli_env(monkeypatch, database_url, redis_url, settings):
    monkeypatch.setenv("MAGISTRATE_DATABASE_URL", database_url)
    monkeypatch.setenv("MAGISTRATE_REDIS_URL", redis_url)
    monkeypatch.setenv("MAGISTRATE_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("MAGISTRATE_HOME", str(settings.home))


def expected(actor: str, target: str, new_role: str | None) -> str:
    if not permissions.allows(actor, "members.manage"):
        return "forbidden"
    if permissions.outranks(target, actor):
        return "forbidden"
    if new_role is not None and permissions.outranks(new_role, actor):
        return "forbidden"
    return "done"


def new_role_for(target: str) -> str:
    """A demotion where there is one below (a Viewer gets a sideways change)."""
    return "Viewer" if target != "Viewer" else "Approver"


def _membership(services, tenant_id: int, email: str) -> Membership | None:
    with services.session_factory() as s:
        return s.scalars(select(Membership).join(User, User.id == Membership.user_id).where(
            Membership.tenant_id == tenant_id, User.email == email)).first()


def _restore(services, tenant_id: int, email: str, role: str) -> None:
    with services.session_factory() as s, s.begin():
        uid = s.scalars(select(User.id).where(User.email == email)).one()
        row = s.scalars(select(Membership).where(Membership.tenant_id == tenant_id,
                                                 Membership.user_id == uid)).first()
        if row is None:
            s.add(Membership(user_id=uid, tenant_id=tenant_id, role=role))
        else:
            row.role = role


class Surfaces:
    def __init__(self, client, tenant_id: int, capsys) -> None:
        self.client, self.tenant_id, self.capsys = client, tenant_id, capsys
        self.signed_in: str | None = None

    def _as(self, email: str) -> str:
        if self.signed_in != email:
            self.client.cookies.clear()
            sign_in(self.client, email)
            self.signed_in = email
        return csrf_token(self.client, "/tenants")

    def dashboard(self, actor: str, membership_id: int, new_role: str | None
                  ) -> tuple[str, str]:
        token = self._as(actor)
        base = f"/tenants/{self.tenant_id}/members/{membership_id}"
        answer = (self.client.post(f"{base}/remove", data={"csrf_token": token})
                  if new_role is None else
                  self.client.post(f"{base}/role", data={"csrf_token": token, "role": new_role}))
        return _outcome(answer.status_code, (200,)), html.unescape(message(answer))

    def api(self, actor: str, membership_id: int, new_role: str | None) -> tuple[str, str]:
        token = self._as(actor)
        base = f"/api/tenants/{self.tenant_id}/members/{membership_id}"
        headers = {"X-CSRF-Token": token}
        answer = (self.client.delete(base, headers=headers) if new_role is None else
                  self.client.post(f"{base}/role", headers=headers, json={"role": new_role}))
        return _outcome(answer.status_code, (200, 204)), message(answer)

    def cli(self, actor: str, target_email: str, new_role: str | None) -> tuple[str, str]:
        args = (["member", "remove"] if new_role is None else
                ["member", "set-role", "--role", new_role])
        code = run_cli([*args, "--tenant", SLUG, "--email", target_email, "--as", actor])
        err = self.capsys.readouterr().err
        return ("done" if code == 0 else "forbidden" if "outranks" in err or "may not" in err
                or "Only an Owner or Admin" in err else f"exit {code}: {err}"), err


def _outcome(status: int, ok: tuple[int, ...]) -> str:
    if status in ok:
        return "done"
    return {403: "forbidden", 409: "last-owner"}.get(status, f"status {status}")


def test_every_actor_role_against_every_target_role_on_every_surface(
        services, tenant, client, capsys, cli_env):
    surfaces = Surfaces(client, tenant, capsys)
    problems: list[str] = []
    for surface in ("dashboard", "api", "cli"):
        for actor in ROLES:
            for target in ROLES:
                for new_role in (None, new_role_for(target)):
                    target_email = _email("target", target)
                    row = _membership(services, tenant, target_email)
                    assert row is not None and row.role == target
                    if surface == "cli":
                        got, said = surfaces.cli(_email("actor", actor), target_email, new_role)
                    else:
                        got, said = getattr(surfaces, surface)(_email("actor", actor), row.id,
                                                               new_role)
                    want = expected(actor, target, new_role)
                    after = _membership(services, tenant, target_email)
                    what = "remove" if new_role is None else f"make {new_role}"
                    where = f"{surface}: {actor} may {what} {target}?"
                    if got != want:
                        problems.append(f"{where} expected {want}, got {got}: {said[:160]}")
                    changed = after is None or after.role != target
                    if changed != (want == "done"):
                        problems.append(f"{where} the membership is now "
                                        f"{after.role if after else 'gone'}")
                    if want == "forbidden" and permissions.allows(actor, "members.manage") \
                            and "outranks yours" not in said:
                        problems.append(f"{where} refused without saying who outranks whom")
                    _restore(services, tenant, target_email, target)
    assert not problems, "\n".join(problems)


def test_nobody_gives_a_role_above_their_own(services, tenant, client, capsys, cli_env):
    surfaces = Surfaces(client, tenant, capsys)
    viewer = _membership(services, tenant, _email("target", "Viewer"))
    for surface in ("dashboard", "api"):
        got, said = getattr(surfaces, surface)(_email("actor", "Admin"), viewer.id, "Owner")
        assert (got, said.count("Your role (Admin) may not make someone Owner")) == (
            "forbidden", 1), (surface, said)
    got, said = surfaces.cli(_email("actor", "Admin"), _email("target", "Viewer"), "Owner")
    assert got == "forbidden" and "may not make someone Owner" in said
    token = csrf_token(client, "/tenants")
    added = client.post(f"/tenants/{tenant}/members", data={
        "csrf_token": token, "email": "actor-viewer@rank.example", "role": "Owner"})
    assert added.status_code == 403
    assert _membership(services, tenant, _email("target", "Viewer")).role == "Viewer"


def test_the_last_owner_is_never_removed_demoted_or_deactivated(
        services, db, tenant, client, capsys, cli_env):
    """The target Owner is the last active Owner once the actor Owner's account is
    deactivated-and-back is not enough: make the actor an Admin, so one Owner remains."""
    surfaces = Surfaces(client, tenant, capsys)
    last = _email("target", "Owner")
    with services.session_factory() as s, s.begin():
        s.execute(update(Membership).where(Membership.user_id == s.scalars(select(User.id).where(
            User.email == _email("actor", "Owner"))).one()).values(role="Admin"))
        s.execute(update(User).where(User.email == last).values(is_owner=True))
    row = _membership(services, tenant, last)
    for new_role in (None, "Admin"):  # the last Owner on herself: neither leave nor step down
        for surface in ("dashboard", "api"):
            got, said = getattr(surfaces, surface)(last, row.id, new_role)
            assert got == "last-owner" and "tenant's last Owner" in said, (surface, said)
        got, said = surfaces.cli(last, last, new_role)
        assert "tenant's last Owner" in said
    # a second Owner whose account is deactivated does not count
    make_user(db, "dormant@rank.example", is_owner=False)
    with services.session_factory() as s, s.begin():
        uid = s.scalars(select(User.id).where(User.email == "dormant@rank.example")).one()
        s.add(Membership(user_id=uid, tenant_id=tenant, role="Owner"))
        s.execute(update(User).where(User.id == uid).values(is_active=False))
    got, said = surfaces.api(last, row.id, None)
    assert got == "last-owner"
    # deactivation: the users page and the CLI refuse, naming the tenant
    owner_id = _membership(services, tenant, last).user_id
    surfaces._as(_email("actor", "Owner"))  # an installation Owner, Admin of the tenant now
    with services.session_factory() as s, s.begin():
        s.execute(update(User).where(User.email == _email("actor", "Owner"))
                  .values(is_owner=True))
    token = csrf_token(client, "/users")
    refused = client.post(f"/users/{owner_id}/deactivate", data={"csrf_token": token})
    assert refused.status_code == 409
    assert f"is the last Owner of {SLUG}" in html.unescape(message(refused))
    assert run_cli(["user", "deactivate", "--email", last, "--as", _email("actor", "Owner")]) == 1
    assert f"is the last Owner of {SLUG}" in capsys.readouterr().err
    with services.session_factory() as s:
        assert s.scalars(select(User.is_active).where(User.email == last)).one()
        assert s.scalars(select(Membership.role).where(Membership.user_id == owner_id)).one() \
            == "Owner"


def test_deactivation_is_an_installation_owners_act_on_every_surface(
        services, tenant, client, capsys, cli_env):
    """Every tenant role as target: an installation Owner (who ranks with tenant Owners) may
    deactivate it (the tenant keeps another Owner); an account that is not an installation
    Owner may deactivate nobody, whatever its tenant role."""
    with services.session_factory() as s, s.begin():
        s.execute(update(User).where(User.email == _email("actor", "Admin"))
                  .values(is_owner=False))
    problems = []
    for actor, allowed in ((_email("actor", "Owner"), True), (_email("actor", "Admin"), False)):
        for target in ROLES:
            email = _email("target", target)
            with services.session_factory() as s:
                uid = s.scalars(select(User.id).where(User.email == email)).one()
            client.cookies.clear()
            sign_in(client, actor)
            token = csrf_token(client, "/tenants")
            page = client.post(f"/users/{uid}/deactivate", data={"csrf_token": token})
            if (page.status_code == 200) != allowed:
                problems.append(f"page: {actor} deactivating {target}: {page.status_code}")
            _reactivate(services, uid)
            code = run_cli(["user", "deactivate", "--email", email, "--as", actor])
            err = capsys.readouterr().err
            if (code == 0) != allowed or (not allowed and "Only an Owner" not in err):
                problems.append(f"cli: {actor} deactivating {target}: {code} {err}")
            _reactivate(services, uid)
    assert not problems, "\n".join(problems)


def _reactivate(services, uid: int) -> None:
    with services.session_factory() as s, s.begin():
        s.execute(update(User).where(User.id == uid).values(is_active=True, deactivated_at=None))


def test_outranking_is_read_from_the_matrix():
    """An Owner is outranked by nobody; an Admin by the Owner and by Compliance (who may
    export the audit log, which an Admin may not: so an Admin cannot make a second account of
    theirs Compliance and export through it); every role by a non-member's absence of one."""
    assert [r for r in ROLES if permissions.outranks(r, "Owner")] == []
    assert [r for r in ROLES if permissions.outranks(r, "Admin")] == ["Owner", "Compliance"]
    assert all(permissions.outranks(r, None) for r in ROLES)
    assert not permissions.outranks("Viewer", "Viewer")


def test_the_page_offers_an_admin_only_what_the_rule_allows(services, tenant, client):
    sign_in(client, _email("actor", "Admin"))
    page = client.get(f"/tenants/{tenant}/settings").text
    for role in ROLES:
        row = re.search(rf'<tr data-member="{re.escape(_email("target", role))}">(.*?)</tr>',
                        page, re.S).group(1)
        may = not permissions.outranks(role, "Admin")
        assert ("/remove" in row, "/role" in row) == (may, may), role
        if may:
            offered = re.findall(r"<option[^>]*>([^<]+)</option>", row)
            assert offered == ["Admin", "Operator", "Approver", "Viewer"], offered
        else:
            assert "outranks your role" in row
