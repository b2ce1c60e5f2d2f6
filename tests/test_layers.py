"""The tenant runtime stands on its own: nothing under ``tenant_runtime/`` imports the control
plane or the workers (DESIGN.md: the control plane hands it a TenantContext, never the other
way round). Checked on the syntax tree, so an import inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("control_plane", "workers")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_the_tenant_runtime_imports_neither_the_control_plane_nor_the_workers():
    files = sorted((ROOT / "tenant_runtime").rglob("*.py"))
    assert len(files) > 50
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in files for line, module in imported_modules(path)
                 if module.split(".")[0] in FORBIDDEN]
    assert not offending, "\n".join(offending)


def test_the_check_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from control_plane.db import utcnow\n    import workers.jobs\n")
    assert [m for _, m in imported_modules(probe)] == ["control_plane.db", "workers.jobs"]
