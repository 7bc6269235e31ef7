"""A group commit larger than a segment is split, so a consumed journal can always be released."""

from __future__ import annotations

from pathlib import Path

from daemon.journal import Journal


async def test_a_group_larger_than_a_segment_spans_segments_and_is_released(tmp_path: Path) -> None:
    journal = Journal(tmp_path, max_bytes=64 * 1024, segment_bytes=2048, fsync=False)
    await journal.open(consumers=["c"])
    payloads = [bytes([65 + i % 26]) * 200 for i in range(100)]  # ~21 KB in one call: one group
    first = await journal.append(payloads)
    assert first == 0
    segments = sorted((tmp_path / "segments").glob("*.seg"))
    assert len(segments) > 5
    assert all(p.stat().st_size <= 2048 for p in segments)

    reader = journal.reader("c")
    got = []
    while len(got) < 100:
        got += await reader.read(1000, timeout=1)
    assert [p for _, p in got] == payloads
    await journal.commit("c", reader.next_offset)
    # Everything is consumed: only the active segment is left, so intake has room again.
    assert journal.bytes_used <= 2048
    reader.close()
    await journal.close()

    reopened = Journal(tmp_path, max_bytes=64 * 1024, segment_bytes=2048, fsync=False)
    report = await reopened.open(consumers=["c"])
    assert report.end_offset == 100
    await reopened.close()
