"""Archive throughput: events/s from the journal into the S3 API server on loopback vs the local store.

One run, one JSON line. The same journal contents (~1 KiB CloudTrail records) are
archived by one tracker into (a) the local store and (b) a bucket on a moto S3
server in its own process on 127.0.0.1, with the S3 store's defaults (Content-MD5,
x-amz-checksum-sha256, If-None-Match). The ratio s3/local is the figure to watch;
the absolute numbers depend on the machine.

    python bench/archive.py [--events 50000] [--max-events 10000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon import telemetry  # noqa: E402
from daemon.archive.archiver import Archiver  # noqa: E402
from daemon.archive.tracker import tracker_delivery  # noqa: E402
from daemon.config import FileConfig, TrackerConfig  # noqa: E402
from daemon.events import Decoder, Event, encode_event  # noqa: E402
from daemon.journal import Journal  # noqa: E402
from daemon.stores import build_store  # noqa: E402
from daemon.stores.base import Store  # noqa: E402
from daemon.stores.local import LocalStoreConfig  # noqa: E402
from daemon.stores.s3 import S3StoreConfig  # noqa: E402
from tests.fixtures.s3 import MotoProcess, new_bucket, s3_store_config  # noqa: E402


def record(i: int) -> bytes:
    return orjson.dumps({
        "eventVersion": "1.08", "eventID": f"bench-{i:010d}", "eventTime": "2024-07-31T14:23:46Z",
        "eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances", "awsRegion": "eu-west-1",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 botocore/2.4.5",
        "recipientAccountId": "111122223333", "requestID": f"0f7c2a1e-{i:08d}",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLEEXAMPLE", "accountId": "111122223333",
                         "arn": "arn:aws:iam::111122223333:user/alice", "userName": "alice"},
        "requestParameters": {"instancesSet": {"items": [{"instanceId": f"i-{i:017x}"}]}, "pad": "p" * 300},
        "responseElements": None, "readOnly": True, "eventType": "AwsApiCall", "managementEvent": True,
    })


async def fill_journal(directory: Path, payloads: list[bytes]) -> None:
    journal = Journal(directory, max_bytes=4 * 1024**3, segment_bytes=64 * 1024**2, fsync=False)
    await journal.open()
    for start in range(0, len(payloads), 5000):
        await journal.append(payloads[start : start + 5000])
    await journal.close()


async def archive_all(journal_dir: Path, store: Store, tracker: str, total: int, max_events: int) -> float:
    """Seconds to archive every event of the journal into ``store``."""
    journal = Journal(journal_dir, max_bytes=4 * 1024**3, segment_bytes=64 * 1024**2, fsync=False)
    config = TrackerConfig(name=tracker, store=store.name, file=FileConfig(max_events=max_events, max_age=5.0))
    delivery = tracker_delivery(config, store, "bench")
    await journal.open(consumers=[delivery.cursor])
    archiver = Archiver(journal, delivery, journal_dir / "state")
    counter = telemetry.ARCHIVE_EVENTS.labels(tracker=tracker)
    started = time.perf_counter()
    task = asyncio.create_task(archiver.run())
    while counter._value.get() < total:
        if task.done():
            task.result()
            raise RuntimeError("archiver stopped early")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    archiver.stop(deadline=10)
    await task
    await journal.close()
    await store.close()
    return elapsed


async def run(total: int, max_events: int, rounds: int) -> dict[str, Any]:
    events = [e for e in Decoder().decode(b"\n".join(record(i) for i in range(total)), ndjson=True)]
    payloads = [encode_event(e) for e in events if isinstance(e, Event)]
    assert len(payloads) == total
    moto = MotoProcess()
    endpoint = moto.start()
    local_s, s3_s = float("inf"), float("inf")
    try:
        # Alternate the two targets and keep each one's best round, so cache warm-up and
        # other load on the machine do not favour whichever runs second.
        for rnd in range(rounds):
            with tempfile.TemporaryDirectory(prefix="tk-bench-archive-") as tmp:
                base = Path(tmp)
                for name in ("local", "s3"):
                    await fill_journal(base / f"journal-{name}", payloads)
                local = build_store("local", LocalStoreConfig(path=base / "archive"))
                local_s = min(
                    local_s,
                    await archive_all(base / "journal-local", local, f"bench_local{rnd}", total, max_events),
                )
                bucket = new_bucket(endpoint)
                s3 = build_store("s3", S3StoreConfig.model_validate(s3_store_config(endpoint, bucket)))
                s3_s = min(s3_s, await archive_all(base / "journal-s3", s3, f"bench_s3{rnd}", total, max_events))
    finally:
        moto.stop()
    return {
        "bench": "archive",
        "events": total,
        "file_max_events": max_events,
        "rounds": rounds,
        "local_events_per_s": round(total / local_s),
        "s3_loopback_events_per_s": round(total / s3_s),
        "s3_over_local": round(local_s / s3_s, 3),
        "s3_server": "moto (python, werkzeug) in a child process on 127.0.0.1",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--max-events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    telemetry.configure_logging("warning", "json")  # logs to stderr; stdout carries the one line
    print(orjson.dumps(asyncio.run(run(args.events, args.max_events, args.rounds))).decode())


if __name__ == "__main__":
    main()
