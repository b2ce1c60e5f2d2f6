"""Facts the documentation states about the code, checked against the code so they cannot go
stale: every migration revision is described in the architecture table
(``docs/architecture.md``)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def _revisions(tree: str) -> list[str]:
    found = []
    for path in sorted((ROOT / "alembic" / tree / "versions").glob("*.py")):
        match = re.search(r'^revision(?:: str)? = ["\']([^"\']+)["\']', path.read_text(), re.M)
        assert match, path
        found.append(match.group(1))
    return found


def test_the_architecture_table_describes_every_migration():
    page = ARCHITECTURE.read_text(encoding="utf-8")
    rows = {tree: next(line for line in page.splitlines()
                       if line.startswith(f"| `alembic/{tree}/` |"))
            for tree in ("control", "tenant")}
    for tree, row in rows.items():
        revisions = _revisions(tree)
        assert revisions, tree
        missing = [r for r in revisions if f"`{r}`" not in row]
        assert not missing, f"docs/architecture.md: alembic/{tree}/ row lacks {missing}"


def test_the_docs_do_not_say_chains_have_no_command():
    docs = "\n".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))
    assert "no CLI command for it" not in docs
    assert "`magistrate reconcile` runs it on" in docs
