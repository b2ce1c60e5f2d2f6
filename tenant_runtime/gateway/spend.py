"""The monthly spend cap (DESIGN.md, invariant 4), as budget leases over striped rows.

A month's spend is kept in ``SHARDS`` shard rows under the month's row. The month's row holds
how much of the cap it has *allotted* to its shards; each shard holds its allotment, what calls
in flight *reserved* on it and what was *spent* on it. Two inequalities, each kept by one row
lock in Postgres (so they hold in any number of processes, whatever the interleaving):

- Σ allotted ≤ cap: allotments change only under the month row's lock (``_refill``);
- per shard, spent + reserved ≤ allotted: a reservation is one conditional UPDATE of its shard.

Summed over the shards: Σ (spent + reserved) ≤ cap, so no interleaving can overspend.

Before a call, its worst case (the prompt estimate plus ``max_tokens`` at the dearest price
among the call's targets) is reserved on a shard picked at random: one conditional UPDATE
(``_take``: on the gateway's path a transaction of its own; in a caller's transaction, after a
savepoint), which waits only for calls on the same shard. When it does not
fit, the shard is *refilled* under the month's lock: it is granted a chunk of what the month
has not allotted yet; when the month has not enough left, every shard's slack (allotted − spent
− reserved) goes back to the month first (all the shards locked in shard order), so the last
dollars of a cap are reachable and a call is refused only when spent + reserved + its worst
case would pass the cap, as with one row. A cap lowered below what is allotted is kept the same
way: while the month has allotted more than the cap, no reservation takes the fast path, and
the refill reclaims.

After the call the reservation is settled to the real usage on its own shard (the call's row
names it). A reservation whose call never settled (the process died) is settled at its reserved
amount by ``settle_abandoned``, erring on the side of the cap; should that call still finish,
its settlement corrects the charge to the real cost instead of settling twice (Gateway._finish).

Locks, to rule out deadlocks: a transaction waits for the month's row holding no shard, and
locks shards only after it (the refill, the reclaim, ``settle_abandoned``), several of them in
shard order; every other transaction locks one shard and waits for nothing of the spend's
after it. A reservation that did not fit may still hold its shard (an UPDATE locks a row
another transaction changed meanwhile even when its condition then fails): it rolls back to a
savepoint taken before it, which lets that lock go, before the refill waits for the month;
one that was a transaction of its own has let it go when it ended, and its refill runs in a
new transaction.
A transaction that holds a reservation and reserves again could wait for the month holding a
shard: the gateway reserves once per transaction."""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from sqlalchemy import select
from sqlalchemy.orm import Session

from tenant_runtime.driver import Connectable, each_statement_alone, one, run
from tenant_runtime.exceptions import TenantError
from tenant_runtime.models import GatewayCall


class SpendCapReached(TenantError):
    status_code = 402
    default_message = "The monthly AI spend cap is reached."


def month_of(moment: datetime) -> date:
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def dollars(micros: int) -> str:
    return f"${micros / 1_000_000:,.2f}"


def cap_message(cap_micros: int, month: date) -> str:
    return (f"The monthly AI spend cap of {dollars(cap_micros)} is reached; it resets on "
            f"{next_month(month).isoformat()} (UTC). An Owner can raise the cap on the "
            "tenant's gateway page.")


def reservation_message(s: Connectable, *, month: date, cap_micros: int, reserved_micros: int,
                        prompt_tokens: int, prices: list[Any], answers: int) -> str:
    """Why a reservation did not fit: the cap itself is reached, or this call's worst case is
    more than what is left, and then which ``max_tokens`` would fit (``prices``: the call's
    routes' ``Price``s, the dearest decides; ``answers``: ``n``)."""
    spent, held = month_totals(s, month)
    if spent >= cap_micros:
        return cap_message(cap_micros, month)
    left = max(0, cap_micros - spent - held)
    fits = min((max(0, (left * 1_000_000 - prompt_tokens * p.input_micros_per_mtok))
                // max(1, p.output_micros_per_mtok * answers)) for p in prices) if prices else 0
    advice = (f"A max_tokens of at most {fits:,} would fit." if fits >= 1 else
              "Even the prompt alone does not fit: shorten it, or wait for calls in flight to "
              "finish.")
    return (f"This call's worst case ({dollars(reserved_micros)}: the prompt and max_tokens at "
            f"the dearest price of its routes) is more than what is left of the monthly cap "
            f"of {dollars(cap_micros)} ({dollars(left)} left: {dollars(spent)} spent, "
            f"{dollars(held)} held for calls in flight). {advice} An Owner can raise the cap "
            "on the tenant's gateway page.")


# Shards per month: calls on different shards do not wait for each other's commit.
SHARDS = 8
# A refill grants a shard at least this share of the cap (or what the call needs, when more):
# large enough that refills are rare, small enough that little sits idle on other shards.
REFILL_SHARE = 4 * SHARDS


@dataclass(frozen=True)
class SpendReservation:
    """A call's worst case, held on one shard of the month until it is settled."""

    month: date
    shard: int
    amount_micros: int


def pick_shard() -> int:
    return secrets.randbelow(SHARDS)


# The fast path: the shard has room for the call, and the month has not allotted more
# than the cap (a cap lowered since is then kept by ``_refill``).
_FITS = ("UPDATE gateway_spend_shards SET reserved_micros = reserved_micros + %(amount)s "
         "WHERE month = %(month)s AND shard = %(shard)s "
         "AND spent_micros + reserved_micros + %(amount)s <= allotted_micros "
         "AND (SELECT allotted_micros FROM gateway_spend_months WHERE month = %(month)s) "
         "<= %(cap)s RETURNING month, shard")


def reserve(s: Connectable, *, month: date, amount_micros: int, cap_micros: int,
            shard: int | None = None) -> SpendReservation | None:
    """Reserve ``amount_micros`` of this month's cap on ``shard`` (at random when None); None
    when it does not fit. Two statements, except when the shard needs a refill (``_refill``).
    One reservation per transaction, as the gateway makes (the module's docstring: locks)."""
    shard = pick_shard() if shard is None else shard
    params = {"amount": amount_micros, "month": month, "cap": cap_micros, "shard": shard}
    row = _take(s, _FITS, params)
    return None if row is None else SpendReservation(month, shard, amount_micros)


# The reservation and the call's row in one statement: the row is written only when the
# reservation fitted, and remembers its shard. The hot path runs it as SQL text straight on the
# connection: building the equivalent SQLAlchemy expression costs more than the statement.
_RESERVE_CALL = (  # constants only: the values are bound parameters
    "WITH reserved AS (" + _FITS + ") "  # noqa: S608
    "INSERT INTO gateway_calls (month, shard, api_key_id, model_name, provider, provider_model, "
    "endpoint_kind, stream, status, reserved_micros, redactions, idempotency_key) "
    "SELECT month, shard, %(api_key_id)s, %(model_name)s, %(provider)s, %(provider_model)s, "
    "%(endpoint_kind)s, %(stream)s, 'reserved', %(amount)s, %(redactions)s, "
    "%(idempotency_key)s FROM reserved RETURNING id")
# The same, made only while the tenant's gateway configuration is at the version the call was
# admitted under (``gateway_settings.config_version``): the version check folded into the
# reservation, one round trip fewer. Always one row: the call's id (NULL when nothing was
# reserved) and the configuration's version, read in the statement's snapshot.
_RESERVE_CALL_AT_VERSION = (  # constants only: the values are bound parameters
    "WITH settings AS (SELECT config_version FROM gateway_settings WHERE id = 1), "  # noqa: S608
    "reserved AS (" + _FITS.replace(
        " RETURNING", " AND (SELECT config_version FROM settings) = %(config_version)s "
        "RETURNING") + "), "
    "called AS (" + _RESERVE_CALL.removeprefix("WITH reserved AS (" + _FITS + ") ") + ") "
    "SELECT (SELECT id FROM called), (SELECT config_version FROM settings)")


class ConfigChanged(Exception):  # noqa: N818 - an outcome, not a failure
    """The tenant's gateway configuration is no longer at the version a call was admitted
    under: nothing was reserved; admit the call again under the new one."""


def reserve_call(s: Connectable, *, month: date, amount_micros: int, cap_micros: int,
                 call: dict[str, Any], shard: int | None = None,
                 config_version: str | None = None) -> int | None:
    """Reserve ``amount_micros`` of this month's cap and write the call's row (``call``: its
    api_key_id, model_name, provider, provider_model, endpoint_kind, stream, redactions and
    optionally idempotency_key), status ``reserved``; its id, or None when the reservation does
    not fit. Two statements (a savepoint, see ``_take``), except when the shard needs a refill
    (``_refill``); one, its own transaction, on a connection in autocommit (the gateway's).
    ``shard``: the shard to reserve on (at random when None). ``config_version``: reserve only
    while the tenant's gateway configuration is at this version, else raise ``ConfigChanged``
    (checked in the reservation's own statement)."""
    params = {"idempotency_key": None, **call, "redactions": Jsonb(call["redactions"]),
              "amount": amount_micros, "month": month, "cap": cap_micros,
              "shard": pick_shard() if shard is None else shard}
    if config_version is None:
        row = _take(s, _RESERVE_CALL, params)
    else:
        row = _take(s, _RESERVE_CALL_AT_VERSION, {**params, "config_version": config_version})
    return None if row is None else int(row[0])


def _try(s: Connectable, statement: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One try of a reservation statement: its row, or None when it did not fit."""
    row = one(s, statement, params)
    if "config_version" not in params:
        return row
    if row is None or row[1] != params["config_version"]:  # _RESERVE_CALL_AT_VERSION's row
        raise ConfigChanged
    return None if row[0] is None else row


_SAVEPOINT = "SAVEPOINT spend_shard"


def _take(s: Connectable, statement: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """Run a reservation statement (``_FITS`` or one built on it); when it does not fit,
    refill its shard and run it again. The first try runs under a savepoint: an UPDATE whose
    row another transaction changed meanwhile locks the row even when its condition then
    fails, and a transaction must hold no shard while it waits for the month's row (the lock
    order in the module's docstring), so a failed try rolls back to the savepoint, which lets
    that lock go, before ``_refill``. (The savepoint is a round trip of its own: sent in one
    pipeline with the reservation, it measured slower here, as pipelines did before.)"""
    if isinstance(s, psycopg.Connection) and each_statement_alone(s):
        # the first try is a transaction of its own: when it does not fit, it has ended and
        # holds nothing, and the refill and the second try run in a transaction of their own
        row = _try(s, statement, params)
        if row is not None:
            return row
        with s.transaction():
            return _refilled(s, statement, params)
    run(s, _SAVEPOINT)
    row = _try(s, statement, params)
    if row is not None:
        return row
    run(s, "ROLLBACK TO " + _SAVEPOINT)
    return _refilled(s, statement, params)


def _refilled(s: Connectable, statement: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """``_take``'s second try, after the refill of its shard (None: the month has no room)."""
    if not _refill(s, month=params["month"], shard=params["shard"],
                   amount_micros=params["amount"], cap_micros=params["cap"]):
        return None
    # the month's row and the shard are held, and the shard has room: it fits
    return _try(s, statement, params)


def _refill(s: Connectable, *, month: date, shard: int, amount_micros: int,
            cap_micros: int) -> bool:
    """Under the month's lock, make room for ``amount_micros`` on ``shard``: grant it a chunk of
    what the month has not allotted, after moving every shard's slack back to the month when
    that is not enough. False, changing nothing but where the slack sits, when the month itself
    has no room: spent + reserved + the amount would pass the cap. Both locks are held until the
    transaction ends, so the caller's next reservation on the shard fits."""
    key = {"month": month, "shard": shard}
    allotted = _lock_month(s, month)
    run(s, "INSERT INTO gateway_spend_shards (month, shard) VALUES (%(month)s, %(shard)s) "
           "ON CONFLICT DO NOTHING", key)
    slack = _number(s, "SELECT allotted_micros - spent_micros - reserved_micros "
                       "FROM gateway_spend_shards WHERE month = %(month)s AND shard = %(shard)s "
                       "FOR UPDATE", key)
    free = cap_micros - allotted
    if free < 0 or slack + free < amount_micros:
        free, slack = cap_micros - _reclaim(s, month), 0
        if free < amount_micros:
            return False
    grant = min(free, max(amount_micros - slack, cap_micros // REFILL_SHARE))
    if grant > 0:
        run(s, "UPDATE gateway_spend_shards SET allotted_micros = allotted_micros + %(grant)s "
               "WHERE month = %(month)s AND shard = %(shard)s", {**key, "grant": grant})
        run(s, "UPDATE gateway_spend_months SET allotted_micros = allotted_micros + %(grant)s "
               "WHERE month = %(month)s", {**key, "grant": grant})
    return True


def _number(s: Connectable, statement: str, params: dict[str, Any]) -> int:
    """The one value of the one row a statement returns."""
    row = one(s, statement, params)
    if row is None:
        raise RuntimeError("The spend statement returned no row.")
    return int(row[0])


def _lock_month(s: Connectable, month: date) -> int:
    """Lock the month's row, creating it for the month's first call (concurrent first calls
    race here: one creates it, the others wait for it); what it has allotted."""
    run(s, "INSERT INTO gateway_spend_months (month) VALUES (%(month)s) ON CONFLICT DO NOTHING",
        {"month": month})
    return _number(s, "SELECT allotted_micros FROM gateway_spend_months WHERE month = %(month)s "
                      "FOR UPDATE", {"month": month})


def _reclaim(s: Connectable, month: date) -> int:
    """With the month's row locked: lock every shard in shard order and take back its slack
    (a shard whose settlements passed their reservations is allotted what it holds); what the
    month has allotted now, which is what its shards have spent and reserved."""
    return _number(s, (
        "WITH locked AS (SELECT month, shard FROM gateway_spend_shards "
        "WHERE month = %(month)s ORDER BY shard FOR UPDATE), "
        "taken AS (UPDATE gateway_spend_shards t "
        "SET allotted_micros = t.spent_micros + t.reserved_micros FROM locked "
        "WHERE t.month = locked.month AND t.shard = locked.shard "
        "RETURNING t.allotted_micros) "
        "UPDATE gateway_spend_months SET allotted_micros = "
        "(SELECT coalesce(sum(allotted_micros), 0) FROM taken) "
        "WHERE month = %(month)s RETURNING allotted_micros"), {"month": month})


def settle(s: Connectable, *, month: date, shard: int, reserved_micros: int,
           cost_micros: int) -> None:
    """Release ``reserved_micros`` held on the shard and charge ``cost_micros`` there (it may
    be negative: a correction)."""
    run(s,
        "UPDATE gateway_spend_shards SET reserved_micros = reserved_micros - %(reserved)s, "
        "spent_micros = spent_micros + %(cost)s WHERE month = %(month)s AND shard = %(shard)s",
        {"reserved": reserved_micros, "cost": cost_micros, "month": month, "shard": shard})


# What a settlement records of a call's outcome; the provider columns keep their value when the
# call reached no provider (NULL given).
_OUTCOME = (
    "status = %(status)s, cost_micros = %(cost_micros)s, tokens_in = %(tokens_in)s, "
    "tokens_out = %(tokens_out)s, latency_ms = %(latency_ms)s, attempts = %(attempts)s, "
    "error = %(error)s, provider = coalesce(%(provider)s, provider), "
    "provider_model = coalesce(%(provider_model)s, provider_model), "
    "answer_sealed = %(answer_sealed)s")
# A reserved call's outcome and its settlement on the shard it reserved on, in one statement.
_SETTLE_CALL = (  # constants only: the values are bound parameters
    "WITH recorded AS (UPDATE gateway_calls SET " + _OUTCOME + " "  # noqa: S608
    "WHERE id = %(call_id)s AND status = 'reserved' RETURNING month, shard) "
    "UPDATE gateway_spend_shards t SET reserved_micros = t.reserved_micros - %(reserved)s, "
    "spent_micros = t.spent_micros + %(cost)s FROM recorded "
    "WHERE t.month = recorded.month AND t.shard = recorded.shard RETURNING t.month")
# The same for a call ``settle_abandoned`` charged in full meanwhile (its reservation is gone):
# its outcome recorded, and its shard's spending corrected from the full charge to the real
# cost. Run after ``_SETTLE_CALL`` in the same transaction, it changes nothing when that one
# settled the call (no longer ``abandoned``), so both can be sent without waiting for the first
# one's answer.
_CORRECT_ABANDONED = (  # constants only: the values are bound parameters
    "WITH charged AS (SELECT id, month, shard, cost_micros FROM gateway_calls "  # noqa: S608
    "WHERE id = %(call_id)s AND status = 'abandoned' FOR UPDATE), "
    "recorded AS (UPDATE gateway_calls c SET " + _OUTCOME + " FROM charged "
    "WHERE c.id = charged.id RETURNING charged.month, charged.shard, "
    "charged.cost_micros AS charged) "
    "UPDATE gateway_spend_shards t SET spent_micros = t.spent_micros + %(cost)s - "
    "recorded.charged FROM recorded "
    "WHERE t.month = recorded.month AND t.shard = recorded.shard RETURNING t.month")
_SETTLE_DEFAULTS = {"provider": None, "provider_model": None, "answer_sealed": None}


def settle_params(*, call_id: int, reserved_micros: int, cost_micros: int,
                  values: dict[str, Any]) -> dict[str, Any]:
    """The parameters of ``SETTLE_STATEMENTS`` for one call (``settle_call``'s arguments)."""
    return {**_SETTLE_DEFAULTS, **values, "call_id": call_id, "reserved": reserved_micros,
            "cost": cost_micros}


# A call's settlement, whatever happened to its reservation meanwhile: the statements to run,
# in order, in one transaction (neither needs the other's answer).
SETTLE_STATEMENTS = (_SETTLE_CALL, _CORRECT_ABANDONED)


def settle_call(s: Connectable, *, call_id: int, month: date, reserved_micros: int,
                cost_micros: int, values: dict[str, Any]) -> bool:
    """Record a reserved call's outcome and settle its reservation (``SETTLE_STATEMENTS``):
    True when it settled the reservation, False when ``settle_abandoned`` had charged the call
    in full meanwhile, which is then corrected to its real cost. ``values``: status,
    cost_micros, tokens_in, tokens_out, latency_ms, attempts, error, provider and
    provider_model when a provider was tried, and answer_sealed when a keyed call keeps its
    answer. ``month``: the month it reserved in (its row knows it too)."""
    del month  # the call's row says where its reservation is
    params = settle_params(call_id=call_id, reserved_micros=reserved_micros,
                           cost_micros=cost_micros, values=values)
    settled = one(s, _SETTLE_CALL, params) is not None
    if not settled:
        one(s, _CORRECT_ABANDONED, params)
    return settled


def month_totals(s: Connectable, month: date) -> tuple[int, int]:
    """(spent, reserved) this month, in micro-dollars: the sums over the month's shards, read
    in one statement (one snapshot)."""
    row = one(s, "SELECT coalesce(sum(spent_micros), 0), coalesce(sum(reserved_micros), 0) "
                 "FROM gateway_spend_shards WHERE month = %(month)s", {"month": month})
    if row is None:
        raise RuntimeError("The spend totals returned no row.")
    return int(row[0]), int(row[1])


ABANDONED_AFTER = timedelta(hours=2)  # longer than any call: 3 attempts × 600 s × fallbacks


def settle_abandoned(s: Session, *, older_than: timedelta = ABANDONED_AFTER,
                     now: datetime | None = None) -> int:
    """Settle reservations of calls that never finished (their process died) at the reserved
    amount: the provider may have been paid, and the cap must not be undercounted. Several
    shards are settled at once here, so each month's row is locked first and its shards in
    shard order (the module's lock order)."""
    cutoff = (now or datetime.now(UTC)) - older_than
    calls = list(s.scalars(select(GatewayCall).where(GatewayCall.status == "reserved",
                                                     GatewayCall.created_at < cutoff)
                           .with_for_update(skip_locked=True)))
    held: dict[tuple[date, int], int] = defaultdict(int)
    for call in calls:
        held[(call.month, call.shard)] += call.reserved_micros
        call.status, call.cost_micros = "abandoned", call.reserved_micros
        call.error = "The call did not finish; its reservation was charged in full."
    for month in sorted({month for month, _ in held}):
        _lock_month(s, month)
    for (month, shard), amount in sorted(held.items()):
        settle(s, month=month, shard=shard, reserved_micros=amount, cost_micros=amount)
    return len(calls)
