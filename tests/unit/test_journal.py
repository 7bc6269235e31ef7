from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon.journal import Journal, JournalError, JournalFull


async def _open(path: Path, **kw: int) -> Journal:
    j = Journal(
        path, max_bytes=kw.pop("max_bytes", 64 * 1024 * 1024), segment_bytes=kw.pop("segment_bytes", 4096)
    )
    await j.open(consumers=["a", "b"])
    return j


async def _read_all(j: Journal, cursor: str) -> list[tuple[int, bytes]]:
    r = j.reader(cursor)
    out: list[tuple[int, bytes]] = []
    while True:
        got = await r.read(100, timeout=0)
        if not got:
            return out
        out.extend(got)


async def test_append_returns_consecutive_offsets_and_reads_back(tmp_path: Path) -> None:
    j = await _open(tmp_path)
    assert await j.append([b"a", b"b"]) == 0
    assert await j.append([b"c"]) == 2
    assert j.end_offset == 3
    assert await _read_all(j, "a") == [(0, b"a"), (1, b"b"), (2, b"c")]
    await j.close()


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    j = await _open(tmp_path, segment_bytes=1 << 20)
    firsts = await asyncio.gather(*(j.append([f"{i}".encode()] * 3) for i in range(200)))
    assert sorted(firsts) == list(range(0, 600, 3))
    entries = await _read_all(j, "a")
    assert len(entries) == 600
    # Every call's entries are contiguous and in order.
    for first in firsts:
        assert len({p for _, p in entries[first : first + 3]}) == 1
    await j.close()


async def test_reopen_recovers_entries_and_cursors(tmp_path: Path) -> None:
    j = await _open(tmp_path)
    for i in range(50):
        await j.append([b"x" * 100 + str(i).encode()])
    await j.commit("a", 20)
    await j.close()
    j2 = await _open(tmp_path)
    assert j2.end_offset == 50
    assert j2.cursor("a") == 20
    got = await _read_all(j2, "a")
    assert [o for o, _ in got] == list(range(20, 50))
    assert got[0][1].endswith(b"20")
    await j2.close()


@pytest.mark.parametrize(
    "tear",
    ["short_header", "short_payload", "zeros", "garbage_crc"],
)
async def test_torn_tail_is_cut_off_never_misread(tmp_path: Path, tear: str) -> None:
    j = await _open(tmp_path, segment_bytes=1 << 20)
    for i in range(10):
        await j.append([f"entry-{i}".encode() * 10])
    await j.close()
    seg = sorted((tmp_path / "segments").glob("*.seg"))[-1]
    data = seg.read_bytes()
    if tear == "short_header":
        data += b"\x00\x00\x01"
    elif tear == "short_payload":
        data = data[:-5]
    elif tear == "zeros":
        data += b"\x00" * 4096
    else:
        data = data[:-3] + b"XYZ"
    seg.write_bytes(data)
    j2 = await _open(tmp_path, segment_bytes=1 << 20)
    expected = 10 if tear in ("short_header", "zeros") else 9
    assert j2.end_offset == expected
    got = await _read_all(j2, "a")
    assert [p for _, p in got] == [f"entry-{i}".encode() * 10 for i in range(expected)]
    # Appends continue after the cut with the next offset.
    assert await j2.append([b"after"]) == expected
    await j2.close()


async def test_segments_deleted_once_every_cursor_passed(tmp_path: Path) -> None:
    j = await _open(tmp_path, segment_bytes=1000)
    for _i in range(100):
        await j.append([b"y" * 200])
    segs = sorted((tmp_path / "segments").glob("*.seg"))
    assert len(segs) > 5
    used = j.bytes_used
    await j.commit("a", 100)
    assert len(list((tmp_path / "segments").glob("*.seg"))) == len(segs)  # "b" still at 0
    await j.commit("b", 60)
    remaining = sorted((tmp_path / "segments").glob("*.seg"))
    assert 1 <= len(remaining) < len(segs)
    assert int(remaining[0].stem) <= 60
    assert j.bytes_used < used
    assert [o for o, _ in await _read_all(j, "b")] == list(range(60, 100))
    await j.close()


async def test_budget_refuses_appends_then_recovers(tmp_path: Path) -> None:
    j = await _open(tmp_path, max_bytes=5000, segment_bytes=1000)
    n = 0
    with pytest.raises(JournalFull) as err:
        while True:
            await j.append([b"z" * 300])
            n += 1
    assert "journal.max_bytes" in str(err.value)
    assert not j.writable()
    await j.commit("a", n)
    await j.commit("b", n)
    await j.append([b"z" * 300])  # room again
    await j.close()


async def test_reader_follows_segment_rollover_and_waits(tmp_path: Path) -> None:
    j = await _open(tmp_path, segment_bytes=500)
    r = j.reader("a")
    waiter = asyncio.create_task(r.read(1000, timeout=5))
    await asyncio.sleep(0.05)
    await j.append([b"first"])
    assert await waiter == [(0, b"first")]
    seen = [0]
    for i in range(1, 60):
        await j.append([b"p" * 90 + str(i).encode()])
        got = await r.read(1000, timeout=1)
        seen.extend(o for o, _ in got)
    assert seen == list(range(60))
    assert await r.read(10, timeout=0.01) == []
    await j.close()


async def test_damage_in_a_closed_segment_is_an_error(tmp_path: Path) -> None:
    j = await _open(tmp_path, segment_bytes=300)
    for _ in range(20):
        await j.append([b"q" * 100])
    await j.close()
    first = sorted((tmp_path / "segments").glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[20] ^= 0xFF
    os.chmod(first, 0o644)
    first.write_bytes(bytes(data))
    j2 = await _open(tmp_path, segment_bytes=300)
    with pytest.raises(JournalError, match="damaged"):
        await _read_all(j2, "a")
    await j2.close()


async def test_commit_beyond_end_is_refused(tmp_path: Path) -> None:
    j = await _open(tmp_path)
    await j.append([b"1"])
    with pytest.raises(ValueError):
        await j.commit("a", 5)
    await j.close()


async def test_reader_returns_entries_larger_than_its_read_chunk(tmp_path: Path) -> None:
    # Frames are fetched in chunks of about 1 MiB: a bigger entry must come back whole,
    # between small ones, in every position of a chunk.
    j = await _open(tmp_path, segment_bytes=16 * 1024 * 1024)
    big = os.urandom(3 * 1024 * 1024)
    payloads = [b"s1", big, b"s2", b"x" * 700_000, b"y" * 700_000, big[:1_500_000], b"s3"]
    await j.append(payloads)
    r = j.reader("a")
    got: list[bytes] = []
    while len(got) < len(payloads):
        chunk = await r.read(2, timeout=0)
        assert chunk, "the reader stopped before the end"
        got.extend(p for _, p in chunk)
    assert got == payloads
    await j.close()


async def test_damage_inside_a_chunk_is_found_per_entry(tmp_path: Path) -> None:
    # Two segments: recovery verifies only the newest, so damage in the first reaches the reader.
    j = await _open(tmp_path, segment_bytes=4000)
    await j.append([bytes([65 + i % 26]) * 50 for i in range(100)])
    await j.close()
    seg = sorted((tmp_path / "segments").glob("*.seg"))[0]
    data = bytearray(seg.read_bytes())
    data[40 * (16 + 50) + 16 + 3] ^= 0x01  # a payload byte of entry 40
    seg.write_bytes(bytes(data))
    j2 = Journal(tmp_path, max_bytes=64 * 1024 * 1024, segment_bytes=4000)
    await j2.open(consumers=["a"])
    r = j2.reader("a")
    assert len(await r.read(40, timeout=0)) == 40
    with pytest.raises(JournalError, match="entry 40 is damaged"):
        await r.read(100, timeout=0)
    await j2.close()


async def test_a_reader_of_one_kind_skips_ranges_without_it(tmp_path: Path) -> None:
    j = await _open(tmp_path, segment_bytes=1 << 20)
    await j.append([b"E1", b"E2", b"E3"])
    # Entries recovered from disk are of unknown kind: they are read, never skipped.
    await j.close()
    j = await _open(tmp_path, segment_bytes=1 << 20)
    r = j.reader("a")
    assert [p for _, p in await r.read(100, timeout=0, kind=ord("Q"))] == [b"E1", b"E2", b"E3"]
    await j.append([b"E4", b"E5"])
    assert await r.read(100, timeout=0, kind=ord("Q")) == []
    assert r.next_offset == 5  # skipped unread, so the cursor can pass it
    await j.append([b"E6", b"Qbad", b"E7"])
    got = await r.read(100, timeout=0, kind=ord("Q"))
    assert (6, b"Qbad") in got
    assert r.next_offset == 8
    # A reader without a kind sees everything.
    assert len(await _read_all(j, "b")) == 8
    await j.close()
