"""Jira issues, from Jira's JSON search export (``/rest/api/2|3/search``)::

    {"issues": [{"key": "OPS-12", "fields": {"summary": "...", "created": "...",
      "resolutiondate": "...", "resolution": {"name": "Done"}, "status": {"name": "Closed"},
      "assignee": {"accountId": "...", "emailAddress": "...", "displayName": "..."},
      "components": [{"name": "Payments"}]}}]}

or Jira's CSV export, with the columns Summary, Issue key, Created and, optionally, Resolved,
Resolution, Status, Assignee Id or Assignee, Component/s (the first non-empty one is used).

A signal: external id the issue key; title the summary; occurred at its creation, resolved at its
resolution date; outcome the resolution (else the status); team the first component (else the
import's default team); person the assignee (account id, else e-mail, else display name),
pseudonymized when stored."""

from __future__ import annotations

from typing import Any

from tenant_runtime.signals.importers.base import (
    EXTERNAL_ID_MAX_CHARS,
    OUTCOME_MAX_CHARS,
    PERSON_MAX_CHARS,
    TEAM_MAX_CHARS,
    TITLE_MAX_CHARS,
    Fields,
    Row,
    RowRejected,
)

KIND = "jira"
LABEL = "a Jira issues export (JSON search results or CSV)"
JSON_KEY = "issues"
CSV_COLUMNS = (("Summary",), ("Issue key", "Key"), ("Created",))


def _limited(value: str | None, field: str, limit: int) -> str | None:
    if value is not None and len(value) > limit:
        raise RowRejected(f"the field '{field}' is longer than {limit:,} characters")
    return value


def row_of(record: Any) -> Row:
    if not isinstance(record, dict):
        raise RowRejected("the issue is not an object")
    top = Fields(record)
    f = top.obj("fields") or top  # the JSON export nests the fields; CSV rows are flat
    key = top.must_text("key", "Issue key", "IssueKey", max_chars=EXTERNAL_ID_MAX_CHARS,
                        missing="the issue has no key")
    title = f.must_text("summary", max_chars=TITLE_MAX_CHARS, numbers=False,
                    missing="the issue has no summary")
    created = f.must_time("created", missing="the issue has no creation date")
    resolved = f.time("resolutiondate", "Resolved", "resolved")
    outcome = f.name_of("resolution") or f.name_of("status")
    team = f.name_of("components", "Component/s", "component")
    assignee = f.raw("assignee")
    if isinstance(assignee, dict):
        person = Fields(assignee).text("accountId", "emailAddress", "name", "displayName",
                                       max_chars=PERSON_MAX_CHARS)
    else:
        person = f.text("Assignee Id", "assigneeid", "assignee", max_chars=PERSON_MAX_CHARS)
    return Row(external_id=key, title=title, occurred_at=created, resolved_at=resolved,
               outcome=_limited(outcome, "resolution", OUTCOME_MAX_CHARS),
               team=_limited(team, "components", TEAM_MAX_CHARS), person=person)
