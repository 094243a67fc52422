"""A private PostgreSQL server for local runs and tests, when the configured one is unreachable.

The server binaries come from the `pgserver` wheel (PostgreSQL 16 built for
manylinux), or, without it, from the machine's own PostgreSQL install
(`/usr/lib/postgresql/*/bin`). Each `EmbeddedPostgres` has a data directory of
its own in a temp dir and listens on 127.0.0.1 on a free port; `stop()` keeps
the data so `start()` brings the same database back (tests use this to restart
the server mid-stream), `close()` removes it.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres`
system user if there is one, else as `nobody`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from models.errors import LoyaltyError
from sinks.postgres import database_name
from streams.local.service import HOST as _HOST
from streams.local.service import LocalService

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError", "postgres_binaries", "postgres_or_embedded", "reachable"]

logger = logging.getLogger(__name__)

_SUPERUSER = "postgres"


class EmbeddedPostgresError(LoyaltyError):
    """No PostgreSQL binaries were found, or the server did not start or stop in time."""


@dataclass(frozen=True, slots=True)
class _RunAs:
    uid: int
    gid: int
    name: str


def postgres_binaries() -> Path:
    """The `bin` folder with `initdb`, `pg_ctl` and `postgres`: the pgserver wheel's, else the system's newest."""
    spec = importlib.util.find_spec("pgserver")  # located, not imported: importing it sets up locks and atexit hooks
    if spec is not None and spec.origin is not None:
        wheel_bin = Path(spec.origin).parent / "pginstall" / "bin"
        if (wheel_bin / "pg_ctl").exists():
            return wheel_bin
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(system):
        if (candidate / "pg_ctl").exists():
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL binaries found: install the project (it depends on the `pgserver` wheel) "
        "or the system's postgresql package, or set DATABASE_URL to a running server"
    )


def reachable(dsn: str, timeout: float = 2.0) -> bool:
    """True when something accepts connections at the DSN's host and port (no login is attempted)."""
    parts = urlsplit(dsn)
    host = parts.hostname or _HOST
    port = parts.port or 5432
    try:
        if host.startswith("/"):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(f"{host}/.s.PGSQL.{port}")
        else:
            with socket.create_connection((host, port), timeout=timeout):
                pass
    except OSError:
        return False
    return True


def _unprivileged_user() -> _RunAs | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        return _RunAs(entry.pw_uid, entry.pw_gid, name)
    raise EmbeddedPostgresError("running as root and neither a `postgres` nor a `nobody` user exists to run PostgreSQL")


def _others_can_run(bin_dir: Path) -> bool:
    for folder in (bin_dir, *bin_dir.parents):
        if not folder.stat().st_mode & stat.S_IXOTH:
            return False
    return all((bin_dir / exe).stat().st_mode & stat.S_IXOTH for exe in ("initdb", "pg_ctl", "postgres"))


def _shared_copy(bin_dir: Path) -> Path:
    """The install copied where an unprivileged user can run it (e.g. from a venv under /root).

    The wheel's binaries find their libraries through an RPATH of
    `$ORIGIN/../../../pgserver.libs`, so the copy keeps that layout.
    """
    install = bin_dir.parent  # .../site-packages/pgserver/pginstall
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256(str(install).encode()).hexdigest()[:12]
    target = Path(tempfile.gettempdir()) / f"loyalty-postgres-{digest}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="loyalty-postgres-copy-"))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # another process won the race; its copy is as good
            shutil.rmtree(staging, ignore_errors=True)
    return copied_bin


class EmbeddedPostgres(LocalService):
    """A private PostgreSQL server on `127.0.0.1:<port>`, trust auth, superuser `postgres`.

    Usage::

        with EmbeddedPostgres() as pg:
            sink = PostgresSink(pg.dsn("loyalty"))

    `start()` returns once the server accepts connections; the first start runs initdb.
    `pg_ctl` runs the server as a daemon, so its start and stop are its own.
    """

    StartError = EmbeddedPostgresError
    what = "PostgreSQL"

    def __init__(
        self,
        port: int | None = None,
        *,
        bin_dir: Path | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._bin_dir = bin_dir
        self._run_as = _unprivileged_user()
        self._root: Path | None = None

    @property
    def data_dir(self) -> Path | None:
        return None if self._root is None else self._root / "data"

    @property
    def log_path(self) -> Path | None:
        return None if self._root is None else self._root / "postgres.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://{_SUPERUSER}@{_HOST}:{self._port}/{database}"

    @property
    def running(self) -> bool:
        return self._postmaster_pid() is not None

    def start(self) -> EmbeddedPostgres:
        """Starts the server (initialising its data directory the first time); a no-op when it runs."""
        if self.running:
            return self
        bin_dir = self._binaries()
        if self._root is None:
            self._root = Path(tempfile.mkdtemp(prefix="loyalty-pg-"))
            if self._run_as is not None:
                os.chown(self._root, self._run_as.uid, self._run_as.gid)
            self._run(
                bin_dir / "initdb",
                "-D",
                str(self._root / "data"),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            )
        data_dir = self._root / "data"
        # A private throw-away server: no fsync, sockets only on loopback and in its own folder.
        options = f"-h {_HOST} -p {self._port} -k {data_dir} -c fsync=off -c full_page_writes=off"
        self._run(
            bin_dir / "pg_ctl",
            "start",
            "-D",
            str(data_dir),
            "-w",
            "-t",
            str(int(self._start_timeout)),
            "-l",
            str(self._root / "postgres.log"),
            "-o",
            options,
            timeout=self._start_timeout + 5,
        )
        logger.info("embedded PostgreSQL listening on %s:%d", _HOST, self._port)
        return self

    def stop(self) -> None:
        """Stops the server (open sessions are ended) and keeps its data for the next `start()`."""
        if self._root is None or not self.running:
            return
        try:
            self._run(
                self._binaries() / "pg_ctl",
                "stop",
                "-D",
                str(self._root / "data"),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(self._stop_timeout)),
                timeout=self._stop_timeout + 5,
            )
        except EmbeddedPostgresError:
            pid = self._postmaster_pid()
            if pid is None:
                raise
            logger.warning("PostgreSQL did not stop in time; killing postmaster %d", pid)
            os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid)

    def close(self) -> None:
        """Stops the server and removes its data directory."""
        try:
            self.stop()
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
                self._root = None

    def _binaries(self) -> Path:
        if self._bin_dir is None:
            found = postgres_binaries()
            if self._run_as is not None and not _others_can_run(found):
                found = _shared_copy(found)
            self._bin_dir = found
        return self._bin_dir

    def _run(self, *command: str | Path, timeout: float = 60.0) -> None:
        args = [str(part) for part in command]
        run_as = self._run_as
        try:
            subprocess.run(
                args,
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                cwd=self._root,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                # Own session: a Ctrl-C aimed at the parent must not kill the server under the app.
                start_new_session=True,
            )
        except subprocess.CalledProcessError as exc:
            output = exc.stdout.decode(errors="replace") if exc.stdout else ""
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} {args[1]} failed (exit {exc.returncode}):\n{output}\n{self.log_tail()}"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedPostgresError(
                f"{Path(args[0]).name} {args[1]} took longer than {timeout:.0f}s\n{self.log_tail()}"
            ) from exc

    def _postmaster_pid(self) -> int | None:
        if self._root is None:
            return None
        try:
            pid = int((self._root / "data" / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass  # alive, owned by another user
        return pid

    def _wait_gone(self, pid: int) -> None:
        deadline = time.monotonic() + self._stop_timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise EmbeddedPostgresError(f"postmaster {pid} still running after SIGKILL")


@contextlib.contextmanager
def postgres_or_embedded(dsn: str, *, probe_timeout: float = 2.0) -> Iterator[str]:
    """Yields `dsn` when a server answers there, else the DSN of an embedded server (same database name)
    that runs until the block ends."""
    if reachable(dsn, probe_timeout):
        yield dsn
        return
    parts = urlsplit(dsn)
    logger.info("no PostgreSQL at %s:%s; starting an embedded one", parts.hostname or _HOST, parts.port or 5432)
    started = time.monotonic()
    with EmbeddedPostgres() as server:
        logger.info("embedded PostgreSQL ready in %.1fs", time.monotonic() - started)
        yield server.dsn(database_name(dsn) or _SUPERUSER)
