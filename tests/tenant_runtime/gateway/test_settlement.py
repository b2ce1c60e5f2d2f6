"""Group commit of the gateway's settlements (tenant_runtime/gateway/settlement.py): many
calls' settlements and audit events in one transaction, each caller back only once its own
event is committed; a failing call does not take the others with it; a lone call commits at
once."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from tenant_runtime import audit
from tenant_runtime.audit_verify import verify_tenant_chain
from tenant_runtime.context import TenantContext
from tenant_runtime.gateway import settlement, spend
from tenant_runtime.models import AuditEvent, GatewayCall
from tests.locks import wait_for_lock_waiter
from tests.tenant_runtime.gateway.conftest import API_KEY_ACTOR

MONTH = date(2026, 11, 1)
CAP = 1_000_000_000
CALL = {"api_key_id": None, "model_name": "m", "provider": "openai",
        "provider_model": "gpt-4o-mini", "endpoint_kind": "openai", "stream": False,
        "redactions": {}}


def reserve(ctx: TenantContext, amount: int) -> int:
    with ctx.session() as s, s.begin():
        call_id = spend.reserve_call(s, month=MONTH, amount_micros=amount, cap_micros=CAP,
                                     call=CALL)
    assert call_id is not None
    return call_id


def item(call_id: int, *, reserved: int, cost: int) -> settlement.Settlement:
    values = {"status": "ok", "cost_micros": cost, "tokens_in": 1, "tokens_out": 1,
              "latency_ms": 1, "attempts": 1, "error": None}
    return settlement.Settlement(
        call_id=call_id, month=MONTH, reserved_micros=reserved, cost_micros=cost,
        values=values, event=audit.prepare("gateway.call", actor=API_KEY_ACTOR,
                                           target_type="model", target_id="m",
                                           details={"call": call_id, "cost_micros": cost}))


def with_chain_held(ctx: TenantContext, writer: settlement.TenantWriter, queued: int,
                    run: Callable[[], Any]) -> Any:
    """Run ``run`` in a thread while another transaction holds the chain lock, released once
    ``queued`` callers wait behind the writer in flight: they are then written as one batch."""
    with ThreadPoolExecutor(1) as pool:
        with ctx.session() as s, s.begin():
            s.execute(text(f"SELECT pg_advisory_xact_lock({audit.CHAIN_LOCK})"))
            done = pool.submit(run)
            deadline = time.monotonic() + 60
            while len(writer._queue) < queued:
                assert time.monotonic() < deadline, "the callers never queued"
                time.sleep(0.01)
        return done.result(120)


def chain_events(ctx: TenantContext) -> list[AuditEvent]:
    with ctx.session() as s:
        assert verify_tenant_chain(s, ctx.tenant_id).ok
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event_type == "gateway.call")
                              .order_by(AuditEvent.seq)))


def test_concurrent_calls_share_commits_and_every_event_is_there_once(ctx):
    n, reserved = 40, 5_000
    ids = [reserve(ctx, reserved) for _ in range(n)]
    writer = settlement.writer_for(ctx.session_factory)
    commits, settled = writer.commits, writer.settled

    def settle_all() -> None:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda k: writer.submit(item(ids[k], reserved=reserved,
                                                       cost=1_000 + k)), range(n)))

    with_chain_held(ctx, writer, n - 1, settle_all)
    # the first call waited for the lock alone; the 39 queued behind it went in one commit
    assert writer.settled - settled == n and writer.commits - commits == 2
    events = chain_events(ctx)
    assert sorted(e.details["call"] for e in events) == sorted(ids)
    assert [e.occurred_at for e in events] == sorted(e.occurred_at for e in events)
    with ctx.session() as s:
        assert spend.month_totals(s, MONTH) == (sum(1_000 + k for k in range(n)), 0)
        assert s.execute(text("SELECT count(*) FROM gateway_calls WHERE status = 'ok'")
                         ).scalar_one() == n


def test_unsynchronised_threads_commit_fewer_times_than_calls(ctx):
    n, reserved = 48, 1_000
    ids = [reserve(ctx, reserved) for _ in range(n)]
    writer = settlement.writer_for(ctx.session_factory)
    commits = writer.commits
    start = threading.Barrier(n)

    def one(call_id: int) -> None:
        start.wait()
        writer.submit(item(call_id, reserved=reserved, cost=reserved))

    with ThreadPoolExecutor(n) as pool:
        list(pool.map(one, ids))
    assert writer.commits - commits < n
    assert sorted(e.details["call"] for e in chain_events(ctx)) == sorted(ids)
    with ctx.session() as s:
        assert spend.month_totals(s, MONTH) == (n * reserved, 0)


def test_a_failing_call_gets_its_error_and_the_others_of_its_batch_commit(ctx):
    reserved = 5_000
    ids = [reserve(ctx, reserved) for _ in range(6)]
    writer = settlement.writer_for(ctx.session_factory)
    bad = ids[3]  # releases more than it reserved: the shard's not_negative check refuses it
    errors: dict[int, BaseException] = {}

    def one(call_id: int) -> None:
        try:
            writer.submit(item(call_id, reserved=reserved * (100 if call_id == bad else 1),
                               cost=700))
        except DBAPIError as exc:
            errors[call_id] = exc

    def settle_all() -> None:
        with ThreadPoolExecutor(len(ids)) as pool:
            list(pool.map(one, ids))

    with_chain_held(ctx, writer, len(ids) - 1, settle_all)
    assert list(errors) == [bad] and "not_negative" in str(errors[bad])
    assert sorted(e.details["call"] for e in chain_events(ctx)) == sorted(set(ids) - {bad})
    with ctx.session() as s:
        assert spend.month_totals(s, MONTH) == (5 * 700, reserved)
        assert s.get(GatewayCall, bad).status == "reserved"


def test_a_call_the_sweeper_charged_is_corrected_to_its_cost_in_a_batch(ctx):
    reserved = 9_000
    ids = [reserve(ctx, reserved) for _ in range(4)]
    with ctx.session() as s, s.begin():  # the first two are taken for abandoned
        s.execute(text("UPDATE gateway_calls SET created_at = now() - interval '3 hours' "
                       "WHERE id = ANY(:ids)"), {"ids": ids[:2]})
        assert spend.settle_abandoned(s, older_than=timedelta(hours=2),
                                      now=datetime.now(UTC)) == 2
    writer = settlement.writer_for(ctx.session_factory)

    def settle_all() -> None:
        with ThreadPoolExecutor(len(ids)) as pool:
            list(pool.map(lambda i: writer.submit(item(i, reserved=reserved, cost=2_000)),
                          ids))

    with_chain_held(ctx, writer, len(ids) - 1, settle_all)
    assert sorted(e.details["call"] for e in chain_events(ctx)) == sorted(ids)
    with ctx.session() as s:  # each charged its real cost once, nothing left reserved
        assert spend.month_totals(s, MONTH) == (4 * 2_000, 0)
        assert {c.status for c in s.scalars(select(GatewayCall))} == {"ok"}


def test_a_lone_call_commits_at_once_in_its_own_thread(ctx):
    call_id = reserve(ctx, 3_000)
    writer = settlement.writer_for(ctx.session_factory)
    commits, threads = writer.commits, threading.active_count()
    began = time.perf_counter()
    writer.submit(item(call_id, reserved=3_000, cost=1_000))
    elapsed = time.perf_counter() - began
    assert writer.commits - commits == 1 and threading.active_count() == threads
    assert not writer._leading and not writer._queue
    assert elapsed < 2  # no batching window: the commit is the wait
    assert [e.details["call"] for e in chain_events(ctx)] == [call_id]


@pytest.mark.parametrize("size", [settlement.MAX_BATCH + 6])
def test_a_batch_holds_at_most_max_batch_calls(ctx, size):
    ids = [reserve(ctx, 1_000) for _ in range(size)]
    writer = settlement.writer_for(ctx.session_factory)
    commits = writer.commits

    def settle_all() -> None:
        with ThreadPoolExecutor(size) as pool:
            list(pool.map(lambda i: writer.submit(item(i, reserved=1_000, cost=1_000)), ids))

    with_chain_held(ctx, writer, size - 1, settle_all)
    assert writer.commits - commits == 3  # 1, then 64, then 5
    assert len(chain_events(ctx)) == size


def test_a_batch_settling_one_shard_twice_does_not_deadlock_with_a_refill(ctx):
    """Two calls of a batch on one shard: the second update of the shard row re-checks its
    foreign key (a share lock on the month's row). A refill holds the month's row and then
    waits for a shard: the batch must not hold a shard while it waits for the month."""
    ids = [reserve(ctx, 1_000) for _ in range(spend.SHARDS + 1)]  # two share a shard
    with ctx.session() as s:
        shard_of = {row.id: row.shard for row in s.execute(
            text("SELECT id, shard FROM gateway_calls"))}
    shared = next(shard for shard in set(shard_of.values())
                  if sum(1 for i in ids if shard_of[i] == shard) >= 2)
    pair = [i for i in ids if shard_of[i] == shared][:2]
    writer = settlement.TenantWriter(ctx.session_factory)
    batch = [item(i, reserved=1_000, cost=400) for i in pair]
    with ThreadPoolExecutor(1) as pool, ctx.session() as s, s.begin():
        s.execute(text("SET LOCAL lock_timeout = '20s'"))
        s.execute(text("SELECT 1 FROM gateway_spend_months WHERE month = :m FOR UPDATE"),
                  {"m": MONTH})  # the refill's first lock
        done = pool.submit(writer._write, batch)
        wait_for_lock_waiter(s)  # the batch waits for the month
        s.execute(text("SELECT 1 FROM gateway_spend_shards WHERE month = :m AND shard = :n "
                       "FOR UPDATE"), {"m": MONTH, "n": shared})  # then its shard
    done.result(60)
    assert [(i.committed, i.error) for i in batch] == [(True, None), (True, None)]
    with ctx.session() as s:
        assert {s.get(GatewayCall, i).status for i in pair} == {"ok"}
