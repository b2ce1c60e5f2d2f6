"""The verifier enforces what ops/AUDIT_FORMAT.md says, read from the page itself.

- The worked example export of section 3 verifies, pinned to the example key; its rotation
  statement's two signatures verify.
- Section 5's table: each row is a change to that export and the start of what the verifier
  must say. Each change is made (the manifest recomputed, as a forger would, unless the rule is
  about the manifest) and the verifier, pinned, must answer FAIL naming that problem. A rule
  the verifier stopped enforcing, or a verifier that accepts what the page forbids, fails here.
- Every field of an event (section 1's table) has at least one rule in the table."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import re
from pathlib import Path

import pytest

from tests.ops.test_verify_audit_chain import FORMAT_DOC, dump, verifier

PAGE = FORMAT_DOC.read_text(encoding="utf-8")


def block(name: str) -> str:
    match = re.search(rf"<!-- example-{name} -->\n```\n(.*?)\n```", PAGE, re.S)
    assert match, f"ops/AUDIT_FORMAT.md has no example-{name} block"
    return match.group(1)


EXAMPLE = block("export")
PIN = json.loads(EXAMPLE.splitlines()[0])["public_keys"][0]["public_key"]


def rules() -> list[tuple[str, str, str]]:
    table = PAGE.split("<!-- rules -->", 1)[1]
    found = []
    for line in table.splitlines()[3:]:
        if not line.startswith("| "):
            break
        cells = [cell.strip() for cell in line.strip("|").split(" | ")]
        assert len(cells) == 3, line
        found.append((cells[0], cells[1], cells[2].strip("`")))
    return found


RULES = rules()


def verdict(tmp_path: Path, data: bytes, *args: str) -> tuple[int, str]:
    path = tmp_path / "export.jsonl"
    path.write_bytes(data)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = verifier.main([str(path), *args])
    return code, out.getvalue()


def find(lines: list[dict], name: str) -> dict:
    return next(o for o in lines if o.get("type") == name)


def apply(lines: list[dict], change: str) -> None:
    """One change in the table's language: set LINE.PATH = JSON, delete LINE, repeat LINE(.PATH),
    move LINE before LINE."""
    if match := re.fullmatch(r"set (\w+)\.([\w.]+) = (.+)", change):
        line, path, value = match.groups()
        target: dict | list = find(lines, line)
        *parents, last = path.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if isinstance(target, list):
            target[int(last)] = json.loads(value)
        else:
            target[last] = json.loads(value)
    elif match := re.fullmatch(r"delete (\w+)", change):
        lines.remove(find(lines, match.group(1)))
    elif match := re.fullmatch(r"repeat (\w+)\.(\w+)\.(\d+)", change):
        items = find(lines, match.group(1))[match.group(2)]
        items.insert(int(match.group(3)) + 1, dict(items[int(match.group(3))]))
    elif match := re.fullmatch(r"repeat (\w+)", change):
        line = find(lines, match.group(1))
        lines.insert(lines.index(line) + 1, dict(line))
    elif match := re.fullmatch(r"move (\w+) before (\w+)", change):
        moved = find(lines, match.group(1))
        lines.remove(moved)
        lines.insert(lines.index(find(lines, match.group(2))), moved)
    else:
        raise AssertionError(f"the rules table has a change this test cannot make: {change}")


def reseal(lines: list[dict]) -> list[dict]:
    """The manifest recomputed from the lines before it (whatever they now hold)."""
    at = lines.index(find(lines, "manifest"))
    body = lines[:at]
    rows = [o for o in body if o.get("type") == "event"]
    lines[at] = {"type": "manifest", "first_seq": rows[0].get("seq") if rows else None,
                 "last_seq": rows[-1].get("seq") if rows else None,
                 "head_hash": rows[-1].get("chain_hash") if rows else None,
                 "events": len(rows), "checkpoints": sum(o.get("type") == "checkpoint"
                                                         for o in body),
                 "sha256": hashlib.sha256(dump(body)).hexdigest()}
    return lines


def test_the_worked_example_export_verifies(tmp_path):
    code, output = verdict(tmp_path, (EXAMPLE + "\n").encode("utf-8"), "--pin-key", PIN)
    assert code == 0, output
    assert output.splitlines()[-1] == ("OK 1 rows, head "
                                       "b3d9c95e3a75e2ed7285e423a183c15bdb808f749b43f89bf209e4a07916661a")
    assert "statement: signed at 2025-03-14T09:31:00.000000Z" in output


def test_the_rotation_example_is_signed_by_both_keys():
    rotation = json.loads(block("rotation"))
    assert verifier.canonical(rotation) == block("rotation")
    signed = verifier.canonical({k: v for k, v in rotation.items()
                                 if k not in ("signature", "new_signature")}).encode()
    assert verifier.signature_valid(PIN, rotation["signature"], signed)
    assert verifier.signature_valid(rotation["new_public_key"], rotation["new_signature"], signed)
    assert verifier.public_key_id(rotation["new_public_key"], "page") == rotation["new_key_id"]
    assert not verifier.signature_valid(PIN, rotation["new_signature"], signed)
    assert hashlib.sha256(base64.b64decode(PIN)).hexdigest()[:16] == rotation["old_key_id"]


def test_the_table_is_long_enough_and_covers_every_event_field():
    assert len(RULES) >= 40
    section_1 = PAGE.split("## 1.", 1)[1].split("### Canonical content", 1)[0]
    fields = re.findall(r"^\| `(\w+)` \|", section_1, re.M)
    assert len(fields) == 9
    changed = {m.group(1) for _, change, _ in RULES
               if (m := re.match(r"`?set event\.(\w+)", change))}
    assert set(fields) <= changed, set(fields) - changed


@pytest.mark.parametrize(("rule", "change", "says"), RULES, ids=[r[0] for r in RULES])
def test_the_verifier_refuses_what_the_page_forbids(tmp_path, rule, change, says):
    lines = [json.loads(line) for line in EXAMPLE.splitlines()]
    for step in change.strip("`").split("` then `"):
        apply(lines, step)
    if "manifest" not in change:
        lines = reseal(lines)
    code, output = verdict(tmp_path, dump(lines), "--pin-key", PIN)
    assert code == 1, (rule, output)
    assert output.startswith("FAIL ") and says in output.splitlines()[0], (rule, output)
    assert "could not be read as an export" not in output
