"""The documentation site (``mkdocs.yml``, ``docs/``) builds in strict mode, so a broken link,
a missing anchor or a page left out of the navigation fails the suite as it fails ``make docs``;
and the README keeps what a newcomer needs: the two commands, the five-minute walkthrough (the
same text as the Quick start page's) and the links to the reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
WALKTHROUGH = "## Five minutes: from sign-in to a first call"


def _build(project: Path, site: Path) -> subprocess.CompletedProcess[str]:
    # never `-q`: it hides the warnings that strict mode counts, and a broken build passes
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f",
         str(project / "mkdocs.yml"), "-d", str(site)],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def _copy_project(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "mkdocs.yml", project)
    shutil.copy(ROOT / "SECURITY.md", project)
    shutil.copytree(ROOT / "docs", project / "docs")
    shutil.copytree(ROOT / "ops", project / "ops", ignore=shutil.ignore_patterns("__pycache__"))
    return project


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(heading)
    end = markdown.find("\n## ", start + len(heading))
    return markdown[start:] if end < 0 else markdown[start:end]


def test_the_documentation_site_builds_in_strict_mode(tmp_path: Path) -> None:
    result = _build(ROOT, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    site = tmp_path / "site"
    for page in ("configuration", "architecture", "gateway", "roles", "upgrade-notes"):
        assert (site / page / "index.html").is_file(), page
    # the reviewer's pages outside docs/ are part of the site, at their repository paths
    assert "Not done yet" in (site / "SECURITY" / "index.html").read_text(encoding="utf-8")
    assert (site / "ops" / "SECURITY_REVIEW" / "index.html").is_file()
    assert (site / "ops" / "verify_audit_chain.py").is_file()


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    assert _build(project, tmp_path / "ok").returncode == 0
    page = project / "docs" / "gateway.md"
    page.write_text(page.read_text(encoding="utf-8") + "\nSee [the old page](gone.md).\n",
                    encoding="utf-8")
    result = _build(project, tmp_path / "broken")
    assert result.returncode != 0
    assert "gone.md" in result.stderr


def test_a_page_left_out_of_the_navigation_fails_the_strict_build(tmp_path: Path) -> None:
    project = _copy_project(tmp_path)
    (project / "docs" / "orphan.md").write_text("# Orphan\n", encoding="utf-8")
    result = _build(project, tmp_path / "site")
    assert result.returncode != 0
    assert "orphan.md" in result.stderr


def test_the_readme_keeps_the_two_commands_and_the_links() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "```sh\nmake run\n```" in readme and "```sh\nmake test\n```" in readme
    links = set(re.findall(r"\]\(([^)#\s]+)", readme))
    for target in ("SECURITY.md", "ops/SECURITY_REVIEW.md", "ops/BENCHMARKS.md",
                   "docs/configuration.md", "docs/upgrade-notes.md", "docs/quickstart.md"):
        assert target in links, f"README.md does not link to {target}"
    missing = sorted(t for t in links if "://" not in t and not (ROOT / t).exists())
    assert not missing, f"README.md links to files that do not exist: {missing}"


def test_the_readme_walkthrough_is_the_quick_start_walkthrough() -> None:
    readme = _section(README.read_text(encoding="utf-8"), WALKTHROUGH)
    quick_start = _section((ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8"),
                           WALKTHROUGH)
    assert readme.replace("](docs/", "](").strip() == quick_start.strip()
    for needle in ('OpenAI(base_url="http://127.0.0.1:8000/v1"',
                   'Anthropic(base_url="http://127.0.0.1:8000"',
                   "MAGISTRATE_GATEWAY_PRIVATE_NETWORKS", "`gateway` scope"):
        assert needle in readme, needle
