"""A damaged or tampered spool over real files and real trackers: what can be read is replayed, what
cannot is reported, and nothing crashes the spooler.

The spool directory deleted while running (a tmp cleaner), entries that are not segments (a
directory or a FIFO named like one), a damaged record header in the middle of a segment.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import resource
import shutil
import time
from typing import Any

import pytest

from ciotrack import Tracker
from ciotrack.emulator import Emulator
from ciotrack.spool import Spool, encode_record
from ciotrack.spool.segments import _RESCAN_SECONDS

from conftest import API_KEY, SITE_ID, all_events, free_port


def _op(n: int) -> bytes:
    return json.dumps({"type": "person", "identifiers": {"id": f"user-{n}"}, "action": "event",
                       "name": "checkout", "id": f"01J{n:023d}"}).encode()


# Within _RESCAN_SECONDS of the last directory scan, append trusts its byte estimate; past it, it reads
# the directory first: both paths must notice the deletion.
@pytest.mark.parametrize("later", [False, True], ids=["at-once", "past-the-rescan"])
def test_spool_deleted_under_its_writer_is_recreated_and_the_loss_reported(tmp_path: pathlib.Path,
                                                                           later: bool) -> None:
    directory = tmp_path / "spool"
    deleted: list[int] = []
    spool = Spool(directory, on_deleted=deleted.append)
    spool.append([_op(1), _op(2)])
    shutil.rmtree(directory)  # a tmp cleaner
    if later:
        time.sleep(_RESCAN_SECONDS + 0.5)
    spool.append([_op(3)])    # must not go into the unlinked file
    spool.close()
    assert deleted == [2]
    [segment] = list(Spool(directory).claim())
    assert [ops for _, ops in segment.records()] == [[_op(3)]]
    segment.release()


def _spooling_tracker(endpoint: str, spool_dir: pathlib.Path, drops: list[tuple[str, int]]) -> Tracker:
    # Nothing answers at ``endpoint``: batches run out of retries quickly and go to the spool.
    return Tracker(SITE_ID, API_KEY, endpoint=endpoint, spool_dir=str(spool_dir), rate_limit=0,
                   flush_interval=0.02, max_retries=0, timeout=(0.2, 0.2), backoff_base=0.01,
                   on_drop=lambda reason, n: drops.append((reason, n)))


def test_a_tracker_whose_spool_directory_is_deleted_keeps_spooling(tmp_path: pathlib.Path) -> None:
    spool_dir = tmp_path / "spool"
    drops: list[tuple[str, int]] = []
    dead = f"http://127.0.0.1:{free_port()}"
    tracker = _spooling_tracker(dead, spool_dir, drops)
    for i in range(100):
        tracker.track(f"user-{i}", "before")
    assert tracker.flush(timeout=20)
    assert tracker.stats().counters.get("spooled") == 100
    shutil.rmtree(spool_dir)
    time.sleep(_RESCAN_SECONDS + 0.5)  # the next append reads the directory before writing
    for i in range(100):
        tracker.track(f"user-{i}", "after")
    tracker.close(timeout=20)
    # The 100 spooled before the deletion are gone and said so; the 100 after are on disk.
    assert ("spool_deleted", 100) in drops
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        replayer = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=str(spool_dir), rate_limit=0,
                           flush_interval=0.02)
        assert replayer.flush(timeout=20)
        replayer.close(timeout=10)
        names = sorted(e["name"] for e in all_events(emulator.state(SITE_ID)))
    assert names == ["after"] * 100


def test_entries_that_are_not_segments_do_not_stop_replay(tmp_path: pathlib.Path) -> None:
    spool_dir = tmp_path / "spool"
    site_dir = spool_dir / f"site-{SITE_ID}"
    site_dir.mkdir(parents=True)
    (site_dir / "00000000000000000001-0000000001-00000001.spool").mkdir()  # a directory named like a segment
    os.mkfifo(site_dir / "00000000000000000002-0000000001-00000001.spool")  # a FIFO: opening it would block
    good = site_dir / "00000000000000000003-0000000001-00000001.spool"
    good.write_bytes(encode_record("us", [_op(n) for n in range(5)]))
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=str(spool_dir), rate_limit=0,
                          flush_interval=0.02)
        assert tracker.flush(timeout=20)
        tracker.close(timeout=10)
        events = all_events(emulator.state(SITE_ID))
    assert sorted(e["id"] for e in events) == sorted(f"01J{n:023d}" for n in range(5))
    assert not good.exists()  # replayed, then deleted
    assert (site_dir / "00000000000000000001-0000000001-00000001.spool").is_dir()  # left alone


def test_a_damaged_header_loses_one_record_and_is_counted(tmp_path: pathlib.Path) -> None:
    spool_dir = tmp_path / "spool"
    site_dir = spool_dir / f"site-{SITE_ID}"
    site_dir.mkdir(parents=True)
    records = [encode_record("us", [_op(n)]) for n in range(10)]
    data = bytearray(b"".join(records))
    data[len(records[0]) * 4 + 1] ^= 0xFF  # the magic of record 4
    (site_dir / "00000000000000000001-0000000001-00000001.spool").write_bytes(bytes(data))
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=str(spool_dir), rate_limit=0,
                          flush_interval=0.02)
        assert tracker.flush(timeout=20)
        counters: dict[str, Any] = dict(tracker.stats().counters)
        tracker.close(timeout=10)
        delivered = len(all_events(emulator.state(SITE_ID)))
    assert delivered == 9  # every record after the damaged one too
    assert counters.get("spool_damaged_records") == 1


def _segment_of(site_dir: pathlib.Path, ops: list[bytes]) -> pathlib.Path:
    path = site_dir / "00000000000000000001-0000000001-00000001.spool"
    path.write_bytes(encode_record("us", ops))
    return path


def test_a_segment_that_cannot_be_read_is_kept_and_replayed_later(tmp_path: pathlib.Path) -> None:
    # A process at its descriptor limit (EMFILE) cannot read a segment it claimed: the file must be
    # kept (released), not taken for an empty segment and deleted.
    spool_dir = tmp_path / "spool"
    drops: list[tuple[str, int]] = []
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=str(spool_dir), rate_limit=0,
                          sync=True, on_drop=lambda reason, n: drops.append((reason, n)))
        tracker.track("warm-up", "warm-up")
        assert tracker.flush(timeout=20)  # the destination is known up, its connection open
        path = _segment_of(spool_dir / f"site-{SITE_ID}", [_op(n) for n in range(50)])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        filler: list[int] = []
        try:
            with contextlib.suppress(OSError):
                while True:
                    filler.append(os.open(os.devnull, os.O_RDONLY))
            os.close(filler.pop())  # one left: enough to claim the segment, not to read it
            tracker.flush(timeout=5)
        finally:
            for fd in filler:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert path.exists()
        assert tracker.flush(timeout=20)
        tracker.close(timeout=10)
        ids = sorted(e["id"] for e in all_events(emulator.state(SITE_ID)) if e["name"] == "checkout")
    assert ids == sorted(f"01J{n:023d}" for n in range(50))
    assert not path.exists() and drops == []


def test_a_record_with_a_bad_checksum_is_reported_as_a_loss(tmp_path: pathlib.Path) -> None:
    site_dir = tmp_path / "spool" / f"site-{SITE_ID}"
    site_dir.mkdir(parents=True)
    good = encode_record("us", [_op(n) for n in range(3)])
    bad = bytearray(encode_record("us", [_op(n) for n in range(3, 23)]))
    bad[40] ^= 0x01  # one flipped bit in the payload: the header (and its op count) is intact
    (site_dir / "00000000000000000001-0000000001-00000001.spool").write_bytes(good + bytes(bad))
    drops: list[tuple[str, int]] = []
    with Emulator(workspaces={SITE_ID: API_KEY}) as emulator:
        tracker = Tracker(SITE_ID, API_KEY, endpoint=emulator.url, spool_dir=str(tmp_path / "spool"), rate_limit=0,
                          flush_interval=0.02, on_drop=lambda reason, n: drops.append((reason, n)))
        assert tracker.flush(timeout=20)
        dropped = dict(tracker.stats().dropped)
        tracker.close(timeout=10)
        delivered = len(all_events(emulator.state(SITE_ID)))
    assert delivered == 3
    assert drops == [("spool_damaged", 20)]
    assert dropped.get("spool_damaged") == 20
