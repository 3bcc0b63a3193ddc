"""Logging and secrets: only ``ciotrack.*`` loggers, no handlers ever added, repeated warnings throttled,
raising hooks logged (throttled) while delivery goes on, and the API key in no log line, repr, str or
exception message (nor the passwords of proxy and endpoint URLs in a repr)."""

from __future__ import annotations

import ast
import base64
import functools
import logging
import pickle
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import ciotrack
from ciotrack import logs
from ciotrack.config import Config
from ciotrack.destinations.track_v2 import TrackV2Destination
from ciotrack.emulator import Emulator
from ciotrack.errors import ConfigError, DeliveryError
from ciotrack.logs import ThrottledLog
from ciotrack.testing import CaptureTracker
from ciotrack.tracker import Tracker

from conftest import API_KEY, SITE_ID, TrackerFactory, free_port

PACKAGE = Path(ciotrack.__file__).resolve().parent
WRONG_KEY = "wrong-SECRET-key-7a1e"


# -- loggers and handlers ---------------------------------------------------------------------------


PROGRAMS = {"fleet/cli.py"}
"""Entry points of programs (``ciotrack worker``, a container's command) rather than library code: they may
set up logging, only when nothing did (their ``run`` is never reached through ``import ciotrack``)."""


def test_source_uses_only_ciotrack_loggers_and_never_configures_logging() -> None:
    configuring = {"addHandler", "basicConfig", "dictConfig", "fileConfig", "setLoggerClass", "captureWarnings"}
    offenders: list[str] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() in PROGRAMS:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            where = f"{path.relative_to(PACKAGE)}:{node.lineno}"
            if name in configuring:
                offenders.append(f"{where}: {name}()")
            if name == "getLogger":
                arg = node.args[0] if node.args else None
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                        and (arg.value == "ciotrack" or arg.value.startswith("ciotrack."))):
                    offenders.append(f"{where}: getLogger({ast.unparse(arg) if arg else ''})")
    assert offenders == []


def test_the_package_adds_no_handler_while_it_runs() -> None:
    # A fresh interpreter: import every ciotrack module, deliver, fail, drop, capture, scrape; then the
    # logging tree must be exactly as the application left it (no handler anywhere, no level set).
    code = textwrap.dedent("""
        import importlib, logging, pkgutil
        import asyncio, concurrent.futures, requests, urllib3, prometheus_client, orjson, pytest  # their loggers
        root_handlers = list(logging.root.handlers)
        before = set(logging.Logger.manager.loggerDict)
        import ciotrack
        for module in pkgutil.walk_packages(ciotrack.__path__, "ciotrack."):
            if not module.name.endswith("__main__"):  # importing those runs the CLI
                importlib.import_module(module.name)
        from ciotrack.emulator import Emulator
        from ciotrack.metrics import PrometheusCollector
        from ciotrack.testing import CaptureTracker
        with Emulator(workspaces={"s": "k"}) as em:
            t = ciotrack.Tracker("s", "wrong", endpoint=em.url, flush_interval=0.01, max_queue_ops=2,
                                 on_error=lambda e: 1 / 0)
            for i in range(5):
                t.track("1", "e")
            t.flush(5)
            t.close(5)
            t.track("1", "after-close")
        c = CaptureTracker()
        c.track("1", "e")
        list(PrometheusCollector(c).collect())
        new = set(logging.Logger.manager.loggerDict) - before
        assert all(n == "ciotrack" or n.startswith("ciotrack.") for n in new), new
        assert logging.root.handlers == root_handlers, logging.root.handlers
        for name, obj in logging.Logger.manager.loggerDict.items():
            if name.startswith("ciotrack") and isinstance(obj, logging.Logger):
                assert obj.handlers == [] and obj.level == logging.NOTSET and obj.propagate, name
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    # The warnings did go somewhere: Python's last-resort handler (stderr), not one of ours.
    assert "ciotrack:" in result.stderr


# -- throttling -------------------------------------------------------------------------------------


@pytest.fixture
def now(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttled log's clock, which a test moves by hand."""
    clock = [1000.0]
    monkeypatch.setattr(logs, "_monotonic", lambda: clock[0])
    return clock


def test_throttled_log_says_once_per_interval_and_counts_what_it_held_back(
        caplog: pytest.LogCaptureFixture, now: list[float]) -> None:
    throttled = ThrottledLog(logging.getLogger("ciotrack.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        for n in range(5):
            throttled.warning("a", "ciotrack: trouble %d", n)
        throttled.warning("b", "ciotrack: other trouble")  # another key has its own budget
        now[0] += 9.9
        throttled.warning("a", "ciotrack: trouble %d", 5)
        now[0] += 0.2
        throttled.warning("a", "ciotrack: trouble %d", 6)
    assert [r.getMessage() for r in caplog.records] == [
        "ciotrack: trouble 0", "ciotrack: other trouble", "ciotrack: trouble 6 (5 similar messages suppressed)"]
    assert {r.name for r in caplog.records} == {"ciotrack.test"}


def test_throttled_loss_lines_carry_the_operations_they_held_back(
        caplog: pytest.LogCaptureFixture, now: list[float]) -> None:
    throttled = ThrottledLog(logging.getLogger("ciotrack.test"), interval=10.0)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        throttled.count("full", "ciotrack: queue full; %d operation(s) dropped", 1)
        for n in (5, 7, 11):
            now[0] += 1.0
            throttled.count("full", "ciotrack: queue full; %d operation(s) dropped", n)
        now[0] += 10.0
        throttled.count("full", "ciotrack: queue full; %d operation(s) dropped", 2)  # 5+7+11 held back, plus 2
        throttled.count("failed", "ciotrack: %d operation(s) to region %s failed: %s", 3, "us", "http_400")
        throttled.count("failed", "ciotrack: %d operation(s) to region %s failed: %s", 4, "eu", "http_401")
        throttled.count("full", "ciotrack: queue full; %d operation(s) dropped", 100)
        throttled.warning("other", "ciotrack: trouble")
        throttled.warning("other", "ciotrack: trouble")  # not counted: flush() has nothing to say of it
        throttled.flush()
        throttled.flush()  # said once
    assert [r.getMessage() for r in caplog.records] == [
        "ciotrack: queue full; 1 operation(s) dropped",
        "ciotrack: queue full; 25 operation(s) dropped (the total since the last such line; 3 similar messages "
        "suppressed)",
        "ciotrack: 3 operation(s) to region us failed: http_400",
        "ciotrack: trouble",
        "ciotrack: queue full; 100 operation(s) dropped (the total of 1 similar messages suppressed since the last "
        "such line)",
        "ciotrack: 4 operation(s) to region eu failed: http_401 (the total of 1 similar messages suppressed since "
        "the last such line)"]


def test_a_burst_of_drops_reaches_the_log_with_its_total_at_close(
        make_tracker: TrackerFactory, caplog: pytest.LogCaptureFixture) -> None:
    # A sender with nowhere to send (the emulator's address, but a closed port) keeps what the lane holds;
    # every call past max_queue_ops is dropped within one throttling interval. Before, the log said only
    # the first drop's count.
    drops: list[int] = []
    tracker = make_tracker(endpoint=f"http://127.0.0.1:{free_port()}", max_queue_ops=5, flush_interval=60.0,
                           on_drop=lambda reason, n: drops.append(n) if reason == "queue_full" else None)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        for i in range(3):
            for j in range(400):
                tracker.track("u", "e", {"i": i, "j": j})
            tracker.stats()  # the overflow watch reports the core's drop counter now and then
        tracker.close(timeout=0.5)
    dropped = tracker.stats().dropped["queue_full"]
    assert dropped >= 1195 and sum(drops) == dropped
    lines = [r.getMessage() for r in caplog.records if "queue full" in r.getMessage()]
    logged = sum(int(line.split("; ", 1)[1].split(" ", 1)[0]) for line in lines)
    assert logged == dropped, lines


def test_repeated_delivery_failures_log_one_warning(make_tracker: TrackerFactory,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    errors: list[DeliveryError] = []
    tracker = make_tracker(on_error=errors.append, flush_interval=5.0)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        for i in range(6):
            tracker.send_operation({"type": "person", "identifiers": {"id": f"b{i}"}, "action": "levitate"})
            assert tracker.flush(timeout=5)  # one batch, one failure report per round
    assert len(errors) == 6
    failures = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert len(failures) == 1 and failures[0].name == "ciotrack.sender" and failures[0].levelno == logging.WARNING


def test_raising_hooks_are_logged_throttled_and_delivery_goes_on(make_tracker: TrackerFactory, emulator: Emulator,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    calls = {"on_error": 0, "on_drop": 0}

    def on_error(error: DeliveryError) -> None:
        calls["on_error"] += 1
        raise RuntimeError("on_error hook bug")

    def on_drop(reason: str, count: int) -> None:
        calls["on_drop"] += 1
        raise ValueError("on_drop hook bug")

    before = set(threading.enumerate())
    tracker = make_tracker(on_error=on_error, on_drop=on_drop, flush_interval=5.0, max_queue_ops=3)
    with caplog.at_level(logging.WARNING, logger="ciotrack"):
        for round_ in range(5):
            tracker.send_operation({"type": "person", "identifiers": {"id": f"x{round_}"}, "action": "levitate"})
            tracker.track("ok", "kept", {"round": round_})
            tracker.track("ok", "kept-too", {"round": round_})
            tracker.track("ok", "dropped", {"round": round_})  # the lane holds 3: on_drop (which raises), no raise here
            assert tracker.flush(timeout=5)
    assert calls == {"on_error": 5, "on_drop": 5}
    names = [e["name"] for e in emulator.state()["people"]["ok"]["events"]]
    assert names == ["kept", "kept-too"] * 5
    stats = tracker.stats()
    assert stats.delivered == 10 and stats.failed_total == 5 and stats.dropped["queue_full"] == 5
    hook_records = [r for r in caplog.records if "hook" in r.getMessage()]
    assert len(hook_records) == 1, [r.getMessage() for r in hook_records]  # 10 raises, one line per interval
    assert hook_records[0].exc_info is not None and "delivery goes on" in hook_records[0].getMessage()
    senders = [t for t in set(threading.enumerate()) - before if t.name.startswith("ciotrack-sender")]
    assert len(senders) == 1 and senders[0].is_alive()  # the sender survived every raise


# -- the API key ------------------------------------------------------------------------------------


def _secret_forms(key: str) -> list[str]:
    return [key, base64.b64encode(f"{SITE_ID}:{key}".encode()).decode()]


def _assert_absent(key: str, *texts: str) -> None:
    for text in texts:
        for form in _secret_forms(key):
            assert form not in text, f"secret found in: {text[:200]!r}"


def test_the_key_is_in_no_repr_str_or_config_error() -> None:
    config = Config(site_id=SITE_ID, api_key=API_KEY, endpoint="http://127.0.0.1:9")
    tracker = Tracker(config=config)
    capture = CaptureTracker(SITE_ID, API_KEY)
    destination = TrackV2Destination.from_config(config, "us")  # what the tracker sends through
    texts = [repr(config), str(config), repr(tracker), str(tracker), repr(capture), repr(destination),
             repr(tracker.stats()), tracker.stats().format()]
    messages: list[str] = []
    for bad in ({"timeout": -1}, {"senders": 0}, {"region": "mars"}, {"endpoint": "ftp://x"}, {"bogus": 1}):
        with pytest.raises(ConfigError) as info:
            Config.from_env({}, site_id=SITE_ID, api_key=API_KEY, **bad)
        messages += [str(info.value), repr(info.value)]
    with pytest.raises(ConfigError) as info:
        Config.from_env({"CIOTRACK_API_KEY": API_KEY, "CIOTRACK_SENDERS": "many"}, site_id=SITE_ID)
    messages.append(str(info.value))
    tracker.close(timeout=0)
    _assert_absent(API_KEY, *texts, *messages)
    assert "api_key" not in repr(config)


def test_proxy_and_endpoint_passwords_are_in_no_repr() -> None:
    config = Config(site_id=SITE_ID, api_key=API_KEY, endpoint="http://ep-user:ep-SECRET@127.0.0.1:9",
                    endpoints={"eu": "http://eu-SECRET-token@[::1]:9/"},
                    proxies={"http": "http://bob:proxy-SECRET@127.0.0.1:3128", "https": "http://127.0.0.1:3129"})
    tracker = Tracker(config=config)
    texts = [repr(config), str(config), repr(tracker), str(tracker)]
    tracker.close(timeout=0)
    _assert_absent("SECRET", *texts)
    # Still says which proxy and endpoint are used: only the password (or a lone user name, maybe a token) goes.
    assert "proxies={'http': 'http://bob:***@127.0.0.1:3128', 'https': 'http://127.0.0.1:3129'}" in repr(config)
    assert "endpoint='http://ep-user:***@127.0.0.1:9'" in repr(config)
    assert "endpoints={'eu': 'http://***@[::1]:9/'}" in repr(config)
    assert "endpoint='http://ep-user:***@127.0.0.1:9'" in repr(tracker)


def test_the_key_is_in_no_log_line_or_delivery_error_after_a_401_or_a_dead_endpoint(
        emulator: Emulator, caplog: pytest.LogCaptureFixture) -> None:
    errors: list[DeliveryError] = []
    hook = functools.partial(_failing_hook, WRONG_KEY)  # its repr would show the key: the log must not
    with caplog.at_level(logging.DEBUG):  # every logger, every level, urllib3's included
        unauthorized = Tracker(SITE_ID, WRONG_KEY, endpoint=emulator.url, flush_interval=0.01, rate_limit=0,
                               on_error=errors.append, on_drop=hook)
        unauthorized.track("1", "rejected")
        assert unauthorized.flush(timeout=5)
        unauthorized.close(timeout=5)
        unauthorized.track("1", "after-close")  # -> on_drop -> the partial raises -> logged
        dead = Tracker(SITE_ID, WRONG_KEY, endpoint=f"http://127.0.0.1:{free_port()}", flush_interval=0.01,
                       rate_limit=0, max_retries=1, backoff_base=0.01, on_error=errors.append)
        dead.track("1", "unreachable")
        assert dead.flush(timeout=10)
        dead.close(timeout=5)
    assert [e.status for e in errors] == [401, None]
    assert errors[0].reason.startswith("http_401") and "connection_error" in errors[1].reason
    assert any("hook _failing_hook raised" in r.getMessage() or "hook partial raised" in r.getMessage()
               for r in caplog.records)
    lines = [caplog.text] + [r.getMessage() for r in caplog.records]
    error_texts = [text for e in errors for text in (str(e), repr(e), e.reason, repr(e.args),
                                                     repr(pickle.loads(pickle.dumps(e))))]
    _assert_absent(WRONG_KEY, *lines, *error_texts)
    assert emulator.stats()["by_status"].get("401") == 1


def _failing_hook(secret: str, reason: str, count: int) -> Any:
    raise RuntimeError("hook failed")


def test_an_endpoint_carrying_the_key_is_shown_without_it_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    # "https://site:key@track.customer.io" (a URL copied with its credentials) or a proxy's password: the
    # repr hid it, but the health, debug and loss lines named the endpoint as given.
    errors: list[DeliveryError] = []
    with caplog.at_level(logging.DEBUG):
        dead = Tracker(SITE_ID, API_KEY, endpoint=f"http://{SITE_ID}:{API_KEY}@127.0.0.1:{free_port()}", debug=True,
                       flush_interval=0.01, rate_limit=0, max_retries=1, backoff_base=0.01, on_error=errors.append)
        dead.track("1", "unreachable")
        assert dead.flush(timeout=10)
        dead.track("1", "queued at close")
        dead.close(timeout=0)
    assert any("failing: connection refused" in r.getMessage() for r in caplog.records)
    assert any(r.name == "ciotrack.http" for r in caplog.records)
    assert any("delivery failing: connection refused to http://site-test:***@127.0.0.1" in r.getMessage()
               for r in caplog.records)
    lines = [caplog.text] + [r.getMessage() for r in caplog.records]
    _assert_absent(API_KEY, *lines, *(text for e in errors for text in (str(e), repr(e), e.reason)))
