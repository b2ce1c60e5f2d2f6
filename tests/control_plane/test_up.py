"""`magistrate up`: the one-machine stack, on external servers and on the embedded default.
Ctrl-C stops every process it started; a second run reuses the data and keeps the Owner."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TEST_SECRET_KEY, free_port


def start_up(env: dict[str, str]) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen([sys.executable, "-m", "control_plane", "up"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    deadline = time.monotonic() + 120
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if "Magistrate is running" in line:
            return process, lines
    process.kill()
    process.communicate(timeout=60)  # reaped, its pipe closed: nothing of it outlives the test
    pytest.fail("magistrate up did not become ready:\n" + "\n".join(lines))


def stop_up(process: subprocess.Popen[str]) -> list[str]:
    process.send_signal(signal.SIGINT)
    try:
        out, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate(timeout=60)
        raise
    assert process.returncode == 0, out
    return out.splitlines()


def sign_in_over_http(port: int, email: str, password: str) -> int:
    import http.cookiejar

    jar = http.cookiejar.CookieJar()

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
            return None

    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), NoRedirect)
    base = f"http://127.0.0.1:{port}"
    page = opener.open(f"{base}/sign-in", timeout=10).read().decode()
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    data = urllib.parse.urlencode({"csrf_token": token, "email": email,
                                   "password": password}).encode()
    try:
        opener.open(f"{base}/sign-in", data=data, timeout=10)
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def base_env(home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_HOME=str(home), MAGISTRATE_PORT=str(port),
               MAGISTRATE_EMBEDDED_PG_PORT=str(free_port()),
               MAGISTRATE_EMBEDDED_REDIS_PORT=str(free_port()))
    return env


def second_shell_finds_the_stack(home: Path, port: int) -> None:
    """A command from another shell: with the same home but none of the port settings it finds
    the running stack; with another home it names the setting that differs."""
    state = json.loads((home / "up.json").read_text())
    assert state["home"] == str(home) and state["port"] == port and state["pid"] > 0
    bare = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    same_home = subprocess.run([sys.executable, "-m", "control_plane", "tenant", "list"],
                               env={**bare, "MAGISTRATE_HOME": str(home)},
                               capture_output=True, text=True, timeout=60)
    assert same_home.returncode == 0, same_home.stderr
    assert "demo" in same_home.stdout
    with tempfile.TemporaryDirectory() as elsewhere:
        other = subprocess.run([sys.executable, "-m", "control_plane", "tenant", "list"],
                               env=bare, cwd=elsewhere, capture_output=True, text=True,
                               timeout=60)
    assert other.returncode == 1
    assert "Traceback" not in other.stderr
    assert f"one runs with MAGISTRATE_HOME={home}" in other.stderr, other.stderr
    assert f"No `magistrate up` runs for MAGISTRATE_HOME={elsewhere}" in other.stderr


def test_up_on_external_servers(database_url, redis_url, services, tmp_path):
    port = free_port()
    env = base_env(tmp_path / "home", port)
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY,
               MAGISTRATE_ADMIN_EMAIL="admin@example.com",
               MAGISTRATE_ADMIN_PASSWORD="a-chosen-admin-password",
               MAGISTRATE_METRICS_TOKEN="m" * 40)
    stale = tmp_path / "home" / "metrics" / "counter_1.db"  # a previous run's file
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    process, lines = start_up(env)
    try:
        assert not any("embedded" in line for line in lines)
        assert "first Owner created: admin@example.com" in lines
        assert sign_in_over_http(port, "admin@example.com", "a-chosen-admin-password") == 303
        # the web process's samples, in the folder `up` emptied, added up by /metrics
        assert not stale.exists() and list(stale.parent.glob("counter_*.db"))
        scrape = urllib.request.Request(f"http://127.0.0.1:{port}/metrics",
                                        headers={"Authorization": "Bearer " + "m" * 40})
        text = urllib.request.urlopen(scrape, timeout=10).read().decode()  # noqa: S310
        assert 'magistrate_http_requests_total{method="POST",route="/sign-in",status="303"}' \
            in text, text[:2000]
        second = subprocess.run([sys.executable, "-m", "control_plane", "up"], env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert "`magistrate up` is already running" in second.stderr
    finally:
        stop_up(process)
    assert not (tmp_path / "home" / "postgres").exists()


def test_up_on_the_embedded_default_twice():
    home = Path(tempfile.mkdtemp(prefix="magistrate-up-test-"))
    port = free_port()
    env = base_env(home, port)
    try:
        process, lines = start_up(env)
        try:
            assert any(line.startswith("starting embedded Postgres") for line in lines)
            assert any(line.startswith("starting embedded Redis") for line in lines)
            created = [line for line in lines if line.startswith("one-time password")]
            assert len(created) == 1
            password = created[0].rsplit(": ", 1)[1]
            assert sign_in_over_http(port, "owner@magistrate.local", password) == 303
            second_shell_finds_the_stack(home, port)
        finally:
            out = stop_up(process)
        assert not (home / "up.json").exists()
        assert out[-1] == "stopped."
        assert oct(home.stat().st_mode & 0o777) in ("0o700", "0o710")
        # everything it started is gone: the ports are free again
        for name in ("MAGISTRATE_PORT", "MAGISTRATE_EMBEDDED_PG_PORT",
                     "MAGISTRATE_EMBEDDED_REDIS_PORT"):
            import socket

            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", int(env[name]))) != 0, name
        again, lines = start_up(env)
        try:
            assert "existing accounts kept; no new Owner created" in lines
            assert sign_in_over_http(port, "owner@magistrate.local", password) == 303
        finally:
            stop_up(again)
    finally:
        shutil.rmtree(home, ignore_errors=True)
