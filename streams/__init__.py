"""The live pipeline, the offline history commands and the local servers.

A program that imports it runs the core compiled where a matching build exists (models/compiled.py).
"""

from models.compiled import activate

activate()
