"""ops/grafana/magistrate.json queries only metrics Magistrate exports, and has the panels the
operations guide promises (docs/observability.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tenant_runtime.observability import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "magistrate.json"
SCRAPE_TIME = {"magistrate_jobs", "magistrate_jobs_oldest_age_seconds",
               "magistrate_rq_queue_length"}  # control_plane/web/metrics.py


def exported() -> set[str]:
    names = set(SCRAPE_TIME)
    for metric in metrics.ALL:
        kind = metric._type
        base = metric._name
        if kind == "counter":
            names.add(base + "_total")
        elif kind == "histogram":
            names.update({base + "_bucket", base + "_sum", base + "_count"})
        else:
            names.add(base)
    return names


def test_every_query_names_an_exported_metric():
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for panel in dashboard["panels"] for target in panel["targets"]
            for name in re.findall(r"\bmagistrate_\w+", target["expr"])}
    assert used and used <= exported(), used - exported()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for promised in ("calls per second", "overhead", "refusals", "spend by tenant",
                     "job queue", "checkpoint age"):
        assert promised in titles, promised
