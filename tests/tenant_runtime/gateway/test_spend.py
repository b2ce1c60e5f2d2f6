"""The monthly spend cap (DESIGN.md, invariant 4): reservations are atomic, so concurrent calls
at the edge of the cap never push spend past it; settling moves a reservation to spend;
abandoned reservations are charged in full."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text

from tenant_runtime.gateway import spend
from tenant_runtime.gateway.pricing import UNKNOWN_MODEL_PRICE, Price, default_price
from tenant_runtime.models import GatewayCall

MONTH = date(2026, 11, 1)


def test_100_concurrent_reservations_at_the_edge_of_the_cap_never_overspend(ctx):
    cap, each = 1_000_000, 27_000  # room for exactly 37 reservations
    with ctx.session() as s, s.begin():
        spend.reserve(s, month=MONTH, amount_micros=0, cap_micros=cap)
    start = threading.Barrier(100)

    def call(_: int) -> bool:
        start.wait()
        with ctx.session() as s, s.begin():
            return spend.reserve(s, month=MONTH, amount_micros=each, cap_micros=cap)

    with ThreadPoolExecutor(100) as pool:
        granted = sum(pool.map(call, range(100)))
    with ctx.session() as s:
        spent, reserved = spend.month_totals(s, MONTH)
    assert granted == cap // each == 37
    assert (spent, reserved) == (0, 37 * each) and spent + reserved <= cap

    def settle(_: int) -> None:
        with ctx.session() as s, s.begin():
            spend.settle(s, month=MONTH, reserved_micros=each, cost_micros=each // 3)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(settle, range(37)))
    with ctx.session() as s:
        assert spend.month_totals(s, MONTH) == (37 * (each // 3), 0)
    with ctx.session() as s, s.begin():  # what was released can be reserved again
        assert spend.reserve(s, month=MONTH, amount_micros=cap - 37 * (each // 3),
                             cap_micros=cap)
        assert not spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=cap)


def test_months_are_separate_and_the_cap_message_names_the_reset_day(ctx):
    with ctx.session() as s, s.begin():
        assert spend.reserve(s, month=MONTH, amount_micros=500, cap_micros=500)
        assert not spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=500)
        assert spend.reserve(s, month=date(2026, 12, 1), amount_micros=500, cap_micros=500)
    assert spend.cap_message(250_000_000, date(2026, 12, 1)).startswith(
        "The monthly AI spend cap of $250.00 is reached; it resets on 2027-01-01 (UTC).")


def test_the_database_refuses_negative_spend(ctx):
    with ctx.session() as s, s.begin():
        spend.reserve(s, month=MONTH, amount_micros=10, cap_micros=100)
    with ctx.session() as s:
        try:
            with s.begin():
                spend.settle(s, month=MONTH, reserved_micros=20, cost_micros=0)
        except Exception as exc:  # noqa: BLE001
            assert "not_negative" in str(exc)
        else:
            raise AssertionError("a reservation released twice went through")


def test_abandoned_reservations_are_charged_in_full(ctx):
    old = datetime.now(UTC) - timedelta(hours=3)
    with ctx.session() as s, s.begin():
        spend.reserve(s, month=MONTH, amount_micros=900, cap_micros=10_000)
        s.add(GatewayCall(month=MONTH, model_name="m", endpoint_kind="openai", stream=False,
                          status="reserved", reserved_micros=900))
        s.flush()
        s.execute(text("UPDATE gateway_calls SET created_at = :old"), {"old": old})
    with ctx.session() as s, s.begin():
        assert spend.settle_abandoned(s) == 1
    with ctx.session() as s, s.begin():
        assert spend.settle_abandoned(s) == 0
        assert spend.month_totals(s, MONTH) == (900, 0)
        call = s.query(GatewayCall).one()
        assert (call.status, call.cost_micros) == ("abandoned", 900)


def test_prices():
    assert default_price("gpt-4o-mini") == default_price("gpt-4o-mini-2024-07-18")
    assert default_price("gpt-4o").input_micros_per_mtok == 2_500_000
    assert default_price("us.anthropic.claude-sonnet-4-5-20250929-v1:0").output_micros_per_mtok \
        == 15_000_000
    assert default_price("my-local-llama") == UNKNOWN_MODEL_PRICE
    assert Price(1, 1).cost_micros(1, 1) == 1  # rounded up, never free
    assert Price(2_500_000, 10_000_000).cost_micros(1_000, 500) == 7_500


def test_the_worker_task_settles_abandoned_calls_in_every_tenant(ctx, services, database_url):
    from tests.control_plane.tenancy.helpers import configure_worker
    from workers.checkpoints import close_connections, settle_abandoned_calls

    with ctx.session() as s, s.begin():
        spend.reserve(s, month=MONTH, amount_micros=700, cap_micros=10_000)
        s.add(GatewayCall(month=MONTH, model_name="m", endpoint_kind="openai", stream=True,
                          status="reserved", reserved_micros=700))
        s.flush()
        s.execute(text("UPDATE gateway_calls SET created_at = now() - interval '3 hours'"))
    configure_worker(services, database_url)
    try:
        assert settle_abandoned_calls() == {"tenants": 1, "done": 1, "failed": 0}
    finally:
        close_connections()
    with ctx.session() as s:
        assert spend.month_totals(s, MONTH) == (700, 0)


def test_the_first_calls_of_a_month_racing_all_get_their_reservation(ctx):
    """No row for the month yet: concurrent first calls create it once and all reserve."""
    start = threading.Barrier(16)

    def call(_: int) -> bool:
        start.wait()
        with ctx.session() as s, s.begin():
            return spend.reserve(s, month=date(2027, 1, 1), amount_micros=10, cap_micros=1000)

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(call, range(16)))
    with ctx.session() as s:
        assert spend.month_totals(s, date(2027, 1, 1)) == (0, 160)
