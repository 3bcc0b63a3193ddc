"""Typed options: mypy rejects a misspelt or mistyped option of ``Tracker``/``init``/``CaptureTracker``,
and at run time an unknown option is a ``ConfigError`` that suggests the right name."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ciotrack
from ciotrack.config import Config
from ciotrack.errors import ConfigError
from ciotrack.options import EXPLICIT_PARAMETERS, TrackerOptions
from ciotrack.testing import CaptureTracker
from ciotrack.tracker import Tracker

PYTHON_DIR = Path(ciotrack.__file__).resolve().parent.parent
WORKTREE = PYTHON_DIR.parent


def test_tracker_options_name_every_config_field() -> None:
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(TrackerOptions.__annotations__) == fields - set(EXPLICIT_PARAMETERS)


def test_mypy_rejects_a_misspelt_and_a_mistyped_option(tmp_path: Path) -> None:
    snippet = tmp_path / "uses_ciotrack.py"
    snippet.write_text(textwrap.dedent('''
        import ciotrack
        from ciotrack import Tracker
        from ciotrack.testing import CaptureTracker

        good = Tracker("site", "key", flush_interval=0.5, senders=2, on_full="drop_oldest", debug=True)
        typo = Tracker("site", "key", flush_intervall=0.5)
        wrong_type = Tracker("site", "key", senders="two")
        bad_policy = Tracker("site", "key", on_full="drop_everything")
        ciotrack.init("site", "key", max_retrys=3)
        CaptureTracker(dedup_tll=0)
        '''))
    env = {**os.environ, "MYPYPATH": str(PYTHON_DIR)}
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output", "--hide-error-context",
                           "--follow-imports=silent", str(snippet)], cwd=WORKTREE, env=env, capture_output=True,
                          text=True, timeout=600)
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    by_line = {int(line.split(":")[1]): line for line in errors}
    assert set(by_line) == {7, 8, 9, 10, 11}, done.stdout + done.stderr
    assert '"flush_intervall"' in by_line[7]
    assert '"max_retrys"' in by_line[10] and '"dedup_tll"' in by_line[11]


def test_an_unknown_option_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'flush_intervall'; did you mean 'flush_interval'\?"):
        Tracker("site", "key", flush_intervall=0.5)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"did you mean 'max_retries'\?"):
        ciotrack.init("site", "key", max_retrys=3)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"did you mean 'dedup_ttl'\?"):
        CaptureTracker(dedup_tll=0)  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match=r"unknown option 'colour'.*Config"):
        Tracker("site", "key", colour="blue")  # type: ignore[call-arg]
