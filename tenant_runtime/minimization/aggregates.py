"""Team aggregates over signals, k-anonymous: per team, in a period and optionally from one
source, the number of signals, the number of distinct people (``Signal.person_ref``), the median
time to resolve and the share resolved.

The arithmetic is a pure function, ``team_aggregates(facts, query, k=..., now=...)``, over plain
rows (``SignalFact``); ``load_facts`` is the one query, and it applies the caller's ``Scope``
(teams and sources) on the server, so what is out of scope never enters the computation.

Suppression (a suppressed row shows no number at all, only "fewer than k"):

- **Small groups.** A team whose signals in the view come from fewer than ``k`` distinct people
  is suppressed. Signals without a person count as signals, never as people: a team whose
  signals name no one is suppressed too (it is not a group of k people).
- **Differencing.** The views a member can ask for are fixed: a period from ``PERIODS`` (nested:
  all ⊇ 365 ⊇ 90 ⊇ 30 ⊇ 7 days) times "every source" or one source. A view ``V`` of a team is
  also suppressed when some broader view ``W`` (a period that holds ``V``'s, and ``V``'s source
  or every source) sets apart between 1 and k−1 people: ``W``'s people not in ``V``. So two
  nested views that are both shown always differ by no one or by at least k people, and
  "team total minus filtered" cannot single out fewer than k. The unfiltered view (every
  source, every period) is the broadest and is never suppressed for this reason. (The
  narrower view is the one suppressed; a difference over three or more views at once is not
  checked.)
- **The total row** is the total of the teams *shown*: a suppressed team is left out of it, so
  "total minus the shown teams" is always nothing and cannot reveal a suppressed team. It is
  absent when no team is shown.

The groups are always measured within the caller's scope: the broader views of the
differencing rule are views the same member could ask for."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.minimization.models import K_ANONYMITY_FLOOR
from tenant_runtime.personas.scope import Scope
from tenant_runtime.signals.models import Signal, Source

# the periods a member may choose, broadest first; None: every retained signal
PERIODS: dict[str, int | None] = {"all": None, "365d": 365, "90d": 90, "30d": 30, "7d": 7}
PERIOD_LABELS = {"all": "all retained signals", "365d": "the last 365 days",
                 "90d": "the last 90 days", "30d": "the last 30 days", "7d": "the last 7 days"}
SMALL_GROUP = "small_group"  # fewer than k people in the view
DIFFERENCE = "difference"  # a broader view sets 1 to k-1 people apart


@dataclass(frozen=True)
class SignalFact:
    """What aggregates need of one signal, and nothing more."""

    team: str
    person_ref: str | None
    source_id: int
    occurred_at: datetime
    resolved_at: datetime | None


@dataclass(frozen=True)
class AggregateQuery:
    period: str = "all"  # a key of PERIODS
    source_id: int | None = None  # None: every source
    team: str | None = None  # None: every team in scope

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise ValueError(f"unknown period {self.period!r}")


@dataclass(frozen=True)
class TeamAggregate:
    """One row. When ``suppressed`` every number is None (``reason`` says which rule, for
    tests and logs; the page shows the same "fewer than k" for both, which tells nothing)."""

    team: str
    suppressed: bool
    reason: str | None = None
    signals: int | None = None
    people: int | None = None
    median_resolve_seconds: float | None = None
    share_resolved: float | None = None


@dataclass(frozen=True)
class AggregateReport:
    k: int
    query: AggregateQuery
    rows: list[TeamAggregate]
    total: TeamAggregate | None  # the teams shown, together; None when no team is shown

    @property
    def shown(self) -> list[TeamAggregate]:
        return [r for r in self.rows if not r.suppressed]


def _cutoff(period: str, now: datetime) -> datetime | None:
    days = PERIODS[period]
    return None if days is None else now - timedelta(days=days)


def _in_view(fact: SignalFact, period: str, source_id: int | None, now: datetime) -> bool:
    cutoff = _cutoff(period, now)
    return ((cutoff is None or fact.occurred_at >= cutoff)
            and (source_id is None or fact.source_id == source_id))


def _people(facts: Iterable[SignalFact]) -> set[str]:
    return {f.person_ref for f in facts if f.person_ref}


def broader_views(query: AggregateQuery) -> list[tuple[str, int | None]]:
    """The views that hold ``query``'s view (its period or a longer one; its source or every
    source), ``query``'s own view excepted."""
    periods = list(PERIODS)
    longer = periods[:periods.index(query.period) + 1]
    sources = [query.source_id] if query.source_id is None else [query.source_id, None]
    return [(p, s) for p in longer for s in sources if (p, s) != (query.period, query.source_id)]


def _measure(team: str, facts: Sequence[SignalFact]) -> TeamAggregate:
    resolved = [f for f in facts if f.resolved_at is not None]
    durations = [(f.resolved_at - f.occurred_at).total_seconds() for f in resolved
                 if f.resolved_at is not None and f.resolved_at >= f.occurred_at]
    return TeamAggregate(team, False, None, len(facts), len(_people(facts)),
                         statistics.median(durations) if durations else None,
                         len(resolved) / len(facts) if facts else None)


def _suppression(team_facts: Sequence[SignalFact], view: Sequence[SignalFact],
                 query: AggregateQuery, k: int, now: datetime) -> str | None:
    people = _people(view)
    if len(people) < k:
        return SMALL_GROUP
    for period, source_id in broader_views(query):
        wider = _people(f for f in team_facts if _in_view(f, period, source_id, now))
        if 0 < len(wider - people) < k:
            return DIFFERENCE
    return None


def team_aggregates(facts: Iterable[SignalFact], query: AggregateQuery, *, k: int,
                    now: datetime) -> AggregateReport:
    """The rows of ``query`` over ``facts`` (already limited to the caller's scope), with small
    groups and differencing suppressed (see the module docstring). ``k`` below the floor of 3
    is a programming error: the database refuses to store one."""
    if k < K_ANONYMITY_FLOOR:
        raise ValueError(f"k-anonymity is at least {K_ANONYMITY_FLOOR}, not {k}")
    by_team: dict[str, list[SignalFact]] = {}
    for fact in facts:
        by_team.setdefault(fact.team, []).append(fact)
    teams = sorted(by_team) if query.team is None else (
        [query.team] if query.team in by_team else [])
    rows: list[TeamAggregate] = []
    shown_facts: list[SignalFact] = []
    for team in teams:
        view = [f for f in by_team[team] if _in_view(f, query.period, query.source_id, now)]
        reason = _suppression(by_team[team], view, query, k, now)
        if reason is not None:
            rows.append(TeamAggregate(team, True, reason))
            continue
        rows.append(_measure(team, view))
        shown_facts.extend(view)
    total = _measure("", shown_facts) if shown_facts else None
    return AggregateReport(k, query, rows, total)


# -- the query -----------------------------------------------------------------------------


def load_facts(s: Session, scope: Scope) -> list[SignalFact]:
    """Every retained signal the scope may see (its teams and its sources), as facts."""
    rows = s.execute(select(Signal.team, Signal.person_ref, Signal.source_id,
                            Signal.occurred_at, Signal.resolved_at)
                     .where(scope.team_filter(Signal.team),
                            scope.source_filter(Signal.source_id)))
    return [SignalFact(*row) for row in rows]


def visible_sources(s: Session, scope: Scope) -> list[Source]:
    """The sources the scope may see, by name: the choices of the source filter."""
    return list(s.scalars(select(Source).where(scope.source_filter(Source.id))
                          .order_by(Source.name)))
