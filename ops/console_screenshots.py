"""Regenerate the console's screenshots in docs/img (1,366 px wide, Debian's Chromium).

    MAGISTRATE_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \
    MAGISTRATE_TEST_REDIS_URL=redis://127.0.0.1:6379/0 \
    .venv/bin/python ops/console_screenshots.py [OUTPUT_DIR]

It runs the browser test that builds a tenant with calls, approvals and audit events on a
throwaway database and photographs the main pages (tests/browser/test_console.py
``test_screenshots_of_the_main_pages``, whose ``SHOTS`` lists the pages and file names). The
output folder defaults to docs/img; docs/console.md shows the pictures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/browser/test_console.py::test_screenshots_of_the_main_pages"


def main(argv: list[str]) -> int:
    out = Path(argv[1]).resolve() if len(argv) > 1 else ROOT / "docs" / "img"
    env = {**os.environ, "MAGISTRATE_SCREENSHOTS_DIR": str(out),
           "MAGISTRATE_REQUIRE_BROWSER": "1"}
    for name in ("MAGISTRATE_TEST_DATABASE_URL", "MAGISTRATE_TEST_REDIS_URL"):
        if not env.get(name):
            print(f"{name} must name the test server (see docs/development.md).",
                  file=sys.stderr)
            return 2
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", TEST],  # noqa: S603 - our own test
                          cwd=ROOT, env=env, check=False)
    if done.returncode == 0:
        print(f"Screenshots written to {out}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))
