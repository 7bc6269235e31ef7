"""A running daemon whose archive is younger than its first digest interval (1 h by default):
the chain-start digest written at start gives validation a head, so an hourly validation job
passes from the first minute; and a witness that never answers shows on /readyz."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from daemon.cli import main
from daemon.integrity.cosignature import Cosigner
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _records(n: int) -> bytes:
    return b"\n".join(
        orjson.dumps(
            {
                "eventVersion": "1.08",
                "eventID": f"young-{i}",
                "eventTime": "2026-12-03T10:00:00Z",
                "eventSource": "iam.amazonaws.com",
                "eventName": "CreateUser",
                "awsRegion": "us-east-1",
                "recipientAccountId": "123456789012",
            }
        )
        for i in range(n)
    )


async def _wait_for(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.1)


async def _send_and_wait(url: str, archive: Path) -> None:
    async with aiohttp.ClientSession() as s, s.post(
        f"{url}/v1/events", data=_records(30), headers={"Content-Type": "application/x-ndjson"}
    ) as resp:
        assert resp.status == 202
    await _wait_for(lambda: list(archive.rglob("*.json.gz")) and list(archive.rglob("_digest/**/*.json")))
    await _wait_for(lambda: list(archive.rglob("_checkpoint/*")))


def test_an_archive_younger_than_its_first_interval_validates(
    daemon_process: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = daemon_process()
    d.start()
    archive = tmp_path / "archive"
    asyncio.run(_send_and_wait(d.url, archive))
    args = ["validate", str(archive), "--public-key", str(tmp_path / "var" / "keys"), "--json"]
    code = main(args)
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, report["findings"]
    assert report["counts"].get("pending", 0) >= 1 and report["counts"]["valid"] == 1  # the genesis digest
    assert d.terminate() == 0
    code = main(args)
    report = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and "pending" not in report["counts"], report


async def test_a_witness_that_never_cosigns_is_reported_in_health_and_in_metrics(
    daemon_process: Any, tmp_path: Path
) -> None:
    vkey = Cosigner("down.witness.test/w", Ed25519PrivateKey.generate()).key.vkey()
    dead = f"http://127.0.0.1:{free_port()}"
    admin = "young-archive-admin-token"
    digest = hashlib.sha256(admin.encode()).hexdigest()
    d = daemon_process(
        metrics=True,
        integrity=(
            "integrity:\n  digest_interval: 1s\n  witness_alert_after: 2\n"
            f"  witnesses: [{{url: '{dead}', vkey: '{vkey}', timeout: 1s}}]\n"
        ),
        auth=f"auth:\n  tokens: [{{name: admin, sha256: {digest}, role: admin, tenants: ['*']}}]\n",
    )
    d.start()
    problems: list[str] = []
    deadline = time.monotonic() + 90  # two 1 s intervals; generous for a loaded CI machine
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            async with s.get(f"{d.url}/readyz") as resp:
                ready = await resp.json()
                # A silent witness never takes ingest out of service.
                assert resp.status == 200 and ready["ready"], ready
            async with s.get(f"{d.url}/v1/admin/health", headers={"Authorization": f"Bearer {admin}"}) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            problems = [p for p in body["warnings"] if "witness" in p]
            if problems:
                break
            await asyncio.sleep(0.3)
        assert problems and "down.witness.test/w" in problems[0] and "cannot reach" in problems[0]
        async with s.get(f"{d.url}/healthz/downstream") as resp:
            public = await resp.json()
        # A warning, not a failure; the public answer counts it without naming the witness.
        assert resp.status == 200 and public["healthy"], public
        assert public["warnings"] and dead not in str(public) and "down.witness.test" not in str(public)
        async with s.get(f"http://127.0.0.1:{d.metrics_port}/metrics") as resp:
            metrics = await resp.text()
    assert 'trailkeeper_witness_requests_total{result="unavailable",tracker="default",witness="down.witness.test/w"}' in metrics
    assert "trailkeeper_witness_missed_intervals" in metrics
    assert d.terminate() == 0
