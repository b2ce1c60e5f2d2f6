"""The documentation names every setting and every ``MAGISTRATE_*`` variable the code reads.

- Each entry of ``control_plane.settings.SETTINGS`` must appear in the configuration tables
  (``docs/configuration.md``) or in a file under ``ops/``.
- Each ``"MAGISTRATE_..."`` string literal in ``control_plane/``, ``workers/``,
  ``tenant_runtime/`` and the test suite's ``conftest.py`` files must be mentioned in
  ``README.md``, ``docs/**/*.md`` or ``ops/**/*.md``.
- Conversely, the configuration tables name no variable that nothing reads.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from control_plane.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "configuration.md"
OPS = ROOT / "ops"
SOURCE_DIRS = ("control_plane", "workers", "tenant_runtime")
NAME = r"MAGISTRATE_[A-Z0-9_]+"
QUOTED_NAME = re.compile(r"""(["'])(""" + NAME + r""")\1""")
BACKTICKED_NAME = re.compile(r"`(" + NAME + r")`")


def _mentions(text: str, name: str) -> bool:
    """``name`` appears as a whole word (``MAGISTRATE_HOST`` is not found in ``..._HOSTS``)."""
    return re.search(r"(?<![A-Z0-9_])" + re.escape(name) + r"(?![A-Z0-9_])", text) is not None


def _configuration_tables() -> set[str]:
    """The names in the tables of ``docs/configuration.md`` (the page titled Configuration)."""
    markdown = CONFIGURATION.read_text(encoding="utf-8")
    assert markdown.startswith("# Configuration\n"), f"{CONFIGURATION} is not that page"
    return _table_names(markdown)


def _table_names(markdown: str) -> set[str]:
    """Backticked ``MAGISTRATE_*`` names in the first column of every Markdown table row."""
    names: set[str] = set()
    for line in markdown.splitlines():
        cells = line.strip().split("|")
        if line.strip().startswith("|") and len(cells) > 2:
            names.update(BACKTICKED_NAME.findall(cells[1]))
    return names


def _ops_texts(suffixes: tuple[str, ...] | None = None) -> str:
    texts: list[str] = []
    for path in sorted(OPS.rglob("*")):
        if not path.is_file() or (suffixes and path.suffix not in suffixes):
            continue
        try:
            texts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    return "\n".join(texts)


def _python_sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    files.extend(sorted((ROOT / "tests").rglob("conftest.py")))
    return files


def _names_read_in_code() -> dict[str, str]:
    """Every ``MAGISTRATE_*`` string literal, with the first file that holds it."""
    found: dict[str, str] = {}
    for path in _python_sources():
        source = path.read_text(encoding="utf-8")
        names = {m.group(2) for m in QUOTED_NAME.finditer(source)}
        for node in ast.walk(ast.parse(source, filename=str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if re.fullmatch(NAME, node.value):
                    names.add(node.value)
        for name in names:
            found.setdefault(name, str(path.relative_to(ROOT)))
    return found


def _docs_texts() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.rglob("*.md")))


def test_every_setting_is_in_the_configuration_table() -> None:
    table = _configuration_tables()
    ops = _ops_texts()
    missing = [s.name for s in SETTINGS if s.name not in table and not _mentions(ops, s.name)]
    assert not missing, (
        "settings in control_plane.settings.SETTINGS that docs/configuration.md's tables "
        f"(or a file under ops/) does not document: {', '.join(missing)}"
    )


def test_every_magistrate_variable_read_in_code_is_documented() -> None:
    read = _names_read_in_code()
    assert "MAGISTRATE_ENV" in read and "MAGISTRATE_TEST_DATABASE_URL" in read, (
        "the scan of the source tree found nothing: check SOURCE_DIRS"
    )
    docs = "\n".join((README.read_text(encoding="utf-8"), _docs_texts(), _ops_texts((".md",))))
    missing = sorted(f"{name} ({where})" for name, where in read.items()
                     if not _mentions(docs, name))
    assert not missing, (
        f"MAGISTRATE_* variables read in code but not mentioned in README.md, docs/ or ops/: "
        f"{', '.join(missing)}"
    )


def test_the_configuration_tables_name_only_variables_that_are_read() -> None:
    table = _configuration_tables()
    known = {s.name for s in SETTINGS} | set(_names_read_in_code())
    stale = sorted(table - known)
    assert not stale, (
        f"docs/configuration.md's tables name variables nothing reads: {', '.join(stale)}"
    )
