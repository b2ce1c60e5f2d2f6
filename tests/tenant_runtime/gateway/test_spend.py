"""The monthly spend cap (DESIGN.md, invariant 4): reservations are atomic, so concurrent calls
at the edge of the cap never push spend past it; settling moves a reservation to spend;
abandoned reservations are charged in full."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

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

    def call(_: int) -> spend.SpendReservation | None:
        start.wait()
        with ctx.session() as s, s.begin():
            return spend.reserve(s, month=MONTH, amount_micros=each, cap_micros=cap)

    with ThreadPoolExecutor(100) as pool:
        granted = [held for held in pool.map(call, range(100)) if held is not None]
    with ctx.session() as s:
        spent, reserved = spend.month_totals(s, MONTH)
    assert len(granted) == cap // each == 37
    assert (spent, reserved) == (0, 37 * each) and spent + reserved <= cap

    def settle(held: spend.SpendReservation) -> None:
        with ctx.session() as s, s.begin():
            spend.settle(s, month=MONTH, shard=held.shard, reserved_micros=each,
                         cost_micros=each // 3)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(settle, granted))
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
        held = spend.reserve(s, month=MONTH, amount_micros=10, cap_micros=100)
        assert held is not None
    with ctx.session() as s:
        try:
            with s.begin():
                spend.settle(s, month=MONTH, shard=held.shard, reserved_micros=20,
                             cost_micros=0)
        except Exception as exc:  # noqa: BLE001
            assert "not_negative" in str(exc)
        else:
            raise AssertionError("a reservation released twice went through")


def test_abandoned_reservations_are_charged_in_full(ctx):
    old = datetime.now(UTC) - timedelta(hours=3)
    with ctx.session() as s, s.begin():
        held = spend.reserve(s, month=MONTH, amount_micros=900, cap_micros=10_000)
        assert held is not None
        s.add(GatewayCall(month=MONTH, shard=held.shard, model_name="m", endpoint_kind="openai",
                          stream=False, status="reserved", reserved_micros=900))
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
        held = spend.reserve(s, month=MONTH, amount_micros=700, cap_micros=10_000)
        assert held is not None
        s.add(GatewayCall(month=MONTH, shard=held.shard, model_name="m", endpoint_kind="openai",
                          stream=True, status="reserved", reserved_micros=700))
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
            return spend.reserve(s, month=date(2027, 1, 1), amount_micros=10,
                                 cap_micros=1000) is not None

    with ThreadPoolExecutor(16) as pool:
        assert all(pool.map(call, range(16)))
    with ctx.session() as s:
        assert spend.month_totals(s, date(2027, 1, 1)) == (0, 160)


# ------------------------------------------------------------- budget leases over the shards


def ledger(s, month: date) -> tuple[int, list[tuple[int, int, int, int]]]:
    """The month's allotment and its shards (shard, allotted, reserved, spent), after checking
    the two invariants: Σ allotted is the month's, and no shard holds more than its allotment."""
    allotted = s.execute(text("SELECT allotted_micros FROM gateway_spend_months "
                              "WHERE month = :m"), {"m": month}).scalar_one()
    shards = [tuple(row) for row in s.execute(text(
        "SELECT shard, allotted_micros, reserved_micros, spent_micros FROM gateway_spend_shards "
        "WHERE month = :m ORDER BY shard"), {"m": month})]
    assert allotted == sum(row[1] for row in shards)
    assert all(row[2] + row[3] <= row[1] for row in shards), shards
    return allotted, shards


def spend_on_every_shard(ctx, cap: int, each: int) -> None:
    """One call of ``each`` settled at its full cost on every shard: each shard is granted a
    refill and keeps what the call left of it as slack."""
    for shard in range(spend.SHARDS):
        with ctx.session() as s, s.begin():
            held = spend.reserve(s, month=MONTH, amount_micros=each, cap_micros=cap,
                                 shard=shard)
            assert held is not None and held.shard == shard
            spend.settle(s, month=MONTH, shard=shard, reserved_micros=each, cost_micros=each)


def test_a_call_that_fits_the_month_takes_the_slack_other_shards_hold(ctx):
    cap, each = 800_000, 10_000
    spend_on_every_shard(ctx, cap, each)
    with ctx.session() as s:
        allotted, shards = ledger(s, MONTH)
    chunk = cap // spend.REFILL_SHARE
    assert allotted == spend.SHARDS * chunk and all(row[1] == chunk for row in shards)
    last_dollars = cap - spend.SHARDS * each  # more than is unallotted, and than shard 0 holds
    assert last_dollars > cap - allotted + chunk - each
    with ctx.session() as s, s.begin():
        assert spend.reserve(s, month=MONTH, amount_micros=last_dollars, cap_micros=cap,
                             shard=0) is not None
        for shard in range(spend.SHARDS):  # the month is used: no shard has a micro left
            assert spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=cap,
                                 shard=shard) is None
    with ctx.session() as s:
        allotted, shards = ledger(s, MONTH)
        assert spend.month_totals(s, MONTH) == (spend.SHARDS * each, last_dollars)
    assert allotted == cap
    assert shards[0][1:] == (each + last_dollars, last_dollars, each)
    assert [row[1] for row in shards[1:]] == [each] * (spend.SHARDS - 1)  # slack taken back


def test_a_lowered_cap_is_kept_though_the_shards_hold_more(ctx):
    cap, each = 800_000, 10_000
    spend_on_every_shard(ctx, cap, each)
    with ctx.session() as s, s.begin():  # shard 2 holds a large slack
        held = spend.reserve(s, month=MONTH, amount_micros=400_000, cap_micros=cap, shard=2)
        assert held is not None
        spend.settle(s, month=MONTH, shard=2, reserved_micros=400_000, cost_micros=0)
    with ctx.session() as s:
        allotted, shards = ledger(s, MONTH)
    assert allotted > 400_000 and shards[2][1] - shards[2][3] >= 400_000
    lowered = 100_000  # spent: 80,000; left: 20,000
    with ctx.session() as s, s.begin():
        assert spend.reserve(s, month=MONTH, amount_micros=20_001, cap_micros=lowered,
                             shard=2) is None
        assert "$0.02 left: $0.08 spent" in spend.reservation_message(
            s, month=MONTH, cap_micros=lowered, reserved_micros=20_001, prompt_tokens=0,
            prices=[Price(1_000_000, 1_000_000)], answers=1)
        assert spend.reserve(s, month=MONTH, amount_micros=20_000, cap_micros=lowered,
                             shard=5) is not None
        assert spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=lowered,
                             shard=2) is None
    with ctx.session() as s:
        allotted, _ = ledger(s, MONTH)
        assert allotted == lowered and spend.month_totals(s, MONTH) == (80_000, 20_000)
    with ctx.session() as s, s.begin():  # lowered below what was spent: the cap's message
        assert spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=50_000) is None
        assert spend.reservation_message(
            s, month=MONTH, cap_micros=50_000, reserved_micros=1, prompt_tokens=0,
            prices=[Price(1, 1)], answers=1) == spend.cap_message(50_000, MONTH)


def calls_in_one_process(url: str, cap: int, each: int, calls: int, threads: int,
                         start: Any, results: Any) -> None:
    """One OS process of the two-process test: ``calls`` gateway calls over ``threads``
    threads, each reserved (``spend.reserve_call``, the call's row with it) and settled at its
    full cost (``spend.settle_call``), as the gateway does; the number that got through."""
    from sqlalchemy.orm import sessionmaker

    from control_plane.db import make_engine

    engine = make_engine(url, pool_size=threads, pre_ping=False)
    sessions = sessionmaker(engine)
    call = {"api_key_id": None, "model_name": "m", "provider": "openai",
            "provider_model": "gpt-4o-mini", "endpoint_kind": "openai", "stream": False,
            "redactions": {}}
    values = {"status": "ok", "cost_micros": each, "tokens_in": 1, "tokens_out": 1,
              "latency_ms": 1, "attempts": 1, "error": None}

    def one(_: int) -> bool:
        with sessions() as s, s.begin():
            call_id = spend.reserve_call(s, month=MONTH, amount_micros=each, cap_micros=cap,
                                         call=call)
        if call_id is None:
            return False
        with sessions() as s, s.begin():
            assert spend.settle_call(s, call_id=call_id, month=MONTH, reserved_micros=each,
                                     cost_micros=each, values=values)
        return True

    try:
        start.wait(120)  # both processes ready
        with ThreadPoolExecutor(threads) as pool:
            results.put(sum(pool.map(one, range(calls))))
    except BaseException as exc:  # noqa: BLE001 - reported to the test
        results.put(repr(exc))
    finally:
        engine.dispose()


def test_calls_at_the_edge_of_the_cap_from_two_processes_never_overspend(services, tenant_id,
                                                                         ctx):
    """Two OS processes, each with its own connections, race for the last dollars of one
    tenant's cap over the shards: the calls that get through are exactly those the cap allows,
    and the month never holds more than the cap."""
    import multiprocessing

    from control_plane.models import Tenant

    with services.session_factory() as s:
        url = services.tenant_connections.app_url(s.get(Tenant, tenant_id))
    each = 27_000
    cap = 37 * each + each // 2  # room for exactly 37 calls
    processes = multiprocessing.get_context("spawn")
    start, results = processes.Barrier(2), processes.Queue()
    workers = [processes.Process(target=calls_in_one_process,
                                 args=(url, cap, each, 50, 12, start, results))
               for _ in range(2)]
    try:
        for worker in workers:
            worker.start()
        got = [results.get(timeout=300) for _ in workers]
    finally:  # on every path: no process of this test outlives it
        for worker in workers:
            if worker.pid is not None:
                worker.join(60)
                if worker.is_alive():
                    worker.kill()
                    worker.join(10)
    assert all(isinstance(n, int) for n in got), got
    assert all(worker.exitcode == 0 for worker in workers), [w.exitcode for w in workers]
    assert sum(got) == cap // each == 37
    with ctx.session() as s:
        allotted, _ = ledger(s, MONTH)
        assert spend.month_totals(s, MONTH) == (37 * each, 0)
        assert allotted <= cap
        assert s.execute(text("SELECT count(*), sum(cost_micros) FROM gateway_calls "
                              "WHERE status = 'ok'")).one() == (37, 37 * each)
    with ctx.session() as s, s.begin():  # the last dollars, under one call's worth, are there
        assert spend.reserve(s, month=MONTH, amount_micros=cap - 37 * each,
                             cap_micros=cap) is not None
        assert spend.reserve(s, month=MONTH, amount_micros=1, cap_micros=cap) is None
