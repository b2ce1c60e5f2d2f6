"""The metric definitions: every one has labels (so multiprocess mode can be switched on after
import), closed label sets stay closed, and several processes' samples add up in one folder."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tenant_runtime.observability import metrics


def test_every_metric_has_labels():
    """prometheus-client makes a labelled metric's storage on the first use of a label set;
    an unlabelled one at import, in memory, before ``enable_multiprocess`` could move it."""
    assert all(metric._labelnames for metric in metrics.ALL)
    names = [metric._name for metric in metrics.ALL]
    assert len(names) == len(set(names)) and all(n.startswith("magistrate_") for n in names)


def test_a_value_outside_a_closed_set_is_other():
    assert metrics.closed("EMAIL", metrics.ENTITY_TYPES) == "EMAIL"
    for value in ("jane@example.com", "email", "", None, "EMAIL "):
        assert metrics.closed(value, metrics.ENTITY_TYPES) == metrics.OTHER


CHILD = textwrap.dedent("""
    import sys
    from pathlib import Path
    from tenant_runtime.observability import metrics   # imported before the switch, as in
    metrics.enable_multiprocess(Path(sys.argv[1]), clean=False)  # the magistrate command
    metrics.REFUSALS.labels("spend_cap").inc(int(sys.argv[2]))
    metrics.GATEWAY_OVERHEAD.labels("openai").observe(0.002)
    metrics.CHECKPOINT_TIME.labels("acme").set(float(sys.argv[3]))
""")


def test_processes_add_up_in_the_shared_folder(tmp_path):
    folder = tmp_path / "metrics"
    for count, moment in ((2, 100.0), (3, 250.0)):
        subprocess.run([sys.executable, "-c", CHILD, str(folder), str(count), str(moment)],
                       check=True)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    assert registry.get_sample_value("magistrate_gateway_refusals_total",
                                     {"reason": "spend_cap"}) == 5
    assert registry.get_sample_value("magistrate_gateway_overhead_seconds_count",
                                     {"endpoint": "openai"}) == 2
    assert registry.get_sample_value("magistrate_audit_checkpoint_timestamp_seconds",
                                     {"tenant": "acme"}) == 250.0


def test_cleaning_empties_the_folder(tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_1.db").write_bytes(b"x")
    subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        from pathlib import Path
        from tenant_runtime.observability import metrics
        metrics.enable_multiprocess(Path(sys.argv[1]), clean=True)
    """), str(folder)], check=True)
    assert folder.is_dir() and list(folder.iterdir()) == []
