"""The compiled core (models/compiled.py) runs only while it was built from the sources as they are."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from models import compiled, engine


@pytest.fixture
def build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A `.compiled/` of this test's own, holding a manifest of the sources as they are now."""
    folder = tmp_path / ".compiled"
    (folder / "models").mkdir(parents=True)
    monkeypatch.setattr(compiled, "BUILD", folder)
    monkeypatch.setattr(compiled, "MANIFEST", folder / "manifest.json")
    monkeypatch.delenv("LOYALTY_PURE_PYTHON", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    compiled.MANIFEST.write_text(json.dumps(compiled.fingerprint()))
    return folder


def test_a_build_of_the_sources_as_they_are_goes_ahead_of_them(build: Path) -> None:
    path = ["sources"]
    assert compiled.use(path)
    assert path == [str(build / "models"), "sources"]
    assert str(build) in sys.path  # where the modules' shared library is found


def test_a_build_of_an_edited_source_is_not_used(build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recorded = json.loads(compiled.MANIFEST.read_text())
    recorded["sources"]["models/engine.py"] = "0" * 64  # engine.py as it was when compiled
    compiled.MANIFEST.write_text(json.dumps(recorded))
    path = ["sources"]
    assert not compiled.use(path)
    assert path == ["sources"]
    assert "running the core as Python" in capsys.readouterr().err


def test_a_build_for_another_interpreter_is_not_used(build: Path) -> None:
    recorded = json.loads(compiled.MANIFEST.read_text())
    recorded["python"] = "3.12.0"
    compiled.MANIFEST.write_text(json.dumps(recorded))
    assert not compiled.use(["sources"])


def test_every_source_of_the_core_is_in_the_fingerprint() -> None:
    sources = compiled.fingerprint()["sources"]
    assert isinstance(sources, dict)
    assert {f"models/{name}.py" for name in compiled.MODULES} <= sources.keys()
    assert {"models/schema.py", "models/__init__.py", "models/compiled.py"} <= sources.keys()


def test_the_sources_run_when_asked_to(build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOYALTY_PURE_PYTHON", "1")
    path = ["sources"]
    assert not compiled.use(path)
    assert path == ["sources"]


def test_without_a_compiler_nothing_is_built(build: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mypyc.build")
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert not compiled.build()
    assert not build.exists()  # nor is a build left that the next start could take


def test_the_core_in_this_process_is_the_one_models_says() -> None:
    where = Path(engine.__file__ or "")
    if compiled.ACTIVE:
        assert where.suffix == ".so" and where.parent == compiled.BUILD / "models"
    else:
        assert where == compiled.PACKAGE / "engine.py"
