"""`python -m models.build`: compiles the core where it can (models/compiled.py); the Makefile runs it."""

from models.compiled import build

if __name__ == "__main__":
    build()
