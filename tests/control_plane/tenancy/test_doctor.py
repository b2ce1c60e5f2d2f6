"""`magistrate doctor`: one finding per check with what to do, exit 1 on any failure, and
never a traceback or a password; each check is seen both passing and failing here."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.conftest import TEST_SECRET_KEY
from tests.control_plane.tenancy.helpers import create_tenant, run_pending_jobs
from tests.factories import make_user


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "control_plane", "doctor"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def findings(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """check name → status, from the finding lines."""
    found = {}
    for line in result.stdout.splitlines():
        if line[:5].strip() in ("ok", "warn", "FAIL"):
            check = line[6:].split(": ", 1)[0]
            found[check] = line[:5].strip()
    return found


def test_doctor_sees_a_healthy_stack_then_a_revoked_key(services, db, database_url, redis_url,
                                                        primary_server, local_kek):
    owner = make_user(db)
    create_tenant(services, owner.email, "acme", key_ref=local_kek)
    run_pending_jobs(services, database_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_DATABASE_URL=database_url, MAGISTRATE_REDIS_URL=redis_url,
               MAGISTRATE_SECRET_KEY=TEST_SECRET_KEY, MAGISTRATE_ENV="test",
               MAGISTRATE_HOME=str(services.settings.home))
    without_worker = doctor(env)
    assert without_worker.returncode == 1
    status = findings(without_worker)
    assert status["workers"] == "FAIL"
    assert "→ start one: `magistrate worker`" in without_worker.stdout
    for check in ("configuration", "postgres", "clock (Postgres)", "migrations", "redis",
                  "clock (Redis)", "tenant acme key", "tenant acme database", "disk"):
        assert status[check] == "ok", without_worker.stdout
    assert TEST_SECRET_KEY not in without_worker.stdout
    worker = subprocess.Popen([sys.executable, "-m", "control_plane", "worker"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            healthy = doctor(env)
            if healthy.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert healthy.returncode == 0, healthy.stdout
        assert findings(healthy)["workers"] == "ok"
        assert healthy.stdout.splitlines()[-1].endswith("0 failed, 0 warnings")
        (services.settings.home / "keys" / f"{local_kek}.key").unlink()  # the KEK is revoked
        revoked = doctor(env)
    finally:
        worker.terminate()
        worker.wait(90)
    assert revoked.returncode == 1
    assert findings(revoked)["tenant acme key"] == "FAIL"
    assert "tenant key unavailable" in revoked.stdout
    assert "the customer's KMS must let Magistrate use the key again" in revoked.stdout


def test_doctor_names_unreachable_servers_and_bad_settings(tmp_path, refused_port):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAGISTRATE_")}
    env.update(MAGISTRATE_HOME=str(tmp_path / "home"),
               MAGISTRATE_DATABASE_URL=f"postgresql://u:hunter2-secret@127.0.0.1:"
                                       f"{refused_port()}/x",
               MAGISTRATE_REDIS_URL=f"redis://:hunter2-secret@127.0.0.1:{refused_port()}/0")
    down = doctor(env)
    assert down.returncode == 1
    status = findings(down)
    assert status["configuration"] == "ok"
    assert status["postgres"] == "FAIL" and status["redis"] == "FAIL"
    assert "check MAGISTRATE_DATABASE_URL" in down.stdout
    assert "check MAGISTRATE_REDIS_URL" in down.stdout
    assert "hunter2" not in down.stdout + down.stderr
    bad = doctor({**env, "MAGISTRATE_PORT": "abc"})
    assert bad.returncode == 1
    assert findings(bad) == {"configuration": "FAIL"}
    assert "MAGISTRATE_PORT" in bad.stdout
