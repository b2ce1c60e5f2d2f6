"""The tenant's audit timeline: filters, keyset pagination (each event seen once across pages),
htmx partials, clear errors for bad filters, and roles."""

from __future__ import annotations

import re

from control_plane.models import Tenant
from tenant_runtime import audit
from tenant_runtime.context import Actor
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user, sign_in

SEQ_RE = re.compile(r'<tr class="audit-row">\s*<td>(\d+)</td>')
OLDER_RE = re.compile(r'href="(\?[^"]*before_seq=\d+)"')


def test_timeline_pages_and_filters(client, services, db, database_url, primary_server,
                                    local_kek):
    owner = make_user(db)
    viewer = make_user(db, "viewer@example.com", is_owner=False)
    tenant_id = create_tenant(services, owner.email, "logged")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                  Actor("system"))
    with ctx.session() as s, s.begin():
        for i in range(120):
            audit.record(s, "test.even" if i % 2 == 0 else "test.odd",
                         actor=Actor("user", "7", "ops@example.com" if i % 3 == 0 else "bot"),
                         details={"i": i})
    sign_in(client, owner.email)
    url = f"/tenants/{tenant_id}/audit"
    seen: list[int] = []
    page = client.get(url)
    assert page.status_code == 200
    while True:
        seen += [int(x) for x in SEQ_RE.findall(page.text)]
        older = OLDER_RE.search(page.text)
        if not older:
            break
        page = client.get(url + older.group(1).replace("&amp;", "&"),
                          headers={"HX-Request": "true"})
        assert "<html" not in page.text
    assert seen == list(range(120, 0, -1))

    evens = client.get(url, params={"event_type": "test.even"}).text
    assert [int(x) for x in SEQ_RE.findall(evens)] == list(range(119, 19, -2))  # page 1
    by_actor = client.get(url, params={"actor": "ops@example.com"}).text
    assert len(SEQ_RE.findall(by_actor)) == 40
    nothing = client.get(url, params={"since": "2999-01-01"}).text
    assert "No events match." in nothing
    bad = client.get(url, params={"since": "yesterday"})
    assert bad.status_code == 422 and "must be a date" in bad.text
    assert client.get(url, params={"sort": "x"}).status_code == 422
    assert client.get(url, params={"before_seq": "-1"}).status_code == 422

    from tests.factories import post_form

    post_form(client, f"/tenants/{tenant_id}/members", {"email": viewer.email,
                                                        "role": "Viewer"},
              page=f"/tenants/{tenant_id}")
    client.cookies.clear()
    sign_in(client, viewer.email)
    refused = client.get(url)
    assert refused.status_code == 403 and "Compliance" in refused.text


def test_verify_now_reports_ok_then_names_the_first_bad_row(client, services, db, database_url,
                                                            primary_server, local_kek):
    import psycopg

    from tenant_runtime.checkpoints import make_checkpoint
    from tests.factories import post_form

    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "verified")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        tenant = s.get(Tenant, tenant_id)
        ctx = services.tenant_connections.context(s, tenant, Actor("system"))
        owner_url = services.tenant_connections.owner_url(tenant)
    with ctx.session() as s, s.begin():
        for i in range(30):
            audit.record(s, "test.event", actor=Actor("system"), details={"i": i})
        assert make_checkpoint(s, ctx, force=True) is not None
    sign_in(client, owner.email)
    page = f"/tenants/{tenant_id}/audit"
    assert post_form(client, page + "/verify", page=page).status_code == 303
    run_pending_jobs(services, database_url)
    status = client.get(page + "/verification")
    assert "OK, 31 rows" in status.text  # 30 events and the checkpoint key's creation

    with psycopg.connect(owner_url) as conn:  # a superuser-level rewrite of one row
        conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        conn.execute("""UPDATE audit_events SET details = '{"i": 999}' WHERE seq = 12""")
        conn.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
        conn.commit()
    post_form(client, page + "/verify", page=page)
    run_pending_jobs(services, database_url)
    failed = client.get(page + "/verification")
    assert "Verification failed at seq 12: content changed" in failed.text


def test_oldest_first_pages_forward_and_the_csv_is_the_filtered_view(
        client, services, db, database_url, primary_server, local_kek):
    import csv
    import io

    from tenant_runtime.audit_views.service import CSV_HEADER

    owner = make_user(db)
    tenant_id = create_tenant(services, owner.email, "sorted")
    run_pending_jobs(services, database_url)
    with services.session_factory() as s:
        ctx = services.tenant_connections.context(s, s.get(Tenant, tenant_id),
                                                  Actor("system"))
    with ctx.session() as s, s.begin():
        for i in range(70):
            audit.record(s, "test.even" if i % 2 == 0 else "test.odd",
                         actor=Actor("user", "7", "ops@example.com"),
                         details={"i": i, "note": "=1+1" if i == 0 else "plain"})
    sign_in(client, owner.email)
    url = f"/tenants/{tenant_id}/audit"
    seen: list[int] = []
    page = client.get(url, params={"sort": "oldest", "event_type": "test.even"})
    newer_re = re.compile(r'href="(\?[^"]*after_seq=\d+)"')
    while True:
        seen += [int(x) for x in SEQ_RE.findall(page.text)]
        newer = newer_re.search(page.text)
        if not newer:
            break
        assert "Newer events" in page.text
        page = client.get(url + newer.group(1).replace("&amp;", "&"),
                          headers={"HX-Request": "true"})
    assert seen == list(range(1, 71, 2))  # every even event once, oldest first
    assert 'data-testid="audit-csv"' in client.get(url, params={"actor": "ops@example.com"}).text
    assert client.get(url, params={"after_seq": "x"}).status_code == 422

    download = client.get(url + "/timeline.csv", params={"event_type": "test.even",
                                                         "sort": "oldest"})
    assert download.status_code == 200 and download.headers["content-type"].startswith(
        "text/csv")
    table = list(csv.reader(io.StringIO(download.text)))
    assert table[0] == list(CSV_HEADER)
    assert [int(r[0]) for r in table[1:]] == list(range(1, 71, 2))
    assert table[1][8].startswith("{")  # a JSON object, not a formula
    assert client.get(url + "/timeline.csv", params={"sort": "x"}).status_code == 422
