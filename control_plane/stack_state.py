"""What a running ``magistrate up`` tells the other commands: ``$MAGISTRATE_HOME/up.json`` (its
pid, URL, ports, home and log file; no secret), and one pointer per running stack under the
user's state folder (``~/.local/state/magistrate/running/``), so a command started from another
shell, folder or environment can find the stack or say exactly which setting differs.

Both are written once the servers are up and removed when ``up`` stops; an entry whose process
is gone (a killed ``up``) is ignored and cleaned up by the next reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

STATE_FILE = "up.json"


@dataclass(frozen=True)
class StackState:
    pid: int
    home: str
    url: str
    port: int
    embedded_pg_port: int | None
    embedded_redis_port: int | None
    log: str | None


def _registry() -> Path:
    return Path.home() / ".local" / "state" / "magistrate" / "running"


def _pointer(home: Path) -> Path:
    return _registry() / (hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:16] + ".json")


def _write(path: Path, state: StackState) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    staging = path.with_name(path.name + f".{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(asdict(state), fh, indent=1)
    staging.replace(path)


def write_state(home: Path, state: StackState) -> None:
    """Record the running stack in its home and in the user's registry (best effort there: a
    read-only home folder of the user must not stop the stack)."""
    _write(home / STATE_FILE, state)
    with contextlib.suppress(OSError):
        _write(_pointer(home), state)


def clear_state(home: Path) -> None:
    for path in (home / STATE_FILE, _pointer(home)):
        with contextlib.suppress(OSError):
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    with contextlib.suppress(OSError):  # a reused pid is some other program
        return b"control_plane" in Path(f"/proc/{pid}/cmdline").read_bytes() or \
            b"magistrate" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return True


def _read(path: Path) -> StackState | None:
    try:
        data = json.loads(path.read_text())
        state = StackState(**{f.name: data[f.name] for f in fields(StackState)})
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(state.pid):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return state


def running_state(home: Path) -> StackState | None:
    """The stack ``magistrate up`` runs for ``home``, if one does."""
    return _read(home / STATE_FILE)


def other_running_stacks(home: Path) -> list[StackState]:
    """Stacks this user runs for homes other than ``home``."""
    try:
        pointers = sorted(_registry().glob("*.json"))
    except OSError:
        return []
    mine = str(home.resolve())
    found = []
    for pointer in pointers:
        state = _read(pointer)
        if state is not None and str(Path(state.home).resolve()) != mine:
            found.append(state)
    return found
