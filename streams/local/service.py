"""One base for the servers the demo and the tests run on this machine: Kafka (Tansu), Redis, PostgreSQL.

Each is a child process on 127.0.0.1 at a port chosen once, in the constructor, so a
restart comes back where its clients expect it. `start()` returns once the server
answers (`_ready`), or raises the subclass's `StartError` with the tail of its log;
`stop()` ends the process (SIGTERM, then SIGKILL); `close()` also removes its data.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port on `host` that is unused now. It is only reserved while probing, so another
    process could take it before the caller binds it: good enough for local servers and tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalService:
    """A server in a child process; subclasses say how to launch it and when it is ready."""

    #: What `start()` raises when the server exits or does not answer in time.
    StartError: type[Exception] = RuntimeError
    #: The server's name in messages.
    what = "server"

    def __init__(self, port: int | None, *, start_timeout: float, stop_timeout: float) -> None:
        self._port = port if port is not None else free_port()
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log_path(self) -> Path | None:
        """Where the server writes its log, once started."""
        return None

    def start(self) -> Self:
        if self._process is not None:
            raise RuntimeError(f"{self!r} already started")
        self._process = self._launch()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Ends the server; a no-op when it is not running."""
        process, self._process = self._process, None
        if process is not None:
            terminate(process, self._stop_timeout)
        self._stopped()

    def close(self) -> None:
        """Stops the server and removes whatever it keeps."""
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # --- for subclasses ---------------------------------------------------------------------

    def _launch(self) -> subprocess.Popen[bytes]:
        raise NotImplementedError

    def _ready(self, time_left: float) -> bool:
        """Whether the server answers now."""
        raise NotImplementedError

    def _stopped(self) -> None:
        """After the process is gone: remove what a stop removes."""

    def _popen(
        self, command: Sequence[str], *, cwd: Path, log: int | IO[bytes], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            # Own process group: a Ctrl-C aimed at the parent must not end the server before its users.
            start_new_session=True,
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout
        last_error: BaseException | None = None
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise self.StartError(
                    f"{self.what} exited with code {self._process.returncode} before answering on "
                    f"{HOST}:{self._port} (is the port taken?).\n--- log tail ---\n{self.log_tail()}"
                )
            try:
                if self._ready(max(deadline - time.monotonic(), 1.0)):
                    return
            except Exception as exc:  # retried until the deadline
                last_error = exc
            if time.monotonic() > deadline:
                raise self.StartError(
                    f"{self.what} did not answer on {HOST}:{self._port} within {self._start_timeout:.0f}s"
                    f"{f' (last error: {last_error!r})' if last_error else ''}.\n--- log tail ---\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {HOST}:{self._port} {'running' if self.running else 'stopped'}>"
