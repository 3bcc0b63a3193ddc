"""The fleet target of ``ciotrack loadtest``: the tracker writes to a real ``redis-server``, real
``ciotrack worker`` subprocesses deliver to the spawned emulator (or an ``--endpoint`` emulator), and
what the report says is checked against the emulator's and Redis' own counts."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import redis

from ciotrack.__main__ import main
from ciotrack._core import histogram_bounds
from ciotrack.emulator import Emulator
from ciotrack.fleet.streams import StreamKeys, encode_entry, ensure_group
from ciotrack.loadtest.report import SCHEMA_PATH
from ciotrack.loadtest.runner import EMULATOR_SITE_ID
from redis_harness import RedisServer

SITE, KEY = "ltf-site", "ltf-key-SECRET-7c1e"
REDIS_PASSWORD = "redis-pw-SECRET-55aa"
# 2 s of 100 calls/s: the tracker writes ~5 entries/s (its 0.2 s linger).
SHORT = ["--stage", "0s:100", "--stage", "2s:100", "--latency-ms", "20", "--plain"]


@pytest.fixture(autouse=True)
def _no_credentials_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CIOTRACK_SITE_ID", "CIOTRACK_API_KEY", "CIOTRACK_ENDPOINT", "CIOTRACK_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)


def _validated_report(path: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(path.read_text())
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        jsonschema.validate(report, json.load(handle))
    return report


def _listening(url: str) -> bool:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def test_two_workers_and_a_throwaway_redis_deliver_everything(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # 2 requests/s with a burst of 1 against ~5 entries/s: a backlog builds in the stream, then drains.
    report_path = tmp_path / "report.json"
    code = main(["loadtest", "--stage", "0s:100", "--stage", "1s:100", "--latency-ms", "20", "--plain",
                 "--rate-limit", "2", "--emulator-burst", "1", "--workers", "2",
                 "--threshold", "errors:rate<0.01", "--report", str(report_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = _validated_report(report_path)
    target = report["config"]["target"]
    assert target["kind"] == "fleet" and target["workers"] == 2 and target["receiver"]["kind"] == "emulator"
    assert target["redis"] == "throwaway local redis-server" and target["key_prefix"].startswith("ciotrack-lt-")
    totals = report["totals"]
    assert totals["calls"] == 100 and totals["dropped_iterations"] == 0
    assert totals["accepted"] == totals["written_to_redis"] == totals["delivered"] == 100 and totals["lost"] == 0
    assert totals["receiver"]["operations"] == 100 and totals["receiver"]["duplicates"] == 0
    assert totals["workers_exit_codes"] == [0, 0]  # SIGTERM after the drain: both exit 0
    # Requests and 429s are the workers' (their /metrics), and agree with what the emulator counted.
    assert totals["requests"].get("200", 0) == totals["receiver"]["by_status"].get("200", 0) > 0
    assert totals["http_429"] == totals["receiver"]["rate_limited"]
    assert totals["delivery_duration"]["count"] > 0 and totals["delivery_duration"]["min"] >= 20.0
    # request_duration from the workers' histogram: one sample per request, each at its bucket's upper
    # bound (the emulator's fixed 20 ms latency falls in the 15.625-31.25 ms bucket, or a later one).
    assert totals["request_duration"]["count"] == sum(totals["requests"].values())
    bounds_ms = [b * 1000 for b in histogram_bounds("request_latency_seconds") if 0.02 <= b <= 0.1]
    assert any(bound * 0.999 <= totals["request_duration"]["min"] <= bound * 1.001 for bound in bounds_ms)
    intervals = report["intervals"]
    assert all(i["backlog"] == i["stream_lag"] + i["stream_pending"] for i in intervals)
    assert max(i["backlog"] for i in intervals) == totals["backlog_peak"] > 0
    assert intervals[-1]["backlog"] == 0 and totals["drain_s"] is not None
    assert "entries (lag " in out and "worker exit codes [0, 0]" in out
    # The throwaway redis-server is gone with the run.
    assert not _listening(target["redis_url"])


def test_redis_url_points_at_an_existing_redis(tmp_path: Path, redis_server: RedisServer,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    client = redis.Redis.from_url(redis_server.url)
    # Another fleet's backlog for the same workspace, under the default prefix: the run must not touch it.
    other = StreamKeys.for_site(EMULATOR_SITE_ID)
    ensure_group(client, other)
    client.xadd(other.work, encode_entry(b'{"batch":[{"type":"person","identifiers":{"id":"x"},"action":"event",'
                                         b'"name":"other-fleet"}]}', "us", "other"))
    before = sorted(client.keys("*"))
    client.config_set("requirepass", REDIS_PASSWORD)
    url = f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_server.port}/0"
    report_path = tmp_path / "report.json"
    code = main(["loadtest", *SHORT, "--redis-url", url, "--report", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    report = _validated_report(report_path)
    target = report["config"]["target"]
    assert target["workers"] == 2  # the default with --redis-url
    assert target["redis_url"] == f"redis://:***@127.0.0.1:{redis_server.port}/0"
    assert REDIS_PASSWORD not in report_path.read_text() and REDIS_PASSWORD not in out + err
    totals = report["totals"]
    assert totals["delivered"] == totals["accepted"] == totals["receiver"]["operations"] == 200
    assert totals["lost"] == 0
    # The run used keys of its own in that Redis (its stream and its limiter), and removed them once drained.
    authed = redis.Redis.from_url(url)
    assert target["stream"].startswith(target["key_prefix"] + ":")
    assert sorted(authed.keys("*")) == before and report["totals"]["redis_keys_left"] == []
    assert authed.xlen(other.work) == 1 and authed.xinfo_groups(other.work)[0]["pending"] == 0
    assert _listening(redis_server.url)  # a given Redis is not stopped


def test_endpoint_receiver_counts_come_from_the_workers(tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    with Emulator.spawn(workspaces={SITE: KEY}) as emulator:
        code = main(["loadtest", "--stage", "0s:100", "--stage", "2s:100", "--plain", "--endpoint", emulator.url,
                     "--site-id", SITE, "--api-key", KEY, "--workers", "1", "--report", str(report_path)])
        stored = emulator.stats()
    assert code == 0
    report = _validated_report(report_path)
    totals = report["totals"]
    assert report["config"]["target"]["receiver"]["kind"] == "endpoint"
    assert totals["delivered"] == totals["accepted"] == 200 == stored["operations"] and totals["lost"] == 0
    assert totals["requests"] == stored["by_status"]
    assert totals["workers_exit_codes"] == [0]
    assert KEY not in report_path.read_text()


def test_no_redis_server_on_path_is_a_target_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    empty, temp = tmp_path / "bin", tmp_path / "tmp"
    empty.mkdir()
    temp.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # the workers would run as sys.executable: only Redis is missing
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    code = main(["loadtest", *SHORT, "--workers", "2"])
    assert code == 100
    err = capsys.readouterr().err
    assert "redis-server is not installed" in err and "--redis-url" in err
    assert os.listdir(temp) == []  # the run's temp dir was removed
