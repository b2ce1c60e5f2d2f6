"""SECURITY.md names the proof of each claim, and every proof it names exists.

- Each backticked test node, ``tests/…/test_x.py::test_name`` or
  ``tests/…/test_x.py::TestClass::test_method`` (a ``[param]`` part is ignored), names a file
  that exists and a test defined in it. The file is read with ``ast``, never imported.
- Each backticked benchmark, ``ops/bench/x.py``, exists.
- Each other backticked ``.py`` or ``.md`` path of the repository it names exists, except in
  "Not done yet", which may name files still to come.
- Each claim (a top-level list item of a section not in ``UNPROVEN_SECTIONS``) says
  ``Proof:`` followed by at least one test node or benchmark.
- The page has the sections a reviewer expects, including "Not done yet" with at least one
  item, and names at least one test: it cannot pass by saying nothing.
- It opens with "At a glance", a table of claims (at least 15 rows) before the detail; each
  row's last cell names at least one test node, and those nodes exist like any other.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECURITY_MD = ROOT / "SECURITY.md"

SUMMARY = "At a glance"
REQUIRED_SECTIONS = (
    SUMMARY, "Deployment and where data lives", "Where inference happens", "Keys",
    "Authentication and sessions", "Roles and permissions", "The audit log",
    "What agents may do", "Data minimization", "What happens when things fail",
    "Reporting a vulnerability", "Not done yet",
)
# Sections that explain or list gaps, so their items carry no proof.
UNPROVEN_SECTIONS = ("How to read this page", "Reporting a vulnerability", "Not done yet")
# Sections whose claims are table rows, each proved in its last cell.
TABLE_SECTIONS = (SUMMARY,)
GAPS = "Not done yet"

BACKTICKED = re.compile(r"`([^`\n]+)`")
NODE = re.compile(r"(tests/[\w/]+\.py)::(\w+(?:::\w+)?)(?:\[.*\])?")
BENCH = re.compile(r"ops/bench/\w+\.py")
REPO_FILE = re.compile(r"(?:tests|ops|control_plane|tenant_runtime|workers|alembic|templates)"
                       r"/[\w./-]+\.(?:py|md)|[A-Z]+\.md")
PROOF = re.compile(r"\bProof:(.*)", flags=re.DOTALL)


def _without_code_blocks(markdown: str) -> str:
    """The text outside fenced code blocks (a ``# comment`` in a shell block is no heading)."""
    kept: list[str] = []
    fenced = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            kept.append(line)
    return "\n".join(kept)


def _sections(markdown: str) -> dict[str, str]:
    """Each level-2 heading's text, up to the next level-2 heading."""
    text = _without_code_blocks(markdown)
    return {m.group(1).strip(): m.group(2) for m in re.finditer(
        r"^## (.+?)[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)}


def _items(section: str) -> list[str]:
    """The top-level list items of a section, each with its continuation lines."""
    items: list[str] = []
    current: list[str] | None = None
    for line in section.splitlines():
        if line.startswith("- "):
            current = [line]
            items.append("")
        elif current is not None and line.startswith(" ") and line.strip():
            current.append(line)
        else:
            current = None
            continue
        items[-1] = "\n".join(current)
    return items


def _table_rows(section: str) -> list[list[str]]:
    """The body rows of the Markdown tables of a section, each as its list of cells."""
    rows: list[list[str]] = []
    for line in section.splitlines():
        line = line.strip()
        if not (line.startswith("|") and line.endswith("|")):
            continue
        cells = [cell.strip() for cell in line[1:-1].split("|")]
        if all(re.fullmatch(r":?-+:?", cell) for cell in cells):
            rows.pop()  # the line above was the header
            continue
        rows.append(cells)
    return rows


def _references(text: str) -> list[str]:
    return BACKTICKED.findall(_without_code_blocks(text))


def _defined_tests(path: Path) -> set[str]:
    """``test_x`` for module-level tests, ``TestClass::test_y`` for methods."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
        elif isinstance(node, ast.ClassDef):
            names.update(f"{node.name}::{item.name}" for item in node.body
                         if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef))
    return {name for name in names if name.rsplit("::", 1)[-1].startswith("test")}


def _outside_gaps(markdown: str) -> str:
    """The page without its "Not done yet" section."""
    return re.sub(r"^## " + re.escape(GAPS) + r"[ \t]*\n.*?(?=^## |\Z)", "",
                  _without_code_blocks(markdown), flags=re.MULTILINE | re.DOTALL)


def missing_proofs(markdown: str, root: Path) -> list[str]:
    """Every test node, benchmark or repository file the page names that does not exist (a
    plain file named only in "Not done yet" may still be to come)."""
    missing: list[str] = []
    parsed: dict[Path, set[str]] = {}
    outside_gaps = set(_references(_outside_gaps(markdown)))
    for ref in dict.fromkeys(_references(markdown)):
        node = NODE.fullmatch(ref)
        if node:
            path, name = root / node.group(1), node.group(2)
            if not path.is_file():
                missing.append(f"{ref} (no file {node.group(1)})")
                continue
            if path not in parsed:
                parsed[path] = _defined_tests(path)
            if name not in parsed[path]:
                missing.append(f"{ref} (no test {name} in {node.group(1)})")
        elif BENCH.fullmatch(ref) or (REPO_FILE.fullmatch(ref) and ref in outside_gaps):
            if not (root / ref).is_file():
                missing.append(f"{ref} (no such file)")
    return missing


def claims_without_proof(markdown: str) -> list[str]:
    """The first words of every claim that names no test node or benchmark after ``Proof:``."""
    bare: list[str] = []
    for heading, body in _sections(markdown).items():
        if heading in UNPROVEN_SECTIONS:
            continue
        if heading in TABLE_SECTIONS:
            for cells in _table_rows(body):
                if not any(NODE.fullmatch(r) or BENCH.fullmatch(r) for r in _references(cells[-1])):
                    bare.append(f"{heading}: {' | '.join(cells)[:70]}…")
            continue
        for item in _items(body):
            proof = PROOF.search(item)
            refs = _references(proof.group(1)) if proof else []
            if not any(NODE.fullmatch(r) or BENCH.fullmatch(r) for r in refs):
                bare.append(f"{heading}: {' '.join(item.split())[:70]}…")
    return bare


def named_tests(markdown: str) -> list[str]:
    return [ref for ref in _references(markdown) if NODE.fullmatch(ref)]


# -- SECURITY.md itself ------------------------------------------------------------------------


def test_security_md_names_tests_and_has_every_section() -> None:
    assert SECURITY_MD.is_file(), "SECURITY.md is missing at the root of the repository"
    markdown = SECURITY_MD.read_text(encoding="utf-8")
    sections = _sections(markdown)
    absent = [name for name in REQUIRED_SECTIONS if name not in sections]
    assert not absent, f"SECURITY.md has no '## {absent[0]}' section (missing: {absent})"
    assert _items(sections["Not done yet"]), "SECURITY.md's 'Not done yet' section lists nothing"
    assert len(set(named_tests(markdown))) >= 50, (
        "SECURITY.md names fewer than 50 tests: its claims should each name their proof")
    empty = [h for h, body in sections.items()
             if h not in UNPROVEN_SECTIONS + TABLE_SECTIONS and not _items(body)]
    assert not empty, f"sections of SECURITY.md that make no claim: {', '.join(empty)}"
    assert list(sections)[0] == SUMMARY, f"SECURITY.md does not open with '## {SUMMARY}'"
    assert len(_table_rows(sections[SUMMARY])) >= 15, (
        f"SECURITY.md's '{SUMMARY}' table has fewer than 15 claims")


def test_every_test_and_benchmark_named_in_security_md_exists() -> None:
    missing = missing_proofs(SECURITY_MD.read_text(encoding="utf-8"), ROOT)
    assert not missing, (
        "SECURITY.md names proofs that do not exist (a test renamed or removed? update the "
        "claim, or move it to 'Not done yet'):\n  " + "\n  ".join(missing))


def test_every_claim_in_security_md_names_its_proof() -> None:
    bare = claims_without_proof(SECURITY_MD.read_text(encoding="utf-8"))
    assert not bare, (
        "claims in SECURITY.md without 'Proof:' and a test node or benchmark:\n  "
        + "\n  ".join(bare))


# -- the checker on a page made up for the purpose -----------------------------------------------

SAMPLE_TESTS = '''
import pytest

def test_kept():
    pass

@pytest.mark.parametrize("x", [1, 2])
def test_param(x):
    pass

def helper():
    pass

class TestGroup:
    def test_inside(self):
        pass
'''

SAMPLE_PAGE = """# Security

## At a glance

| Area | Claim | Proof |
| --- | --- | --- |
| Keys | Held well. | `tests/test_sample.py::test_kept` |
| Keys | Said, not shown. | see below |
| Keys | Gone. | `tests/test_sample.py::test_summary_gone` |

## Keys

- Held well. Proof: `tests/test_sample.py::test_kept`,
  `tests/test_sample.py::test_param[2]`, `tests/test_sample.py::TestGroup::test_inside`.
- Timed. Proof: `ops/bench/speed.py`.
- Named only. See `tests/test_sample.py::test_kept`.
- Renamed. Proof: `tests/test_sample.py::test_gone`.
- A helper is no test. Proof: `tests/test_sample.py::helper`.
- Elsewhere. Proof: `tests/test_absent.py::test_kept`, `ops/bench/slow.py`.

```sh
# a comment, not a heading
magistrate audit verify `tests/not_checked.py::test_x`
```

- Points at `ops/NOWHERE.md`. Proof: `tests/test_sample.py::TestGroup::test_outside`.

## Not done yet

- A gap, with no proof, and `ops/LATER.md` still to come.
- A slow benchmark, `ops/bench/missing.py`, and `tests/test_sample.py::test_planned`.
"""


def _sample_repo(tmp_path: Path) -> Path:
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(SAMPLE_TESTS, encoding="utf-8")
    (tmp_path / "ops" / "bench").mkdir(parents=True)
    (tmp_path / "ops" / "bench" / "speed.py").write_text("", encoding="utf-8")
    return tmp_path


def test_the_checker_reports_each_missing_proof_and_only_those(tmp_path: Path) -> None:
    root = _sample_repo(tmp_path)
    assert missing_proofs(SAMPLE_PAGE, root) == [
        "tests/test_sample.py::test_summary_gone "
        "(no test test_summary_gone in tests/test_sample.py)",
        "tests/test_sample.py::test_gone (no test test_gone in tests/test_sample.py)",
        "tests/test_sample.py::helper (no test helper in tests/test_sample.py)",
        "tests/test_absent.py::test_kept (no file tests/test_absent.py)",
        "ops/bench/slow.py (no such file)",
        "ops/NOWHERE.md (no such file)",
        "tests/test_sample.py::TestGroup::test_outside "
        "(no test TestGroup::test_outside in tests/test_sample.py)",
        "ops/bench/missing.py (no such file)",
        "tests/test_sample.py::test_planned (no test test_planned in tests/test_sample.py)",
    ]


def test_the_checker_finds_claims_without_proof_outside_the_gap_list() -> None:
    assert claims_without_proof(SAMPLE_PAGE) == [
        "At a glance: Keys | Said, not shown. | see below…",
        "Keys: - Named only. See `tests/test_sample.py::test_kept`.…"]
    sections = _sections(SAMPLE_PAGE)
    assert list(sections) == ["At a glance", "Keys", "Not done yet"]
    assert len(_table_rows(sections["At a glance"])) == 3
    assert len(_items(sections["Keys"])) == 7


def test_a_page_without_tests_or_gap_list_is_refused() -> None:
    empty = "# Security\n\n## Keys\n\nNothing is claimed.\n"
    assert named_tests(empty) == [] and "Not done yet" not in _sections(empty)
    assert claims_without_proof("## Keys\n\n- Safe, trust us.\n") == [
        "Keys: - Safe, trust us.…"]
