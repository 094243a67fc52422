"""Benchmarks: figures side by side, printed, never asserted. They run the core as the worker does."""

from models.compiled import activate

activate()
