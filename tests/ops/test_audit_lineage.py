"""The lineage rule (which tenant signed a checkpoint of a restored copy) is written twice: in
tenant_runtime/audit_lineage.py, which the in-product verifier and retention use, and in
ops/verify_audit_chain.py, which must run with the standard library alone on a compliance
team's machine and so cannot import it. These tests hold the two to the same answers; the
end-to-end proof is tests/control_plane/backups/test_restore_as.py::
test_a_copys_export_verifies_offline_end_to_end."""

from __future__ import annotations

import random

import pytest

from tenant_runtime import audit_lineage
from tests.ops.test_verify_audit_chain import verifier

EVENT_TYPES = (audit_lineage.RESTORED_FROM, audit_lineage.PRUNED, "test.event")


def _event(rng: random.Random, seq: int) -> tuple[str, dict]:
    kind = rng.choice(EVENT_TYPES)
    if kind == audit_lineage.RESTORED_FROM:
        return kind, {"source_tenant_id": rng.randrange(1, 50), "source_slug": "acme"}
    if kind == audit_lineage.PRUNED:
        carried = [{"seq": rng.randrange(1, seq), "source_tenant_id": rng.randrange(1, 50)}
                   for _ in range(rng.randrange(0, 3))] if seq > 1 else []
        return kind, {"removed": 3, **({"lineage": carried} if carried else {})}
    return kind, {"i": seq}


def test_the_names_and_event_types_are_the_same():
    assert (verifier.RESTORED_FROM, verifier.PRUNED) == (audit_lineage.RESTORED_FROM,
                                                         audit_lineage.PRUNED)


@pytest.mark.parametrize("seed", range(200))
def test_both_rules_give_the_same_signer(seed):
    rng = random.Random(seed)
    own, found, offline = rng.randrange(100, 200), set(), set()
    for seq in sorted(rng.sample(range(1, 60), rng.randrange(0, 8))):
        kind, details = _event(rng, seq)
        found.update(audit_lineage.entries(seq, kind, details))
        event = {"seq": seq, "event_type": kind, "details": details}
        offline.update(verifier.lineage_of(event, f"seq {seq}"))
    assert offline == found
    restorations = sorted(found)
    for seq in range(1, 62):
        assert verifier.signer_of(restorations, seq, own) == audit_lineage.signer_of(
            restorations, seq, own)


def test_a_malformed_lineage_is_named():
    for details in ({"source_tenant_id": "3"}, {}, {"source_tenant_id": -1}):
        with pytest.raises(verifier.Bad, match="lineage is malformed"):
            verifier.lineage_of({"seq": 4, "event_type": audit_lineage.RESTORED_FROM,
                                 "details": details}, "row 4 (seq 4)")
    for details in ({"lineage": {"seq": 1}}, {"lineage": [{"seq": 0, "source_tenant_id": 2}]},
                    {"lineage": [7]}):
        with pytest.raises(verifier.Bad, match="lineage is malformed"):
            verifier.lineage_of({"seq": 4, "event_type": audit_lineage.PRUNED,
                                 "details": details}, "row 4 (seq 4)")


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_a_lineage_event_never_takes_the_shortcut(kind):
    """The verifier hashes vouched-for rows straight from their bytes without parsing them
    (next_link); a lineage event must be parsed, or the checkpoints below it would be checked
    against the wrong tenant."""
    details = {"source_tenant_id": 3, "lineage": [{"seq": 1, "source_tenant_id": 3}]}
    event = {"type": "event", "seq": 2, "occurred_at": "2026-01-02T03:04:05.123456Z",
             "actor_type": "system", "actor_id": None, "actor_name": None, "event_type": kind,
             "target_type": "tenant", "target_id": "3", "details": details,
             "prev_hash": "a" * 64}
    event["chain_hash"] = verifier.event_hash(event, event["prev_hash"])
    raw = (verifier.canonical(event) + "\n").encode("utf-8")
    link = verifier.next_link(raw, b"a" * 64, 2)
    assert link == (None if kind in (audit_lineage.RESTORED_FROM, audit_lineage.PRUNED)
                    else event["chain_hash"].encode("ascii"))
