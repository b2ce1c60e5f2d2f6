"""A web process records how late its event loop runs (``control_plane/web/serving.py:
watch_loop_lag``, started by the app's lifespan): work that holds the loop shows as lag, in
``magistrate_event_loop_lag_seconds``, and an idle loop shows almost none."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from control_plane.web import app
from control_plane.web.serving import watch_loop_lag


def _lag() -> tuple[float, float, float]:
    """Samples, their sum, and how many were more than 25 ms late."""
    labels = {"loop": "web"}
    count = REGISTRY.get_sample_value("magistrate_event_loop_lag_seconds_count", labels) or 0.0
    total = REGISTRY.get_sample_value("magistrate_event_loop_lag_seconds_sum", labels) or 0.0
    within = REGISTRY.get_sample_value("magistrate_event_loop_lag_seconds_bucket",
                                       {**labels, "le": "0.025"}) or 0.0
    return count, total, count - within


def _watch(seconds: float, *, hold: float | None) -> None:
    async def main() -> None:
        watching = asyncio.ensure_future(watch_loop_lag("web", interval=0.01))
        await asyncio.sleep(0.05)
        if hold is not None:
            time.sleep(hold)  # a piece of work that keeps the loop from everything else
        await asyncio.sleep(seconds)
        watching.cancel()

    asyncio.run(main())


def test_work_that_holds_the_loop_is_recorded_as_lag():
    count, total, late = _lag()
    _watch(0.1, hold=0.08)
    count2, total2, late2 = _lag()
    assert count2 - count >= 5
    assert late2 - late >= 1  # the wake-up that waited for the held loop
    assert total2 - total >= 0.06


def test_an_idle_loop_records_little_lag():
    count, total, _ = _lag()
    _watch(0.3, hold=None)
    count2, total2, _ = _lag()
    assert count2 - count >= 10
    assert (total2 - total) / (count2 - count) < 0.02  # the held loop's: 0.07 in 5 or more


def test_the_apps_lifespan_watches_its_loop():
    lifespan = next(c for c in app.build_app.__code__.co_consts
                    if getattr(c, "co_name", "") == "lifespan")
    assert watch_loop_lag.__name__ in lifespan.co_names
