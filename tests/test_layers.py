"""The tenant runtime stands on its own: nothing under ``tenant_runtime/`` imports the control
plane or the workers (DESIGN.md: the control plane hands it a TenantContext, never the other
way round). The ``magistrate`` command (``control_plane/cli/``) sits on top of everything and
its command groups import only its shared helpers, never one another, so no import circle comes
back. Checked on the syntax tree, so an import inside a function counts too."""

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


# ---------------------------------------------------------------- the `magistrate` command

CLI = ROOT / "control_plane" / "cli"
CLI_SHARED = {"__init__", "root", "support"}  # the package, the parser, the shared helpers
ENTRY = ROOT / "control_plane" / "__main__.py"  # python -m control_plane


def imported_names(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, and for ``from a import b`` also ``a.b`` (which may be a
    submodule: ``from control_plane.cli import users`` imports ``control_plane.cli.users``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def command_modules() -> list[Path]:
    return sorted(p for p in CLI.glob("*.py") if p.stem not in CLI_SHARED)


def test_the_cli_helpers_import_none_of_the_command_groups():
    support = CLI / "support.py"
    offending = [f"control_plane/cli/support.py:{line} imports {module}"
                 for line, module in imported_names(support)
                 if within(module, "control_plane.cli")]
    assert not offending, "\n".join(offending)


def test_a_command_group_imports_only_the_shared_helpers_of_the_cli():
    """No circle: the groups use ``control_plane.cli.support``, never one another or the
    parser that registers them."""
    groups = command_modules()
    assert {p.stem for p in groups} >= {"stack", "users", "tenants", "keys", "audit", "doctor"}
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in groups for line, module in imported_names(path)
                 if within(module, "control_plane.cli")
                 and not within(module, "control_plane.cli.support")]
    assert not offending, "\n".join(offending)


def test_nothing_outside_the_cli_imports_it_but_the_entry_point():
    """The CLI sits on top: the web app, workers and tenant runtime never reach into it, and
    only ``python -m control_plane`` (``control_plane/__main__.py``) runs its ``main``."""
    files = [p for top in ("control_plane", "workers", "tenant_runtime", "ops")
             for p in sorted((ROOT / top).rglob("*.py")) if CLI not in p.parents]
    assert len(files) > 100
    offending = [f"{path.relative_to(ROOT)}:{line} imports {module}"
                 for path in files for line, module in imported_names(path)
                 if within(module, "control_plane.cli")
                 and not (path == ENTRY and module in ("control_plane.cli",
                                                       "control_plane.cli.main"))]
    assert not offending, "\n".join(offending)


def test_every_command_group_is_registered_and_every_parser_lives_in_the_cli():
    """A new command goes in a module of ``control_plane/cli/`` listed in ``root.GROUPS`` (so
    ``magistrate --help`` shows it); no module elsewhere builds an argparse command."""
    from control_plane.cli import root

    assert {g.__name__.rsplit(".", 1)[1] for g in root.GROUPS} == {
        p.stem for p in command_modules()}
    elsewhere = [f"{path.relative_to(ROOT)}:{node.lineno}"
                 for top in ("control_plane", "workers", "tenant_runtime")
                 for path in sorted((ROOT / top).rglob("*.py")) if CLI not in path.parents
                 for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                 and node.func.attr in ("add_subparsers", "add_parser")]
    assert not elsewhere, "\n".join(elsewhere)


def test_the_cli_checks_see_submodules_named_in_from_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from control_plane.cli import users\n")
    assert [m for _, m in imported_names(probe)] == ["control_plane.cli",
                                                     "control_plane.cli.users"]
