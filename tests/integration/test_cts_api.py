"""The CTS-compatible API driven by the real Huawei Cloud SDK (``huaweicloudsdkcts``, in a
virtualenv of its own: the SDK is a test tool, not a dependency of the daemon).

``CtsClient.list_traces`` and ``list_trackers`` against the running daemon, signed with
the SDK's own AK/SK signing: filters, time range, paging by ``next``/``marker``, project
(tenant) scope of the key, and refusal of a wrong secret key and a replayed old request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api import hwsign
from daemon.app import App
from daemon.config import parse_config
from tests.conftest import base_config_text
from tests.deploytools import cached_venv
from tests.integration.query_support import ingest_and_wait

pytestmark = pytest.mark.integration

SDK_SPEC = "huaweicloudsdkcts>=3.1,<4"
SCRIPT = Path(__file__).parent / "cts_sdk" / "list_traces.py"

PROJECT_A = "0a1b2c3d4e5f60718293a4b5c6d7e8f9"
PROJECT_B = "f9e8d7c6b5a4938271605f4e3d2c1b0a"
AUDITOR_A = ("HWTRAILKEEPERAUDITA1", "sk-of-the-project-a-auditor-0001")
ADMIN = ("HWTRAILKEEPERADMIN01", "sk-of-the-admin-key-of-the-test-01")
PRODUCER = "producer-token-for-the-cts-api-test"
BASE_MS = 1_764_000_000_000

OPS = [("ECS", "createServer"), ("ECS", "deleteServer"), ("IAM", "createCredential"), ("VPC", "deleteVpc")]
USERS = ["alice", "bob", "carol"]


def sdk_python() -> Path:
    default = Path.home() / ".cache" / "trailkeeper" / "venv-hwsdk"
    venv = Path(os.environ.get("TRAILKEEPER_HWSDK_VENV", default))
    return cached_venv(venv, SDK_SPEC, stamp_name="trailkeeper-hwsdk.stamp") / "bin" / "python"


def traces() -> list[dict[str, Any]]:
    out = []
    for i in range(90):
        service, name = OPS[i % len(OPS)]
        failed = i % 7 == 0
        out.append(
            {
                "trace_id": f"trace-{i:04d}",
                "trace_name": name,
                "service_type": service,
                "trace_type": "ApiCall",
                "resource_type": service.lower(),
                "resource_id": f"res-{i % 5}",
                "resource_name": f"name-{i % 5}",
                "user": {
                    "id": f"uid-{i % 3}",
                    "name": USERS[i % 3],
                    "domain": {"id": "dom-1", "name": "dom"},
                },
                "source_ip": f"10.0.0.{i % 9}",
                "time": BASE_MS + i * 60_000,
                "code": "403" if failed else "200",
                "trace_rating": "warning" if failed else "normal",
                "request": {"n": i},
                "project_id": PROJECT_A if i % 3 else PROJECT_B,
            }
        )
    return out


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[App, list[dict[str, Any]]]]:
    keys = (
        "auth:\n"
        f"  tokens: [{{name: producer, sha256: {hashlib.sha256(PRODUCER.encode()).hexdigest()},"
        " role: producer, tenants: ['*']}]\n"
        "  access_keys:\n"
        f"    - {{name: auditor-a, id: {AUDITOR_A[0]}, secret: {AUDITOR_A[1]}, role: auditor,"
        f" tenants: ['{PROJECT_A}']}}\n"
        f"    - {{name: admin, id: {ADMIN[0]}, secret: {ADMIN[1]}, role: admin, tenants: ['*']}}\n"
    )
    app = App(parse_config(base_config_text(tmp_path, auth=keys)))
    await app.start()
    sent = traces()
    await ingest_and_wait(app, PRODUCER, sent)
    try:
        yield app, sent
    finally:
        await app.stop()


def run_sdk(app: App, key: tuple[str, str], project: str, call: str, **params: Any) -> dict[str, Any]:
    args = {
        "endpoint": f"http://127.0.0.1:{app.http_port}",
        "ak": key[0],
        "sk": key[1],
        "project": project,
        "call": call,
        "params": params,
    }
    proc = subprocess.run(
        [str(sdk_python()), str(SCRIPT)], input=json.dumps(args), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


async def sdk(
    app: App, key: tuple[str, str], project: str, call: str = "traces", **params: Any
) -> dict[str, Any]:
    # The SDK blocks; the daemon's loop must keep turning to answer it.
    return await asyncio.to_thread(run_sdk, app, key, project, call, **params)


def ids(result: dict[str, Any]) -> list[str]:
    assert "ok" in result, result
    return [t["trace_id"] for t in result["ok"]["traces"]]


def want(sent: list[dict[str, Any]], project: str, **match: Any) -> list[str]:
    chosen = [
        t
        for t in sent
        if t["project_id"] == project
        and all((t["user"]["name"] if k == "user" else t[k]) == v for k, v in match.items())
    ]
    return [t["trace_id"] for t in sorted(chosen, key=lambda t: t["time"], reverse=True)]


async def test_filters_of_list_traces_request_return_exactly_the_matching_traces(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, sent = daemon
    everything = await sdk(app, AUDITOR_A, PROJECT_A, trace_type="system", limit=200)
    assert ids(everything) == want(sent, PROJECT_A)
    first = everything["ok"]["traces"][0]
    original = next(t for t in sent if t["trace_id"] == first["trace_id"])
    # The SDK's own model: request a string, time in epoch ms, user an object.
    assert first["time"] == original["time"] and json.loads(first["request"]) == original["request"]
    assert first["user"]["name"] == original["user"]["name"] and first["code"] == original["code"]
    assert everything["ok"]["meta_data"]["count"] == len(want(sent, PROJECT_A))
    for params in (
        {"service_type": "ECS", "trace_name": "deleteServer"},
        {"user": "bob"},
        {"trace_rating": "warning"},
        {"resource_name": "name-3"},
        {"resource_id": "res-2", "resource_type": "iam"},
    ):
        result = await sdk(app, AUDITOR_A, PROJECT_A, trace_type="system", limit=200, **params)
        expected = want(sent, PROJECT_A, **params)
        assert expected and ids(result) == expected, params
    start, end = BASE_MS + 10 * 60_000, BASE_MS + 40 * 60_000
    ranged = await sdk(
        app, AUDITOR_A, PROJECT_A, trace_type="system", limit=200, **{"from": start, "to": end}
    )
    assert ids(ranged) == [t for t in want(sent, PROJECT_A) if start <= int(t[6:]) * 60_000 + BASE_MS <= end]
    one = await sdk(app, AUDITOR_A, PROJECT_A, trace_type="system", trace_id="trace-0004")
    assert ids(one) == ["trace-0004"]


async def test_paging_by_next_returns_each_trace_once(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, sent = daemon
    seen: list[str] = []
    marker = None
    for _ in range(30):
        params: dict[str, Any] = {"trace_type": "system", "limit": 7}
        if marker:
            params["next"] = marker
        page = await sdk(app, ADMIN, PROJECT_A, **params)
        seen += ids(page)
        marker = page["ok"]["meta_data"].get("marker")
        if not marker:
            break
    assert seen == want(sent, PROJECT_A)


async def test_wrong_secret_and_another_project_are_refused(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, sent = daemon
    bad = await sdk(app, (AUDITOR_A[0], "not-the-secret-key-of-auditor-a"), PROJECT_A, trace_type="system")
    assert bad.get("status") == 401 and "signature" in bad["error_msg"], bad
    unknown = await sdk(app, ("HWUNKNOWNKEY00000000", AUDITOR_A[1]), PROJECT_A, trace_type="system")
    assert unknown.get("status") == 401 and unknown["error_msg"] == bad["error_msg"]
    foreign = await sdk(app, AUDITOR_A, PROJECT_B, trace_type="system")
    assert foreign.get("status") == 403, foreign
    admin_b = await sdk(app, ADMIN, PROJECT_B, trace_type="system", limit=200)
    assert ids(admin_b) == want(sent, PROJECT_B)
    refused = await sdk(app, AUDITOR_A, PROJECT_A, trace_type="system", access_key_id="AK1")
    assert refused.get("status") == 400 and "access_key_id" in refused["error_msg"]
    # An anonymous caller, and a producer (which may send to every tenant) reading: refused,
    # in CTS's error form.
    url = f"http://127.0.0.1:{app.http_port}/v3/{PROJECT_A}/traces?trace_type=system"
    async with aiohttp.ClientSession() as s:
        for headers, status in (({}, 401), ({"Authorization": f"Bearer {PRODUCER}"}, 403)):
            async with s.get(url, headers=headers) as r:
                body = await r.json()
                assert r.status == status and body["error_code"].startswith("CTS."), body


async def test_list_trackers_names_the_configured_trackers(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, _ = daemon
    result = await sdk(app, AUDITOR_A, PROJECT_A, "trackers")
    trackers = result["ok"]["trackers"]
    assert [t["tracker_name"] for t in trackers] == [t.name for t in app.config.trackers]
    assert all(t["project_id"] == PROJECT_A and t["status"] == "enabled" for t in trackers)


async def test_a_request_signed_twenty_minutes_ago_is_refused(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, _ = daemon
    when = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=20)).strftime(hwsign.DATE_FORMAT)
    host = f"127.0.0.1:{app.http_port}"
    path = f"/v3/{PROJECT_A}/traces"
    query = "limit=5&trace_type=system"
    headers = [("Host", host), ("X-Sdk-Date", when)]
    signed = ("host", "x-sdk-date")
    creq = hwsign.canonical_request("GET", path, query, headers, signed, hashlib.sha256(b"").hexdigest())
    signature = hwsign.sign(ADMIN[1], creq, when)
    auth = f"{hwsign.ALGORITHM} Access={ADMIN[0]}, SignedHeaders=host;x-sdk-date, Signature={signature}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://{host}{path}?{query}", headers={"X-Sdk-Date": when, "Authorization": auth}) as r,
    ):
        body = await r.json()
        assert r.status == 401 and "time" in body["error_msg"], body
    # The same request signed now is answered: the refusal was the clock, not the signing.
    now = dt.datetime.now(dt.UTC).strftime(hwsign.DATE_FORMAT)
    headers = [("Host", host), ("X-Sdk-Date", now)]
    creq = hwsign.canonical_request("GET", path, query, headers, signed, hashlib.sha256(b"").hexdigest())
    auth = f"{hwsign.ALGORITHM} Access={ADMIN[0]}, SignedHeaders=host;x-sdk-date, Signature={hwsign.sign(ADMIN[1], creq, now)}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://{host}{path}?{query}", headers={"X-Sdk-Date": now, "Authorization": auth}) as r,
    ):
        assert r.status == 200, await r.text()
        assert len((await r.json())["traces"]) == 5
