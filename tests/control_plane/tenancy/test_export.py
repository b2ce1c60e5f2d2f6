"""Tenant export: request over HTTP, the real job runner, the zip a Compliance team receives,
signed single-use links, roles, the hourly limit, and tenant isolation."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
import zipfile
from datetime import timedelta
from html import unescape

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import select, update

import workers.handlers.export  # noqa: F401 - registers the export job handler
from control_plane.db import utcnow
from control_plane.jobs import JobKinds
from control_plane.models import Job, Membership, PlatformAuditEvent, Tenant, User
from control_plane.tenancy import export, export_routes
from control_plane.tenancy.events import TenantEvents
from control_plane.tenancy.service import access_tenant
from tenant_runtime.context import Actor
from tenant_runtime.credentials.service import do_add_credential
from tenant_runtime.models import TenantBase
from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user, post_form, sign_in
from tests.locks import wait_for_lock_waiter
from tests.threads import Worker

SECRET = "sk-live-0123456789abcdefSECRETVALUE"
EMAIL = "billing.contact@acme.example"
LINK_RE = re.compile(r'href="(/tenants/\d+/exports/\d+/download\?token=[^"]+)"')


@pytest.fixture
def app_client(client):
    assert any(getattr(r, "path", "") == export_routes.routes[0].path
               for r in client.app.routes)  # the app mounts the export routes
    return client


@pytest.fixture
def tenants(services, db, database_url, primary_server, local_kek):
    """Two provisioned tenants with different Owners; acme holds a provider credential."""
    acme_owner = make_user(db, "owner@acme.example")
    globex_owner = make_user(db, "owner@globex.example")
    acme = create_tenant(services, acme_owner.email, "acme")
    globex = create_tenant(services, globex_owner.email, "globex")
    results = run_pending_jobs(services, database_url)
    assert [r["outcome"] for r in results] == ["succeeded", "succeeded"], results
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(
            s, s.get(Tenant, acme), Actor("user", str(acme_owner.id), acme_owner.email, "Owner"))
    with ctx.session() as ts, ts.begin():
        do_add_credential(ts, ctx, name="primary", provider="openai", secret=SECRET,
                          contact_email=EMAIL)
    return {"acme": acme, "globex": globex, "acme_owner": acme_owner,
            "globex_owner": globex_owner}


def add_member(db, tenant_id: int, email: str, role: str):
    user = make_user(db, email, is_owner=False)
    with db() as s, s.begin():
        s.add(Membership(user_id=user.id, tenant_id=tenant_id, role=role))
    return user


def request_export(client, tenant_id: int):
    return post_form(client, f"/tenants/{tenant_id}/exports", page="/account")


def export_jobs(db, tenant_id: int) -> list[Job]:
    with db() as s:
        return list(s.scalars(select(Job).where(Job.kind == JobKinds.EXPORT_TENANT,
                                                Job.tenant_id == tenant_id).order_by(Job.id)))


def exported(client, services, database_url, db, tenant_id: int) -> int:
    """Request an export over HTTP and run it; returns the job id."""
    before = {j.id for j in export_jobs(db, tenant_id)}
    response = request_export(client, tenant_id)
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/tenants/{tenant_id}"
    (job_id,) = {j.id for j in export_jobs(db, tenant_id)} - before
    run_pending_jobs(services, database_url)
    return job_id


def download_link(client, tenant_id: int, job_id: int) -> str:
    page = client.get(f"/tenants/{tenant_id}/exports/{job_id}")
    assert page.status_code == 200, page.text
    match = LINK_RE.search(page.text)
    assert match, page.text
    return unescape(match.group(1))


def audit_events(db, event_type: str) -> list[PlatformAuditEvent]:
    with db() as s:
        return list(s.scalars(select(PlatformAuditEvent)
                              .where(PlatformAuditEvent.event_type == event_type)))


def test_owner_exports_the_whole_tenant_database(app_client, services, db, database_url,
                                                 tenants, settings):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    tenant_page = client.get(f"/tenants/{acme}/settings")  # the export is on the Settings tab
    assert f'action="/tenants/{acme}/exports"' in tenant_page.text
    assert f'hx-get="/tenants/{acme}/exports"' in tenant_page.text

    job_id = exported(client, services, database_url, db, acme)
    (job,) = export_jobs(db, acme)
    assert job.state == "succeeded", job.last_error
    assert job.progress == job.progress_total == len(TenantBase.metadata.tables)
    name = job.result["file"]
    assert re.fullmatch(rf"tenant-acme-\d{{8}}T\d{{6}}Z-job{job_id}\.zip", name)
    on_disk = settings.home / "exports" / name
    assert on_disk.stat().st_mode & 0o777 == 0o600

    listing = client.get(f"/tenants/{acme}/exports", headers={"HX-Request": "true"})
    assert listing.status_code == 200
    assert f'href="/tenants/{acme}/exports/{job_id}"' in listing.text

    link = download_link(client, acme, job_id)
    response = client.get(link)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["content-disposition"] == f'attachment; filename="{name}"'
    body = response.content
    assert not on_disk.exists()  # handed out once: the decrypted data left the server

    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist()}
    assert manifest["tenant"] == "acme" and manifest["tenant_id"] == acme
    assert manifest["format"] == 1 and manifest["created_at"].endswith("Z")
    assert set(manifest["files"]) == {f"{t}.jsonl" for t in TenantBase.metadata.tables}
    assert set(members) == {*manifest["files"], "manifest.json"}
    for file_name, entry in manifest["files"].items():
        data = members[file_name]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data.splitlines()) == entry["rows"]
    assert job.result["rows"] == sum(e["rows"] for e in manifest["files"].values())

    (credential,) = [json.loads(line) for line in
                     members["provider_credentials.jsonl"].splitlines()]
    assert credential["name"] == "primary" and credential["provider"] == "openai"
    assert credential["contact_email_sealed"] == EMAIL  # pii: decrypted
    assert credential["secret_sealed"] == "[redacted]"  # secret: never decrypted
    assert credential["created_at"].endswith("Z")
    audit_rows = [json.loads(line) for line in members["audit_events.jsonl"].splitlines()]
    assert [r["event_type"] for r in audit_rows] == ["credential.added"]
    for content in [body, *members.values()]:
        assert SECRET.encode() not in content

    # the same link, or a fresh one, no longer works
    again = client.get(link)
    assert again.status_code == 410
    assert "already downloaded" in again.text
    status = client.get(f"/tenants/{acme}/exports/{job_id}")
    assert "Downloaded at" in status.text and not LINK_RE.search(status.text)

    (requested,) = audit_events(db, TenantEvents.EXPORT_REQUESTED)
    (downloaded,) = audit_events(db, TenantEvents.EXPORT_DOWNLOADED)
    assert requested.details == {"job_id": job_id}
    assert downloaded.details["job_id"] == job_id and downloaded.target_id == str(acme)
    assert EMAIL not in json.dumps(downloaded.details)


def test_status_shows_progress_while_the_job_waits(app_client, db, tenants):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    assert request_export(client, acme).status_code == 303
    (job,) = export_jobs(db, acme)
    page = client.get(f"/tenants/{acme}/exports/{job.id}", headers={"HX-Request": "true"})
    assert page.status_code == 200
    assert "<progress" in page.text and 'hx-trigger="every 1s"' in page.text
    assert not LINK_RE.search(page.text)
    early = client.get(f"/tenants/{acme}/exports/{job.id}/download?token=x")
    assert early.status_code == 403  # a forged token is refused before anything else


def test_two_downloads_at_once_hand_the_export_out_once(app_client, services, db, database_url,
                                                      tenants, settings):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    job_id = exported(client, services, database_url, db, acme)
    out_dir = settings.home / "exports"

    def take(s):
        user = s.get(User, tenants["acme_owner"].id)
        access = access_tenant(s, acme, user=user)
        return export.do_take_download(s, access, job_id, nonce="n", acting_user=user,
                                       out_dir=out_dir)

    def second() -> export.ExportDownload:
        with db() as s, s.begin():
            return take(s)

    racer = Worker(second, name="the second download")
    try:
        with db() as s:
            with s.begin():
                first = take(s)  # holds the job's row lock until commit
                first.handle.close()
                racer.start()
                with db() as watcher:  # wait until the racer is blocked on that lock
                    wait_for_lock_waiter(watcher)
    finally:
        outcome = racer.outcome()  # joined (the lock is let go of) on every path
        if isinstance(outcome, export.ExportDownload):
            outcome.handle.close()
    assert isinstance(outcome, export.ExportGone), outcome
    assert len(audit_events(db, TenantEvents.EXPORT_DOWNLOADED)) == 1


def test_expired_and_foreign_links_are_refused(app_client, services, db, database_url,
                                               tenants):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    first = exported(client, services, database_url, db, acme)
    second = exported(client, services, database_url, db, acme)
    link = download_link(client, acme, first)
    token = link.split("token=", 1)[1]

    class IssuedSixMinutesAgo(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 360

    payload = export.DownloadLinks(TEST_SECRET_KEY)._serializer.loads(token)
    stale = URLSafeTimedSerializer(TEST_SECRET_KEY, salt="magistrate.export",
                                   signer=IssuedSixMinutesAgo).dumps(payload)
    expired = client.get(f"/tenants/{acme}/exports/{first}/download?token={stale}")
    assert expired.status_code == 403 and "expired" in expired.text

    forged = URLSafeTimedSerializer("another-key", salt="magistrate.export").dumps(payload)
    assert client.get(f"/tenants/{acme}/exports/{first}/download?token={forged}"
                      ).status_code == 403
    other_job = client.get(f"/tenants/{acme}/exports/{second}/download?token={token}")
    assert other_job.status_code == 403 and "another export" in other_job.text

    # none of the refusals used the export up
    assert client.get(link).status_code == 200
    assert len(audit_events(db, TenantEvents.EXPORT_DOWNLOADED)) == 1


def test_viewer_is_refused_and_compliance_may_export(app_client, services, db, database_url,
                                                     tenants):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    job_id = exported(client, services, database_url, db, acme)
    link = download_link(client, acme, job_id)

    add_member(db, acme, "viewer@acme.example", "Viewer")
    client.cookies.clear()
    sign_in(client, "viewer@acme.example")
    assert request_export(client, acme).status_code == 403
    for path in (f"/tenants/{acme}/exports", f"/tenants/{acme}/exports/{job_id}", link):
        assert client.get(path).status_code == 403, path
    assert "Export" not in client.get(f"/tenants/{acme}").text.split("<main>", 1)[1]

    add_member(db, acme, "compliance@acme.example", "Compliance")
    client.cookies.clear()
    sign_in(client, "compliance@acme.example")
    assert client.get(link).status_code == 200  # the link works for any exporter of the tenant
    assert request_export(client, acme).status_code == 303


def test_fourth_export_within_an_hour_is_rate_limited(app_client, db, tenants):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    for _ in range(3):
        assert request_export(client, acme).status_code == 303
    refused = request_export(client, acme)
    assert refused.status_code == 429
    assert 3500 <= int(refused.headers["retry-after"]) <= 3600
    assert "3 times in the last hour" in refused.text
    assert len(export_jobs(db, acme)) == 3

    # a rolling hour, counted from the jobs table: once the oldest is an hour old, one more
    oldest = export_jobs(db, acme)[0]
    with db() as s, s.begin():
        s.execute(update(Job).where(Job.id == oldest.id)
                  .values(created_at=utcnow() - timedelta(minutes=61)))
    assert request_export(client, acme).status_code == 303
    assert request_export(client, acme).status_code == 429


def test_another_tenants_user_gets_404_everywhere(app_client, services, db, database_url,
                                                  tenants):
    client, acme, globex = app_client, tenants["acme"], tenants["globex"]
    sign_in(client, tenants["acme_owner"].email)
    acme_job = exported(client, services, database_url, db, acme)
    link = download_link(client, acme, acme_job)

    client.cookies.clear()
    sign_in(client, tenants["globex_owner"].email)
    globex_job = exported(client, services, database_url, db, globex)
    assert request_export(client, acme).status_code == 404
    for path in (f"/tenants/{acme}/exports", f"/tenants/{acme}/exports/{acme_job}", link,
                 f"/tenants/{globex}/exports/{acme_job}",
                 f"/tenants/{globex}/exports/{acme_job}/download?{link.split('?')[1]}"):
        assert client.get(path).status_code == 404, path

    # and acme's Owner cannot reach globex's export through acme's address
    client.cookies.clear()
    sign_in(client, tenants["acme_owner"].email)
    assert client.get(f"/tenants/{acme}/exports/{globex_job}").status_code == 404
    assert client.get(f"/tenants/{globex}/exports/{globex_job}").status_code == 404
    assert client.get(link).status_code == 200  # acme's own export was never used up


def test_unavailable_tenant_key_fails_the_job_cleanly(app_client, services, db, database_url,
                                                      tenants, settings, local_kek):
    client, acme = app_client, tenants["acme"]
    sign_in(client, tenants["acme_owner"].email)
    key_file = settings.home / "keys" / f"{local_kek}.key"
    key_file.rename(key_file.with_suffix(".revoked"))  # the customer revokes the KEK
    job_id = exported(client, services, database_url, db, acme)
    (job,) = export_jobs(db, acme)
    assert job.state == "failed" and job.attempts == 1
    assert job.last_error.startswith("Tenant key unavailable")
    assert list((settings.home / "exports").glob("*")) == []
    status = client.get(f"/tenants/{acme}/exports/{job_id}")
    assert "The export failed: Tenant key unavailable" in unescape(status.text)
    assert client.get(f"/tenants/{acme}/exports/{job_id}/download?token=x").status_code == 403
