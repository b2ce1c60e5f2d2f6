"""The monthly spend cap (DESIGN.md, invariant 4). Before a call, its worst case (the prompt
estimate plus ``max_tokens`` at the dearest price among the call's targets) is reserved with one
conditional UPDATE: the row lock serializes concurrent reservations and the condition keeps
``spent + reserved`` within the cap, so no interleaving can overspend. After the call the
reservation is settled to the real usage. A reservation whose call never settled (the process
died) is settled at its reserved amount by ``settle_abandoned``, erring on the side of the cap;
should that call still finish, its settlement corrects the charge to the real cost instead of
settling twice (Gateway._finish)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb
from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from tenant_runtime.exceptions import TenantError
from tenant_runtime.models import GatewayCall, GatewaySpendMonth


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


_RESERVE = text(
    "UPDATE gateway_spend_months SET reserved_micros = reserved_micros + :amount "
    "WHERE month = :month AND spent_micros + reserved_micros + :amount <= :cap "
    "RETURNING month")


def reserve(s: Session, *, month: date, amount_micros: int, cap_micros: int) -> bool:
    """Reserve ``amount_micros`` of this month's cap; False when it does not fit. One
    statement, except the first call of a month, which creates the month's row first."""
    params = {"amount": amount_micros, "month": month, "cap": cap_micros}
    if s.execute(_RESERVE, params).first() is not None:
        return True
    # no row yet (or the cap is reached): make sure the month's row exists, whoever creates
    # it (concurrent first calls of a month race here), and try once more
    s.execute(insert(GatewaySpendMonth).values(month=month).on_conflict_do_nothing())
    return s.execute(_RESERVE, params).first() is not None


# The reservation and the call's row in one statement: the row is written only when the
# reservation fitted. The hot path runs it as SQL text straight on the connection: building the
# equivalent SQLAlchemy expression costs more than the statement itself.
_RESERVE_CALL = (
    "WITH reserved AS (UPDATE gateway_spend_months "
    "SET reserved_micros = reserved_micros + %(amount)s "
    "WHERE month = %(month)s AND spent_micros + reserved_micros + %(amount)s <= %(cap)s "
    "RETURNING month) "
    "INSERT INTO gateway_calls (month, api_key_id, model_name, provider, provider_model, "
    "endpoint_kind, stream, status, reserved_micros, redactions, idempotency_key) "
    "SELECT month, %(api_key_id)s, %(model_name)s, %(provider)s, %(provider_model)s, "
    "%(endpoint_kind)s, %(stream)s, 'reserved', %(amount)s, %(redactions)s, "
    "%(idempotency_key)s FROM reserved RETURNING id")


def reserve_call(s: Session, *, month: date, amount_micros: int, cap_micros: int,
                 call: dict[str, Any]) -> int | None:
    """Reserve ``amount_micros`` of this month's cap and write the call's row (``call``: its
    api_key_id, model_name, provider, provider_model, endpoint_kind, stream, redactions and
    optionally idempotency_key), status ``reserved``; its id, or None when the reservation does
    not fit. One statement, except the first call of a month, which creates the month's row
    first."""
    connection = s.connection()
    params = {"idempotency_key": None, **call, "redactions": Jsonb(call["redactions"]),
              "amount": amount_micros, "month": month, "cap": cap_micros}
    row = connection.exec_driver_sql(_RESERVE_CALL, params).first()
    if row is None:  # no row for the month yet (or the cap is reached): as in ``reserve``
        s.execute(insert(GatewaySpendMonth).values(month=month).on_conflict_do_nothing())
        row = connection.exec_driver_sql(_RESERVE_CALL, params).first()
    return None if row is None else int(row[0])


def settle(s: Session, *, month: date, reserved_micros: int, cost_micros: int) -> None:
    s.execute(update(GatewaySpendMonth).where(GatewaySpendMonth.month == month).values(
        reserved_micros=GatewaySpendMonth.reserved_micros - reserved_micros,
        spent_micros=GatewaySpendMonth.spent_micros + cost_micros))


# A reserved call's outcome and its settlement, in one statement; the provider columns keep
# their value when the call reached no provider (NULL given).
_SETTLE_CALL = (
    "WITH recorded AS (UPDATE gateway_calls SET status = %(status)s, "
    "cost_micros = %(cost_micros)s, tokens_in = %(tokens_in)s, tokens_out = %(tokens_out)s, "
    "latency_ms = %(latency_ms)s, attempts = %(attempts)s, error = %(error)s, "
    "provider = coalesce(%(provider)s, provider), "
    "provider_model = coalesce(%(provider_model)s, provider_model), "
    "answer_sealed = %(answer_sealed)s "
    "WHERE id = %(call_id)s AND status = 'reserved' RETURNING month) "
    "UPDATE gateway_spend_months SET reserved_micros = reserved_micros - %(reserved)s, "
    "spent_micros = spent_micros + %(cost)s "
    "WHERE month = (SELECT month FROM recorded) RETURNING month")
_SETTLE_DEFAULTS = {"provider": None, "provider_model": None, "answer_sealed": None}


def settle_call(s: Session, *, call_id: int, month: date, reserved_micros: int,
                cost_micros: int, values: dict[str, Any]) -> bool:
    """Record a reserved call's outcome and settle its reservation, in one statement; False
    when the call is no longer reserved (``settle_abandoned`` charged it meanwhile).
    ``values``: status, cost_micros, tokens_in, tokens_out, latency_ms, attempts, error,
    provider and provider_model when a provider was tried, and answer_sealed when a keyed
    call keeps its answer."""
    settled = s.connection().exec_driver_sql(_SETTLE_CALL, {
        **_SETTLE_DEFAULTS, **values, "call_id": call_id, "reserved": reserved_micros,
        "cost": cost_micros}).first()
    return settled is not None


def month_totals(s: Session, month: date) -> tuple[int, int]:
    """(spent, reserved) this month, in micro-dollars."""
    row = s.get(GatewaySpendMonth, month)
    return (row.spent_micros, row.reserved_micros) if row else (0, 0)


ABANDONED_AFTER = timedelta(hours=2)  # longer than any call: 3 attempts × 600 s × fallbacks


def settle_abandoned(s: Session, *, older_than: timedelta = ABANDONED_AFTER,
                     now: datetime | None = None) -> int:
    """Settle reservations of calls that never finished (their process died) at the reserved
    amount: the provider may have been paid, and the cap must not be undercounted."""
    cutoff = (now or datetime.now(UTC)) - older_than
    calls = list(s.scalars(select(GatewayCall).where(GatewayCall.status == "reserved",
                                                     GatewayCall.created_at < cutoff)
                           .with_for_update(skip_locked=True)))
    for call in calls:
        settle(s, month=call.month, reserved_micros=call.reserved_micros,
               cost_micros=call.reserved_micros)
        call.status, call.cost_micros = "abandoned", call.reserved_micros
        call.error = "The call did not finish; its reservation was charged in full."
    return len(calls)
