"""A web process takes what it built to serve out of the garbage collector's view
(``control_plane/web/serving.py: freeze_startup_heap``, run by the app's lifespan), so a full
collection under load walks only what came after."""

from __future__ import annotations

import subprocess
import sys

from control_plane.web import app
from control_plane.web.serving import freeze_startup_heap

PROBE = """
import gc
import control_plane.web.app  # the modules a web process imports to serve
from control_plane.web.serving import freeze_startup_heap
tracked = len(gc.get_objects())
freeze_startup_heap()
print(tracked, gc.get_freeze_count(), len(gc.get_objects()))
"""


def test_the_startup_heap_is_frozen_and_a_collection_then_sees_only_what_came_after():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120).stdout.split()
    tracked, frozen, left = map(int, out)
    assert tracked > 100_000  # what a full collection walked without it
    assert frozen > 0.9 * tracked and left < 0.01 * tracked


def test_the_apps_lifespan_freezes_it():
    names = app.build_app.__code__.co_consts  # the lifespan is built inside build_app
    lifespan = next(c for c in names if getattr(c, "co_name", "") == "lifespan")
    assert freeze_startup_heap.__name__ in lifespan.co_names
