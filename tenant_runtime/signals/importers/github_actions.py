"""GitHub Actions workflow runs, as ``gh api repos/OWNER/REPO/actions/runs`` prints them (one
document, or several with ``--paginate``)::

    {"total_count": 2, "workflow_runs": [{"id": 123, "name": "Deploy",
      "display_title": "...", "status": "completed", "conclusion": "failure",
      "created_at": "...", "run_started_at": "...", "updated_at": "...",
      "actor": {"login": "octocat"}, "repository": {"full_name": "acme/shop"}}]}

or a CSV with the columns id, name (or workflow_name), created_at and, optionally,
display_title, status, conclusion, run_started_at, updated_at, actor (a login), repository (a
full name).

A signal: external id the run id; title the workflow's name (else the run's display title,
which is often a commit message); occurred when the run started (else was created); resolved at
its last update once completed; outcome the conclusion (else the status); team the repository
(else the import's default team); person the actor (else the triggering actor), pseudonymized
when stored."""

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

KIND = "github_actions"
LABEL = "a GitHub Actions workflow runs export (gh api repos/OWNER/REPO/actions/runs)"
JSON_KEY = "workflow_runs"
CSV_COLUMNS = (("id", "run_id"), ("name", "workflow_name", "display_title"), ("created_at",))


def _login(f: Fields, *names: str) -> str | None:
    for name in names:
        value = f.raw(name)
        if isinstance(value, dict):
            login = Fields(value).text("login", "email", max_chars=PERSON_MAX_CHARS)
        else:
            login = f.text(name, max_chars=PERSON_MAX_CHARS)
        if login:
            return login
    return None


def row_of(record: Any) -> Row:
    if not isinstance(record, dict):
        raise RowRejected("the run is not an object")
    f = Fields(record)
    run_id = f.must_text("id", "run_id", max_chars=EXTERNAL_ID_MAX_CHARS,
                         missing="the run has no id")
    title = f.must_text("name", "workflow_name", "display_title", max_chars=TITLE_MAX_CHARS,
                        numbers=False, missing="the run has no workflow name")
    occurred = f.time("run_started_at") or f.must_time(
        "created_at", missing="the run has no created_at")
    status = f.text("status", max_chars=OUTCOME_MAX_CHARS)
    conclusion = f.text("conclusion", max_chars=OUTCOME_MAX_CHARS)
    done = status == "completed" or (status is None and conclusion is not None)
    repository = f.raw("repository")
    if isinstance(repository, dict):
        team = Fields(repository).text("full_name", "name", max_chars=TEAM_MAX_CHARS)
    else:
        team = f.text("repository", "repository_full_name", "repo", max_chars=TEAM_MAX_CHARS)
    return Row(external_id=run_id, title=title, occurred_at=occurred,
               resolved_at=f.time("updated_at", "completed_at") if done else None,
               outcome=conclusion or status, team=team,
               person=_login(f, "actor", "triggering_actor"))
