"""Query latency over a large index, SQLite and PostgreSQL: one JSON line of figures.

Fills each backend with N synthetic events (default 1,000,000) through the
backend's own idempotent write path, then times typical API queries (first
page of 50, newest first) through ``IndexBackend.search``. Baselines measured in
the same run: a lookup by primary key (``get``), the cheapest possible query.

    python bench/query.py [--events 1000000] [--runs 200] [--backends sqlite,postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from daemon.events import CANONICAL_FIELDS
from daemon.index import Classification, IndexBackend, IndexRow, Query, build_index
from daemon.index.base import IndexConfig

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
BASE_MS = 1_722_000_000_000
SPAN_MS = 7 * 86_400_000

OPS = [f"Op{i:02d}" for i in range(60)] + ["StopLogging", "DeleteTrail", "CreateUser", "AttachUserPolicy"]
TENANTS = [f"{100000000000 + i * 7919}" for i in range(50)]
USERS = [f"user{i}" for i in range(500)]
IPS = [f"10.{i // 250}.{i % 250}.{i % 7}" for i in range(5000)]
CATS = ["defense-evasion", "persistence", "credential-access", "exfiltration", "privilege-escalation"]


def iso(ms: int) -> str:
    t = dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def rows(n: int, seed: int = 1) -> list[IndexRow]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ms = BASE_MS + rnd.randrange(SPAN_MS)
        c: dict[str, str | None] = dict.fromkeys(CANONICAL_FIELDS)
        op = rnd.choice(OPS)
        tenant = rnd.choice(TENANTS)
        c.update(
            id=str(uuid.UUID(int=rnd.getrandbits(128))),
            time=iso(ms),
            service=f"svc{hash(op) % 12}.amazonaws.com",
            operation=op,
            resource_type="AWS::S3::Bucket",
            resource_id=f"arn:aws:s3:::bucket-{i % 20000}",
            resource_name=f"bucket-{i % 20000}",
            user_id=f"AID{rnd.randrange(500)}",
            user_name=rnd.choice(USERS),
            source_ip=rnd.choice(IPS),
            rating="warning" if rnd.random() < 0.05 else "normal",
            tenant=tenant,
            region="eu-west-1",
            format="cloudtrail",
        )
        cls = Classification(rnd.choice(CATS), "high", ("r",)) if rnd.random() < 0.02 else None
        record = orjson.dumps(
            {"eventID": c["id"], "eventName": op, "eventTime": c["time"], "recipientAccountId": tenant}
        )
        out.append(IndexRow(c, ms, i, "bench", record, cls))
    return out


def queries(rnd: random.Random) -> dict[str, Any]:
    """Typical queries, each a factory of parameters drawn at random per run."""

    def window() -> dict[str, str]:
        start = BASE_MS + rnd.randrange(SPAN_MS - 86_400_000)
        return {"start": iso(start), "end": iso(start + 86_400_000)}

    return {
        "latest": lambda: ({}, None),
        "operation": lambda: ({"operation": rnd.choice(OPS)}, None),
        "user": lambda: ({"user": rnd.choice(USERS)}, None),
        "source_ip": lambda: ({"source_ip": rnd.choice(IPS)}, None),
        "category": lambda: ({"category": rnd.choice(CATS)}, None),
        "tenant_day": lambda: ({"tenant": rnd.choice(TENANTS), **window()}, None),
        "time_range_day": lambda: (window(), None),
        "operation_and_user": lambda: ({"operation": rnd.choice(OPS), "user": rnd.choice(USERS)}, None),
        "free_text": lambda: ({"q": rnd.choice(["stoplog", "trail", "bucket-1234"])}, None),
        "auditor_3_tenants": lambda: ({}, frozenset(rnd.sample(TENANTS, 3))),
    }


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 3)


async def measure(index: IndexBackend, data: list[IndexRow], runs: int) -> dict[str, Any]:
    rnd = random.Random(42)
    result: dict[str, Any] = {"queries": {}}
    all_samples: list[float] = []
    samples_by: dict[str, list[float]] = {}
    for name, make in queries(rnd).items():
        samples = []
        # Free text is a scan (see the report); a few runs show its cost without taking an hour.
        n = min(runs, 20) if name == "free_text" else runs
        for i in range(n + 5):
            params, tenants = make()
            q = Query.from_params({**params, "limit": "50"}, tenants)
            started = time.perf_counter()
            page = await index.search(q)
            if page.next_cursor and i % 4 == 0:
                # Every fourth run also fetches the next page: cursors must be as cheap.
                await index.search(
                    Query.from_params({**params, "limit": "50", "cursor": page.next_cursor}, tenants)
                )
            elapsed = time.perf_counter() - started
            if i >= 5:  # warm-up runs are not counted
                samples.append(elapsed)
        all_samples += samples
        samples_by[name] = samples
        result["queries"][name] = {"p50_ms": pct(samples, 0.5), "p99_ms": pct(samples, 0.99)}
    base = []
    for _ in range(runs):
        row = rnd.choice(data)
        started = time.perf_counter()
        await index.get(row.id)
        base.append(time.perf_counter() - started)
    exact = [x for name, xs in samples_by.items() if name != "free_text" for x in xs]
    result["filtered_no_free_text_p50_ms"] = pct(exact, 0.5)
    result["filtered_no_free_text_p99_ms"] = pct(exact, 0.99)
    result["filtered_p50_ms"] = pct(all_samples, 0.5)
    result["filtered_p99_ms"] = pct(all_samples, 0.99)
    result["baseline_get_by_id_p50_ms"] = pct(base, 0.5)
    result["baseline_get_by_id_p99_ms"] = pct(base, 0.99)
    result["p99_over_baseline_p99"] = round(
        result["filtered_p99_ms"] / max(result["baseline_get_by_id_p99_ms"], 1e-3), 1
    )
    started = time.perf_counter()
    result["count"] = await index.count()
    result["full_count_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


async def load(index: IndexBackend, data: list[IndexRow], batch: int = 20_000) -> float:
    started = time.perf_counter()
    for i in range(0, len(data), batch):
        await index.write(data[i : i + batch])
    return round(time.perf_counter() - started, 1)


async def bench_sqlite(data: list[IndexRow], runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tk-bench-") as tmp:
        index = build_index(IndexConfig(path=Path(tmp) / "events.db"))
        await index.open()
        try:
            load_s = await load(index, data)
            out = await measure(index, data, runs)
            out["load_s"] = load_s
            out["db_bytes"] = await asyncio.to_thread(
                lambda: sum(p.stat().st_size for p in Path(tmp).iterdir())
            )
        finally:
            await index.close()
    return out


async def bench_postgres(data: list[IndexRow], runs: int) -> dict[str, Any]:
    import asyncpg

    name = f"tk_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        index = build_index(
            IndexConfig(backend="postgres", dsn=PG_ADMIN.rsplit("/", 1)[0] + "/" + name, pg_schema="trailkeeper")
        )
        await index.open()
        try:
            load_s = await load(index, data)
            conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
            await conn.execute("ANALYZE trailkeeper.events")
            await conn.close()
            out = await measure(index, data, runs)
            out["load_s"] = load_s
        finally:
            await index.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--backends", default="sqlite,postgres")
    args = ap.parse_args()
    started = time.perf_counter()
    data = rows(args.events)
    result: dict[str, Any] = {
        "bench": "query",
        "events": args.events,
        "runs_per_query": args.runs,
        "page": 50,
    }
    result["generate_s"] = round(time.perf_counter() - started, 1)
    for backend in args.backends.split(","):
        print(f"bench: {backend}...", file=sys.stderr)
        if backend == "sqlite":
            result["sqlite"] = await bench_sqlite(data, args.runs)
        elif backend == "postgres":
            result["postgres"] = await bench_postgres(data, args.runs)
    if "sqlite" in result:
        result["sqlite_p99_under_50ms"] = result["sqlite"]["filtered_p99_ms"] < 50
        result["sqlite_p99_under_50ms_without_free_text"] = (
            result["sqlite"]["filtered_no_free_text_p99_ms"] < 50
        )
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    asyncio.run(main())
