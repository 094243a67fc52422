"""The core compiled with mypyc where a C compiler is at hand, run as Python where not.

    python -m models.build        # the Makefile runs it after installing

Builds `MODULES` into `.compiled/` beside the package, with a manifest of what they
were built from. Importing `models` does nothing of the kind: the programs' packages
(`streams`, `benchmarks`) call `activate()` when they are imported, which puts that build
ahead of the sources only while the manifest matches the sources as they are now
(`matches`), so an edited source is never shadowed by a stale build: it simply runs as
Python until the next build. `LOYALTY_PURE_PYTHON=1` runs the sources regardless.

Compiled, the core rebuilds byte-identical states faster (docs/performance.md has the
figures). Without a compiler (or mypy), the build says so and leaves the core as
Python; every test passes either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path

#: The modules a replay and a worker spend their time in. Not compiled: `errors` (nothing to
#: gain), `whatif` (a tally run once per what-if) and this module.
MODULES = (
    "campaigns",
    "cards",
    "engine",
    "events",
    "frontier",
    "history",
    "inputs",
    "levels",
    "messages",
    "periods",
    "processor",
    "records",
    "shards",
    "state",
    "views",
)
PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
BUILD = ROOT / ".compiled"
MANIFEST = BUILD / "manifest.json"
#: What the compiled modules were built against besides themselves: the other modules of the
#: core, the configuration's classes (models/schema.py) among them, whose types the compiled code relies on.
SOURCE_DIRS = (PACKAGE,)


#: Whether the core runs compiled in this process.
ACTIVE = False


def activate() -> bool:
    """Runs the core compiled from now on in this process, where a matching build exists and no
    module of the core has been imported yet (a compiled module and a Python one of the same
    classes cannot be mixed); returns whether the core runs compiled."""
    global ACTIVE
    import models

    if not ACTIVE and not any(f"models.{name}" in sys.modules for name in MODULES):
        ACTIVE = use(models.__path__)
    return ACTIVE


def fingerprint() -> dict[str, object]:
    """What a build is valid for: this interpreter, and every source it was compiled against."""
    sources = {
        str(path.relative_to(ROOT)): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in SOURCE_DIRS
        for path in sorted(folder.glob("*.py"))
    }
    return {"python": sys.version, "platform": sysconfig.get_platform(), "sources": sources}


def matches() -> bool:
    """Whether `.compiled/` holds a build of the sources as they are now, for this interpreter."""
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return False
    return bool(recorded == fingerprint())


def use(path: list[str]) -> bool:
    """Puts the build ahead of the package's sources (`path`: the package's `__path__`) if it
    matches them; returns whether it did."""
    if os.environ.get("LOYALTY_PURE_PYTHON") or not BUILD.is_dir():
        return False
    if not matches():
        print(
            "models: .compiled/ was built from other sources; running the core as Python "
            "(`make` or `python -m models.build` builds it again)",
            file=sys.stderr,
        )
        return False
    path.insert(0, str(BUILD / "models"))
    if str(BUILD) not in sys.path:
        sys.path.append(str(BUILD))  # the modules' shared library is a top-level module
    return True


def build() -> bool:
    """Compiles `MODULES` into `.compiled/`; False (and the core stays Python) where that cannot be done."""
    shutil.rmtree(BUILD, ignore_errors=True)
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        print(f"not compiled, the core runs as Python: {exc.name} is not installed (pip install -e '.[compile]')")
        return False
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    if shutil.which(compiler.split()[0]) is None:
        print(f"not compiled, the core runs as Python: no C compiler ({compiler})")
        return False
    before = fingerprint()
    with tempfile.TemporaryDirectory() as work:
        cwd = Path.cwd()
        os.chdir(ROOT)  # mypy reads the project's configuration (pyproject.toml) from here
        try:
            extensions = mypycify([f"models/{name}.py" for name in MODULES], target_dir=f"{work}/c")
            distribution = Distribution({"name": "loyalty-core", "ext_modules": extensions})
            command = distribution.get_command_obj("build_ext")
            command.build_lib, command.build_temp = str(BUILD), f"{work}/o"
            distribution.run_command("build_ext")
        except (Exception, SystemExit) as exc:  # a type error mypyc refuses, a compiler that fails
            shutil.rmtree(BUILD, ignore_errors=True)
            print(f"not compiled, the core runs as Python: {exc}")
            return False
        finally:
            os.chdir(cwd)
    if fingerprint() != before:
        shutil.rmtree(BUILD, ignore_errors=True)
        print("not compiled: the sources changed while they were being compiled; run it again")
        return False
    MANIFEST.write_text(json.dumps(before, indent=1))
    print(f"compiled {len(MODULES)} modules of the core into {BUILD}")
    return True
