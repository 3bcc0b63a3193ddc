"""The presets: the guidance's k6 shape and the peak above the workspace ceiling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ciotrack.__main__ import main
from ciotrack.errors import ConfigError
from ciotrack.loadtest.presets import build_preset


def test_guide_preset_is_the_guidance_shape_and_thresholds() -> None:
    preset = build_preset("guide", duration_scale=1.0, ceiling_for=lambda scenario: 1.0)
    assert [s.name for s in preset.scenarios] == ["identify", "track"]
    assert [dict(s.mix) for s in preset.scenarios] == [{"identify": 1.0}, {"track": 1.0}]
    for scenario in preset.scenarios:
        assert [stage.target for stage in scenario.stages] == [10.0, 50.0, 100.0, 100.0, 0.0]
    assert "errors:rate<0.01" in preset.thresholds
    assert "request_duration:p(95)<500" in preset.thresholds


def test_peak_preset_reaches_one_and_a_half_times_the_ceiling_in_about_a_minute() -> None:
    preset = build_preset("peak", duration_scale=1.0, ceiling_for=lambda scenario: 6100.0)
    [scenario] = preset.scenarios
    schedule = scenario.schedule()
    assert schedule.peak_rate == pytest.approx(1.5 * 6100.0, abs=1)
    assert 30.0 <= schedule.duration <= 60.0
    assert schedule.rate_at(schedule.duration - 0.01) < 100  # and back down
    assert {"http_429:count==0", "lost:count==0"} <= set(preset.thresholds)
    shorter = build_preset("peak", duration_scale=0.1, ceiling_for=lambda scenario: 6100.0)
    assert shorter.scenarios[0].schedule().duration == pytest.approx(schedule.duration * 0.1)
    with pytest.raises(ConfigError, match="unknown preset"):
        build_preset("spike", duration_scale=1.0, ceiling_for=lambda scenario: 1.0)


def test_guide_preset_runs_both_scenarios(tmp_path: Path) -> None:
    report_path = tmp_path / "guide.json"
    code = main(["loadtest", "--preset", "guide", "--duration-scale", "0.05", "--latency-ms", "20", "--plain",
                 "--print-every", "3", "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 0, report["result"]
    assert [s["name"] for s in report["config"]["scenarios"]] == ["identify", "track"]
    assert report["totals"]["calls"] == 2 * 540  # 10,800 calls per scenario at full length
    assert report["totals"]["lost"] == 0
    assert {t["metric"] for t in report["thresholds"]} == {"errors", "request_duration", "delivery_duration"}
