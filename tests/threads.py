"""Code a test runs on another thread: what it returned or raised comes back to the test, and it
never outlives the test.

A bare ``threading.Thread`` loses both: an exception in it is only printed (the test then
fails later, on a missing outcome, with the cause out of sight), and a ``join(timeout)`` that
times out lets the thread run on into the next test, where it logs to closed streams and holds
database connections. ``Worker.outcome`` and ``Worker.result`` join and fail loudly instead;
call one of them in a ``finally`` so the failure path joins too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# how long a test waits for its thread to end: far more than any of them needs on a quiet
# machine, so a slow, busy CI machine never fails a correct test
JOIN_SECONDS = 60.0


class Worker(Generic[T]):
    """``target()`` on a thread of its own, started by ``start``."""

    def __init__(self, target: Callable[[], T], *, name: str) -> None:
        self.name = name
        self._target = target
        self._value: T | None = None
        self._raised: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self._value = self._target()
        except BaseException as exc:  # noqa: BLE001 - handed to the test by outcome/result
            self._raised = exc

    def start(self) -> Worker[T]:
        self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def finished(self) -> bool:
        return self.started and not self._thread.is_alive()

    def join(self, seconds: float = JOIN_SECONDS) -> None:
        """Wait until it has ended; fail if it has not within ``seconds``. A worker never
        started has nothing to wait for."""
        if not self.started:
            return
        self._thread.join(seconds)
        if self._thread.is_alive():
            raise AssertionError(f"the thread {self.name!r} still runs after {seconds} s")

    def outcome(self, seconds: float = JOIN_SECONDS) -> T | BaseException | None:
        """What it returned, or the exception it raised (for a test about which of several
        racers fails and how); None if it was never started."""
        self.join(seconds)
        return self._raised if self._raised is not None else self._value

    def result(self, seconds: float = JOIN_SECONDS) -> T:
        """What it returned; what it raised is raised here, in the test."""
        self.join(seconds)
        assert self.started, f"the thread {self.name!r} was never started"
        if self._raised is not None:
            raise self._raised
        return self._value  # type: ignore[return-value]


def run_together(n: int, func: Callable[[int], T], *, seconds: float = JOIN_SECONDS
                 ) -> list[T | BaseException | None]:
    """``func(i)`` for ``i`` in ``range(n)``, each on its own thread, released at once (a
    barrier); what each returned or raised, in order. Every thread is joined, whatever
    happens."""
    barrier = threading.Barrier(n, timeout=seconds)

    def released(i: int) -> T:
        barrier.wait()
        return func(i)

    workers = [Worker(lambda i=i: released(i), name=f"racer {i}") for i in range(n)]  # type: ignore[misc]
    try:
        for worker in workers:
            worker.start()
    finally:
        outcomes = [worker.outcome(seconds) for worker in workers if worker.started]
    return outcomes
