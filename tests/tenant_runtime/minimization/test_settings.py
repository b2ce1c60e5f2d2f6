"""Minimization settings: an Owner raises k and changes retention (audited, and the teams page
follows the new k at once); a k below 3, or a retention out of 1..3660 days, is a 422 with a
sentence and changes nothing; the database itself refuses a k below 3; other roles get 403."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from tenant_runtime.minimization.models import MinimizationSettings
from tenant_runtime.minimization.service import MinimizationEvents
from tenant_runtime.models import AuditEvent
from tests.factories import csrf_token, sign_in
from tests.tenant_runtime.minimization.test_aggregates import page_rows
from tests.tenant_runtime.personas.conftest import tenancy_env  # noqa: F401


def settings_row(env) -> tuple[int, int]:
    with env.ctx.session() as s:
        row = s.get(MinimizationSettings, 1)
        return (row.k_anonymity, row.retention_days) if row else (3, 396)


def events(env) -> list[AuditEvent]:
    with env.ctx.session() as s:
        return list(s.scalars(select(AuditEvent).where(
            AuditEvent.event_type == MinimizationEvents.SETTINGS_CHANGED)
            .order_by(AuditEvent.seq)))


def test_an_owner_raises_k_and_changes_retention_and_k_below_3_is_refused(client,
                                                                          tenancy_env):  # noqa: F811 - the fixture imported above
    env = tenancy_env
    env.source("jira-pay")
    for i in range(4):
        env.signal(team="payments", person=f"pay{i}", source="jira-pay")
    url = f"/tenants/{env.tenant_id}/teams/settings"
    sign_in(client, "owner@example.com")
    token = csrf_token(client, f"/tenants/{env.tenant_id}/teams")

    for k, days, sentence in (("2", "396", "k-anonymity must be a whole number from 3"),
                              ("abc", "396", "k-anonymity must be a whole number from 3"),
                              ("3", "0", "Retention must be a whole number of days"),
                              ("3", "4000", "Retention must be a whole number of days")):
        refused = client.post(url, data={"csrf_token": token, "k_anonymity": k,
                                         "retention_days": days})
        assert refused.status_code == 422 and sentence in refused.text, (k, days)
    assert settings_row(env) == (3, 396) and events(env) == []

    saved = client.post(url, data={"csrf_token": token, "k_anonymity": "5",
                                   "retention_days": "90"})
    assert saved.status_code == 200 and "Minimization settings saved." in saved.text
    assert settings_row(env) == (5, 90)
    # the group of 4 is now below k
    assert page_rows(saved.text) == {"payments": "suppressed"} and "fewer than 5" in saved.text
    [event] = events(env)
    assert event.details == {"changed": ["k_anonymity", "retention_days"],
                             "k_anonymity": {"from": 3, "to": 5},
                             "retention_days": {"from": 396, "to": 90}}
    again = client.post(url, data={"csrf_token": token, "k_anonymity": "5",
                                   "retention_days": "90"})
    assert "Nothing changed." in again.text and len(events(env)) == 1

    # the database itself refuses a k below 3, whatever the code does
    with env.ctx.session() as s, pytest.raises(IntegrityError):
        s.execute(text("UPDATE minimization_settings SET k_anonymity = 2"))

    # Admins and Operators may see aggregates but not change the settings
    sign_in(client, "admin@example.com")
    token = csrf_token(client, f"/tenants/{env.tenant_id}/teams")
    assert client.post(url, data={"csrf_token": token, "k_anonymity": "3",
                                  "retention_days": "396"}).status_code == 403
    assert settings_row(env) == (5, 90)
