"""`ciotrack deadletter`, the idle-consumer janitor, and Tracker's fleet options."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

from ciotrack.config import Config
from ciotrack.errors import ConfigError
from ciotrack.fleet.streams import StreamKeys, decode_entry, encode_entry, ensure_group
from ciotrack.fleet.worker import Worker, WorkerConfig
from redis_harness import RedisServer

from .fleet_procs import SITE_ID, env, redis_client, wait_until

KEYS = StreamKeys.for_site(SITE_ID)


def _cli(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ciotrack", "deadletter", *args, "--redis-url", redis_url,
                           "--site-id", SITE_ID], env=env(), capture_output=True, text=True, timeout=60)


def test_deadletter_list_replay_purge(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    bodies = [b'{"batch":[{"n":%d}]}' % i for i in range(3)]
    ids = []
    for i, body in enumerate(bodies):
        fields = {**encode_entry(body, "eu", "p"), "error": f"400: bad {i}".encode(), "tries": b"5",
                  "source_id": b"1-%d" % i}
        ids.append(client.xadd(KEYS.dead, fields).decode())
    listed = _cli(redis_server.url, "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ids
    assert lines[1].split("\t")[1:] == ["eu", "1", "tries=5", "400: bad 1"]
    replayed = _cli(redis_server.url, "replay", "--id", ids[0])
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout
    [(work_id, fields)] = client.xrange(KEYS.work)
    entry = decode_entry(work_id, fields)
    assert entry.batch.body == bodies[0] and entry.region == "eu" and b"error" not in fields
    assert client.xlen(KEYS.dead) == 2
    purged = _cli(redis_server.url, "purge")
    assert purged.returncode == 0 and "purged 2" in purged.stdout and client.xlen(KEYS.dead) == 0


def test_deadletter_reaches_the_dead_letters_of_a_prefixed_worker(redis_server: RedisServer) -> None:
    """``ciotrack worker --key-prefix lt`` (a load test's keys) dead-letters to ``lt:{<site>}:dead``:
    ``ciotrack deadletter --key-prefix lt`` lists and replays them into ``lt:{<site>}:work``, and the
    default prefix's streams are left alone."""
    prefixed = StreamKeys.for_site(SITE_ID, "lt")
    client = redis_client(redis_server.url)
    dead_id = client.xadd(prefixed.dead, {**encode_entry(b'{"batch":[{"n":1}]}', "us", "p"), "error": b"400: bad"})
    listed = _cli(redis_server.url, "list", "--key-prefix", "lt")
    assert listed.returncode == 0 and listed.stdout.split("\t")[0] == dead_id.decode(), listed.stderr
    assert _cli(redis_server.url, "list").stdout == ""
    assert "replayed 1" in _cli(redis_server.url, "replay", "--key-prefix", "lt").stdout
    assert client.xlen(prefixed.work) == 1 and client.xlen(prefixed.dead) == 0 and not client.exists(KEYS.work)


def test_worker_help_states_the_default_rate_limits_margin() -> None:
    from ciotrack.fleet.settings import DEFAULT_RATE_LIMIT

    done = subprocess.run([sys.executable, "-m", "ciotrack", "worker", "--help"], env={**env(), "COLUMNS": "400"},
                          capture_output=True, text=True, timeout=60, check=True)
    assert f"default {DEFAULT_RATE_LIMIT:g}: {100 - DEFAULT_RATE_LIMIT:g} % under the workspace's 100/s" in done.stdout


def test_worker_create_group_flag_is_idempotent(redis_server: RedisServer) -> None:
    for expected in ("created", "already there"):
        done = subprocess.run([sys.executable, "-m", "ciotrack", "worker", "--create-group", "--redis-url",
                               redis_server.url, "--site-id", SITE_ID], env=env(), capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0 and done.stdout.strip().endswith(expected), done.stderr
    assert redis_client(redis_server.url).xinfo_groups(KEYS.work)[0]["last-delivered-id"] == b"0-0"


def test_janitor_removes_only_idle_consumers_without_pending_entries(redis_server: RedisServer) -> None:
    client = redis_client(redis_server.url)
    ensure_group(client, KEYS)
    client.xadd(KEYS.work, encode_entry(b'{"batch":[{"a":1}]}', "us", "p"))
    client.xreadgroup(KEYS.group, "dead-with-pending", {KEYS.work: ">"}, count=1)
    client.xgroup_createconsumer(KEYS.work, KEYS.group, "dead-empty")
    worker = Worker(WorkerConfig(redis_server.url, SITE_ID, "k", visibility_timeout=16, request_timeout=1,
                                 consumer="janitor"))
    worker.config.visibility_timeout = 0.0001  # "idle for ten visibility timeouts" is now any idle time
    time.sleep(0.05)
    worker._remove_idle_consumers()
    names = {c["name"] for c in client.xinfo_consumers(KEYS.work, KEYS.group)}
    # The consumer with a pending entry is kept (deleting it would orphan the entry).
    assert names == {b"dead-with-pending"}
    assert client.xinfo_groups(KEYS.work)[0]["pending"] == 1
    worker.redis.close()


def test_tracker_fleet_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIOTRACK_REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")
    config = Config.from_env(site_id="site-1")  # no API key needed for a producer
    assert config.destination_kind == "redis" and config.rate_limit == 0
    assert "s3cret" not in repr(config) and "s3cret" not in repr(config.destination)
    with pytest.raises(ConfigError):
        Config.from_env(site_id="site-1", redis_url="http://nope")
    monkeypatch.delenv("CIOTRACK_REDIS_URL")
    with pytest.raises(ConfigError):
        Config(site_id="", api_key="", redis_url="redis://127.0.0.1:1/0")
    shared = Config(site_id="s", api_key="k", rate_limit_redis_url="redis://127.0.0.1:1/0", rate_limit=50)
    assert shared.limiter is not None and shared.destination_kind == "track_api"
    assert os.environ.get("CIOTRACK_REDIS_URL") is None


def test_tracker_shares_a_redis_rate_limit(redis_server: RedisServer, make_tracker: Any, emulator: Any) -> None:
    tracker = make_tracker(rate_limit=5, rate_burst=2, rate_limit_redis_url=redis_server.url)
    for i in range(3):
        tracker.track("u1", "e", {"i": i})
    assert tracker.flush(timeout=10)
    assert emulator.stats()["events"] == 3
    # The limiter state lives in Redis (a GCRA key for the workspace and region).
    keys = {k.decode() for k in redis_client(redis_server.url).scan_iter("ciotrack:*")}
    assert any(k.endswith(":gcra") for k in keys), keys


def test_a_redis_outage_spools_and_replays_into_the_stream(redis_server: RedisServer, tmp_path: Any) -> None:
    import json

    from ciotrack import Tracker

    client = redis_client(redis_server.url)
    tracker = Tracker(SITE_ID, redis_url=redis_server.url, spool_dir=str(tmp_path / "spool"), flush_interval=0.02,
                      max_retries=2, backoff_base=0.01, backoff_cap=0.05, handle_sigterm=False)
    try:
        tracker.track("u", "before", {"i": 0})
        assert tracker.flush(timeout=10) and client.xlen(KEYS.work) == 1
        redis_server.kill()
        for i in range(1, 51):
            tracker.track("u", "during", {"i": i})
        assert tracker.flush(timeout=30)  # retries ran out: the batches went to the disk spool
        assert tracker.stats().spooled == 50
        redis_server.start()  # PING answers again: the spool replays into the stream
        assert wait_until(lambda: client.xlen(KEYS.work) >= 2 and tracker.stats().replayed == 50, 30)
    finally:
        tracker.close(timeout=10)
    seen = []
    for entry_id, fields in client.xrange(KEYS.work):
        for op in decode_entry(entry_id, fields).batch.ops():
            seen.append(json.loads(op)["attributes"]["i"])
    assert sorted(seen) == list(range(51))
