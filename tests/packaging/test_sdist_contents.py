"""The sdist holds what a source build needs and nothing else (no tests, benches, build output, venvs)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {"PKG-INFO", "pyproject.toml", "Cargo.toml", "Cargo.lock", "README.md", "LICENSE",
            "python/ciotrack/__init__.py", "python/ciotrack/_core.pyi", "python/ciotrack/py.typed"}
ALLOWED_TOP = {"PKG-INFO", "pyproject.toml", "Cargo.toml", "Cargo.lock", "README.md", "LICENSE", "python", "rust"}
FORBIDDEN_PARTS = {"tests", "benches", "target", "dist", ".ci", "__pycache__", ".git", ".mypy_cache"}


def _maturin() -> str:
    local = Path(sysconfig.get_path("scripts")) / "maturin"
    return str(local) if local.exists() else "maturin"


def test_sdist_file_list(tmp_path: Path) -> None:
    # maturin sdist is quick (no compilation): always build it from the current tree.
    subprocess.run([_maturin(), "sdist", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True,
                   timeout=300)
    [sdist] = tmp_path.glob("ciotrack-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [m.name for m in archive.getmembers() if m.isfile()]
        archive.extractall(tmp_path / "unpacked", filter="data")
    prefix = names[0].split("/", 1)[0]
    relative = {name.split("/", 1)[1] for name in names}
    assert REQUIRED <= relative, REQUIRED - relative
    for name in relative:
        parts = name.split("/")
        assert parts[0] in ALLOWED_TOP, name
        assert not FORBIDDEN_PARTS & set(parts), name
        assert not parts[0].startswith(".venv"), name
        assert not name.endswith((".so", ".pyc", ".whl")), name
    assert any(name.startswith("rust/") and name.endswith(".rs") for name in relative)
    # Every Cargo manifest in it resolves with only these files (a bench or test target that cargo
    # still expected would fail here).
    for manifest in sorted((tmp_path / "unpacked" / prefix).rglob("Cargo.toml")):
        subprocess.run(["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline",
                        "--manifest-path", str(manifest)], check=True, capture_output=True, timeout=120)
    assert sys.version_info >= (3, 11)
