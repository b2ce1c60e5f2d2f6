"""The signals page over HTTP: Owners and Admins add and remove sources, only Owners change
consent (each change audited), the upload is a CSRF-protected multipart form that streams the
file and shows the report, refusals are 4xx with a sentence, lists follow the caller's persona,
and another tenant's sources are 404."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from control_plane.models import Membership, Tenant
from tenant_runtime.context import Actor
from tenant_runtime.minimization.consent import ConsentEvents
from tenant_runtime.models import AuditEvent
from tenant_runtime.personas.models import Persona, PersonaAssignment
from tenant_runtime.signals.models import Signal, SignalImport, Source
from tenant_runtime.signals.service import SignalEvents
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import csrf_token, make_user, sign_in

FIXTURES = Path(__file__).parent / "fixtures"
ROLES = {"admin@example.com": "Admin", "op@example.com": "Operator",
         "viewer@example.com": "Viewer", "approver@example.com": "Approver"}


@pytest.fixture
def site(services, db, database_url, primary_server, local_kek, client):
    owner = make_user(db, "owner@example.com")
    acme = create_tenant(services, owner.email, "acme")
    globex = create_tenant(services, owner.email, "globex")
    assert {r["outcome"] for r in run_pending_jobs(services, database_url)} == {"succeeded"}
    users = {"owner@example.com": owner.id}
    with db() as s, s.begin():
        for email, role in ROLES.items():
            users[email] = make_user(db, email, is_owner=False).id
            s.add(Membership(user_id=users[email], tenant_id=acme, role=role))
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, acme), Actor("system"))
    return {"acme": acme, "globex": globex, "ctx": ctx, "users": users, "client": client}


def as_user(site, email: str) -> tuple[object, str]:
    client = site["client"]
    client.cookies.clear()
    sign_in(client, email)
    return client, csrf_token(client, f"/tenants/{site['acme']}/signals")


def post(client, url: str, token: str, data: dict | None = None, **kw):
    return client.post(url, data={"csrf_token": token, **(data or {})}, **kw)


def source_ids(site) -> dict[str, int]:
    with site["ctx"].session() as s:
        return {src.name: src.id for src in s.scalars(select(Source))}


def events(site, prefix: str) -> list[AuditEvent]:
    with site["ctx"].session() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type.startswith(prefix))
                              .order_by(AuditEvent.seq)))


def text_of(response) -> str:
    return html.unescape(response.text)


def upload(client, base: str, token: str, source_id: int | str, name: str, *,
           body: bytes | None = None, htmx: bool = True, **fields):
    data = {"csrf_token": token, "source_id": str(source_id), **fields}
    content = body if body is not None else (FIXTURES / name).read_bytes()
    headers = {"HX-Request": "true", "X-CSRF-Token": token} if htmx else {}
    return client.post(f"{base}/signals/imports", data=data, headers=headers,
                       files={"signals_file": (name, content, "application/octet-stream")})


def test_sources_consent_and_upload_end_to_end(site):
    base = f"/tenants/{site['acme']}"
    client, token = as_user(site, "admin@example.com")
    added = post(client, f"{base}/signals/sources", token, {"name": "Ops Jira", "kind": "jira"})
    assert added.status_code == 200 and "Source Ops Jira added" in text_of(added)
    assert post(client, f"{base}/signals/sources", token,
                {"name": "Ops Jira", "kind": "jira"}).status_code == 422
    bad_kind = post(client, f"{base}/signals/sources", token, {"name": "x", "kind": "email"})
    assert bad_kind.status_code == 422 and "The kind must be one of" in text_of(bad_kind)
    jira = source_ids(site)["Ops Jira"]
    # an Admin may not grant: consent is the Owner's
    refused = post(client, f"{base}/signals/sources/{jira}/grant", token)
    assert refused.status_code == 403 and "that needs Owner" in text_of(refused)

    # the Operator imports; without a grant the upload is refused, counted and audited
    client, token = as_user(site, "op@example.com")
    answer = upload(client, base, token, jira, "jira.json")
    assert answer.status_code == 403
    assert ("Source Ops Jira has no grant: an Owner must grant it on the Sources page before "
            "anything is imported from it.") in text_of(answer)
    with site["ctx"].session() as s:
        assert s.get(Source, jira).refused_count == 1
        assert s.scalar(select(func.count()).select_from(Signal)) == 0
    assert [e.event_type for e in events(site, "signals.import")] == [
        SignalEvents.IMPORT_REFUSED]

    # the Owner grants, and switches extraction on and off
    client, token = as_user(site, "owner@example.com")
    granted = post(client, f"{base}/signals/sources/{jira}/grant", token)
    assert granted.status_code == 200 and "Source Ops Jira granted" in text_of(granted)
    page = text_of(client.get(f"{base}/signals"))
    assert re.search(r'data-source="Ops Jira">.*?granted.*?by owner@example.com', page, re.S)
    for state in ("on", "off"):
        changed = post(client, f"{base}/signals/extraction", token, {"extraction": state})
        assert f"Stakeholder extraction is now {state}." in text_of(changed)
    assert post(client, f"{base}/signals/extraction", token,
                {"extraction": "maybe"}).status_code == 422
    assert [e.event_type for e in events(site, "consent.")] == [
        ConsentEvents.SOURCE_GRANTED, ConsentEvents.EXTRACTION_ENABLED,
        ConsentEvents.EXTRACTION_DISABLED]

    # now the upload imports: the htmx answer is the report partial
    client, token = as_user(site, "op@example.com")
    done = upload(client, base, token, jira, "jira.json", team="Ops")
    assert done.status_code == 201, done.text
    report = text_of(done)
    assert "<html" not in report and 'data-state="done"' in report
    assert re.search(r'data-testid="imported">2<', report)
    assert re.search(r'data-testid="rejected">1<', report)
    assert "the field 'summary' is not text" in report
    again = text_of(upload(client, base, token, jira, "jira.json", htmx=False))
    assert "<html" in again and re.search(r'data-testid="duplicates">2<', again)
    with site["ctx"].session() as s:
        first = s.scalars(select(SignalImport).order_by(SignalImport.id)).first()
        assert (first.rows_imported, first.created_by) == (2, "op@example.com")
    detail = client.get(f"{base}/signals/imports/{first.id}")
    assert detail.status_code == 200 and "the field 'summary' is not text" in text_of(detail)
    polled = client.get(f"{base}/signals", headers={"HX-Request": "true"})
    assert polled.status_code == 200 and "<html" not in polled.text
    assert f'data-import="{first.id}" data-state="done"' in polled.text

    # a whole-file failure: 422 with the sentence, nothing written
    failed = upload(client, base, token, jira, "not_json.json")
    assert failed.status_code == 422
    assert "The file is not JSON" in text_of(failed)
    assert upload(client, base, token, jira, "x.json", body=b"").status_code == 422
    assert upload(client, base, token, "", "jira.json").status_code == 422
    assert upload(client, base, token, jira, "jira.json",
                  file_format="xml").status_code == 422
    # without the CSRF token the upload is refused before anything runs
    no_csrf = client.post(f"{base}/signals/imports", data={"source_id": str(jira)},
                          files={"signals_file": ("jira.json", b"{}", "application/json")})
    assert no_csrf.status_code == 403

    # a Viewer sees the page but may not import or manage
    client, token = as_user(site, "viewer@example.com")
    assert client.get(f"{base}/signals").status_code == 200
    assert upload(client, base, token, jira, "jira.json").status_code == 403
    assert post(client, f"{base}/signals/sources/{jira}/delete", token).status_code == 403
    client, token = as_user(site, "approver@example.com")
    assert client.get(f"{base}/signals").status_code == 403

    # the Admin removes the source with what came from it
    client, token = as_user(site, "admin@example.com")
    removed = post(client, f"{base}/signals/sources/{jira}/delete", token)
    assert removed.status_code == 200
    assert "Source Ops Jira removed, with 2 signals, 0 observations and 4 imports" in \
        text_of(removed)
    with site["ctx"].session() as s:
        assert s.scalar(select(func.count()).select_from(Signal)) == 0
    [gone] = events(site, SignalEvents.SOURCE_REMOVED)
    assert gone.details["signals"] == 2 and gone.actor_name == "admin@example.com"


def test_the_upload_size_limit_answers_413(site, services):
    assert site["client"].app.state.signal_upload_max_bytes == \
        services.settings.signal_upload_max_mb * 1024 * 1024 == 200 * 1024 * 1024
    site["client"].app.state.signal_upload_max_bytes = 200  # bytes, for the test
    base = f"/tenants/{site['acme']}"
    client, token = as_user(site, "owner@example.com")
    post(client, f"{base}/signals/sources", token, {"name": "logs", "kind": "logs"})
    logs = source_ids(site)["logs"]
    post(client, f"{base}/signals/sources/{logs}/grant", token)
    big = upload(client, base, token, logs, "logs.jsonl")
    assert big.status_code == 413 and "larger than the limit" in text_of(big)
    with site["ctx"].session() as s:
        assert s.scalar(select(func.count()).select_from(SignalImport)) == 0


def test_lists_follow_the_persona_and_other_tenants_are_404(site):
    base = f"/tenants/{site['acme']}"
    client, token = as_user(site, "owner@example.com")
    for name in ("pay-jira", "hr-jira"):
        post(client, f"{base}/signals/sources", token, {"name": name, "kind": "jira"})
    ids = source_ids(site)
    for source_id in ids.values():
        post(client, f"{base}/signals/sources/{source_id}/grant", token)
        upload(client, base, token, source_id, "jira.csv")
    with site["ctx"].session() as s, s.begin():
        persona = Persona(name="Payments", teams=["*"], source_ids=[ids["pay-jira"]])
        s.add(persona)
        s.flush()
        s.add(PersonaAssignment(user_id=str(site["users"]["op@example.com"]),
                                persona_id=persona.id))
        hr_import = s.scalar(select(SignalImport.id).where(
            SignalImport.source_id == ids["hr-jira"]))

    client, token = as_user(site, "op@example.com")
    page = text_of(client.get(f"{base}/signals"))
    assert 'data-source="pay-jira"' in page and 'data-source="hr-jira"' not in page
    assert "hr-jira" not in page  # neither in the sources nor in the imports
    assert client.get(f"{base}/signals/imports/{hr_import}").status_code == 404
    crafted = upload(client, base, token, ids["hr-jira"], "jira.json")
    assert crafted.status_code == 404

    # another tenant's source and import ids are 404, like missing ones
    client, token = as_user(site, "owner@example.com")
    other = f"/tenants/{site['globex']}"
    assert client.get(f"{other}/signals/imports/{hr_import}").status_code == 404
    for action in ("grant", "withdraw", "delete"):
        assert post(client, f"{base}/signals/sources/999999/{action}", token).status_code \
            == 404
    with site["ctx"].session() as s:
        assert s.scalar(select(func.count()).select_from(Source)) == 2
