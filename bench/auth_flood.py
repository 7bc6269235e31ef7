"""A flood of bad tokens against a real daemon: throttled, audited in bounded space, and no
slower for valid tokens. Prints ONE JSON line.

Starts ``python -m daemon run`` on loopback (journal and archive fsync on, the index on,
the default ``auth.failures`` settings), then:

1. idle: a valid auditor token queries ``GET /v1/events?limit=1`` at a steady pace
   (``--legit-rps``) for ``--idle-seconds``, before the flood and again after it; the
   latencies of both runs are the baseline (one disk stall on a shared machine in a
   single run would otherwise make the baseline, not the flood, the outlier);
2. flood: an attacker process sends ``--bad`` requests with bad tokens (a new random
   token each, so only the address bucket can stop them) from the same address, paced
   evenly over ``--seconds``, while the same valid token keeps querying at the same pace
   from the same address;
3. the daemon is stopped with SIGTERM (open summary windows are written at shutdown),
   and the audit events about refused requests are counted in the archive, with the
   refusals they account for (each one recorded alone, plus each summary's count beyond
   the ones of its window recorded alone).

    python bench/auth_flood.py [--bad 10000] [--seconds 30] [--idle-seconds 30] [--legit-rps 20]

``legit_p99_ratio`` = p99 under flood / p99 idle (the target: at most 2).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from daemon.archive.fileformat import read_records  # noqa: E402

LEGIT_TOKEN = "bench-auditor-token-0001"
SUMMARY = "authFailureSummary"

# The attacker, in its own process so its client work never shares a GIL with the timed client.
_ATTACKER = r"""
import asyncio, json, secrets, sys, time
import aiohttp

async def main(url, total, seconds, concurrency):
    counts = {}
    interval = seconds / total
    start = time.monotonic()
    next_i = iter(range(total))

    async def worker(session):
        for i in next_i:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            headers = {"Authorization": "Bearer " + secrets.token_urlsafe(24)}
            try:
                async with session.get(url, headers=headers) as r:
                    await r.read()
                    key = str(r.status)
            except aiohttp.ClientError as exc:
                key = type(exc).__name__
            counts[key] = counts.get(key, 0) + 1

    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    counts["elapsed_s"] = round(time.monotonic() - start, 2)
    print(json.dumps(counts))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 2)


def config_text(tmp: Path, port: int) -> str:
    digest = hashlib.sha256(LEGIT_TOKEN.encode()).hexdigest()
    return (
        f'ingest:\n  http: {{listen: "127.0.0.1:{port}"}}\n'
        f"journal: {{dir: {tmp}/journal, max_bytes: 1GiB, fsync: true}}\n"
        f"stores:\n  local: {{type: local, path: {tmp}/archive, fsync: true}}\n"
        "trackers:\n  - {name: default, store: local, file: {max_age: 1s}}\n"
        "metrics: {listen: null}\nlog: {level: warning}\n"
        f"index: {{path: {tmp}/index/events.db}}\n"
        "auth:\n"
        "  tokens:\n"
        f"    - {{name: bench-auditor, sha256: {digest}, role: auditor, tenants: ['*']}}\n"
    )


async def legit_latencies(url: str, seconds: float, rps: float) -> tuple[list[float], dict[str, int]]:
    """A valid token querying at a steady pace: each request's latency, and the statuses."""
    samples: list[float] = []
    statuses: dict[str, int] = {}
    headers = {"Authorization": f"Bearer {LEGIT_TOKEN}"}
    interval = 1.0 / rps
    start = time.monotonic()
    async with aiohttp.ClientSession() as session:
        i = 0
        while time.monotonic() - start < seconds:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            async with session.get(url, params={"limit": "1"}, headers=headers) as r:
                await r.read()
                statuses[str(r.status)] = statuses.get(str(r.status), 0) + 1
            samples.append(time.perf_counter() - t0)
            i += 1
    return samples, statuses


def refusal_records(archive: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((archive / "trails").rglob("*.json.gz")):
        for raw in read_records(path.read_bytes()):
            rec = orjson.loads(raw)
            if rec.get("service_type") == "trailkeeper" and rec.get("trace_name") in (
                "authenticate",
                SUMMARY,
            ):
                out.append(rec)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tk-bench-auth-") as name:
        tmp = Path(name)
        port = free_port()
        cfg = tmp / "trailkeeper.yaml"
        cfg.write_text(config_text(tmp, port))
        proc = subprocess.Popen([sys.executable, "-m", "daemon", "run", "--config", str(cfg)], cwd=ROOT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the daemon did not start") from None
                    await asyncio.sleep(0.05)
            url = f"http://127.0.0.1:{port}/v1/events"
            await legit_latencies(url, 2.0, args.legit_rps)  # warm-up, not counted
            idle, idle_statuses = await legit_latencies(url, args.idle_seconds, args.legit_rps)
            attacker = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                _ATTACKER,
                url,
                str(args.bad),
                str(args.seconds),
                str(args.concurrency),
                stdout=subprocess.PIPE,
            )
            flood_task = asyncio.create_task(legit_latencies(url, args.seconds, args.legit_rps))
            out, _ = await attacker.communicate()
            flood, flood_statuses = await flood_task
            attack = json.loads(out)
            after, after_statuses = await legit_latencies(url, args.idle_seconds, args.legit_rps)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 120)
        records = refusal_records(tmp / "archive")
    alone = [r for r in records if r["trace_name"] == "authenticate"]
    summaries = [r for r in records if r["trace_name"] == SUMMARY]
    accounted = len(alone) + sum(
        s["request"]["count"] - s["request"]["recorded_individually"] for s in summaries
    )
    before = idle
    idle = before + after
    idle_p99, flood_p99 = pct(idle, 0.99), pct(flood, 0.99)
    for status, n in after_statuses.items():
        idle_statuses[status] = idle_statuses.get(status, 0) + n
    return {
        "bench": "auth_flood",
        "bad_requests_sent": args.bad,
        "flood_seconds": attack.pop("elapsed_s"),
        "bad_401": attack.pop("401", 0),
        "bad_429": attack.pop("429", 0),
        "bad_other": attack,
        "audit_events_written": len(records),
        "audit_events_alone": len(alone),
        "audit_summaries": len(summaries),
        "refusals_accounted": accounted,
        "legit_requests_idle": len(idle),
        "legit_requests_flood": len(flood),
        "legit_statuses_idle": idle_statuses,
        "legit_statuses_flood": flood_statuses,
        "legit_p50_idle_ms": pct(idle, 0.5),
        "legit_p50_flood_ms": pct(flood, 0.5),
        "legit_p95_idle_ms": pct(idle, 0.95),
        "legit_p95_flood_ms": pct(flood, 0.95),
        "legit_p99_idle_before_ms": pct(before, 0.99),
        "legit_p99_idle_after_ms": pct(after, 0.99),
        "legit_p99_idle_ms": idle_p99,
        "legit_p99_flood_ms": flood_p99,
        "legit_p99_ratio": round(flood_p99 / max(idle_p99, 1e-3), 2),
        "daemon_exit": code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bad", type=int, default=10_000, help="requests with bad tokens")
    parser.add_argument("--seconds", type=float, default=30.0, help="the flood's duration")
    parser.add_argument("--idle-seconds", type=float, default=30.0, help="the baseline's duration")
    parser.add_argument("--legit-rps", type=float, default=20.0, help="the valid token's request rate")
    parser.add_argument("--concurrency", type=int, default=32, help="the attacker's connections")
    args = parser.parse_args()
    print(orjson.dumps(asyncio.run(run(args))).decode())


if __name__ == "__main__":
    main()
