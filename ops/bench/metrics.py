"""Benchmark: what the metrics cost one gateway call, in this process.

Times the metric updates one governed call makes — the request counted by route template
(``control_plane/web/metrics.py``), ``metrics.gateway_call`` (call, overhead, provider time,
tokens, cost, two redaction types), one tenant audit append and one data-key cache hit — in
prometheus-client's two modes: in memory (one process) and multiprocess (a memory-mapped file
per process under a temporary folder, as ``magistrate up`` and ``magistrate web`` run), after a
warm-up. Then the time a scrape takes to read and render the folder.

Prints one JSON object on stdout. Run: ``.venv/bin/python ops/bench/metrics.py [--mode
memory|multiprocess]`` from the repository root (each mode in a process of its own: the mode
is chosen before the first sample is stored).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

CALLS = 20_000


def one_call(metrics, templates, scope) -> None:  # type: ignore[no-untyped-def]
    from control_plane.web.metrics import count_request

    count_request(templates, scope, 200)
    metrics.gateway_call(tenant="bench", provider="openai", endpoint="openai", outcome="ok",
                         input_tokens=300, output_tokens=40, cost_micros=120,
                         redactions={"EMAIL": 1, "PERSON": 2}, overhead=0.0021,
                         provider_seconds=0.0004)
    metrics.AUDIT_APPENDS.labels("tenant").inc()
    metrics.DATA_KEY_CACHE.labels("hit").inc()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("memory", "multiprocess"), default="multiprocess")
    parser.add_argument("--calls", type=int, default=CALLS)
    args = parser.parse_args()
    from tenant_runtime.observability import metrics

    folder = Path(tempfile.mkdtemp(prefix="magistrate-metrics-bench-")) / "metrics"
    if args.mode == "multiprocess":
        metrics.enable_multiprocess(folder, clean=True)
    from starlette.applications import Starlette

    from control_plane.gateway import api
    from control_plane.web.metrics import RouteTemplates

    templates = RouteTemplates()
    scope = {"app": Starlette(routes=api.routes), "method": "POST",
             "endpoint": api.chat_completions_endpoint, "path": "/v1/chat/completions"}
    for _ in range(2000):
        one_call(metrics, templates, scope)
    samples = []
    for _ in range(args.calls):
        began = time.perf_counter_ns()
        one_call(metrics, templates, scope)
        samples.append(time.perf_counter_ns() - began)
    samples.sort()

    def pct(q: float) -> float:
        return round(samples[min(len(samples) - 1, int(q * len(samples)))] / 1000, 2)

    result: dict[str, object] = {"benchmark": "metrics", "mode": args.mode, "calls": args.calls,
              "per_call_us": {"p50": pct(0.5), "p99": pct(0.99),
                              "mean": round(statistics.fmean(samples) / 1000, 2)}}
    if args.mode == "multiprocess":
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        started = time.perf_counter()
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(folder))  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
        result["scrape_ms"] = round((time.perf_counter() - started) * 1000, 2)
        result["scrape_bytes"] = len(body)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
