"""The gateway's synchronous call path, run on the event loop (DESIGN.md, "Gateway: the call
path on the event loop").

The call path (key, governance, spend, provider, settlement, audit) is written once, as plain
synchronous code: jobs and tests call it directly, in their own threads. A web process runs it
*on its event loop*, with no hop to a thread pool: ``run(fn, ...)`` calls ``fn`` in a greenlet,
and each I/O point of the path, instead of blocking the thread, hands an awaitable to the event
loop with ``wait`` and resumes when it is done, while other calls run meanwhile. The I/O points
that do so are few and each knows both ways:

- Postgres: ``tenant_runtime.loop_db.LoopAwareConnection``, the psycopg connection every engine
  makes, waits for its socket on the loop (``psycopg.waiting.wait_async``), and its pool never
  blocks the thread when it is exhausted (``LoopAwarePool``);
- the model providers: each adapter's ``complete`` and ``stream`` run its async client
  (``acomplete``, ``astream``);
- Redis, for the gateway's rate limits: the async client (``control_plane/gateway/ratelimit.py``);
- anything else that would block (a KMS unwrapping a data key, a new database connection, a
  provider SDK without an async client): ``off_loop`` runs it in a worker thread.

Off the loop (a thread, a job, a test) ``active()`` is False and every one of them blocks as
before. Code on this path must not wait on a thread primitive another call on the loop would
release (the settlement's group commit waits with ``Wake``, which knows both ways).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any, TypeVar

import anyio.to_thread
from greenlet import getcurrent, greenlet

T = TypeVar("T")


class _OnLoop(greenlet):  # type: ignore[misc]
    """A greenlet running sync code for a task of the event loop (its parent)."""

    def __init__(self, fn: Callable[..., Any], parent: greenlet) -> None:
        super().__init__(fn, parent)
        self.gr_context = parent.gr_context  # the task's context variables


def active() -> bool:
    """Whether the running code is on the event loop, in ``run``."""
    return isinstance(getcurrent(), _OnLoop)


def wait(awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` on the event loop from sync code in ``run``; its result (or its
    exception, raised here)."""
    current = getcurrent()
    if not isinstance(current, _OnLoop):
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError("bridge.wait is for code running in bridge.run")
    return current.parent.switch(awaitable)  # type: ignore[no-any-return]


async def run(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` in a greenlet on this event loop: each ``wait`` in it awaits here. An
    exception of an awaited step (a cancellation included) is raised at its ``wait``."""
    child = _OnLoop(partial(fn, *args, **kwargs), getcurrent())
    result = child.switch()
    while not child.dead:
        try:
            value = await result
        except BaseException:  # noqa: BLE001 - raised in the sync code, where it belongs
            result = child.throw(*sys.exc_info())
        else:
            result = child.switch(value)
    return result  # type: ignore[no-any-return]


def iterate(items: AsyncIterator[T]) -> Iterator[T]:
    """A sync iterator over ``items`` for code in ``run``: each item awaited on the loop.
    Closing it (in ``run``) closes ``items``; closed elsewhere (collected), the loop's own
    async-generator finalizer closes them."""
    try:
        while True:
            try:
                item = wait(anext(items))
            except StopAsyncIteration:
                return
            yield item
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None and active():
            wait(aclose())


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, in a worker thread when called on the event loop (it would block it)."""
    if active():
        return wait(anyio.to_thread.run_sync(partial(fn, *args)))
    return fn(*args)


def sleep(seconds: float) -> None:
    """Sleep, on the loop without blocking it."""
    if active():
        wait(asyncio.sleep(seconds))
    else:
        threading.Event().wait(seconds)


class Wake:
    """A one-shot wake-up that a thread or a call on the event loop waits for, and any thread
    or loop call sets (``threading.Event`` would block the loop's thread, and with it the
    caller that would set it)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def wait(self) -> None:
        """Wait until set, even through a cancellation of the waiting task (raised once the
        wake-up came): whoever waits here has a part to play when woken (the settlement's
        group commit hands its lead to a woken caller)."""
        if not active():
            self._event.wait()
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._event.is_set():
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        interrupted: BaseException | None = None
        while not future.done():
            try:
                wait(asyncio.shield(future))
            except asyncio.CancelledError as exc:
                interrupted = exc
        if interrupted is not None:
            raise interrupted

    def set(self) -> None:
        with self._lock:
            self._event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    def is_set(self) -> bool:
        return self._event.is_set()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
