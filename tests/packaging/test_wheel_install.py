"""The manylinux2014 wheel in fresh venvs: tag and glibc symbols, import, a tracked event reaching the
emulator, and every CLI command on a base install (works, or names the extra to install).

Which wheel: ``CIOTRACK_WHEEL=/path/to/ciotrack-....whl`` tests that wheel. Otherwise a wheel in ``dist/`` (what
``make wheel`` leaves) is reused when it is for this interpreter and newer than every source file;
else one is built here, once, the way ``make wheel`` does (maturin ``--compatibility manylinux2014
--zig``; a release build takes a few minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
import threading
import zipfile
from pathlib import Path

import pytest

from ciotrack.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("python", "rust", "Cargo.toml", "Cargo.lock", "pyproject.toml")


def _newest_source() -> float:
    newest = 0.0
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.exists() else []
        for file in files:
            if file.suffix in (".so", ".pyc") or "__pycache__" in file.parts:
                continue
            newest = max(newest, file.stat().st_mtime)
    return newest


def _interpreter_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def tool(name: str) -> str:
    """A console script of this interpreter's environment (maturin), else from PATH."""
    local = Path(sysconfig.get_path("scripts")) / name
    return str(local) if local.exists() else name


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("CIOTRACK_WHEEL")
    if given:
        path = Path(given)
        assert path.is_file(), f"CIOTRACK_WHEEL={given} does not exist"
        return path
    fresh_after = _newest_source()
    for candidate in sorted((ROOT / "dist").glob(f"ciotrack-*-{_interpreter_tag()}-*.whl")):
        if candidate.stat().st_mtime >= fresh_after:
            return candidate
    try:
        import ziglang  # type: ignore[import-untyped]  # noqa: F401  (maturin --zig runs `python -m ziglang`)
    except ImportError:
        pytest.skip("no up-to-date wheel in dist/ and no ziglang to build one: run `make wheel` first")
    out = tmp_path_factory.mktemp("wheel")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([tool("maturin"), "build", "--release", "--compatibility", "manylinux2014", "--zig",
                    "--interpreter", sys.executable, "--out", str(out)], cwd=ROOT, env=env, check=True,
                   timeout=1800)
    [wheel] = out.glob("ciotrack-*.whl")
    return wheel


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a fresh venv's processes: none of this test run's Python settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "CIOTRACK_", "PYTEST", "PIP_")) and k != "COV_CORE_SOURCE"}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", NO_PROXY="127.0.0.1,localhost", **extra)
    return env


def make_venv(where: Path, requirement: str) -> Path:
    """A fresh venv at ``where`` with ``requirement`` installed (its dependencies from the index)."""
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    python = where / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True, timeout=900,
                   env=clean_env(), cwd=where)
    return python


@pytest.fixture(scope="session")
def base_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with only the wheel (no extras): returns its python."""
    return make_venv(tmp_path_factory.mktemp("venv-base") / "venv", str(built_wheel))


@pytest.fixture(scope="session")
def emulator_venv(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv with ``ciotrack[emulator]`` from the wheel: returns its python."""
    return make_venv(tmp_path_factory.mktemp("venv-emulator") / "venv", f"{built_wheel}[emulator]")


# -- the tests --------------------------------------------------------------------------------------


SITE, KEY = "site-wheel", "key-wheel-SECRET"


def run(python: Path, *args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], capture_output=True, text=True, timeout=timeout, env=clean_env(),
                          cwd=cwd or python.parent)


def test_wheel_is_manylinux2014_and_needs_no_newer_glibc(built_wheel: Path) -> None:
    assert "manylinux_2_17" in built_wheel.name or "manylinux2014" in built_wheel.name, built_wheel.name
    with zipfile.ZipFile(built_wheel) as wheel:
        tags = [line.split(":", 1)[1].strip() for line in wheel.read(
            next(n for n in wheel.namelist() if n.endswith(".dist-info/WHEEL"))).decode().splitlines()
            if line.startswith("Tag:")]
        [native] = [n for n in wheel.namelist() if n.startswith("ciotrack/_core.") and n.endswith(".so")]
        symbols = wheel.read(native)
        names = wheel.namelist()
    assert any("manylinux_2_17" in tag for tag in tags), tags
    # What the dynamic linker will ask of the target's glibc: no symbol version above 2.17.
    versions = {(int(a), int(b)) for a, b in re.findall(rb"GLIBC_(\d+)\.(\d+)", symbols)}
    assert versions and max(versions) <= (2, 17), sorted(versions)
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith("LICENSE") for n in names), names


def test_base_install_imports_and_tracks_to_an_emulator(base_venv: Path) -> None:
    with Emulator.spawn(workspaces={SITE: KEY}) as emulator:  # from this (dev) venv: the base one has no orjson
        script = (
            "import ciotrack, sys\n"
            "assert 'site-packages' in ciotrack.__file__, ciotrack.__file__\n"
            f"tracker = ciotrack.Tracker({SITE!r}, {KEY!r}, endpoint={emulator.url!r})\n"
            "tracker.track('user-1', 'installed_from_wheel', {'python': sys.version.split()[0]})\n"
            "ok = tracker.flush(10)\n"
            "tracker.close()\n"
            "print(ciotrack.__version__, ok, tracker.stats().delivered)\n"
        )
        result = run(base_venv, "-c", script)
        assert result.returncode == 0, result.stderr
        version, ok, delivered = result.stdout.split()
        assert ok == "True" and delivered == "1"
        assert emulator.wait_events(1)
        [event] = emulator.state()["people"]["user-1"]["events"]
        assert event["name"] == "installed_from_wheel"
    metadata = run(base_venv, "-c", "from importlib.metadata import metadata as m; import json; "
                                    "d = m('ciotrack'); print(json.dumps([d['Version'], d['License-Expression']]))")
    assert json.loads(metadata.stdout) == [version, "MIT"]


def test_every_cli_command_works_or_names_its_extra_on_a_base_install(base_venv: Path) -> None:
    ciotrack_cli = base_venv.parent / "ciotrack"
    top = subprocess.run([str(ciotrack_cli), "--help"], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert top.returncode == 0 and "usage: ciotrack" in top.stdout, top.stderr
    version = subprocess.run([str(ciotrack_cli), "--version"], capture_output=True, text=True, env=clean_env(),
                             timeout=60)
    assert version.returncode == 0 and re.fullmatch(r"ciotrack \d+\.\d+\.\d+\S*\n", version.stdout), version.stdout
    names = json.loads(run(base_venv, "-c", "import json; from ciotrack.__main__ import COMMANDS; "
                                            "print(json.dumps({k: v[2] for k, v in COMMANDS.items()}))").stdout)
    assert "emulator" in names and "demo" in names
    hinted = []
    for name, extra in names.items():
        result = subprocess.run([str(ciotrack_cli), name, "--help"], capture_output=True, text=True,
                                env=clean_env(), timeout=60)
        assert "Traceback" not in result.stderr, (name, result.stderr)
        if result.returncode == 0:
            assert "usage: ciotrack " + name in result.stdout, (name, result.stdout)
            continue
        assert extra, (name, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pip install 'ciotrack[{extra}]'" in lines[0], (name, result.stderr)
        hinted.append(name)
    # orjson is not in a base install: the emulator must be one of those that say so.
    assert "emulator" in hinted
    demo = subprocess.run([str(ciotrack_cli), "demo"], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert demo.returncode != 0 and "Traceback" not in demo.stderr
    assert "pip install 'ciotrack[emulator]'" in demo.stderr


def test_emulator_extra_runs_the_emulator_and_prints_its_credentials(emulator_venv: Path) -> None:
    ciotrack_cli = emulator_venv.parent / "ciotrack"
    proc = subprocess.Popen([str(ciotrack_cli), "emulator", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    lines: list[str] = []

    def read_lines() -> None:
        assert proc.stdout is not None
        for _ in range(4):
            lines.append(proc.stdout.readline())

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    try:
        reader.join(60)  # the banner comes at once after start; a hang here fails below, not at the timeout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert len(lines) == 4, (lines, proc.stderr.read() if proc.stderr else "")
    url = lines[0].strip()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), lines
    text = "".join(lines)
    assert "site id: site-1" in text and "Track API key: key-1" in text and "App API key: app-key-1" in text
    assert f"CIOTRACK_ENDPOINT={url}" in text
    assert proc.returncode == 0
