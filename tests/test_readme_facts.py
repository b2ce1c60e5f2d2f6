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


# what each of deprovision.REVOCATIONS is called where the docs say what a deactivation cuts
REVOKED_AS = {"sessions_revoked": "session", "api_keys_revoked": "API key",
              "mcp_grants_revoked": "MCP client grant"}


def _paragraph(text: str, start: str) -> str:
    """From ``start`` to the next blank line (a list item or a table row runs to its end)."""
    begin = text.index(start)
    end = text.find("\n\n", begin)
    return text[begin:] if end < 0 else text[begin:end]


def test_every_revocation_of_a_deactivation_is_named_where_the_docs_describe_it():
    from control_plane.users.deprovision import REVOCATIONS

    assert {name for name, _ in REVOCATIONS} == set(REVOKED_AS), (
        "a revocation was added to deprovision.REVOCATIONS: name it here and in the docs")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sso = (ROOT / "docs" / "sso.md").read_text(encoding="utf-8")
    cli = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    security = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    places = {
        "README step 4": _paragraph(readme, "4. **Provision over SCIM**"),
        "docs/sso.md Deprovisioning": _paragraph(sso, "- **Deprovisioning**"),
        "docs/cli.md user deactivate": next(line for line in cli.splitlines()
                                            if "`magistrate user deactivate" in line),
        "SECURITY.md SCIM claim": _paragraph(security, "- SCIM tokens are shown once"),
    }
    for place, text in places.items():
        flat = " ".join(text.split())
        for word in REVOKED_AS.values():
            assert word in flat, f"{place} does not say a deactivation revokes each {word}"
    for page, text in (("docs/sso.md", sso), ("SECURITY.md", security)):
        flat = " ".join(text.split())
        assert "grants are not in it" not in flat and "grants are not yet in" not in flat, page
