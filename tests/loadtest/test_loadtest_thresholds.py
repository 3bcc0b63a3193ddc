"""k6 threshold expressions: parsing, evaluation, and the clear error (exit 104) for a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ciotrack.__main__ import main
from ciotrack.errors import ConfigError
from ciotrack.loadtest.thresholds import evaluate, parse_threshold


def test_parse_k6_expressions() -> None:
    t = parse_threshold("delivery_duration:p(95)<500")
    assert (t.metric, t.aggregation, t.percentile, t.op, t.limit) == ("delivery_duration", "p(95)", 95.0, "<", 500.0)
    assert not t.abort_on_fail
    t = parse_threshold("errors:rate<0.01:abort")
    assert (t.aggregation, t.limit, t.abort_on_fail, t.delay_abort_eval) == ("rate", 0.01, True, 0.0)
    t = parse_threshold("http_429: count == 0 :abort@10s")
    assert (t.aggregation, t.op, t.limit, t.delay_abort_eval) == ("count", "==", 0.0, 10.0)
    assert t.source == "http_429:count==0:abort@10s"
    assert parse_threshold("request_duration:p(99.9)<=2000").percentile == 99.9
    for text in ("enqueue_duration:avg<10", "delivery_duration:med<300", "delivery_duration:max<5000",
                 "delivery_duration:min>=0", "backlog:max<100000", "dropped_iterations:count==0",
                 "retries:rate<5"):
        parse_threshold(text)


def test_evaluate_checks_each_against_its_value() -> None:
    thresholds = [parse_threshold(t) for t in ("delivery_duration:p(95)<500", "errors:rate<0.01",
                                                "http_429:count==0", "request_duration:avg<100")]
    values = {("delivery_duration", "p(95)"): 480.0, ("errors", "rate"): 0.02, ("http_429", "count"): 0.0,
              ("request_duration", "avg"): None}
    results = evaluate(thresholds, lambda metric, agg, pct: values[(metric, agg)])
    assert [ok for _, ok, _ in results] == [True, False, True, False]  # no samples: not a pass
    assert results[1][2] == 0.02


@pytest.mark.parametrize("text, fragment", [
    ("delivery_duration:p(101)<500", "outside 0..100"),
    ("delivery_duration:p95<500", "e.g. p(95)<500"),
    ("delivery_duration:p<500", "write a percentile as p(N)"),
    ("errors:p(95)<1", "errors is a rate"),
    ("http_429:avg<1", "http_429 is a counter"),
    ("latency:p(95)<500", "unknown metric 'latency'"),
    ("delivery_duration:p(95)=500", "cannot parse expression 'p(95)=500'"),
    ("delivery_duration:p(95)<fast", "cannot parse expression"),
    ("delivery_duration", "expected METRIC:EXPR"),
    ("errors:rate<0.01:abortt", "unknown option 'abortt'"),
])
def test_bad_expressions_are_clear_errors_naming_them(text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_threshold(text)
    message = str(info.value)
    assert fragment in message
    assert repr(text) in message


def test_cli_exits_104_on_a_bad_threshold_before_starting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["loadtest", "--stage", "1s:10", "--threshold", "delivery_duration:p(95)<>500"])
    assert code == 104
    err = capsys.readouterr().err
    assert "'delivery_duration:p(95)<>500'" in err and "cannot parse expression" in err


def test_cli_exits_104_on_a_bad_stage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["loadtest", "--stage", "soon:10"]) == 104
    assert "cannot parse duration 'soon'" in capsys.readouterr().err


def test_thresholds_of_a_no_send_run_are_evaluated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # --no-send measures the generator and the call: nothing is delivered, so `lost` is not known
    # (null), and a threshold on it has no value (fails); the others are checked as usual.
    report_path = tmp_path / "report.json"
    code = main(["loadtest", "--no-send", "--stage", "0s:200", "--stage", "1s:200", "--plain",
                 "--threshold", "calls:count==200", "--threshold", "errors:rate<0.01",
                 "--threshold", "dropped_iterations:count==0", "--threshold", "lost:count==0",
                 "--report", str(report_path)])
    assert "Traceback" not in capsys.readouterr().err
    report = json.loads(report_path.read_text())
    assert report["totals"]["lost"] is None
    assert [(t["metric"], t["ok"], t["value"]) for t in report["thresholds"]] == [
        ("calls", True, 200), ("errors", True, 0), ("dropped_iterations", True, 0), ("lost", False, None)]
    assert code == 99
