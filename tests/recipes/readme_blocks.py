"""The README's code blocks: python blocks, and the marker comment before each one.

A block preceded by ``<!-- readme-test: run -->`` is a runnable snippet (run as written against an
emulator via ``CIOTRACK_*``); ``<!-- readme-test: recipe <file> -->`` is a recipe file, written out
under that name and served by its real server. Markers are HTML comments, so they do not render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: (?P<marker>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```",
                    re.DOTALL | re.MULTILINE)


@dataclass(frozen=True)
class Block:
    line: int
    lang: str
    marker: str
    code: str


def blocks() -> list[Block]:
    text = README.read_text()
    return [Block(text.count("\n", 0, m.start("code")) + 1, m["lang"], m["marker"] or "", m["code"])
            for m in _BLOCK.finditer(text)]


def runnable() -> list[Block]:
    return [b for b in blocks() if b.marker == "run"]


def recipes() -> dict[str, str]:
    """file name -> code of every recipe block."""
    found: dict[str, str] = {}
    for block in blocks():
        if block.marker.startswith("recipe "):
            found[block.marker.split(None, 1)[1]] = block.code
    return found
