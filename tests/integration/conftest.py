"""Fixtures shared by the integration tests that run a worker with its sinks."""

from tests.integration.test_serving import http, served

__all__ = ["http", "served"]
