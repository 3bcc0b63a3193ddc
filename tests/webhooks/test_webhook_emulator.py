"""End to end: the emulator reports its workspaces' messages as signed webhooks, a served adapter
verifies them; duplicates, replays and forgeries on demand; the CLI sender and the blaster."""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from webhook_helpers import SECRET

from ciotrack.emulator import Emulator
from ciotrack.webhooks import EmailEvent, Event, Metric, PushEvent, WebhookHandler
from recording_webhook_server import serve_recording_handler

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def endpoint() -> Iterator[tuple[str, WebhookHandler, list[Event]]]:
    with serve_recording_handler(SECRET) as served:
        yield served


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_the_emulator_reports_its_workspaces_messages_as_signed_webhooks(
        make_tracker: Any, emulator: Emulator, endpoint: tuple[str, WebhookHandler, list[Event]]) -> None:
    url, handler, received = endpoint
    tracker = make_tracker()
    tracker.identify("ann", {"email": "ann@example.com"})
    tracker.identify("bob", {"plan": "free"})
    tracker.add_device("bob", "bob-phone", "ios")
    tracker.track("ann", "order_shipped", {"order": 1})
    tracker.track("bob", "order_shipped", {"order": 2})
    tracker.track("ann", "order_delivered", {"order": 1})
    assert tracker.flush(10)
    assert emulator.wait_events(3)
    sender = emulator.send_webhooks(url, SECRET, rate=500)
    # ann: 2 events x email sent/delivered/opened; bob: 1 event x push sent/delivered/opened.
    assert wait_until(lambda: len(received) >= 9), (sender.stats(), handler.stats())
    time.sleep(0.3)  # nothing more must come: every event is reported once
    assert handler.drain(5) and len(received) == 9
    by_customer = Counter((e.customer_id, type(e).__name__, e.metric) for e in received)
    assert by_customer == {
        ("ann", "EmailEvent", Metric.SENT): 2, ("ann", "EmailEvent", Metric.DELIVERED): 2,
        ("ann", "EmailEvent", Metric.OPENED): 2,
        ("bob", "PushEvent", Metric.SENT): 1, ("bob", "PushEvent", Metric.DELIVERED): 1,
        ("bob", "PushEvent", Metric.OPENED): 1,
    }
    ann = [e for e in received if isinstance(e, EmailEvent)]
    assert {e.recipient for e in ann} == {"ann@example.com"}
    assert len({e.delivery_id for e in ann}) == 2  # one message per event, three metrics each
    bob = [e for e in received if isinstance(e, PushEvent)]
    assert {e.delivery_id for e in bob} and bob[0].recipients
    assert sender.stats()["status:200"] == 9 and handler.stats()["rejected"] == 0

    # A later event is reported too; the emulator stops its sender when it stops.
    tracker.track("ann", "review_requested")
    assert tracker.flush(10)
    assert wait_until(lambda: len(received) >= 12)


def test_duplicates_replays_and_forgeries_on_demand(
        endpoint: tuple[str, WebhookHandler, list[Event]]) -> None:
    url, handler, received = endpoint
    with Emulator() as emulator:
        sender = emulator.send_webhooks(url, SECRET, synthetic=True, rate=400, duplicate_share=0.2,
                                        replay_share=0.1, forged_share=0.1, limit=200, seed=7)
        assert sender.wait_sent(200, 30), sender.stats()
        for how in ("bad_signature", "stale", "future", "missing_signature", "tampered"):
            assert sender.send_forged(how).status == 401, how
        stats = sender.stats()
    assert handler.drain(5)
    sent = sender.sent()
    originals = {w.event_id for w in sent if w.kind == "event"}
    # Each genuine event handled exactly once however often it was re-sent or replayed.
    assert Counter(e.event_id for e in received) == Counter(originals)
    assert stats["duplicate"] > 0 and stats["replay"] > 0 and stats["forged"] >= 5
    assert all(w.status == 200 for w in sent if w.kind in ("event", "duplicate", "replay"))
    assert all(w.status == 401 for w in sent if w.kind == "forged")
    assert handler.stats()["duplicates"] == stats["duplicate"] + stats["replay"]
    reasons = {k for k in handler.stats() if k.startswith("rejected:")}
    assert reasons == {"rejected:bad_signature", "rejected:timestamp_too_old", "rejected:timestamp_in_future",
                       "rejected:missing_signature"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "python") + os.pathsep + env.get("PYTHONPATH", "")
    env["NO_PROXY"] = "127.0.0.1"
    return env


def test_the_emulator_cli_sends_synthetic_webhooks(endpoint: tuple[str, WebhookHandler, list[Event]]) -> None:
    url, handler, received = endpoint
    proc = subprocess.Popen(
        [sys.executable, "-m", "ciotrack.emulator", "--port", "0", "--exit-on-stdin-eof", "--webhook-url", url,
         "--webhook-secret", SECRET, "--webhook-synthetic", "--webhook-rate", "200"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().startswith("http://127.0.0.1:")
        assert wait_until(lambda: len(received) >= 20, 20), handler.stats()
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
    kinds = {e.object_type for e in received}
    assert len(kinds) >= 3 and handler.stats()["rejected"] == 0


def test_the_emulator_cli_refuses_a_webhook_url_without_a_secret() -> None:
    env = _env()
    env.pop("CIOTRACK_WEBHOOK_SECRET", None)
    proc = subprocess.run([sys.executable, "-m", "ciotrack.emulator", "--port", "0", "--webhook-url",
                           "http://127.0.0.1:9/x"], capture_output=True, env=env, timeout=30)
    assert proc.returncode == 2 and b"--webhook-secret" in proc.stderr


def test_the_blaster_cli_reports_latency_and_writes_json(
        endpoint: tuple[str, WebhookHandler, list[Event]], tmp_path: Path) -> None:
    url, handler, received = endpoint
    report_path = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ciotrack", "webhooks-blast", url, "--webhook-secret", SECRET, "--webhook-rate", "200",
         "--webhook-duration", "1", "--webhook-duplicates", "0.1", "--webhook-forged", "0.1",
         "--webhook-connections", "4", "--webhook-size", "2048", "--webhook-seed", "3",
         "--webhook-budget-ms", "4000", "--webhook-report", str(report_path)],
        capture_output=True, env=_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "latency ms  p50" in out and "p99" in out and "Customer.io's 4 s" in out
    report = json.loads(report_path.read_text())
    assert report["requests"] == 200 and report["unexpected"] == 0
    assert report["by_status"].get("401", 0) == report["kinds"]["forged"] > 0
    assert 1900 < report["body_bytes_mean"] < 2300
    assert {"p50", "p95", "p99", "max"} <= set(report["latency_ms"])
    if sys.platform == "linux":
        # The kernel's arrival stamp of each answer comes before this client reads it (0.05 ms: the two
        # send-time clocks are read one after the other).
        arrival = report["arrival_ms"]
        assert "to arrival  p50" in out and set(arrival) == {"p50", "p95", "p99", "max"}
        assert 0 < arrival["p50"] <= report["latency_ms"]["p50"] + 0.05
        assert arrival["max"] <= report["latency_ms"]["max"] + 0.05
    assert handler.drain(5)
    assert len({e.event_id for e in received}) == len(received) == report["kinds"]["event"]

    # A wrong secret: every answer is unexpected, so the exit code says so.
    bad = subprocess.run([sys.executable, "-m", "ciotrack", "webhooks-blast", "--webhooks", url, "--webhook-secret",
                          "wrong", "--webhook-rate", "50", "--webhook-duration", "0.2"],
                         capture_output=True, env=_env(), timeout=60)
    assert bad.returncode == 1 and b'"401": 10' in bad.stdout


def test_the_blaster_counts_refused_connections_as_errors() -> None:
    from webhook_helpers import free_port

    from ciotrack.webhooks.blast import blast, configure_parser

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    args = parser.parse_args([f"http://127.0.0.1:{free_port()}/nobody", "--webhook-rate", "100",
                              "--webhook-duration", "0.1"])
    report = blast(args)
    assert report["requests"] == 10 and report["by_status"] == {"error": 10} and report["unexpected"] == 10
    # The blaster turns the garbage collector off while it runs, and leaves it as it found it.
    assert gc.isenabled()
    gc.disable()
    try:
        blast(args)
        assert not gc.isenabled()
    finally:
        gc.enable()
    with pytest.raises(ValueError):
        blast(parser.parse_args(["https://127.0.0.1:1/x"]))


def test_a_spawned_emulator_reports_the_tracked_messages(
        endpoint: tuple[str, WebhookHandler, list[Event]]) -> None:
    from ciotrack.tracker import Tracker

    url, handler, received = endpoint
    emulator = Emulator.spawn(workspaces={"spawned": "key-s"}, webhooks={"url": url, "secret": SECRET, "rate": 300})
    try:
        tracker = Tracker("spawned", "key-s", endpoint=emulator.url, flush_interval=0.02, rate_limit=0)
        try:
            for n in range(5):
                tracker.identify(f"user-{n}", {"email": f"user-{n}@example.com"})
                tracker.track(f"user-{n}", "welcome")
            assert tracker.flush(10)
        finally:
            tracker.close(5)
        assert wait_until(lambda: len(received) >= 15, 20), handler.stats()
        # Forged ones on demand, through the child's control endpoint.
        assert emulator.send_forged_webhook("stale") == 401
        assert emulator.send_forged_webhook("tampered") == 401
        stats = emulator.webhook_stats()
        assert len(stats) == 1 and stats[0]["forged"] == 2 and stats[0]["status:200"] == 15
        with pytest.raises(requests.HTTPError):
            emulator.send_forged_webhook("no-such-forgery")
    finally:
        emulator.stop()
    assert {(e.customer_id, e.metric) for e in received} == {
        (f"user-{n}", metric) for n in range(5) for metric in (Metric.SENT, Metric.DELIVERED, Metric.OPENED)}
    assert all(isinstance(e, EmailEvent) and e.recipient == f"{e.customer_id}@example.com" for e in received)


def test_the_blaster_runs_in_a_process_with_a_thousand_descriptors_open(
        endpoint: tuple[str, WebhookHandler, list[Event]]) -> None:
    """select() (the blaster's microsecond waits) takes descriptors below 1024 only; with that many open
    the blaster waits with epoll instead, and still delivers every webhook."""
    import resource

    from ciotrack.webhooks.blast import _low_descriptors, blast, configure_parser

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        pytest.skip(f"needs 1200 open files, the limit here is {soft}")
    url, handler, received = endpoint
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        assert not _low_descriptors(8)
        parser = argparse.ArgumentParser()
        configure_parser(parser)
        report = blast(parser.parse_args([url, "--webhook-secret", SECRET, "--webhook-rate", "200",
                                          "--webhook-duration", "0.25", "--webhook-connections", "4"]))
    finally:
        for fd in held:
            os.close(fd)
    assert report["requests"] == 50 and report["by_status"] == {"200": 50} and report["unexpected"] == 0
    assert _low_descriptors(8)
