"""Which tenant signed each checkpoint of a chain that was restored as another tenant.

A checkpoint signs ``tenant_id | seq | chain_hash | time`` (tenant_runtime/checkpoints.py), so
the checkpoints a tenant's chain carries from a backup restored as a new tenant (``magistrate
restore tenant SLUG --backup ID --as NEW``) were signed for the source tenant's id. The copy's
chain continues from the restored head with ``tenant.restored_from``, naming the source tenant,
and every checkpoint below that event's ``seq`` is verified for the tenant it names (for a
copy of a copy, the nearest such event above the checkpoint). The lineage is part of the chain
it explains, so it is as tamper-evident as any event: changing it breaks the links after it.

Retention removes events up to a checkpoint; ``audit.pruned``, recorded above the cut, carries
the lineage of the events it removes (``details.lineage``), so the older checkpoints that stay
still name their signer.

The offline verifier (ops/verify_audit_chain.py) applies the same rule to an export: it must
run with the Python standard library alone, on a compliance team's machine, so it cannot import
this module; it keeps its own copy of ``entries`` and ``signer_of`` (same names), and
tests/ops/test_audit_lineage.py checks that the two agree. The export writes each checkpoint
line's ``tenant_id`` as ``signer_of`` gives it (ops/AUDIT_FORMAT.md, section 3)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.models import AuditEvent

RESTORED_FROM = "tenant.restored_from"  # details: source_tenant_id, source_slug, backup_id, ...
PRUNED = "audit.pruned"  # retention's event (tenant_runtime/audit_retention.py)

Lineage = list[tuple[int, int]]  # (seq of the restoring event, source tenant id), by seq


def entries(seq: int, event_type: str, details: Any) -> Lineage:
    """The restorations the event at ``seq`` records: ``tenant.restored_from`` its own,
    ``audit.pruned`` those it carries for the events retention removed; no other event any."""
    if not isinstance(details, dict):
        return []
    if event_type == RESTORED_FROM:
        return [(int(seq), int(details["source_tenant_id"]))]
    if event_type == PRUNED:
        return [(int(x["seq"]), int(x["source_tenant_id"])) for x in details.get("lineage") or ()]
    return []


def lineage(s: Session) -> Lineage:
    """The restorations this chain records, oldest first, including those carried by
    ``audit.pruned`` for events retention removed."""
    found: set[tuple[int, int]] = set()
    for seq, event_type, details in s.execute(
            select(AuditEvent.seq, AuditEvent.event_type, AuditEvent.details)
            .where(AuditEvent.event_type.in_((RESTORED_FROM, PRUNED)))):
        found.update(entries(seq, event_type, details))
    return sorted(found)


def signer_of(restorations: Lineage, seq: int, tenant_id: int) -> int:
    """The tenant id a checkpoint at ``seq`` was signed for."""
    return next((source for at, source in restorations if at > seq), tenant_id)


def carried(restorations: Lineage, upto: int) -> list[dict[str, Any]]:
    """What ``audit.pruned`` records of the restorations at or below the cut ``upto``."""
    return [{"seq": at, "source_tenant_id": source} for at, source in restorations
            if at <= upto]
