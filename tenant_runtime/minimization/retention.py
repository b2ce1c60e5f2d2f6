"""Retention of what minimization keeps: observations and signals older than the tenant's
``MinimizationSettings.retention_days`` (default 396 days, 13 months) are deleted by ``sweep``,
which the worker runs every hour for every active tenant (workers/checkpoints.py).

- Signals go by ``occurred_at`` (when the alarm fired or the issue was opened, not when it was
  imported), observations by ``created_at``. An observation made from a signal that goes, goes
  with it, and is counted with the observations (the foreign key would cascade anyway; deleting
  it first keeps the count exact).
- A ``signal_imports`` row older than the cut-off that no longer has any signal is removed too:
  its list of rejected rows describes a file that is past retention.
- The sealed arguments of an MCP tool call kept on an approval request for its approvers
  (``approval_requests.arguments_sealed``) are erased once the request is older than the
  cut-off (by ``created_at``); the request itself, its decisions and its audit events stay, as
  the record of who approved what (the arguments' digest is in the payload).
- Deletes (and the erasing UPDATE) run in batches of ``BATCH`` rows, at most ``MAX_BATCHES``
  per table in one run, in the caller's transaction together with the run's audit event; what
  remains (``more``) is left to the next run, so a large backlog never makes one long
  transaction.
- The audit event ``minimization.retention_swept`` (counts and cut-off) and the log line are
  written only when something was removed: an hourly run that finds nothing would otherwise add
  8,760 events a year to each tenant's chain that say nothing.
- The customer's key must be usable: while it is revoked the platform leaves the tenant's data
  as it is (``TenantKeyUnavailable`` before anything is touched), like every other tenant job.
- Two workers sweeping one tenant at once: the second finds the sweep lock taken and does
  nothing (``skipped``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Delete, Update, delete, exists, or_, select, text, update
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.approvals.models import ApprovalRequest
from tenant_runtime.context import TenantContext
from tenant_runtime.minimization.models import (
    DEFAULT_RETENTION_DAYS,
    MinimizationSettings,
    Observation,
)
from tenant_runtime.models import single_row
from tenant_runtime.signals.models import Signal, SignalImport

log = logging.getLogger("magistrate.minimization")

BATCH = 5_000
MAX_BATCHES = 20  # per table and run: at most 100,000 rows of each, the rest next run
SWEEP_LOCK = 74211  # transaction-scoped advisory lock: one sweep of a tenant at a time


class RetentionEvents:
    SWEPT = "minimization.retention_swept"


@dataclass(frozen=True)
class SweepResult:
    cutoff: datetime
    retention_days: int
    observations: int = 0
    signals: int = 0
    signal_imports: int = 0
    approval_arguments: int = 0  # approval requests whose sealed arguments were erased
    more: bool = False  # a table still had rows past the cut-off when the run stopped
    skipped: bool = False  # another sweep of this tenant was running

    @property
    def removed(self) -> int:
        return self.observations + self.signals + self.signal_imports + self.approval_arguments

    def as_details(self) -> dict[str, Any]:
        return {"cutoff": self.cutoff.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "retention_days": self.retention_days, "observations": self.observations,
                "signals": self.signals, "signal_imports": self.signal_imports,
                "approval_arguments": self.approval_arguments, "more": self.more}


def retention_days(s: Session) -> int:
    row = single_row(s, MinimizationSettings)
    return max(1, int(row.retention_days or DEFAULT_RETENTION_DAYS))


def _delete_in_batches(s: Session, make: Any) -> tuple[int, bool]:
    """Run ``make()`` (a DELETE, or an erasing UPDATE, of at most BATCH rows) until it touches
    fewer than BATCH or MAX_BATCHES ran. Returns (rows touched, whether rows may remain)."""
    removed = 0
    for _ in range(MAX_BATCHES):
        statement: Delete | Update = make()
        result = s.execute(statement.execution_options(synchronize_session=False))
        count = int(getattr(result, "rowcount", 0) or 0)
        removed += count
        if count < BATCH:
            return removed, False
    return removed, True


def sweep(s: Session, ctx: TenantContext, *, now: datetime | None = None) -> SweepResult:
    """Delete observations, signals and emptied imports past the retention, in the caller's
    transaction, with one audit event when anything went (see the module docstring)."""
    ctx.sealer.ensure_available()  # fail closed: a revoked customer key stops everything
    days = retention_days(s)
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    if not s.scalar(text(f"SELECT pg_try_advisory_xact_lock({SWEEP_LOCK})")):
        return SweepResult(cutoff, days, skipped=True)

    old_signals = select(Signal.id).where(Signal.occurred_at < cutoff)

    def observations() -> Delete:
        ids = (select(Observation.id)
               .where(or_(Observation.created_at < cutoff,
                          Observation.signal_id.in_(old_signals)))
               .limit(BATCH))
        return delete(Observation).where(Observation.id.in_(ids))

    def signals() -> Delete:
        return delete(Signal).where(Signal.id.in_(old_signals.limit(BATCH)))

    def imports() -> Delete:
        emptied = (select(SignalImport.id)
                   .where(SignalImport.created_at < cutoff,
                          ~exists().where(Signal.import_id == SignalImport.id))
                   .limit(BATCH))
        return delete(SignalImport).where(SignalImport.id.in_(emptied))

    def approval_arguments() -> Update:
        kept = (select(ApprovalRequest.id)
                .where(ApprovalRequest.created_at < cutoff,
                       ApprovalRequest.arguments_sealed.is_not(None))
                .limit(BATCH))
        return update(ApprovalRequest).where(ApprovalRequest.id.in_(kept)).values(
            arguments_sealed=None)

    n_observations, more_observations = _delete_in_batches(s, observations)
    n_signals, more_signals = _delete_in_batches(s, signals)
    n_imports, more_imports = _delete_in_batches(s, imports)
    n_arguments, more_arguments = _delete_in_batches(s, approval_arguments)
    result = SweepResult(cutoff, days, n_observations, n_signals, n_imports, n_arguments,
                         more=more_observations or more_signals or more_imports
                         or more_arguments)
    if result.removed:
        audit.record(s, RetentionEvents.SWEPT, actor=ctx.actor, target_type="retention",
                     details=result.as_details())
        log.info("retention of tenant %d removed observations=%d signals=%d "
                 "signal_imports=%d approval_arguments=%d older than %s (%d days)%s",
                 ctx.tenant_id, n_observations, n_signals, n_imports, n_arguments,
                 result.as_details()["cutoff"], days,
                 "; more remain for the next run" if result.more else "")
    return result
