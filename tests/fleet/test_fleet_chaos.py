"""Nothing lost when a worker or Redis dies: SIGKILLed workers (their entries are claimed by peers
after the visibility timeout) and a SIGKILLed Redis restarted from its AOF (producers and workers
reconnect by themselves)."""

from __future__ import annotations

import socket
import time
from collections import Counter
from pathlib import Path

from ciotrack.emulator import Emulator
from ciotrack.fleet.streams import StreamKeys, ensure_group
from redis_harness import RedisServer

from .fleet_procs import (
    API_KEY,
    SITE_ID,
    WorkerProcess,
    redis_client,
    spawn_producer,
    stored_events,
    wait_producer,
    wait_until,
)

KEYS = StreamKeys.for_site(SITE_ID)
# Short claims for a short test: a delivery may take visibility - request timeout - 5 s = 1 s.
FAST_CLAIMS = ("--rate-limit", "0", "--visibility-timeout", "7", "--request-timeout", "1", "--drain-timeout", "5")


def _check_every_event_once(em: Emulator, producers: int, per_producer: int) -> None:
    counts = Counter(stored_events(em))
    expected = {(p, i) for p in range(producers) for i in range(per_producer)}
    missing = expected - set(counts)
    assert not missing, f"{len(missing)} events lost, e.g. {sorted(missing)[:5]}"
    assert set(counts) == expected and set(counts.values()) == {1}


def _diagnose(client, em: Emulator, logs: Path) -> str:  # type: ignore[no-untyped-def]
    lines = [f"stored={len(stored_events(em))} xlen={client.xlen(KEYS.work)} dead={client.xlen(KEYS.dead)}",
             f"groups={client.xinfo_groups(KEYS.work)}", f"consumers={client.xinfo_consumers(KEYS.work, KEYS.group)}",
             f"tries={client.hgetall(KEYS.tries)}", f"emulator={em.stats()['by_status']}"]
    for log in sorted(logs.glob("w*.log")):
        lines.append(f"--- {log.name}: " + log.read_text(errors="replace")[-1500:])
    return "\n".join(lines)


def test_workers_sigkilled_mid_delivery_lose_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(latency=0.2)  # long requests: a kill lands mid-delivery
        n = 0

        def worker() -> WorkerProcess:
            nonlocal n
            n += 1
            return WorkerProcess(redis_server.url, em.url, *FAST_CLAIMS, log=tmp_path / f"w{n}.log")

        client = redis_client(redis_server.url)
        ensure_group(client, KEYS)  # as the deployment's Job does, before anyone starts
        workers = [worker(), worker()]
        producers = [spawn_producer(redis_server.url, p, 800, 8.0) for p in range(2)]
        kills = pending_at_kill = 0

        def pending_of(proc: WorkerProcess) -> int:
            name = f"{socket.gethostname()}-{proc.proc.pid}".encode()
            return sum(c["pending"] for c in client.xinfo_consumers(KEYS.work, KEYS.group) if c["name"] == name)

        for _ in range(3):
            # Kill the oldest worker while it holds entries (mid-delivery), then start a replacement.
            victim = workers.pop(0)
            wait_until(lambda v=victim: pending_of(v) > 0, 30, interval=0.02)
            pending_at_kill += pending_of(victim)
            victim.kill()  # SIGKILL: its in-flight entries stay pending under its name
            kills += 1
            workers.append(worker())
            time.sleep(1.0)
        assert all(wait_producer(p).startswith("flushed True 800") for p in producers)
        assert wait_until(lambda: len(stored_events(em)) >= 1600, 45), _diagnose(client, em, tmp_path)
        _check_every_event_once(em, 2, 800)
        assert kills >= 3 and pending_at_kill > 0  # the kills did hit entries being delivered
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 20)
        # Entries were claimed from the killed consumers (their PELs are empty now).
        assert all(c["pending"] == 0 for c in client.xinfo_consumers(KEYS.work, KEYS.group))
        assert client.xlen(KEYS.dead) == 0
        assert [w.terminate() for w in workers] == [0, 0]


def test_redis_sigkilled_and_restarted_loses_nothing(redis_server: RedisServer, tmp_path: Path) -> None:
    with Emulator.spawn(workspaces={SITE_ID: API_KEY}) as em:
        em.set_faults(latency=0.05)
        ensure_group(redis_client(redis_server.url), KEYS)
        workers = [WorkerProcess(redis_server.url, em.url, *FAST_CLAIMS, log=tmp_path / f"w{i}.log")
                   for i in range(2)]
        producers = [spawn_producer(redis_server.url, p, 800, 5.0) for p in range(2)]
        assert wait_until(lambda: len(stored_events(em)) >= 200, 30)  # producers and workers are under way
        stored_before = len(stored_events(em))
        redis_server.kill()  # SIGKILL; AOF (appendfsync always) has every acknowledged write
        time.sleep(1.5)
        redis_server.start()  # same port and dir: the AOF is replayed
        assert all(wait_producer(p).startswith("flushed True 800") for p in producers)
        assert wait_until(lambda: len(stored_events(em)) >= 1600, 45)
        _check_every_event_once(em, 2, 800)
        assert 0 < stored_before < 1600  # Redis died mid-run
        client = redis_client(redis_server.url)
        assert wait_until(lambda: client.xlen(KEYS.work) == 0, 20)
        assert all(w.alive() for w in workers)  # reconnected by themselves
        assert [w.terminate() for w in workers] == [0, 0]
