"""The call path on the event loop (tenant_runtime/bridge.py, tenant_runtime/loop_db.py): sync
code run by ``bridge.run`` waits for Postgres on the loop, so other calls run meanwhile on the
same thread. Each test would deadlock (and fail at its lock or pool timeout, with the error
named) if a wait blocked the loop's thread instead."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import sqlalchemy.exc
from sqlalchemy import Engine

from control_plane.db import make_engine
from tenant_runtime import bridge, driver

LOCK = 424242
WAITER = ("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
          "AND objid = %(lock)s AND database = (SELECT oid FROM pg_database "
          "WHERE datname = current_database())")


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    made = make_engine(database_url, pool_size=1, pre_ping=False)
    made.pool._max_overflow = 1  # two connections at most  # noqa: SLF001
    made.pool._timeout = 10  # noqa: SLF001
    yield made
    made.dispose()


def test_a_statement_waiting_on_a_lock_lets_the_holder_run_on_the_same_thread(engine: Engine
                                                                               ) -> None:
    """A waits for an advisory lock B holds; B, on the same thread, sees A waiting and lets
    go. Were A's wait to block the thread, B could never let go: A would fail at its
    lock_timeout."""
    threads: set[int] = set()

    def holder(taken: asyncio.Event) -> str:
        threads.add(threading.get_ident())
        with driver.autocommit(engine) as connection:
            driver.one(connection, "SELECT pg_advisory_lock(%(lock)s)", {"lock": LOCK})
            taken.set()
            for _ in range(1000):
                row = driver.one(connection, WAITER, {"lock": LOCK})
                if row is not None and row[0] >= 1:
                    break
                bridge.sleep(0.01)
            else:
                return "nobody waited"
            driver.one(connection, "SELECT pg_advisory_unlock(%(lock)s)", {"lock": LOCK})
        return "released"

    def waiter(taken: asyncio.Event) -> str:
        threads.add(threading.get_ident())
        bridge.wait(taken.wait())
        with driver.autocommit(engine) as connection:
            driver.run(connection, "SET lock_timeout = '10s'")
            driver.one(connection, "SELECT pg_advisory_lock(%(lock)s)", {"lock": LOCK})
            driver.one(connection, "SELECT pg_advisory_unlock(%(lock)s)", {"lock": LOCK})
        return "locked"

    async def both() -> list[str]:
        taken = asyncio.Event()
        return list(await asyncio.gather(bridge.run(holder, taken), bridge.run(waiter, taken)))

    assert asyncio.run(both()) == ["released", "locked"]
    assert len(threads) == 1  # one thread: the loop's


def test_a_checkout_from_an_exhausted_pool_waits_on_the_loop(engine: Engine) -> None:
    """Two connections at most: the third call waits for one while the two holding them wait
    for it to have started. A checkout blocking the thread would time out."""
    order: list[str] = []

    def holding(name: str, started: asyncio.Event, third_waits: asyncio.Event) -> None:
        with driver.autocommit(engine) as connection:
            started.set()
            bridge.wait(third_waits.wait())
            driver.one(connection, "SELECT 1")
        order.append(f"{name} gave back")

    def third(first: asyncio.Event, second: asyncio.Event, waits: asyncio.Event) -> None:
        bridge.wait(first.wait())
        bridge.wait(second.wait())
        waits.set()  # the holders give their connections back once this checkout waits
        with driver.autocommit(engine) as connection:
            order.append("third checked out")
            driver.one(connection, "SELECT 1")

    async def all_three() -> None:
        first, second, waits = asyncio.Event(), asyncio.Event(), asyncio.Event()
        await asyncio.gather(bridge.run(holding, "first", first, waits),
                             bridge.run(holding, "second", second, waits),
                             bridge.run(third, first, second, waits))

    asyncio.run(all_three())
    assert sorted(order) == ["first gave back", "second gave back", "third checked out"]
    # the third had its connection only once one was given back (the other holder's own
    # statement may end before or after the third's)
    assert order.index("third checked out") > min(order.index("first gave back"),
                                                   order.index("second gave back"))


def test_off_the_loop_the_same_code_blocks_as_before(engine: Engine) -> None:
    with driver.autocommit(engine) as connection:
        assert not bridge.active()
        assert driver.one(connection, "SELECT 41 + 1") == (42,)


def test_an_error_of_a_statement_on_the_loop_is_the_same_error(engine: Engine) -> None:
    def broken() -> None:
        with driver.autocommit(engine) as connection:
            driver.one(connection, "SELECT 1 / 0")

    with pytest.raises(sqlalchemy.exc.DataError, match="division by zero"):
        asyncio.run(bridge.run(broken))
    with driver.autocommit(engine) as connection:  # the pool's connection still works
        assert driver.one(connection, "SELECT 1") == (1,)


def test_a_cancelled_wait_drops_its_connection_and_the_pool_goes_on(engine: Engine) -> None:
    def sleeping() -> None:
        with driver.autocommit(engine) as connection:
            driver.one(connection, "SELECT pg_sleep(30)")

    async def cancel_it() -> None:
        task = asyncio.ensure_future(bridge.run(sleeping))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_it())
    with driver.autocommit(engine) as connection:
        assert driver.one(connection, "SELECT 1") == (1,)


def test_wake_wakes_a_loop_waiter_from_a_thread_and_a_thread_from_the_loop() -> None:
    loop_wake, thread_wake = bridge.Wake(), bridge.Wake()
    woken: list[str] = []

    def in_thread() -> None:
        loop_wake.set()
        thread_wake.wait()
        woken.append("thread")

    def on_loop() -> None:
        loop_wake.wait()
        woken.append("loop")
        thread_wake.set()

    worker = threading.Thread(target=in_thread)

    async def main() -> None:
        worker.start()
        await bridge.run(on_loop)

    asyncio.run(main())
    worker.join(10)
    assert not worker.is_alive()
    assert woken == ["loop", "thread"]
    assert loop_wake.is_set() and thread_wake.is_set()


def test_bridge_wait_outside_run_is_refused() -> None:
    with pytest.raises(RuntimeError, match="bridge.run"):
        bridge.wait(asyncio.sleep(0))


def test_a_cancelled_wake_waiter_still_waits_for_its_wake_up_then_is_cancelled() -> None:
    wake = bridge.Wake()
    seen: list[str] = []

    def waiter() -> None:
        try:
            wake.wait()
        finally:
            seen.append("woken" if wake.is_set() else "left early")

    async def main() -> None:
        task = asyncio.ensure_future(bridge.run(waiter))
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        assert not task.done()  # still waiting: the wake-up has not come
        wake.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == ["woken"]
