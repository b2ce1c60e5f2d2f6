"""`make run` from a fresh clone inside a folder nobody else may enter (mode 0700, as
`mktemp -d` makes and as `/root` is), as root and as an unprivileged user, on the embedded
default: the embedded Postgres starts, the banner gives the one-time password, and it signs in.

The clone is the work tree's tracked files (so what is tested is the code as it stands), with a
venv that `uv sync --frozen` builds (from the local cache where it can); `make run` then finds the
install up to date and runs `magistrate up`. Slow (two full stacks): run it on its own."""

from __future__ import annotations

import os
import pty
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from control_plane.embedded import cluster_folder
from tests.conftest import drop_database, free_port
from tests.control_plane.test_up import sign_in_over_http

REPO = Path(__file__).resolve().parents[2]
TEST_USER = "magistrate-fresh-test"
PASSWORD_LINE = "one-time password (shown once, change it at first sign-in): "


def _uv() -> str:
    for candidate in (shutil.which("uv"), REPO / ".tools" / "bin" / "uv",
                      Path(sys.executable).parent / "uv"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.skip("no uv binary to build the clone's venv with (run `make install` first)")


def _system_python() -> str:
    """An interpreter every user may run (the venv's may live under /root)."""
    base = Path(sys.base_prefix) / "bin" / "python3"
    for candidate in (base, Path("/usr/bin/python3")):
        if candidate.exists() and all(os.stat(p).st_mode & 0o001
                                      for p in [candidate.resolve(), *candidate.resolve().parents]):
            return str(candidate)
    pytest.skip("no Python interpreter that an unprivileged user may run")


def _make_clone(parent: Path, python: str) -> Path:
    """Copy the tracked files into ``parent/magistrate`` and build its venv from the cache."""
    clone = parent / "magistrate"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                            "--exclude-standard"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if not source.exists():
            continue  # deleted in the work tree
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, clone / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_"))}
    result = subprocess.run([_uv(), "sync", "--frozen", "--python", python,
                             "--quiet"], cwd=clone, env=env, capture_output=True, text=True,
                            timeout=600)
    if result.returncode != 0:
        pytest.skip(f"cannot build the clone's venv: {result.stderr.strip()[:300]}")
    (clone / ".venv" / ".installed").touch()
    # where the Makefile puts uv when it is not on PATH: `make run` then finds the install up
    # to date, whoever runs it (a uv under /root would be out of an unprivileged user's reach)
    (clone / ".tools" / "bin").mkdir(parents=True)
    shutil.copy2(Path(_uv()).resolve(), clone / ".tools" / "bin" / "uv")
    return clone


def _run_make(clone: Path, port: int, *, user: pwd.struct_passwd | None,
              terminal: bool) -> tuple[subprocess.Popen[str], list[str], int | None]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAGISTRATE_", "VIRTUAL_ENV"))}
    env.update(MAGISTRATE_PORT=str(port), MAGISTRATE_EMBEDDED_PG_PORT=str(free_port()),
               MAGISTRATE_EMBEDDED_REDIS_PORT=str(free_port()))
    if user is not None:
        env.update(HOME=str(clone), USER=user.pw_name, LOGNAME=user.pw_name)
    # on a terminal `up` keeps its JSON logs in a file; off one they go to standard error
    leader, follower = pty.openpty() if terminal else (None, None)
    process = subprocess.Popen(
        ["make", "--no-print-directory", "run", "UV=.tools/bin/uv"], cwd=clone, env=env,
        stdout=subprocess.PIPE, stderr=follower if terminal else subprocess.PIPE, text=True,
        user=user.pw_uid if user else None, group=user.pw_gid if user else None,
        extra_groups=[] if user else None, start_new_session=True)
    if follower is not None:
        os.close(follower)
    lines: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "Magistrate is running" in line:
            return process, lines, leader
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(30)
    err = process.stderr.read() if process.stderr else _drain(leader)
    pytest.fail("make run did not become ready:\n" + "\n".join(lines) + "\n" + err[-3000:])


def _drain(leader: int | None) -> str:
    """What the process wrote to its terminal (the pty's other end)."""
    if leader is None:
        return ""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer is gone
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def _stop(process: subprocess.Popen[str], leader: int | None) -> tuple[list[str], str]:
    # Ctrl-C reaches `magistrate up`, not make (which would report the interrupt as a failure)
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
    for child in children:
        os.kill(int(child), signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if leader is not None:
        err = _drain(leader)
    assert process.returncode == 0, out + err
    return out.splitlines(), err or ""


def _sign_in_from_banner(lines: list[str], port: int) -> None:
    assert "Traceback" not in "\n".join(lines)
    passwords = [line[len(PASSWORD_LINE):] for line in lines if line.startswith(PASSWORD_LINE)]
    assert len(passwords) == 1, lines
    # the banner comes last: the password is among the final lines, after every start-up line
    assert lines.index(PASSWORD_LINE + passwords[0]) >= len(lines) - 8
    assert sign_in_over_http(port, "owner@magistrate.local", passwords[0]) == 303


@pytest.fixture
def locked_folder():
    folder = Path(tempfile.mkdtemp(prefix="magistrate-fresh-"))
    assert folder.stat().st_mode & 0o777 == 0o700
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _unprivileged_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        result = subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                                 "/usr/sbin/nologin", TEST_USER], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot create an unprivileged user: {result.stderr.strip()}")
        return pwd.getpwnam(TEST_USER)


@pytest.mark.skipif(os.geteuid() != 0, reason="runs `make run` as root; the suite is not root")
def test_make_run_as_root_from_a_folder_others_cannot_enter(locked_folder):
    clone = _make_clone(locked_folder, sys.executable)
    home = clone / ".magistrate"
    port = free_port()
    process, lines, leader = _run_make(clone, port, user=None, terminal=True)
    try:
        _sign_in_from_banner(lines, port)
        # the server's user cannot reach the home, so its data lives where it can
        folder = cluster_folder(home)
        assert folder != home and (folder / "postgres" / "PG_VERSION").exists()
        assert (home / "postgres.location").read_text().startswith(str(folder))
        assert locked_folder.stat().st_mode & 0o777 == 0o700  # nothing was opened up
    finally:
        out, err = _stop(process, leader)
        shutil.rmtree(cluster_folder(home), ignore_errors=True)
    assert out[-1] == "stopped."
    # on a terminal: no JSON log line there, all of them in the home's log file
    assert '"logger"' not in err and "Traceback" not in err
    assert '"logger"' in (home / "logs" / "magistrate.log").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create an unprivileged user")
def test_make_run_as_an_unprivileged_user_from_a_folder_others_cannot_enter(locked_folder):
    user = _unprivileged_user()
    clone = _make_clone(locked_folder, _system_python())
    for path in [locked_folder, *locked_folder.rglob("*")]:
        if ".venv" not in path.parts:
            os.lchown(path, user.pw_uid, user.pw_gid)
    port = free_port()
    process, lines, leader = _run_make(clone, port, user=user, terminal=False)
    try:
        _sign_in_from_banner(lines, port)
        home = clone / ".magistrate"
        assert (home / "postgres" / "PG_VERSION").stat().st_uid == user.pw_uid
    finally:
        out, err = _stop(process, leader)
    assert out[-1] == "stopped."
    # not on a terminal: the JSON logs stay on standard error, and no traceback anywhere
    assert '"logger"' in err and "Traceback" not in err


def test_an_unexpected_error_is_one_sentence_and_a_report_file(pg_server_url, tmp_path):
    """A control database whose recorded revision this code does not know makes Alembic fail
    in a way no command anticipates: the user sees one line, the traceback goes to a file."""
    import psycopg

    from tests.conftest import with_database

    name = f"magistrate_bogus_{os.getpid()}"
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        drop_database(conn, name)
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(pg_server_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
            conn.execute("INSERT INTO alembic_version VALUES ('no_such_revision')")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
        env.update(MAGISTRATE_DATABASE_URL=url, MAGISTRATE_HOME=str(tmp_path / "home"),
                   MAGISTRATE_REDIS_URL="redis://127.0.0.1:1/0")
        result = subprocess.run([sys.executable, "-m", "control_plane", "migrate"], env=env,
                                capture_output=True, text=True, timeout=120)
    finally:
        with psycopg.connect(pg_server_url, autocommit=True) as conn:
            drop_database(conn, name)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("magistrate: unexpected error (")
    report = Path(re.search(r"the details are in (\S+)\. ", last).group(1))
    assert report.parent == tmp_path / "home" / "logs"
    assert oct(report.stat().st_mode & 0o777) == "0o600"
    assert "Traceback" in report.read_text()


def test_a_home_that_cannot_be_created_is_one_sentence(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_HOME=str(blocker / "home"))
    result = subprocess.run([sys.executable, "-m", "control_plane", "up"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"magistrate: cannot create MAGISTRATE_HOME {blocker / 'home'} (Not a directory); set "
        "MAGISTRATE_HOME to a folder you may write to."]
