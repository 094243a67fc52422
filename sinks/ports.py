"""A free local TCP port, for the embedded stores' servers."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that is unused now. It is only reserved while probing, so another
    process could take it before the caller binds it: good enough for local servers and tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
