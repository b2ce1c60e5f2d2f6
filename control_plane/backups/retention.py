"""Retention: of one tenant's backups (or the control plane's), keep the newest ``daily``
(default 30) and, older than those, the first backup of each of the newest ``monthly``
(default 12) calendar months; prune the rest (objects, manifests, records with their wrapped
keys), each pruning audited."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from control_plane import audit
from control_plane.backups.destinations import Destination, scope_of
from control_plane.backups.events import BackupEvents
from control_plane.backups.exceptions import BackupRefused
from control_plane.models import Backup

log = logging.getLogger("magistrate.backups")

DAILY = 30
MONTHLY = 12


def to_prune(created: Sequence[tuple[str, datetime]], *, daily: int = DAILY,
             monthly: int = MONTHLY) -> list[str]:
    """The ids to prune of ``(id, created_at)`` pairs (any order)."""
    ordered = sorted(created, key=lambda c: c[1], reverse=True)
    keep = {bid for bid, _ in ordered[:daily]}
    first_of_month: dict[tuple[int, int], tuple[str, datetime]] = {}
    for bid, at in ordered[daily:]:
        month = (at.year, at.month)
        if month not in first_of_month or at < first_of_month[month][1]:
            first_of_month[month] = (bid, at)
    for month in sorted(first_of_month, reverse=True)[:monthly]:
        keep.add(first_of_month[month][0])
    return [bid for bid, _ in ordered if bid not in keep]


def prune(session_factory: sessionmaker[Session], destination_for: Callable[[str], Destination],
          tenant_id: int | None, *, actor: audit.Actor, daily: int = DAILY,
          monthly: int = MONTHLY) -> list[str]:
    """Prune the backups of ``tenant_id`` (None: the control plane) beyond retention; returns
    the ids pruned. One the destination refuses to delete (object lock) stays, recorded, for
    the next pruning."""
    with session_factory() as s:
        rows = s.execute(select(Backup.id, Backup.created_at, Backup.destination)
                         .where(Backup.tenant_id.is_(None) if tenant_id is None
                                else Backup.tenant_id == tenant_id)).all()
    where = {r.id: r.destination for r in rows}
    pruned = to_prune([(r.id, r.created_at) for r in rows], daily=daily, monthly=monthly)
    done: list[str] = []
    for backup_id in pruned:
        try:
            destination_for(where[backup_id]).delete(scope_of(tenant_id), backup_id)
        except BackupRefused as exc:  # e.g. under object lock still: the next pruning retries
            log.warning("backup %s not pruned: %s", backup_id, exc.message)
            continue
        done.append(backup_id)
        with session_factory() as s, s.begin():
            row = s.get(Backup, backup_id)
            if row is not None:
                s.delete(row)
                audit.record(s, BackupEvents.PRUNED, actor=actor,
                             target_type="tenant" if tenant_id else "control_plane",
                             target_id=tenant_id or "control", details={
                                 "backup_id": backup_id, "destination": where[backup_id]})
    return done


@dataclass(frozen=True)
class ObjectsDestroyed:
    deleted: int
    kept: int  # refused by the store (object lock): unreadable anyway, their keys are gone


def destroy_objects(destination_for: Callable[[str], Destination] | None, tenant_id: int,
                    stored: list[tuple[str, str]]) -> ObjectsDestroyed:
    """Delete the objects and manifests of a deleted tenant's backups (``stored``: id and
    recorded destination). A store that refuses (object-lock retention) keeps ciphertext whose
    data key is destroyed with the tenant; it is counted, not retried."""
    if destination_for is None:
        return ObjectsDestroyed(0, len(stored))
    deleted = kept = 0
    for backup_id, where in stored:
        try:
            destination_for(where).delete(scope_of(tenant_id), backup_id)
        except BackupRefused as exc:
            log.warning("backup %s of deleted tenant %s kept by its store: %s", backup_id,
                        tenant_id, exc.message)
            kept += 1
            continue
        deleted += 1
    return ObjectsDestroyed(deleted, kept)
