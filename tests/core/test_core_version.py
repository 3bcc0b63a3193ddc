"""One version source: Cargo's workspace version, compiled into the extension and written by maturin
into the distribution metadata that ``ciotrack.__version__`` reads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import ciotrack
from ciotrack import _core

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_the_extension_and_cargo_agree_on_the_version() -> None:
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    binding = tomllib.loads((ROOT / "rust" / "py" / "Cargo.toml").read_text())
    assert binding["package"]["version"] == {"workspace": True}
    assert _core.__version__ == cargo["workspace"]["package"]["version"]
    assert ciotrack.__version__ == _core.__version__


def test_pyproject_declares_the_version_dynamic() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dynamic"] == ["version"]
    assert "version" not in project, "a static version would be a second source"
