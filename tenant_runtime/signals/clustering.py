"""Clustering signals into candidate tasks, with three measures per cluster.

Grouping works on templates (a signal's title redacted, numbers and ids masked), never on the
sealed titles. Two templates are alike when the Jaccard similarity of their word sets is at
least ``SIMILARITY_THRESHOLD`` (0.6): "disk full on host <n>" and "disk full on host <n> var"
share 5 of 6 words (0.83) and group; "deploy failed for service <n>" shares 1 of 9 (0.11) and
does not. The grouping is deterministic, whatever the order rows come in:

    1. distinct templates are ordered: those that already name a cluster first (the
       representative of an earlier run, so keys stay put as data grows), then the most
       frequent, then alphabetically;
    2. in that order, a template joins the first cluster whose representative it is alike
       to, or starts a new cluster as its representative.

A cluster's key is ``sha256(representative)``: clustering again finds the same key and updates
the same task. A cluster of fewer than ``MIN_TASK_SIGNALS`` (3) signals stays a cluster but
does not become a task: two occurrences say too little about a recurring piece of work.

Measures, in the shape ``recommendations/schemas.TaskSignals`` takes, so the recommendation
gate's heuristics read them unchanged:

    recurrence            the cluster's signals over the observed period (first to last
                          signal of the run, at least a day), as occurrences per the smallest
                          period (day, week, month, quarter, year) that covers it, scaled to
                          that period: 6 signals over a 7-day period are 6 a week
    uniformity            the mean similarity of each signal's template to the
                          representative, 0..1
    handler_consistency   of the resolved signals that name a team, the share resolved by the
                          team that resolved most of them, 0..1; unknown when none was
                          resolved

Signals of two or more sources in one cluster are a cross-source confirmation: the task's
``confirmed_by`` lists the sources by name."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, select, text, update
from sqlalchemy.orm import Session

from tenant_runtime import audit
from tenant_runtime.context import Actor, TenantContext
from tenant_runtime.minimization.observations import link_to_tasks
from tenant_runtime.personas.scope import Scope
from tenant_runtime.recommendations.models import Task
from tenant_runtime.recommendations.schemas import Recurrence, TaskSignals
from tenant_runtime.recommendations.service import RecommendationEvents
from tenant_runtime.signals.models import Signal, Source

SIMILARITY_THRESHOLD = 0.6
MIN_TASK_SIGNALS = 3
Period = Literal["day", "week", "month", "quarter", "year"]
PERIOD_DAYS: tuple[tuple[Period, int], ...] = (
    ("day", 1), ("week", 7), ("month", 30), ("quarter", 91), ("year", 365))
CLUSTER_LOCK = 74231  # transaction-scoped advisory lock: one clustering at a time per tenant
_WORD = re.compile(r"\w+")


class ClusteringEvents:
    CLUSTERED = "signals.clustered"


# -- the pure core -------------------------------------------------------------------------


@dataclass(frozen=True)
class SignalPoint:
    """What clustering needs of a signal."""

    id: int
    template: str
    source: str  # the source's name
    team: str
    resolved: bool
    occurred_at: datetime
    cluster_key: str | None = None  # as recorded by the last clustering


def words(template: str) -> frozenset[str]:
    return frozenset(_WORD.findall(template.casefold()))


def similarity(a: str, b: str) -> float:
    """Jaccard similarity of the two templates' word sets (1.0 for two empty ones)."""
    wa, wb = words(a), words(b)
    union = wa | wb
    return len(wa & wb) / len(union) if union else 1.0


def key_of(representative: str) -> str:
    return hashlib.sha256(representative.encode("utf-8")).hexdigest()


def observed_days(points: Iterable[SignalPoint]) -> float:
    times = [p.occurred_at for p in points]
    if not times:
        return 1.0
    return max(1.0, (max(times) - min(times)).total_seconds() / 86400)


def recurrence(count: int, days: float) -> Recurrence:
    """``count`` occurrences over ``days`` as occurrences per the smallest period covering
    them (see the module docstring)."""
    for period, length in PERIOD_DAYS:
        if days <= length:
            return Recurrence(occurrences=round(count * length / days), period=period)
    return Recurrence(occurrences=round(count * 365 / days), period="year")


def _modal(values: Iterable[str]) -> tuple[str, int] | None:
    """The most common value and its count; ties go to the alphabetically first."""
    counts = Counter(values)
    if not counts:
        return None
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))


@dataclass(frozen=True)
class Cluster:
    key: str
    representative: str
    members: tuple[SignalPoint, ...]  # by id
    team: str  # the most common team among its signals ("" when none names one)
    sources: tuple[str, ...]  # sorted names
    recurrence: Recurrence
    uniformity: float
    handler_consistency: float | None

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def becomes_task(self) -> bool:
        return self.size >= MIN_TASK_SIGNALS

    @property
    def confirmed(self) -> bool:
        return len(self.sources) >= 2

    def task_signals(self) -> TaskSignals:
        return TaskSignals(recurrence=self.recurrence, uniformity=round(self.uniformity, 3),
                           handler_consistency=None if self.handler_consistency is None
                           else round(self.handler_consistency, 3))


def measure(representative: str, members: Sequence[SignalPoint], days: float,
            key: str | None = None) -> Cluster:
    """A cluster of ``members`` around ``representative`` with its measures; ``days`` is the
    observed period."""
    ordered = tuple(sorted(members, key=lambda p: p.id))
    team = _modal(p.team for p in ordered if p.team)
    resolving = [p.team for p in ordered if p.resolved and p.team]
    handler = _modal(resolving)
    uniformity = (sum(similarity(p.template, representative) for p in ordered) / len(ordered)
                  if ordered else 0.0)
    return Cluster(key or key_of(representative), representative, ordered,
                   team[0] if team else "", tuple(sorted({p.source for p in ordered})),
                   recurrence(len(ordered), days), uniformity,
                   handler[1] / len(resolving) if handler else None)


def cluster(points: Sequence[SignalPoint], *, known: Iterable[str] = (),
            threshold: float = SIMILARITY_THRESHOLD) -> list[Cluster]:
    """Group ``points`` (see the module docstring); ``known`` are the keys of existing
    clusters, whose representatives lead again. Clusters come largest first."""
    known_keys = frozenset(known)
    by_template: dict[str, list[SignalPoint]] = {}
    for point in points:
        by_template.setdefault(point.template, []).append(point)
    order = sorted(by_template, key=lambda t: (key_of(t) not in known_keys,
                                               -len(by_template[t]), t))
    groups: list[tuple[str, list[SignalPoint]]] = []
    for template in order:
        for representative, members in groups:
            if similarity(template, representative) >= threshold:
                members.extend(by_template[template])
                break
        else:
            groups.append((template, list(by_template[template])))
    days = observed_days(points)
    found = [measure(rep, members, days) for rep, members in groups]
    return sorted(found, key=lambda c: (-c.size, c.representative))


# -- clustering a tenant's signals ---------------------------------------------------------


@dataclass(frozen=True)
class ClusterReport:
    signals: int
    clusters: int
    below_minimum: int  # clusters too small to become a task
    tasks_created: list[int]
    tasks_updated: list[int]
    tasks_unchanged: int
    observations_linked: int


def _points(s: Session, *where: ColumnElement[bool]) -> list[SignalPoint]:
    rows = s.execute(select(Signal.id, Signal.template, Source.name, Signal.team,
                            Signal.resolved_at, Signal.occurred_at, Signal.cluster_key)
                     .join(Source, Source.id == Signal.source_id).where(*where)
                     .order_by(Signal.id))
    return [SignalPoint(i, t, src, team, resolved is not None, at, key)
            for i, t, src, team, resolved, at, key in rows]


def _description(c: Cluster) -> str:
    confirmed = (f" Confirmed by {len(c.sources)} sources: {', '.join(c.sources)}."
                 if c.confirmed else "")
    return (f"Found by clustering {c.size} signals from {', '.join(c.sources)} whose "
            f"titles read like '{c.representative}'.{confirmed}")


def do_cluster(s: Session, ctx: TenantContext, *, actor: Actor) -> ClusterReport:
    """Cluster every signal of the tenant, record each signal's ``cluster_key``, and create or
    update a candidate task (``source="signals"``) per cluster of at least
    ``MIN_TASK_SIGNALS``. Audited as ``signals.clustered`` (counts and ids), each new task as
    ``recommendation.task_created``."""
    s.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": CLUSTER_LOCK})
    points = _points(s)
    tasks = {t.cluster_key: t for t in s.scalars(select(Task).where(
        Task.cluster_key.is_not(None)))}
    clusters = cluster(points, known=[k for k in tasks if k])
    changes = [{"id": p.id, "cluster_key": c.key} for c in clusters for p in c.members
               if p.cluster_key != c.key]
    if changes:  # an ORM bulk UPDATE by primary key: one executemany
        s.execute(update(Signal), changes)
    created: list[int] = []
    updated: list[int] = []
    unchanged = 0
    for c in clusters:
        if not c.becomes_task:
            continue
        signals = c.task_signals().model_dump(exclude_none=True)
        task = tasks.get(c.key)
        if task is None:
            task = Task(title=c.representative[:200], description_sealed=b"pending",
                        team=c.team, tags=[], signals=signals, source="signals",
                        cluster_key=c.key, confirmed_by=list(c.sources),
                        created_by=actor.name)
            s.add(task)
            s.flush()  # the id is the sealed description's row key
            task.description_sealed = ctx.sealer.seal(
                _description(c), table="tasks", column="description_sealed",
                row_key=task.id)
            audit.record(s, RecommendationEvents.TASK_CREATED, actor=actor,
                         target_type="task", target_id=task.id,
                         details={"source": "signals", "tags": [], "signals": sorted(signals),
                                  "cluster_key": c.key, "confirmed_by": list(c.sources)})
            created.append(task.id)
            continue
        new = {"signals": signals, "team": c.team, "confirmed_by": list(c.sources)}
        if all(getattr(task, name) == value for name, value in new.items()):
            unchanged += 1
            continue
        for name, value in new.items():
            setattr(task, name, value)
        updated.append(task.id)
    s.flush()
    linked = link_to_tasks(s)
    report = ClusterReport(len(points), len(clusters),
                           sum(1 for c in clusters if not c.becomes_task), created, updated,
                           unchanged, linked)
    audit.record(s, ClusteringEvents.CLUSTERED, actor=actor, target_type="signals",
                 details={"signals": report.signals, "clusters": report.clusters,
                          "below_minimum": report.below_minimum,
                          "tasks_created": created, "tasks_updated": updated,
                          "tasks_unchanged": unchanged, "signals_moved": len(changes),
                          "observations_linked": linked})
    return report


# -- the clusters a member may see ---------------------------------------------------------


@dataclass(frozen=True)
class ClusterRow:
    cluster: Cluster
    task_id: int | None  # its candidate task, when it became one


def visible_clusters(s: Session, scope: Scope, *, team: str | None = None) -> list[ClusterRow]:
    """The recorded clusters as ``scope`` may see them: only signals of its teams and sources
    are read (in the query), so a cluster shows when one of its signals is in scope, and its
    measures are those of the signals in scope. ``team`` narrows to one team, within scope."""
    where = [Signal.cluster_key.is_not(None), scope.team_filter(Signal.team),
             scope.source_filter(Signal.source_id)]
    if team is not None:
        where.append(Signal.team == team)
    points = _points(s, *where)
    groups: dict[str, list[SignalPoint]] = {}
    for point in points:
        groups.setdefault(point.cluster_key or "", []).append(point)
    days = observed_days(points)
    task_of = dict(s.execute(select(Task.cluster_key, Task.id).where(
        Task.cluster_key.in_(list(groups)), scope.team_filter(Task.team))).all()) \
        if groups else {}
    rows = []
    for key, members in groups.items():
        templates = Counter(p.template for p in members)
        representative = next((t for t in templates if key_of(t) == key), None) or \
            min(templates.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        rows.append(ClusterRow(measure(representative, members, days, key=key),
                               task_of.get(key)))
    return sorted(rows, key=lambda r: (-r.cluster.size, r.cluster.representative))
