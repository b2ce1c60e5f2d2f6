"""A mutation corpus for the offline verifier: what a hostile operator, who controls the
database and the export but not the tenant's checkpoint key, can do to an export.

The base is a real tenant's whole-log export (60 events), made as Magistrate makes it for a
tenant whose checkpoint key is ``KEY_A``: checkpoints at seqs 20 and 40 (rows 41-60 are after
the last one), a manifest and a statement signed at export time with the head at seq 60. Each
class of the issue is generated over many rows and fields; every mutant must be refused with
``FAIL``, never the catch-all for an unexpected error, never a traceback, and with the place
named: the row (``row 50 (seq 50)``), the line, the checkpoint, the manifest or the statement,
as the class says. The forger recomputes what needs no key: hashes, seqs, the manifest.

``test_the_corpus_counts`` prints the size of each class (the numbers in the report)."""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable

import pytest

from tests.control_plane.tenancy.conftest import (  # noqa: F401 - fixtures
    local_kek,
    primary_server,
    settings,
)
from tests.ops.test_verify_audit_chain import (
    KEY_A,
    KEY_B,
    build_exports,
    checkpoint,
    dump,
    events,
    key_entry,
    public_b64,
    rechain,
    reseal,
    run,
    run_in_process,
    sign_statement,
    with_checkpoints,
)


@pytest.fixture(scope="module")
def cache() -> dict:
    return {}


@pytest.fixture
def exports(request, cache) -> dict:
    return build_exports(request, cache)


CATCH_ALL = "FAIL the file could not be read as an export"
PIN = ("--pin-key", public_b64(KEY_A))
AFTER = 50  # a row after the last checkpoint (40): only the statement covers it
BEFORE = 10  # a row a checkpoint vouches for
CONTENT = "content changed (chain_hash does not match its content)"

Mutant = tuple[str, str, bytes, str]  # class, name, file, what the FAIL line must start with


def base(exports) -> list[dict]:
    return with_checkpoints(exports["acme"], KEY_A, [20, 40])


def row(lines: list[dict], seq: int) -> dict:
    return next(o for o in lines if o["type"] == "event" and o["seq"] == seq)


def where(seq: int) -> str:
    return f"row {seq} (seq {seq})"


def from_row(lines: list[dict], seq: int) -> None:
    """Recompute every hash from row ``seq`` on, as a forger who controls the database can."""
    rows = events(lines)
    at = rows.index(row(lines, seq))
    rechain(rows[at:], rows[at]["prev_hash"])


# ------------------------------------------------------------------------------- the classes


def field_edits(exports) -> list[Mutant]:
    """One field of one row given another value in its domain (no hash recomputed)."""
    values = {"occurred_at": "2020-01-01T00:00:00.000000Z", "actor_type": "system",
              "actor_id": "999", "actor_name": "mallory@example.com",
              "event_type": "test.erased", "target_type": "invoice", "target_id": None,
              "details": {"i": -1}, "chain_hash": "f" * 64}
    out = []
    for seq in (1, 2, BEFORE, 20, 21, 37, 40, 41, AFTER, 59, 60):
        for field, value in values.items():
            lines = base(exports)
            if row(lines, seq)[field] == value:
                value = "user" if field == "actor_type" else "other"
            row(lines, seq)[field] = value
            out.append(("field edit", f"{field} of row {seq}", dump(reseal(lines)),
                        f"{where(seq)}: {CONTENT}"))
        lines = base(exports)
        row(lines, seq)["prev_hash"] = "1" * 64
        out.append(("field edit", f"prev_hash of row {seq}", dump(reseal(lines)),
                    f"{where(seq)}: previous hash mismatch"))
    return out


def deletes(exports) -> list[Mutant]:
    out = []
    for seq in (2, BEFORE, 20, 21, 39, 41, AFTER, 59):
        lines = base(exports)
        lines.remove(row(lines, seq))
        out.append(("delete", f"row {seq}", dump(reseal(lines)),
                    f"row {seq} (seq {seq + 1}): gap in seq (expected {seq}, found {seq + 1})"))
    lines = base(exports)
    lines.remove(row(lines, 1))
    out.append(("delete", "row 1", dump(reseal(lines)),
                "row 1 (seq 2): gap in seq (expected 1, found 2)"))
    return out


def swaps(exports) -> list[Mutant]:
    out = []
    for seq in (1, BEFORE, 20, 37, 40, AFTER, 59):
        lines = base(exports)
        a, b = lines.index(row(lines, seq)), lines.index(row(lines, seq + 1))
        lines[a], lines[b] = lines[b], lines[a]
        out.append(("swap", f"rows {seq} and {seq + 1}", dump(reseal(lines)),
                    f"row {seq + 1} (seq {seq}): reordered (seq {seq} after {seq + 1})"))
    return out


def inserts(exports) -> list[Mutant]:
    out = []
    for seq in (1, BEFORE, 37, 40, AFTER, 60):
        for linked in (True, False):
            lines = base(exports)
            before = row(lines, seq)
            forged = {**before, "event_type": "forged.event", "details": {"by": "mallory"},
                      "seq": seq + 1 if linked else seq}
            rechain([forged], before["chain_hash"] if linked else before["prev_hash"])
            lines.insert(lines.index(before) + 1, forged)
            if linked and seq == 60:  # a row appended after the head: the statement's head
                expected = "statement: head_seq 60 does not cover the rows of the file"
            elif linked:
                expected = f"row {seq + 2} (seq {seq + 1}): seq {seq + 1} repeated"
            else:
                expected = f"row {seq + 1} (seq {seq}): seq {seq} repeated"
            out.append(("insert", f"after row {seq}, {'linked' if linked else 'same seq'}",
                        dump(reseal(lines)), expected))
    return out


def tail_cuts(exports) -> list[Mutant]:
    """The log cut back (the manifest recomputed), keeping or dropping later checkpoints."""
    out = []
    for last in (59, 55, 45, 41, 40, 39, 30, 21, 20, 5):
        lines = [o for o in base(exports) if o["type"] != "event" or o["seq"] <= last]
        if last < 40:
            expected = (f"log shorter than checkpoint at seq {40 if last >= 20 else 20} (it "
                        f"ends at seq {last})")
        else:
            expected = ("statement: the tenant's chain had reached seq 60 when this export "
                        "was made, so the file should end at seq 60, but it ends at seq "
                        f"{last}: rows were cut off")
        out.append(("tail cut", f"to seq {last}", dump(reseal(lines)), expected))
        dropped = [o for o in lines if o["type"] != "checkpoint" or o["seq"] <= last]
        if last < 40:  # back to an earlier checkpoint, the later ones dropped
            out.append(("tail cut", f"to seq {last}, later checkpoints dropped",
                        dump(reseal(dropped)),
                        "statement: the tenant's chain had reached seq 60" if last >= 20 else
                        "a whole-log export of a tenant with a checkpoint key, but no "
                        "checkpoint in it"))
    return out


def rewrites(exports) -> list[Mutant]:
    """Every row from k on rewritten and rehashed, a consistent chain of the forger's."""
    out = []
    for k in (2, BEFORE, 20, 21, 37, 40, 41, AFTER, 60):
        lines = base(exports)
        for o in events(lines):
            if o["seq"] >= k:
                o["details"] = {**o["details"], "i": -1}
        from_row(lines, k)
        expected = (f"checkpoint at seq {20 if k <= 20 else 40}: the log differs" if k <= 40
                    else "statement: the tenant's head at seq 60 had chain_hash")
        out.append(("rewrite from k", f"k = {k}", dump(reseal(lines)), expected))
    return out


def foreign_checkpoints(exports) -> list[Mutant]:
    out = []
    globex = with_checkpoints(exports["globex"], KEY_B, [20])
    theirs = next(o for o in globex if o["type"] == "checkpoint")
    lines = base(exports)
    at = next(i for i, o in enumerate(lines) if o["type"] == "checkpoint")
    lines[at] = theirs
    out.append(("foreign checkpoint", "another tenant's, its key", dump(reseal(lines)),
                "checkpoint at seq 20: signed by another key"))
    lines = base(exports)
    lines[at] = checkpoint(KEY_A, theirs["tenant_id"], 20, lines[at]["chain_hash"])
    out.append(("foreign checkpoint", "another tenant id, our key", dump(reseal(lines)),
                "checkpoint at seq 20: for another tenant"))
    lines = base(exports)
    lines[at] = checkpoint(KEY_B, lines[0]["tenant_id"], 20, lines[at]["chain_hash"])
    lines[0]["public_keys"].append(key_entry(KEY_B))
    out.append(("foreign checkpoint", "the forger's key added to the header",
                dump(reseal(lines)), "line 1: key"))
    for seq in (20, 40):
        lines = base(exports)
        cp = next(o for o in lines if o["type"] == "checkpoint" and o["seq"] == seq)
        cp["created_at"] = "2030-01-01T00:00:00.000000Z"
        out.append(("foreign checkpoint", f"checkpoint {seq} re-dated", dump(reseal(lines)),
                    f"checkpoint at seq {seq}: signature invalid"))
        lines = base(exports)
        lines[lines.index(next(o for o in lines if o["type"] == "checkpoint" and o["seq"] == seq
                               ))] = checkpoint(KEY_A, lines[0]["tenant_id"], seq, "a" * 64)
        out.append(("foreign checkpoint", f"checkpoint {seq} over another hash",
                    dump(reseal(lines)), f"checkpoint at seq {seq}: the log differs"))
    return out


def stripped_checkpoints(exports) -> list[Mutant]:
    out = []
    lines = [o for o in base(exports) if o["type"] != "checkpoint"]
    out.append(("stripped checkpoints", "all", dump(reseal(lines)),
                "a whole-log export of a tenant with a checkpoint key, but no checkpoint"))
    for seq in (20, 40):
        lines = [o for o in base(exports) if o["type"] != "checkpoint" or o["seq"] != seq]
        out.append(("stripped checkpoints", f"the one at {seq}", dump(reseal(lines)),
                    "statement: 2 checkpoints were exported but the file has 1"))
    # the forgery: every row from 5 on rewritten, checkpoints and statement removed
    lines = [o for o in base(exports) if o["type"] not in ("checkpoint", "statement")]
    for o in events(lines):
        if o["seq"] >= 5:
            o["actor_name"] = "mallory@example.com"
    from_row(lines, 5)
    out.append(("stripped checkpoints", "rewritten from 5, checkpoints and statement removed",
                dump(reseal(lines)), "a whole-log export of a tenant with a checkpoint key"))
    lines[0]["public_keys"] = []  # and the key removed from the header: the pin names it
    out.append(("stripped checkpoints", "and the header's key removed", dump(reseal(lines)),
                "line 1: the header does not list the pinned key"))
    lines = [o for o in base(exports) if o["type"] != "statement"]
    out.append(("stripped checkpoints", "the statement removed", dump(reseal(lines)),
                "file ends after the manifest without the signed export statement"))
    return out


def duplicated_checkpoints(exports) -> list[Mutant]:
    out = []
    for seq in (20, 40):
        lines = base(exports)
        cp = next(o for o in lines if o["type"] == "checkpoint" and o["seq"] == seq)
        lines.insert(lines.index(cp) + 1, dict(cp))
        out.append(("duplicated/reordered checkpoints", f"{seq} twice", dump(reseal(lines)),
                    f"checkpoint at seq {seq}: repeated"))
    lines = base(exports)
    a, b = [i for i, o in enumerate(lines) if o["type"] == "checkpoint"]
    lines[a], lines[b] = lines[b], lines[a]
    out.append(("duplicated/reordered checkpoints", "40 before 20", dump(reseal(lines)),
                "checkpoint at seq 20: out of order (after the checkpoint at seq 40)"))
    lines = base(exports)
    cp20 = lines[a]
    lines.insert(b + 1, {**checkpoint(KEY_A, lines[0]["tenant_id"], 20, cp20["chain_hash"],
                                      "2026-01-03T00:00:00.000000Z")})
    out.append(("duplicated/reordered checkpoints", "a second checkpoint at 20, re-signed",
                dump(reseal(lines)), "checkpoint at seq 20: out of order"))
    lines = base(exports)
    lines.insert(lines.index(row(lines, AFTER)), dict(lines[a]))
    out.append(("duplicated/reordered checkpoints", "a checkpoint among the rows",
                dump(reseal(lines)), f"row {AFTER} (seq {AFTER}): an event after the "
                                     "checkpoints"))
    return out


def manifest_only(exports) -> list[Mutant]:
    out = []
    for field, value in {"first_seq": 2, "last_seq": 59, "head_hash": "0" * 64, "events": 59,
                         "checkpoints": 1, "sha256": "0" * 64}.items():
        lines = base(exports)
        lines[-2][field] = value
        out.append(("manifest only", field, dump(lines), f"manifest: {field} is"))
    lines = base(exports)
    del lines[-2]
    out.append(("manifest only", "removed", dump(lines), "line 64: unknown line type "
                                                         "'statement'"))
    return out


def header_edits(exports) -> list[Mutant]:
    out = []
    edits: dict[str, tuple[object, str]] = {
        "exported_at": ("2030-01-01T00:00:00.000000Z", "statement: exported_at is"),
        "tenant": ("globex", "statement: tenant is"),
        "tenant_id": (1, "checkpoint at seq 20: for another tenant"),
        "format": (1, "line 1: a format 1 export"),
        "range": ({"first_seq": 1, "last_seq": 60, "since": None, "until": None},
                  "statement: range is"),
        "public_keys": ([key_entry(KEY_B)], "line 1: the header does not list the pinned key"),
    }
    for field, (value, expected) in edits.items():
        lines = base(exports)
        lines[0][field] = value
        out.append(("header edit", f"{field}, manifest recomputed", dump(reseal(lines)),
                    expected))
        lines = base(exports)
        lines[0][field] = value
        out.append(("header edit", f"{field}, manifest kept", dump(lines),
                    "manifest: sha256 is" if field not in ("format", "public_keys", "tenant_id")
                    else expected))
    lines = base(exports)
    lines[0]["public_keys"][0]["retired_at"] = "2026-01-02T00:00:00.000000Z"
    out.append(("header edit", "the key retired before its checkpoints", dump(reseal(lines)),
                "checkpoint at seq 20: signed by key"))
    return out


NON_CANONICAL: dict[str, Callable[[bytes], bytes]] = {
    "a space after a colon": lambda line: line.replace(b'":', b'": ', 1),
    "keys out of order": lambda line: b'{"type":' + line[1:].replace(b',"type":', b",", 1)
    .rstrip(b"}\n").replace(b'"event"', b"", 1) + b"}\n" if b'"type":"event"' in line
    else line.replace(b"{", b'{"zz":0,', 1),
    "an escaped non-ASCII letter": lambda line: line.replace("é".encode(), b"\\u00e9", 1)
    if "é".encode() in line else line.replace(b'"', b'"\\u0041', 1),
    "an escaped slash": lambda line: line.replace(b"/", b"\\/", 1) if b"/" in line
    else line.replace(b":", b":\t", 1),
    "CRLF": lambda line: line[:-1] + b"\r\n",
    "a byte-order mark": lambda line: b"\xef\xbb\xbf" + line,
}


def non_canonical(exports) -> list[Mutant]:
    out = []
    data = dump(base(exports))
    lines = data.splitlines(keepends=True)
    targets = {"header": 0, f"row {BEFORE}": BEFORE, f"row {AFTER}": AFTER,
               "checkpoint": len(lines) - 4, "manifest": len(lines) - 2,
               "statement": len(lines) - 1}
    for how, change in NON_CANONICAL.items():
        for name, index in targets.items():
            edited = change(lines[index])
            if edited == lines[index]:
                continue
            mutant = b"".join([*lines[:index], edited, *lines[index + 1:]])
            number = index + 1
            out.append(("non-canonical encoding", f"{how} in the {name}", mutant,
                        rf"(line|row \d+ \(line) {number}\b"))
    return out


OUT_OF_DOMAIN: dict[str, tuple[str, object, str]] = {
    "actor_type root": ("actor_type", "root", "field actor_type is not a valid actor_type"),
    "an impossible date": ("occurred_at", "2026-02-30T10:00:00.000000Z",
                           "field occurred_at is not a valid time"),
    "hour 24": ("occurred_at", "2026-03-01T24:00:00.000000Z",
                "field occurred_at is not a valid time"),
    "no Z": ("occurred_at", "2026-03-01T10:00:00.000000+00:00",
             "field occurred_at is not a valid time"),
    "a float in details": ("details", {"i": 1.5}, "details.i is not a whole number"),
    "an exponent in details": ("details", {"n": [1, {"x": 1e3}]},
                               "details.n[1].x is not a whole number"),
    "details a list": ("details", [1], "field details is not a valid details"),
    "an empty event_type": ("event_type", "", "field event_type is not a valid name"),
    "a number as target_id": ("target_id", 5, "field target_id is not a valid str"),
    "a number as actor_id": ("actor_id", 7, "field actor_id is not a valid str"),
}


def out_of_domain(exports) -> list[Mutant]:
    """A value the document forbids, in a row before and after the last checkpoint, with the
    chain recomputed from there so that only the domain check can object."""
    out = []
    for name, (field, value, reason) in OUT_OF_DOMAIN.items():
        for seq in (BEFORE, AFTER, 60):
            lines = base(exports)
            row(lines, seq)[field] = value
            from_row(lines, seq)
            out.append(("out-of-domain value", f"{name} in row {seq}", dump(reseal(lines)),
                        f"{where(seq)}: {reason}"))
    for name, value, reason in (("seq 0", 0, "field seq"), ("seq true", True, "field seq"),
                                ("seq as text", "50", "field seq")):
        lines = base(exports)
        row(lines, AFTER)["seq"] = value
        out.append(("out-of-domain value", name, dump(reseal(lines)),
                    f"row {AFTER} (line {AFTER + 1}): {reason}"))
    others = [("checkpoint", "created_at", "2026-02-29T00:00:00.000000Z", "line 62 (checkpoint)"),
              ("checkpoint", "key_id", "ABCDEF0123456789", "line 62 (checkpoint)"),
              ("checkpoint", "signature", "not base64", "line 62 (checkpoint)"),
              ("checkpoint", "tenant_id", -1, "line 62 (checkpoint)"),
              ("manifest", "events", -1, "line 64 (manifest)"),
              ("manifest", "events", True, "line 64 (manifest)"),
              ("statement", "head_seq", 0, "line 65 (statement)"),
              ("statement", "head_hash", "A" * 64, "line 65 (statement)"),
              ("header", "exported_at", "2026-04-31T00:00:00.000000Z", "line 1 (header)"),
              ("header", "tenant_id", -1, "line 1 (header)")]
    for kind, field, value, expected in others:
        lines = base(exports)
        target = next(o for o in lines if o["type"] == kind)
        target[field] = value
        out.append(("out-of-domain value", f"{kind} {field} {value!r}",
                    dump(lines if kind in ("manifest", "statement") else reseal(lines)),
                    f"{expected}: field {field}"))
    return out


def bit_flips(exports) -> list[Mutant]:
    data = dump(base(exports))
    rng = random.Random(16)
    out = []
    for _ in range(60):
        position, bit = rng.randrange(len(data)), 1 << rng.randrange(8)
        flipped = bytearray(data)
        flipped[position] ^= bit
        out.append(("bit flip", f"byte {position} bit {bit}", bytes(flipped), ""))
    return out


def truncations(exports) -> list[Mutant]:
    data = dump(base(exports))
    return [("byte truncation", f"to {size} bytes", data[:size], "")
            for size in range(0, len(data), len(data) // 40)] + [
        ("byte truncation", "the last byte", data[:-1], "line 65: does not end with a newline")]


CLASSES = (field_edits, deletes, swaps, inserts, tail_cuts, rewrites, foreign_checkpoints,
           stripped_checkpoints, duplicated_checkpoints, manifest_only, header_edits,
           non_canonical, out_of_domain, bit_flips, truncations)


def corpus(exports) -> list[Mutant]:
    return [mutant for make in CLASSES for mutant in make(exports)]


# ------------------------------------------------------------------------------- the checks


PLACE = re.compile(r"^FAIL (row \d+ \(seq \d+\)|row \d+ \(line \d+\)|line \d+|checkpoint at "
                   r"seq \d+|log shorter than checkpoint|manifest|statement|file ends|the file "
                   r"is empty|a whole-log export)")


def test_the_base_export_verifies(exports, tmp_path):
    path = tmp_path / "base.jsonl"
    path.write_bytes(dump(base(exports)))
    code, output = run_in_process(path, *PIN)
    assert code == 0, output
    assert "statement: signed at" in output and output.splitlines()[-1].startswith("OK 60 rows")


def test_every_mutant_is_refused_at_the_place_it_names(exports, tmp_path):
    path = tmp_path / "mutant.jsonl"
    missed, misplaced = [], []
    for kind, name, data, expected in corpus(exports):
        path.write_bytes(data)
        code, output = run_in_process(path, *PIN)
        first = output.splitlines()[0] if output else ""
        if code != 1 or not first.startswith("FAIL ") or first.startswith(CATCH_ALL) \
                or "Traceback" in output:
            missed.append((kind, name, code, first))
        elif expected and not (first.startswith(f"FAIL {expected}")
                               or (expected.startswith("(") and re.match(
                                   rf"FAIL {expected}", first))):
            misplaced.append((kind, name, expected, first))
        elif not PLACE.match(first):
            misplaced.append((kind, name, "a named place", first))
    assert not missed, missed
    assert not misplaced, "\n".join(map(str, misplaced))


def test_a_sample_of_the_corpus_through_the_script_itself(exports, tmp_path):
    """As a compliance team runs it: a subprocess, exit 1, one FAIL line, no traceback."""
    mutants = corpus(exports)
    for kind, name, data, _ in mutants[:: max(len(mutants) // 12, 1)]:
        done = run(tmp_path, data, *PIN)
        assert done.returncode == 1 and done.stdout.startswith("FAIL "), (kind, name,
                                                                           done.stdout)
        assert len(done.stdout.splitlines()) == 1


def test_the_corpus_counts(exports, capsys):
    counts = Counter(kind for kind, *_ in corpus(exports))
    assert len(counts) == len(CLASSES) and min(counts.values()) >= 5, counts
    with capsys.disabled():
        print(f"\nmutation corpus: {sum(counts.values())} mutants, " + ", ".join(
            f"{kind} {n}" for kind, n in counts.items()))


@pytest.mark.parametrize("seq", [BEFORE, AFTER])
def test_a_float_in_details_is_refused_even_inside_a_signed_stretch(exports, tmp_path, seq):
    """The quick path (rows a checkpoint vouches for are hashed from their bytes) still sees
    a fraction: a line with a digit followed by '.', 'e' or 'E' in its details is read in
    full."""
    lines = base(exports)
    row(lines, seq)["details"] = {"note": "v1.2 e.g. 3E", "x": 2.0}
    from_row(lines, seq)
    path = tmp_path / "float.jsonl"
    path.write_bytes(dump(reseal(lines)))
    code, output = run_in_process(path, *PIN)
    assert code == 1 and output.startswith(f"FAIL {where(seq)}: details.x is not a whole "
                                           "number"), output
    row(lines, seq)["details"] = {"note": "v1.2 e.g. 3E"}  # the same characters in a string
    from_row(lines, seq)
    lines = sign_statement(lines, KEY_A, head=(60, events(lines)[-1]["chain_hash"]))
    cps = {o["seq"]: o for o in lines if o["type"] == "checkpoint"}
    for s_, cp in cps.items():  # re-signed by the tenant: an honest log with such a string
        lines[lines.index(cp)] = checkpoint(KEY_A, cp["tenant_id"], s_,
                                            row(lines, s_)["chain_hash"])
    lines = sign_statement(lines, KEY_A)
    path.write_bytes(dump(lines))
    code, output = run_in_process(path, *PIN)
    assert code == 0, output
