"""Ingest-to-webhook latency of key events under background load, one JSON line.

The daemon runs as its own process with one healthy webhook subscription and one dead
one (always HTTP 500, retried in the background); the receiver is another process. A
third process posts ordinary
events (no rule matches them) at ``--rate`` events/s over HTTP; this process posts
one key event (StopLogging) every ``--key-interval`` seconds and the receiver notes
when its notification arrives. Latency is arrival minus the moment the key event's
POST was started, so it covers HTTP ingest, fsync, classification, the outbox fsync
and delivery. The baseline, measured in the same run against the same receiver, is a
bare aiohttp POST round trip.

    python bench/notify.py [--seconds 20] [--rate 5000] [--key-interval 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]

_LOADGEN = r"""
import asyncio, json, sys, time, uuid
import aiohttp

port, rate, seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
BATCH = 250

def body():
    lines = []
    for _ in range(BATCH):
        lines.append(json.dumps({
            "eventVersion": "1.08", "eventID": str(uuid.uuid4()), "eventTime": "2024-05-01T12:00:00Z",
            "eventSource": "s3.amazonaws.com", "eventName": "GetObject", "awsRegion": "us-east-1",
            "sourceIPAddress": "203.0.113.9", "recipientAccountId": "111122223333",
            "userIdentity": {"type": "IAMUser", "userName": "reader", "accountId": "111122223333"},
            "requestParameters": {"bucketName": "data", "key": "k"}}))
    return "\n".join(lines).encode()

async def main():
    bodies = [body() for _ in range(40)]
    sent = 0
    start = time.monotonic()
    async with aiohttp.ClientSession() as s:
        i = 0
        while time.monotonic() - start < seconds:
            due = start + sent / rate
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            async with s.post(f"http://127.0.0.1:{port}/v1/events", data=bodies[i % len(bodies)],
                              headers={"Content-Type": "application/x-ndjson"}) as r:
                await r.read()
            sent += BATCH
            i += 1
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start}))

asyncio.run(main())
"""


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))] if s else float("nan")


def _key_record(event_id: str) -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventID": event_id,
        "eventTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "eventSource": "cloudtrail.amazonaws.com",
        "eventName": "StopLogging",
        "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.7",
        "recipientAccountId": "111122223333",
        "userIdentity": {"type": "IAMUser", "userName": "mallory", "accountId": "111122223333"},
        "requestParameters": {"name": "main"},
    }


_RECEIVER = r"""
import asyncio, json, sys, time
from aiohttp import web

arrivals = {}
dead_hits = 0

async def good(request):
    doc = await request.json()
    if doc.get("type") == "Notification":
        arrivals.setdefault(doc["event"]["id"], time.time())
    return web.Response(text="ok")

async def dead(request):
    global dead_hits
    await request.read()
    dead_hits += 1
    return web.Response(status=500, text="down")

async def echo(request):
    await request.read()
    return web.Response(text="ok")

async def report(request):
    return web.json_response({"arrivals": arrivals, "dead_hits": dead_hits})

app = web.Application()
app.router.add_post("/good", good)
app.router.add_post("/dead", dead)
app.router.add_post("/echo", echo)
app.router.add_get("/report", report)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def run(seconds: float, rate: float, key_interval: float, rport: int, dport: int) -> dict[str, Any]:
    """Drive the load and key events; the daemon and receiver already run as their own processes."""
    sent_at: dict[str, float] = {}
    acked: list[float] = []
    baseline: list[float] = []
    await _wait_port(rport)
    await _wait_port(dport)
    async with aiohttp.ClientSession() as s:

        async def post_echo() -> None:
            t0 = time.perf_counter()
            async with s.post(f"http://127.0.0.1:{rport}/echo", data=b'{"x":1}') as r:
                await r.read()
            baseline.append(time.perf_counter() - t0)

        gen = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _LOADGEN, str(dport), str(rate), str(seconds), stdout=subprocess.PIPE
        )
        await asyncio.sleep(1.0)  # let the load settle
        end = time.monotonic() + seconds - 2.0
        while time.monotonic() < end:
            eid = str(uuid.uuid4())
            body = json.dumps(_key_record(eid)).encode()
            sent_at[eid] = time.time()
            async with s.post(f"http://127.0.0.1:{dport}/v1/events", data=body) as r:
                await r.read()
            acked.append(time.time() - sent_at[eid])
            await post_echo()  # the baseline, under the same load
            await asyncio.sleep(key_interval)
        out, _ = await gen.communicate()
        gen_doc = json.loads(out.decode().strip().splitlines()[-1])
        deadline = time.monotonic() + 10
        while True:
            async with s.get(f"http://127.0.0.1:{rport}/report") as r:
                rep = await r.json()
            if set(sent_at) <= set(rep["arrivals"]) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
    arrivals = rep["arrivals"]
    lat = [arrivals[e] - sent_at[e] for e in sent_at if e in arrivals]
    p50, p99 = _pct(lat, 0.5), _pct(lat, 0.99)
    b50, b99 = _pct(baseline, 0.5), _pct(baseline, 0.99)
    return {
        "bench": "notify",
        "seconds": seconds,
        "background_rate_target": rate,
        "background_rate_actual": round(gen_doc["sent"] / gen_doc["seconds"]),
        "key_events": len(sent_at),
        "delivered": len(lat),
        "p50_ms": round(p50 * 1000, 2),
        "p99_ms": round(p99 * 1000, 2),
        "max_ms": round(max(lat) * 1000, 2) if lat else None,
        "ingest_ack_p50_ms": round(_pct(acked, 0.5) * 1000, 2),
        "ingest_ack_p99_ms": round(_pct(acked, 0.99) * 1000, 2),
        "baseline_post_p50_ms": round(b50 * 1000, 2),
        "baseline_post_p99_ms": round(b99 * 1000, 2),
        "p99_over_baseline_p99": round(p99 / b99, 1) if b99 else None,
        "dead_subscription_attempts": rep["dead_hits"],
        "target_p99_ms": 100,
        "meets_target": p99 < 0.1 and len(lat) == len(sent_at),
    }


CONFIG = """
ingest: {{http: {{listen: "127.0.0.1:{dport}"}}}}
journal: {{dir: {tmp}/journal, max_bytes: 4GiB}}
stores: {{local: {{type: local, path: {tmp}/archive}}}}
metrics: {{listen: null}}
log: {{level: error}}
notify:
  topics:
    security:
      subscriptions:
        - {{name: good, protocol: webhook, url: "http://127.0.0.1:{rport}/good"}}
        - {{name: dead, protocol: webhook, url: "http://127.0.0.1:{rport}/dead",
            delivery: {{max_age: 1h, initial_backoff: 100ms, max_backoff: 2s}}}}
  routes:
    - {{topic: security, categories: [high_risk]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=5000.0)
    ap.add_argument("--key-interval", type=float, default=0.1)
    args = ap.parse_args()
    # Under the checkout, not /tmp: a shared /tmp may be swept while the bench runs.
    (ROOT / "var").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-notify-", dir=ROOT / "var"))
    rport, dport = _free_port(), _free_port()
    (tmp / "trailkeeper.yaml").write_text(CONFIG.format(tmp=tmp, rport=rport, dport=dport))
    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER, str(rport)])
    daemon = subprocess.Popen(
        [sys.executable, "-m", "daemon", "run", "--config", str(tmp / "trailkeeper.yaml")], cwd=ROOT
    )
    try:
        result = asyncio.run(run(args.seconds, args.rate, args.key_interval, rport, dport))
    finally:
        daemon.terminate()
        daemon.wait(60)
        receiver.terminate()
        receiver.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
