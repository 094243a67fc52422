"""The tests run the core as the worker does: compiled where a matching build exists (models/compiled.py)."""

from models.compiled import activate

activate()
