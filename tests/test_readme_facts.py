"""Facts the README states about the code, checked against the code so they cannot go stale:
every migration revision is described in the architecture table."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _revisions(tree: str) -> list[str]:
    found = []
    for path in sorted((ROOT / "alembic" / tree / "versions").glob("*.py")):
        match = re.search(r'^revision(?:: str)? = ["\']([^"\']+)["\']', path.read_text(), re.M)
        assert match, path
        found.append(match.group(1))
    return found


def test_the_architecture_table_describes_every_migration():
    readme = (ROOT / "README.md").read_text()
    rows = {tree: next(line for line in readme.splitlines()
                       if line.startswith(f"| `alembic/{tree}/` |"))
            for tree in ("control", "tenant")}
    for tree, row in rows.items():
        revisions = _revisions(tree)
        assert revisions, tree
        missing = [r for r in revisions if f"`{r}`" not in row]
        assert not missing, f"README's alembic/{tree}/ row does not describe {missing}"


def test_the_readme_does_not_say_chains_have_no_command():
    readme = (ROOT / "README.md").read_text()
    assert "no CLI command for it" not in readme
    assert "`magistrate reconcile` runs it on" in readme
