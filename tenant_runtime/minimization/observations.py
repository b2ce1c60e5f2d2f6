"""Observations: what extractors learn from a source about a task or a team, kept short.

A summary holds at most 240 characters, and the database itself says so: it is sealed as
UTF-32-LE (four bytes a character, whatever the text), so ``octet_length(summary_sealed)`` is
the character count times four plus the sealing overhead, and a CHECK refuses more (see
``minimization/models.py``). Extractors cut a longer text at a word boundary before sealing it
and record how many characters they dropped.

An extractor works from a signal's *template* (the title redacted, numbers and ids masked),
never from its sealed title and never from the person who handled it:

    cloudwatch      "payments: alarm 'disk usage high on [IP_ADDRESS]' went to OK after 42 min"
    jira            "payments: issue 'reset password for [PERSON_1]' resolved Done in 3 h"
    github_actions  "platform: workflow run 'deploy service-<n>' ended failure after 6 min"
    logs            "platform: log line 'connection refused to <n>' (error)"

Nothing is written unless the tenant's stakeholder-extraction switch is on *and* the source is
granted. Reads for display are scoped: a member sees the observations of the teams and sources
of their personas only (``personas/scope.py``)."""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import TenantContext
from tenant_runtime.minimization.models import (
    SUMMARY_ENCODING,
    SUMMARY_MAX_CHARS,
    MinimizationSettings,
    Observation,
)
from tenant_runtime.models import single_row
from tenant_runtime.personas.scope import Scope
from tenant_runtime.recommendations.models import Task
from tenant_runtime.sealing import TenantSealer
from tenant_runtime.signals.models import Signal, Source

TABLE, COLUMN = "observations", "summary_sealed"
# what a cut summary may not end with: spaces and the separators a sentence continues after
TRAILING = string.whitespace + ",;:.-–—/|([{"
EXTRACTORS = {"cloudwatch": "cloudwatch_alarm", "jira": "jira_issue",
              "github_actions": "github_actions_run", "logs": "log_line"}
LISTING_LIMIT = 100


class ObservationEvents:
    EXTRACTED = "observations.extracted"


# -- the summary: sealing and the 240-character cut ----------------------------------------


def seal_summary(sealer: TenantSealer, text: str, *, row_id: int) -> bytes:
    """The sealed summary of observation ``row_id``. Length is not checked here: the database
    refuses a summary longer than 240 characters (callers cut with ``truncate_summary``)."""
    return sealer.seal(text.encode(SUMMARY_ENCODING), table=TABLE, column=COLUMN,
                       row_key=row_id)


def open_summary(sealer: TenantSealer, sealed: bytes, *, row_id: int) -> str:
    return sealer.open(sealed, table=TABLE, column=COLUMN, row_key=row_id).decode(
        SUMMARY_ENCODING)


def truncate_summary(text: str, limit: int = SUMMARY_MAX_CHARS) -> tuple[str, int]:
    """``text`` cut to at most ``limit`` characters, and how many characters were dropped.

    The cut falls at a word boundary: after the last whole word that fits, with trailing
    spaces and separators (``,;:.-/`` and the like) removed too. Only a first word longer than
    the limit is cut inside itself. A text that fits is returned unchanged."""
    if limit < 1:
        raise ValueError("a summary limit is at least one character")
    if len(text) <= limit:
        return text, 0
    head = text[:limit]
    if not text[limit].isspace():  # the limit falls inside a word: drop that word
        boundary = max((i for i, ch in enumerate(head) if ch.isspace()), default=-1)
        if boundary > 0 and head[:boundary].rstrip(TRAILING):
            head = head[:boundary]
    kept = head.rstrip(TRAILING) or head  # all separators: keep them rather than nothing
    return kept, len(text) - len(kept)


# -- extractors ----------------------------------------------------------------------------


def _duration(start: datetime, end: datetime | None) -> str | None:
    if end is None or end < start:
        return None
    span = end - start
    if span < timedelta(hours=1):
        return f"{max(1, round(span.total_seconds() / 60))} min"
    if span < timedelta(hours=48):
        return f"{round(span.total_seconds() / 3600)} h"
    return f"{round(span.total_seconds() / 86400)} days"


def summarize(kind: str, signal: Signal) -> str:
    """The observation an extractor makes of ``signal`` (a source of ``kind``), before the
    cut: from its template, outcome and timing only."""
    what = f"'{signal.template}'"
    outcome = signal.outcome or ""
    took = _duration(signal.occurred_at, signal.resolved_at)
    if kind == "cloudwatch":
        text = f"alarm {what} went to {outcome or 'an unknown state'}"
        text += f" after {took}" if took else ", not resolved"
    elif kind == "jira":
        if took:
            text = f"issue {what} resolved {outcome or 'without a resolution'} in {took}"
        else:
            text = f"issue {what} open{f' ({outcome})' if outcome else ''}"
    elif kind == "github_actions":
        text = f"workflow run {what} ended {outcome or 'without a conclusion'}"
        text += f" after {took}" if took else ""
    else:
        text = f"log line {what}{f' ({outcome})' if outcome else ''}"
    return f"{signal.team}: {text}" if signal.team else text


def extraction_allowed(s: Session, source: Source) -> bool:
    """The master switch is on and the source is granted: both, or nothing is extracted."""
    return bool(single_row(s, MinimizationSettings).stakeholder_extraction and source.granted)


def do_extract(s: Session, ctx: TenantContext, *, source: Source,
               signals: Sequence[Signal]) -> int:
    """Write one observation per signal of ``source`` (already inserted in this transaction)
    and return how many were written: none unless stakeholder extraction is on and the source
    is granted. Audited as ``observations.extracted`` with counts, never text."""
    if not signals or not extraction_allowed(s, source):
        return 0
    if any(sig.source_id != source.id for sig in signals):
        raise ValueError("do_extract takes the signals of one source: the one it is given")
    s.flush()  # the signals' ids and cluster keys
    extractor = EXTRACTORS.get(source.kind, "log_line")
    keys = {sig.cluster_key for sig in signals if sig.cluster_key}
    task_of = dict(s.execute(select(Task.cluster_key, Task.id).where(
        Task.cluster_key.in_(keys))).all()) if keys else {}
    rows: list[tuple[Observation, str]] = []
    for sig in signals:
        summary, dropped = truncate_summary(summarize(source.kind, sig))
        row = Observation(source_id=source.id, signal_id=sig.id,
                          task_id=task_of.get(sig.cluster_key or ""), team=sig.team,
                          summary_sealed=b"", dropped_chars=dropped, extractor=extractor)
        s.add(row)
        rows.append((row, summary))
    s.flush()  # ids: the sealed summaries' row keys
    for row, summary in rows:
        row.summary_sealed = seal_summary(ctx.sealer, summary, row_id=row.id)
    s.flush()
    cut = [row.dropped_chars for row, _ in rows if row.dropped_chars]
    import_ids = sorted({sig.import_id for sig in signals if sig.import_id is not None})
    audit.record(s, ObservationEvents.EXTRACTED, actor=ctx.actor, target_type="source",
                 target_id=source.id,
                 details={"extractor": extractor, "import_ids": import_ids,
                          "written": len(rows), "truncated": len(cut),
                          "dropped_chars": sum(cut)})
    return len(rows)


def link_to_tasks(s: Session) -> int:
    """Point observations at the candidate task of their signal's cluster (after clustering);
    returns how many changed."""
    result = s.execute(
        update(Observation)
        .where(Observation.signal_id == Signal.id, Signal.cluster_key == Task.cluster_key,
               Observation.task_id.is_distinct_from(Task.id))
        .values(task_id=Task.id)
        .execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# -- reading, for display ------------------------------------------------------------------


@dataclass(frozen=True)
class ObservationView:
    id: int
    team: str
    source: str
    extractor: str
    summary: str
    dropped_chars: int
    task_id: int | None
    created_at: datetime


def list_observations(s: Session, ctx: TenantContext, scope: Scope, *,
                      task_id: int | None = None, team: str | None = None,
                      limit: int = LISTING_LIMIT) -> list[ObservationView]:
    """The newest observations of a task or a team that ``scope`` may see (its teams and its
    sources, filtered in the query), opened for display."""
    query = (select(Observation, Source.name).join(Source, Source.id == Observation.source_id)
             .where(scope.team_filter(Observation.team),
                    scope.source_filter(Observation.source_id)))
    if task_id is not None:
        query = query.where(Observation.task_id == task_id)
    if team is not None:
        query = query.where(Observation.team == team)
    rows = s.execute(query.order_by(Observation.id.desc()).limit(limit))
    return [ObservationView(o.id, o.team, name, o.extractor,
                            open_summary(ctx.sealer, o.summary_sealed, row_id=o.id),
                            o.dropped_chars, o.task_id, o.created_at) for o, name in rows]
