"""Invalid numbers and scenario values are configuration errors (exit 104, a message naming them),
never a traceback or a run that quietly sends nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from ciotrack.__main__ import main


@pytest.fixture(autouse=True)
def _no_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY", "CIOTRACK_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--mix", "track=nan"], "mix"),
    (["--mix", "track=inf,page=1"], "mix"),
    (["--start-rate", "-5"], "start_rate"),
    (["--start-rate", "nan"], "start_rate"),
    (["--duration-scale", "nan"], "--duration-scale"),
    (["--rate-limit", "nan"], "--rate-limit"),
    (["--rate-limit", "inf"], "--rate-limit"),
    (["--latency-ms", "-5"], "latency"),
    (["--latency-ms", "nan"], "latency"),
    (["--latency-ms", "50", "--latency-p99-ms", "20"], "latency_p99"),
    (["--endpoint", "http://127.0.0.1:9", "--site-id", "s", "--api-key", "k", "--expected-latency-ms", "nan"],
     "--expected-latency-ms"),
])
def test_bad_numbers_on_the_command_line_exit_104(args: list[str], fragment: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["loadtest", "--stage", "1s:10", "--plain", *args])
    err = capsys.readouterr().err
    assert code == 104, err
    assert "Traceback" not in err and err.startswith("ciotrack loadtest: ") and fragment in err


@pytest.mark.parametrize(("line", "fragment"), [
    ('start_rate = "fast"', "start_rate"),
    ("start_rate = nan", "start_rate"),
    ("start_rate = -1", "start_rate"),
    ("mix = { track = inf }", "mix"),
    ('mix = { track = "a lot" }', "mix"),
    ("event_name = 5", "event_name"),
    ('event_name = ""', "event_name"),
])
def test_bad_values_in_a_scenario_file_exit_104(line: str, fragment: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scenarios.toml"
    path.write_text(f'[[scenario]]\nname = "s"\nstages = ["1s:10"]\n{line}\n')
    code = main(["loadtest", "--scenario", str(path), "--plain"])
    err = capsys.readouterr().err
    assert code == 104, err
    assert "Traceback" not in err and err.startswith("ciotrack loadtest: ") and fragment in err


@pytest.mark.parametrize("stages", [["0s:100"], ["1s:0"], ["0s:0", "0s:500"], ["1s:1"]])
def test_a_load_shape_with_no_call_due_is_refused(stages: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `--stage 0s:100` alone jumps to 100/s and ends at once: zero calls. A run that sends nothing
    # proves nothing; it used to pass with exit 0.
    code = main(["loadtest", *(arg for stage in stages for arg in ("--stage", stage)), "--plain"])
    err = capsys.readouterr().err
    assert code == 104, err
    assert "no call is due" in err


@pytest.mark.parametrize("option", ["--report", "--plot", "--summary-md"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(option: str, tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # Found only after the whole run, it ended with exit 107 and the run's results lost.
    code = main(["loadtest", "--stage", "0s:10", "--stage", "30s:10", "--plain", option,
                 str(tmp_path / "missing" / "out")])
    err = capsys.readouterr().err
    assert code == 104, err
    assert option in err and "no such directory" in err
    assert "calls" not in err  # refused up front: no run happened
