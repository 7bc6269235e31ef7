"""Batched HTTP ingest of ~1 KiB CloudTrail records through journal and archive, fsync on.

Prints one JSON line: events/s and MB/s from the first request until the last
event is stored in an archive file, peak RSS of the daemon, and the ratio to a
floor measured in the same run: orjson parse + gzip + SHA-256 of the same bytes
in one process (the least work any archiver of these records must do).
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from daemon.config import FileConfig

ROOT = Path(__file__).resolve().parents[1]


def record(i: int) -> bytes:
    return orjson.dumps({
        "eventVersion": "1.08", "eventID": f"bench-{i:010d}", "eventTime": "2024-07-31T14:23:46Z",
        "eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances", "awsRegion": "eu-west-1",
        "sourceIPAddress": "198.51.100.7", "userAgent": "aws-cli/2.15.0 Python/3.11.6 Linux/6.1 botocore/2.4.5",
        "recipientAccountId": "111122223333", "requestID": f"0f7c2a1e-{i:08d}",
        "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLEEXAMPLE", "accountId": "111122223333",
                         "arn": "arn:aws:iam::111122223333:user/alice", "userName": "alice",
                         "accessKeyId": "AKIAEXAMPLEEXAMPLE"},
        "requestParameters": {"instancesSet": {"items": [{"instanceId": f"i-{i:017x}"}]},
                              "filterSet": {"items": [{"name": "tag:team", "valueSet": {"items": [{"value": "audit"}]}}]}},
        "responseElements": None, "readOnly": True, "eventType": "AwsApiCall", "managementEvent": True,
        "eventCategory": "Management", "tlsDetails": {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256",
                                                       "clientProvidedHostHeader": "ec2.eu-west-1.amazonaws.com"},
    })


def floor(records: list[bytes], level: int) -> float:
    """Events/s for orjson parse + gzip (the tracker's level) + SHA-256, in one process."""
    started = time.perf_counter()
    for rec in records:
        orjson.loads(rec)
    for start in range(0, len(records), 10_000):
        data = gzip.compress(b",\n".join(records[start : start + 10_000]), compresslevel=level, mtime=0)
        hashlib.sha256(data).hexdigest()
    return len(records) / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_cpu_s(root: int, descendants: bool = True) -> float:
    """CPU seconds (user + system) of a process and (by default) all its descendants."""
    stats: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        if not descendants:
            break
        todo.extend(child for child, (ppid, _) in stats.items() if ppid == pid)
    return total


async def archived(session: aiohttp.ClientSession, metrics_url: str) -> int:
    async with session.get(metrics_url) as resp:
        text = await resp.text()
    m = re.search(r'^trailkeeper_archive_events_total\{tracker="default"\} (\S+)$', text, re.M)
    return int(float(m.group(1))) if m else 0


async def run(total: int, batch: int, concurrency: int, index: bool, verify: bool = True) -> dict[str, object]:
    records = [record(i) for i in range(total)]
    bodies = [b"\n".join(records[i : i + batch]) for i in range(0, total, batch)]
    raw_bytes = sum(len(r) for r in records)
    level = FileConfig().compression_level  # the daemon runs with the default tracker settings
    floor_eps = floor(records, level)
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        http_port, metrics_port = free_port(), free_port()
        cfg = Path(tmp) / "bench.yaml"
        cfg.write_text(
            f'ingest:\n  http: {{listen: "127.0.0.1:{http_port}"}}\n'
            f"journal: {{dir: {tmp}/journal, max_bytes: 4GiB, fsync: true}}\n"
            f"stores:\n  local: {{type: local, path: {tmp}/archive, fsync: true}}\n"
            "trackers:\n  - {name: default, store: local, file: {max_events: 10000, max_age: 1s}, verify: " + ("true" if verify else "false") + "}\n"
            f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\nlog: {{level: warning}}\n'
            f"index: {{enabled: {'true' if index else 'false'}}}\n"
        )
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(cfg)], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", http_port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("daemon did not start") from None
                    time.sleep(0.05)
            url = f"http://127.0.0.1:{http_port}/v1/events"
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            peak = 0.0
            queue = list(range(len(bodies)))
            conn = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=conn) as session:

                async def worker() -> None:
                    while queue:
                        body = bodies[queue.pop()]
                        while True:
                            async with session.post(url, data=body, headers={
                                    "Content-Type": "application/x-ndjson"}) as resp:
                                if resp.status == 202:
                                    break
                                await asyncio.sleep(0.1)

                cpu_before = tree_cpu_s(proc.pid)
                main_before = tree_cpu_s(proc.pid, descendants=False)
                started = time.perf_counter()
                workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
                while not all(w.done() for w in workers):
                    peak = max(peak, rss_mb(proc.pid))
                    await asyncio.sleep(0.2)
                ingested = time.perf_counter() - started
                while await archived(session, metrics_url) < total:
                    peak = max(peak, rss_mb(proc.pid))
                    await asyncio.sleep(0.05)
                elapsed = time.perf_counter() - started
                cpu_used = tree_cpu_s(proc.pid) - cpu_before
                main_used = tree_cpu_s(proc.pid, descendants=False) - main_before
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    eps = total / elapsed
    return {
        "bench": "ingest",
        "events": total,
        "batch": batch,
        "query_index": index,
        "verify": verify,
        "events_per_s": round(eps),
        "ingest_only_events_per_s": round(total / ingested),
        "mb_per_s": round(raw_bytes / elapsed / 1e6, 1),
        "avg_event_bytes": raw_bytes // total,
        "peak_rss_mb": round(peak, 1),
        # Less sensitive to a busy machine than events/s: the daemon's own CPU cost per event.
        "daemon_cpu_us_per_event": round(cpu_used / total * 1e6, 2),
        # Of which in the daemon's own process (one GIL), the rest in its worker processes.
        "main_process_cpu_us_per_event": round(main_used / total * 1e6, 2),
        "floor_events_per_s": round(floor_eps),
        "gzip_level": level,
        "ratio_to_floor": round(eps / floor_eps, 3),
        "cpus": os.cpu_count(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument(
        "--index",
        action="store_true",
        help="also feed the query index (on in the embedded default; off measures journal + archive)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="without Merkle leaves and digests for the tracker (on in the embedded default)",
    )
    a = p.parse_args()
    print(orjson.dumps(asyncio.run(run(a.events, a.batch, a.concurrency, a.index, not a.no_verify))).decode())


if __name__ == "__main__":
    main()
