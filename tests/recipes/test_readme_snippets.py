"""The README's snippets run as written: runnable blocks against a spawned emulator (``CIOTRACK_*``
point at it), and every python block names only what it imports or defines."""

from __future__ import annotations

import builtins
import os
import re
import subprocess
import symtable
import sys
from pathlib import Path

import pytest
from readme_blocks import Block, blocks, runnable

from ciotrack.emulator import Emulator

ROOT = Path(__file__).resolve().parents[2]
# Names that stand for the reader's own code or values in illustrative (not runnable) blocks.
# Kept to what the README uses today, so a new block that forgets an import fails here.
PLACEHOLDERS = {"shop", "app", "site_id", "api_key", "tracker"}


def test_the_readme_has_runnable_snippets_and_recipes() -> None:
    assert len(runnable()) >= 3
    quickstart = ROOT.joinpath("README.md").read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "<!-- readme-test: run -->\n```python" in quickstart


@pytest.mark.parametrize("block", runnable(), ids=lambda b: f"README.md:{b.line}")
def test_runnable_snippet(block: Block, tmp_path: Path) -> None:
    # The README's own emulator: default workspace site-1/key-1 (App API key app-key-1), in a subprocess.
    with Emulator.spawn() as emulator:
        env = {**os.environ, "CIOTRACK_ENDPOINT": emulator.url, "CIOTRACK_SITE_ID": "site-1",
               "CIOTRACK_API_KEY": "key-1", "PYTHONPATH": str(ROOT / "python"), "NO_PROXY": "127.0.0.1"}
        script = tmp_path / "snippet.py"
        script.write_text(block.code)
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                                cwd=tmp_path, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        # A print(...) line ending in "# <text>" promises that output.
        for expected in re.findall(r"^print\(.*#\s*(.+)$", block.code, re.MULTILINE):
            assert expected.strip() in result.stdout, (expected, result.stdout)
        received = emulator.stats()["operations"] + len(emulator.transactional_sends())
        assert received > 0, "the snippet sent nothing to the emulator"


def _unbound_names(code: str) -> set[str]:
    top = symtable.symtable(code, "<readme>", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used: set[str] = set()

    def walk(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            if not sym.is_referenced():
                continue
            if table.get_type() == "module" or sym.is_global():
                used.add(sym.get_name())
        for child in table.get_children():
            walk(child)

    walk(top)
    return used - defined - set(dir(builtins))


@pytest.mark.parametrize("block", [b for b in blocks() if b.lang == "python"], ids=lambda b: f"README.md:{b.line}")
def test_python_block_imports_what_it_uses(block: Block) -> None:
    code = re.sub(r"^(\s*)\.\.\.(.*)$", r"\1pass\2", block.code, flags=re.MULTILINE)  # "..." stands for more code
    missing = _unbound_names(code) - (set() if block.marker else PLACEHOLDERS)
    assert not missing, f"README.md:{block.line} uses {sorted(missing)} without importing or defining them"
