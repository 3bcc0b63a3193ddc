"""ciotrack.spool: round trip, rotation, damage, eviction, and real multi-process locking."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import zlib
from collections.abc import Iterator

import pytest

from ciotrack.spool import HEADER_BYTES, MAGIC, VERSION, Segment, Spool, encode_record

DEADLINE = 20.0  # generous: the machine is small and noisy; passing runs take a fraction of this


def op(n: int, pad: int = 0) -> bytes:
    return json.dumps({"type": "person", "n": n, "pad": "x" * pad}, separators=(",", ":")).encode()


def replay(spool: Spool) -> list[tuple[str, list[bytes]]]:
    """Claim every segment, collect its records and delete it."""
    out: list[tuple[str, list[bytes]]] = []
    for segment in spool.claim():
        out.extend(segment.records())
        segment.done()
    return out


def segment_files(directory: pathlib.Path) -> list[pathlib.Path]:
    return sorted(directory.glob("*.spool"))


@pytest.fixture
def spool(tmp_path: pathlib.Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


# -- single process ---------------------------------------------------------------------------------

def test_round_trip_in_order(spool: Spool) -> None:
    written = [("us", [op(0), op(1)]), ("eu", [op(2)]), ("us", [op(3), op(4), op(5)])]
    for region, ops in written:
        spool.append(ops, region=region)
    size = sum(len(encode_record(region, ops)) for region, ops in written)
    assert spool.pending() == (6, size)
    assert replay(spool) == written
    assert spool.pending() == (0, 0)
    assert segment_files(spool.directory) == []


def test_empty_append_writes_nothing(spool: Spool) -> None:
    spool.append([])
    assert spool.pending() == (0, 0)
    assert list(spool.claim()) == []


def test_rejects_newline_in_op_and_bad_region(spool: Spool) -> None:
    with pytest.raises(ValueError, match=r"ops\[1\]"):
        spool.append([op(0), b'{"a":\n1}'])
    with pytest.raises(ValueError, match="region"):
        spool.append([op(0)], region="u\ns")
    with pytest.raises(ValueError, match="region"):
        spool.append([op(0)], region="")
    assert spool.pending() == (0, 0)


def test_rotation_keeps_global_order(tmp_path: pathlib.Path) -> None:
    record_bytes = len(encode_record("us", [op(0, pad=100)]))
    with Spool(tmp_path, segment_bytes=3 * record_bytes) as spool:
        for n in range(10):
            spool.append([op(n, pad=100)])
        files = segment_files(tmp_path)
        assert [f.stat().st_size for f in files] == [3 * record_bytes] * 3 + [record_bytes]
        assert replay(spool) == [("us", [op(n, pad=100)]) for n in range(10)]


def test_a_record_larger_than_a_segment_gets_its_own(tmp_path: pathlib.Path) -> None:
    with Spool(tmp_path, segment_bytes=200) as spool:
        spool.append([op(0)])
        spool.append([op(1, pad=1000)])
        spool.append([op(2)])
        assert len(segment_files(tmp_path)) == 3
        assert [ops for _, ops in replay(spool)] == [[op(0)], [op(1, pad=1000)], [op(2)]]


def test_claim_rotates_own_writer_and_later_appends_go_to_a_new_segment(spool: Spool) -> None:
    spool.append([op(0)])
    segments = list(spool.claim())
    assert len(segments) == 1
    spool.append([op(1)])  # must not land in the claimed file
    assert list(segments[0].records()) == [("us", [op(0)])]
    segments[0].done()
    assert replay(spool) == [("us", [op(1)])]


def test_second_spool_in_same_process_cannot_claim_a_live_writer(tmp_path: pathlib.Path) -> None:
    with Spool(tmp_path) as writer, Spool(tmp_path) as reader:
        writer.append([op(0)])
        assert list(reader.claim()) == []
        assert reader.pending() == (1, writer.pending()[1])
        writer.close()
        assert replay(reader) == [("us", [op(0)])]


def test_released_segment_is_claimable_again_and_locked_while_held(tmp_path: pathlib.Path) -> None:
    with Spool(tmp_path) as a, Spool(tmp_path) as b:
        a.append([op(0)])
        a.close()
        [held] = list(b.claim())
        assert list(Spool(tmp_path).claim()) == []  # held by b
        held.release()
        held.release()  # idempotent
        with pytest.raises(ValueError):
            held.done()  # no lock any more: deleting would race another replayer
        assert replay(Spool(tmp_path)) == [("us", [op(0)])]


def test_claim_skips_a_segment_deleted_between_its_open_and_its_lock(tmp_path: pathlib.Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with Spool(tmp_path) as writer:
        writer.append([op(0)])
    slow, fast = Spool(tmp_path), Spool(tmp_path)
    real_open = os.open
    raced: list[list[tuple[str, list[bytes]]]] = []

    def open_then_lose_the_race(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if str(path).endswith(".spool") and not raced:
            raced.append([])  # first: the nested claim below opens files too
            raced[0].extend(replay(fast))  # another replayer claims, replays and deletes it now
        return fd

    monkeypatch.setattr(os, "open", open_then_lose_the_race)
    # slow's lock lands on the unlinked inode; replaying it would deliver every op a second time.
    assert list(slow.claim()) == []
    monkeypatch.undo()
    assert raced == [[("us", [op(0)])]]


def test_segment_context_manager_releases(spool: Spool) -> None:
    spool.append([op(0)])
    for segment in spool.claim():
        with segment:
            assert list(segment.records()) == [("us", [op(0)])]
    assert spool.pending()[0] == 1
    assert len(replay(spool)) == 1


def test_close_is_idempotent_and_releases_claims(tmp_path: pathlib.Path) -> None:
    spool = Spool(tmp_path)
    spool.append([op(0)])
    [segment] = list(spool.claim())
    spool.close()
    spool.close()
    with pytest.raises(ValueError):
        spool.append([op(1)])
    with pytest.raises(ValueError):
        list(spool.claim())
    with pytest.raises(ValueError):
        list(segment.records())  # released by close()
    assert replay(Spool(tmp_path)) == [("us", [op(0)])]


def test_fsync_mode_round_trip(tmp_path: pathlib.Path) -> None:
    with Spool(tmp_path, fsync=True, segment_bytes=1) as spool:
        spool.append([op(0)])
        spool.append([op(1)], region="eu")
        assert replay(spool) == [("us", [op(0)]), ("eu", [op(1)])]
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_record_behind(tmp_path: pathlib.Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def half_then_disk_full(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with Spool(tmp_path) as spool:
        spool.append([op(0)])
        monkeypatch.setattr(os, "write", half_then_disk_full)
        with pytest.raises(OSError):
            spool.append([op(1)])
        monkeypatch.undo()
        spool.append([op(2)])  # a fresh segment: nothing may hide behind the half record
        assert len(segment_files(tmp_path)) == 2
        segments = list(spool.claim())
        assert [list(s.records()) for s in segments] == [[("us", [op(0)])], [("us", [op(2)])]]
        assert [(s.skipped_records, s.dropped_tail_bytes) for s in segments] == [(0, 0), (0, 0)]
        for s in segments:
            s.done()


# -- damage -----------------------------------------------------------------------------------------

def write_records(directory: pathlib.Path, count: int) -> tuple[pathlib.Path, list[int]]:
    """One segment of ``count`` records; returns its path and each record's start offset."""
    with Spool(directory) as spool:
        for n in range(count):
            spool.append([op(n), op(n + 1000)])
    [path] = segment_files(directory)
    record_bytes = len(encode_record("us", [op(0), op(1000)]))
    assert path.stat().st_size == count * record_bytes
    return path, [n * record_bytes for n in range(count)]


def read_all(directory: pathlib.Path) -> tuple[list[int], Segment]:
    [segment] = list(Spool(directory).claim())
    numbers = [json.loads(ops[0])["n"] for _, ops in segment.records()]
    return numbers, segment


def test_torn_tail_replays_every_complete_record(tmp_path: pathlib.Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    path, starts = write_records(tmp_path, 5)
    full = path.read_bytes()
    last = starts[-1]
    # Every cut inside the last record: in its header, at the header's end, inside the payload.
    for cut in [last + 1, last + HEADER_BYTES - 1, last + HEADER_BYTES, last + HEADER_BYTES + 7, len(full) - 1]:
        path.write_bytes(full[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ciotrack.spool"):
            numbers, segment = read_all(tmp_path)
        assert numbers == [0, 1, 2, 3], cut
        assert segment.dropped_tail_bytes == cut - last
        assert segment.skipped_records == 0
        warnings = [r for r in caplog.records if r.name == "ciotrack.spool"]
        assert len(warnings) == 1 and "torn tail" in warnings[0].getMessage()
        segment.release()


def test_corrupt_payload_byte_skips_only_that_record(tmp_path: pathlib.Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    path, starts = write_records(tmp_path, 5)
    data = bytearray(path.read_bytes())
    data[starts[2] + HEADER_BYTES + 5] ^= 0x01
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="ciotrack.spool"):
        numbers, segment = read_all(tmp_path)
    assert numbers == [0, 1, 3, 4]
    assert segment.skipped_records == 1 and segment.dropped_tail_bytes == 0
    assert len([r for r in caplog.records if r.name == "ciotrack.spool"]) == 1


@pytest.mark.parametrize("field_offset", [0, 2, 4, 8, 12, 16])  # magic, version, count, length, crcs
def test_corrupt_header_loses_only_that_record(tmp_path: pathlib.Path, field_offset: int) -> None:
    path, starts = write_records(tmp_path, 5)
    data = bytearray(path.read_bytes())
    data[starts[2] + field_offset] ^= 0x40
    path.write_bytes(bytes(data))
    # Every header field, the payload CRC included, sits under the header CRC: the length can no
    # longer be trusted, so the reader resynchronises on the next record that frames and checks.
    numbers, segment = read_all(tmp_path)
    assert numbers == [0, 1, 3, 4]
    assert segment.damaged_bytes == starts[3] - starts[2] and segment.skipped_records == 1
    assert segment.dropped_tail_bytes == 0


def test_corrupt_last_header_drops_only_the_tail(tmp_path: pathlib.Path) -> None:
    path, starts = write_records(tmp_path, 3)
    data = bytearray(path.read_bytes())
    data[starts[2]] ^= 0x40
    path.write_bytes(bytes(data))
    numbers, segment = read_all(tmp_path)
    assert numbers == [0, 1]
    assert segment.dropped_tail_bytes == len(data) - starts[2]


def test_unknown_version_record_is_kept_for_a_newer_reader(tmp_path: pathlib.Path) -> None:
    path, starts = write_records(tmp_path, 3)
    payload = b"us\n" + op(99)
    checked = struct.pack(">2sBBIII", MAGIC, VERSION + 1, 0, 1, len(payload), zlib.crc32(payload))
    from_the_future = checked + struct.pack(">I", zlib.crc32(checked)) + payload
    data = path.read_bytes()
    path.write_bytes(data[: starts[1]] + from_the_future + data[starts[1]:])
    spool = Spool(tmp_path)
    [segment] = list(spool.claim())
    numbers = [json.loads(ops[0])["n"] for _, ops in segment.records()]
    assert numbers == [0, 1, 2]
    assert segment.skipped_records == 0 and segment.foreign == [from_the_future]
    # done(): the readable records were replayed; the newer one is written back, byte for byte,
    # to a segment this process never claims again (a rolling deploy's newer version replays it).
    segment.done()
    assert not path.exists()
    [kept] = list(tmp_path.glob("*.spool"))
    assert kept.read_bytes() == from_the_future
    assert [s.path for s in spool.claim()] == []
    assert [s.path for s in Spool(tmp_path).claim()] == [kept]  # a fresh process (a newer reader) sees it


def test_pending_counts_only_complete_records(tmp_path: pathlib.Path) -> None:
    path, starts = write_records(tmp_path, 3)
    with path.open("ab") as f:
        f.write(encode_record("us", [op(7)])[:-3])  # a writer's half-written record
    ops, size = Spool(tmp_path).pending()
    assert ops == 6 and size == path.stat().st_size


# -- eviction ---------------------------------------------------------------------------------------

def test_max_bytes_evicts_oldest_segments_first_and_counts(tmp_path: pathlib.Path) -> None:
    record_bytes = len(encode_record("us", [op(0, pad=50), op(10, pad=50)]))  # every record's size
    evicted: list[int] = []
    spool = Spool(tmp_path, segment_bytes=2 * record_bytes, max_bytes=6 * record_bytes, on_evict=evicted.append)
    for n in range(10):
        spool.append([op(n, pad=50), op(n + 10, pad=50)])
        assert spool.pending()[1] <= 6 * record_bytes
    # 10 records, room for 6: the two oldest segments (4 records, 8 ops) went, each reported.
    assert evicted == [4, 4]
    assert [json.loads(ops[0])["n"] for _, ops in replay(spool)] == [4, 5, 6, 7, 8, 9]
    spool.close()


def test_eviction_skips_locked_segments(tmp_path: pathlib.Path) -> None:
    record_bytes = len(encode_record("us", [op(0, pad=50)]))
    evicted: list[int] = []
    with Spool(tmp_path, segment_bytes=record_bytes, max_bytes=3 * record_bytes, on_evict=evicted.append) as spool:
        spool.append([op(0, pad=50)])
        spool.append([op(1, pad=50)])
        [oldest, second] = list(spool.claim())
        second.release()  # keep holding only the oldest, as a replayer busy with it would
        spool.append([op(2, pad=50)])
        spool.append([op(3, pad=50)])  # over: the held oldest must survive, the next one goes
        assert evicted == [1]
        assert list(oldest.records()) == [("us", [op(0, pad=50)])]
        oldest.done()
        assert [json.loads(ops[0])["n"] for _, ops in replay(spool)] == [2, 3]


def test_record_that_cannot_fit_is_split_and_what_still_cannot_is_refused(tmp_path: pathlib.Path) -> None:
    evicted: list[int] = []
    refused: list[int] = []
    with Spool(tmp_path, max_bytes=200, on_evict=evicted.append, on_refuse=refused.append) as spool:
        assert spool.append([op(0, pad=300), op(1)]) == 1  # op 0 alone is over the cap
        assert (evicted, refused) == ([], [1])  # a refusal, not an eviction
        assert spool.pending()[0] == 1
    assert [json.loads(ops[0])["n"] for _, ops in replay(Spool(tmp_path))] == [1]


def test_own_writer_segment_is_evicted_when_nothing_older_is(tmp_path: pathlib.Path) -> None:
    record_bytes = len(encode_record("us", [op(0)]))
    evicted: list[int] = []
    with Spool(tmp_path, max_bytes=2 * record_bytes, on_evict=evicted.append) as spool:
        spool.append([op(0)])
        spool.append([op(1)])
        spool.append([op(2)])
        assert evicted == [2]
        assert replay(spool) == [("us", [op(2)])]


def test_on_evict_exception_does_not_break_append(tmp_path: pathlib.Path) -> None:
    def hook(n: int) -> None:
        raise RuntimeError("boom")

    with Spool(tmp_path, max_bytes=100, on_evict=hook) as spool:
        spool.append([op(0, pad=200)])  # refused, reported, hook fails: append still returns
        spool.append([op(1)])
        assert spool.pending()[0] == 1


# -- threads and fork -------------------------------------------------------------------------------

def test_append_from_8_threads_never_interleaves(tmp_path: pathlib.Path) -> None:
    threads_n, per_thread = 8, 150
    start = threading.Barrier(threads_n)
    errors: list[BaseException] = []
    spool = Spool(tmp_path, segment_bytes=8 << 10)

    def work(t: int) -> None:
        try:
            start.wait()
            for i in range(per_thread):
                # Records of different sizes, so a torn interleave could not line up by accident.
                spool.append([op(t * 10_000 + i * 10 + k, pad=(i * 7) % 300) for k in range(1 + i % 4)])
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    with spool:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert errors == []
        assert len(segment_files(tmp_path)) > 5  # rotation happened under contention
        records = replay(spool)
    assert len(records) == threads_n * per_thread
    seen_per_thread: dict[int, list[int]] = {}
    for _region, ops in records:
        numbers = [json.loads(o)["n"] for o in ops]
        t, i = divmod(numbers[0], 10_000)
        i //= 10
        assert numbers == [t * 10_000 + i * 10 + k for k in range(1 + i % 4)]  # the group is intact
        seen_per_thread.setdefault(t, []).append(i)
    # Every record exactly once, and each thread's records in its own order.
    assert seen_per_thread == {t: list(range(per_thread)) for t in range(threads_n)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_its_own_segment(tmp_path: pathlib.Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([op(0)])
        pid = os.fork()
        if pid == 0:  # child: must not write into (or unlock) the parent's segment
            try:
                spool.append([op(1)])
                spool.close()
            finally:
                os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        spool.append([op(2)])  # the parent's segment is still its own and still locked
        files = segment_files(tmp_path)
        assert len(files) == 2
        other = Spool(tmp_path)
        # Only the child's segment is claimable: the child closed it, the parent still writes its own.
        assert [s.path.name for s in other.claim()] == [f.name for f in files if f"-{pid:010d}-" in f.name]
        other.close()
        numbers = sorted(json.loads(ops[0])["n"] for _, ops in replay(spool))
    assert numbers == [0, 1, 2]


# -- real processes ---------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from ciotrack.spool import Spool

    def op(n):
        return json.dumps({"n": n}, separators=(",", ":")).encode()

    mode, directory = sys.argv[1], sys.argv[2]
    if mode == "hold":  # append, report, keep the segment open until told to exit
        spool = Spool(directory)
        spool.append([op(1), op(2)])
        print("ready", flush=True)
        sys.stdin.readline()
        spool.close()
    elif mode == "append-forever":
        spool = Spool(directory, segment_bytes=4096)
        n = 0
        while True:
            spool.append([op(n), op(n)])
            if n == 200:
                print("ready", flush=True)
            n += 1
    elif mode == "claim":
        spool = Spool(directory)
        print("ready", flush=True)
        sys.stdin.readline()
        for segment in spool.claim():
            numbers = [json.loads(o)["n"] for _, ops in segment.records() for o in ops]
            print(json.dumps({"segment": segment.path.name, "numbers": numbers}), flush=True)
            segment.done()
        print("end", flush=True)
""")


def start_child(mode: str, directory: pathlib.Path) -> subprocess.Popen[str]:
    src = pathlib.Path(__file__).resolve().parents[1] / "python"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", CHILD, mode, str(directory)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def read_line(child: subprocess.Popen[str]) -> str:
    """The child's next stdout line; fails instead of hanging if the child dies or stalls."""
    assert child.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(child.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(DEADLINE)
    assert result and result[0], f"child {child.pid} said nothing (exit code {child.poll()})"
    return result[0].strip()


def test_segment_held_by_live_writer_in_other_process_is_not_claimable(tmp_path: pathlib.Path) -> None:
    child = start_child("hold", tmp_path)
    try:
        assert read_line(child) == "ready"
        spool = Spool(tmp_path)
        assert list(spool.claim()) == []
        assert spool.pending()[0] == 2  # visible, just not claimable
        assert child.stdin is not None
        child.stdin.write("exit\n")
        child.stdin.flush()
        assert child.wait(DEADLINE) == 0
        assert replay(spool) == [("us", [b'{"n":1}', b'{"n":2}'])]
    finally:
        child.kill()
        child.wait()


def test_leftovers_of_a_killed_writer_are_claimable(tmp_path: pathlib.Path) -> None:
    child = start_child("append-forever", tmp_path)
    try:
        assert read_line(child) == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    records = replay(Spool(tmp_path))
    numbers = [json.loads(ops[0])["n"] for _, ops in records]
    # Everything append() returned from is on disk: a gapless prefix, at least up to the "ready" mark.
    assert numbers == list(range(len(numbers))) and len(numbers) > 200
    assert all(ops[0] == ops[1] for _, ops in records)
    assert segment_files(tmp_path) == []


def test_two_processes_claiming_concurrently_replay_each_record_once(tmp_path: pathlib.Path) -> None:
    segments, per_segment = 120, 5
    with Spool(tmp_path, segment_bytes=1) as spool:  # every record in its own segment
        for s in range(segments):
            spool.append([op(s * per_segment + k) for k in range(per_segment)])
    assert len(segment_files(tmp_path)) == segments
    children = [start_child("claim", tmp_path) for _ in range(2)]
    try:
        for child in children:
            assert read_line(child) == "ready"
        for child in children:  # both go as close together as two pipes allow
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        claimed: list[list[dict[str, object]]] = [[], []]
        for i, child in enumerate(children):
            while (line := read_line(child)) != "end":
                claimed[i].append(json.loads(line))
            assert child.wait(DEADLINE) == 0
    finally:
        for child in children:
            child.kill()
            child.wait()
    names = [c["segment"] for side in claimed for c in side]
    assert len(names) == len(set(names)) == segments
    numbers = sorted(n for side in claimed for c in side for n in c["numbers"])  # type: ignore[attr-defined]
    assert numbers == list(range(segments * per_segment))
    for side in claimed:  # each replayer goes oldest first
        assert [c["segment"] for c in side] == sorted(c["segment"] for c in side)  # type: ignore[type-var]
    assert segment_files(tmp_path) == []
