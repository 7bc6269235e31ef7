"""The CloudTrail-compatible API driven by the real AWS CLI (the ``awscli`` package, in a
virtualenv of its own: it pins a botocore that aiobotocore does not accept).

``aws cloudtrail lookup-events --endpoint-url`` against the running daemon: lookup
attributes, time range, paging by NextToken, the CloudTrailEvent string, tenant scope of
the access key, and refusal of a wrong secret, an unknown key and a replayed old request.
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

from daemon.api import sigv4
from daemon.app import App
from daemon.config import parse_config
from daemon.index.query import Query
from tests.conftest import base_config_text, read_archive
from tests.deploytools import cached_venv
from tests.integration.query_support import ingest_and_wait

pytestmark = pytest.mark.integration

AWSCLI_SPEC = "awscli>=1.40,<2"
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "cloudtrail-stratus"

AUDITOR_A = ("AKIATRAILKEEPERA0001", "secret-of-tenant-a-auditor-0001")
ADMIN = ("AKIATRAILKEEPERADMIN", "secret-of-the-admin-key-000001")
PRODUCER = "producer-token-for-the-cloudtrail-api-test"
PRODUCER_KEY_A = ("AKIATRAILKEEPERPROD1", "secret-of-tenant-a-producer-0001")


def aws_cli() -> Path:
    default = Path.home() / ".cache" / "trailkeeper" / "venv-awscli"
    venv = Path(os.environ.get("TRAILKEEPER_AWSCLI_VENV", default))
    return cached_venv(venv, AWSCLI_SPEC, stamp_name="trailkeeper-awscli.stamp") / "bin" / "aws"


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(DATA.glob("*.json")):
        out.extend(json.loads(path.read_text()))
    return out


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[App, list[dict[str, Any]]]]:
    keys = (
        "auth:\n"
        f"  tokens: [{{name: producer, sha256: {hashlib.sha256(PRODUCER.encode()).hexdigest()},"
        " role: producer, tenants: ['*']}]\n"
        "  access_keys:\n"
        f"    - {{name: auditor-a, id: {AUDITOR_A[0]}, secret: {AUDITOR_A[1]}, role: auditor,"
        " tenants: ['tenant-a']}\n"
        f"    - {{name: admin, id: {ADMIN[0]}, secret: {ADMIN[1]}, role: admin, tenants: ['*']}}\n"
        f"    - {{name: producer-a, id: {PRODUCER_KEY_A[0]}, secret: {PRODUCER_KEY_A[1]}, role: producer,"
        " tenants: ['tenant-a']}\n"
    )
    app = App(parse_config(base_config_text(tmp_path, auth=keys)))
    await app.start()
    recs = records()
    # Half the real records in tenant-a, half in tenant-b (the tenant field of a CloudTrail
    # record is its account id).
    sent = []
    for i, rec in enumerate(recs):
        rec = dict(rec)
        rec["recipientAccountId"] = "tenant-a" if i % 2 == 0 else "tenant-b"
        sent.append(rec)
    await ingest_and_wait(app, PRODUCER, sent)
    try:
        yield app, sent
    finally:
        await app.stop()


def run_aws(
    app: App, key: tuple[str, str], *args: str, service: str = "cloudtrail"
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "AWS_ACCESS_KEY_ID": key[0],
        "AWS_SECRET_ACCESS_KEY": key[1],
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "AWS_MAX_ATTEMPTS": "1",
    }
    cmd = [str(aws_cli()), service, *args, "--endpoint-url", f"http://127.0.0.1:{app.http_port}"]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


async def aws(
    app: App, key: tuple[str, str], *args: str, service: str = "cloudtrail"
) -> subprocess.CompletedProcess[str]:
    # The CLI is a blocking subprocess; the daemon's loop must keep turning to answer it.
    return await asyncio.to_thread(run_aws, app, key, *args, service=service)


def expected_ids(sent: list[dict[str, Any]], tenant: str, **match: str) -> set[str]:
    return {
        r["eventID"]
        for r in sent
        if r["recipientAccountId"] == tenant and all(r.get(k) == v for k, v in match.items())
    }


async def test_lookup_by_event_name_returns_the_tenant_s_events_with_their_records(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, sent = daemon
    name = "StopLogging"
    want = expected_ids(sent, "tenant-a", eventName=name) | expected_ids(sent, "tenant-b", eventName=name)
    assert want, "the data holds StopLogging"
    proc = await aws(
        app, ADMIN, "lookup-events", "--lookup-attributes", f"AttributeKey=EventName,AttributeValue={name}"
    )
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)["Events"]
    assert {e["EventId"] for e in events} == want
    by_id = {r["eventID"]: r for r in sent}
    for e in events:
        assert e["EventName"] == name and e["EventSource"] == "cloudtrail.amazonaws.com"
        # CloudTrailEvent is the record as stored.
        assert json.loads(e["CloudTrailEvent"]) == by_id[e["EventId"]]
        assert e["ReadOnly"] == "false"
        # On the wire in epoch seconds, as CloudTrail sends it (the CLI prints it as received).
        when = dt.datetime.fromisoformat(by_id[e["EventId"]]["eventTime"].replace("Z", "+00:00"))
        assert e["EventTime"] == when.timestamp()


async def test_an_auditor_key_sees_only_its_tenant(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, sent = daemon
    proc = await aws(app, AUDITOR_A, "lookup-events")
    assert proc.returncode == 0, proc.stderr
    events = json.loads(proc.stdout)["Events"]  # the CLI follows NextToken by itself
    assert {e["EventId"] for e in events} == expected_ids(sent, "tenant-a")
    assert len(events) == len(expected_ids(sent, "tenant-a"))
    # Each call is audited like a query, naming the key's owner.
    assert app.index is not None
    async with asyncio.timeout(20):
        while True:
            page = await app.index.search(
                Query.from_params({"operation": "LookupEvents", "user": "auditor-a"})
            )
            if page.items:
                break
            await asyncio.sleep(0.2)
    assert page.items[0]["service"] == "trailkeeper" and page.items[0]["code"] == "200"


async def test_paging_by_next_token_returns_each_event_once(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, sent = daemon
    seen: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        args = ["lookup-events", "--no-paginate", "--max-results", "7"]
        if token:
            args += ["--next-token", token]
        proc = await aws(app, ADMIN, *args)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert len(doc["Events"]) <= 7
        seen += [e["EventId"] for e in doc["Events"]]
        pages += 1
        token = doc.get("NextToken")
        if not token:
            break
    assert pages > 1
    assert sorted(seen) == sorted(r["eventID"] for r in sent)  # each once


async def test_time_range_and_scanned_attributes(daemon: tuple[App, list[dict[str, Any]]]) -> None:
    app, sent = daemon
    times = sorted({r["eventTime"] for r in sent})
    lo, hi = times[len(times) // 4], times[3 * len(times) // 4]

    def inside(r: dict[str, Any]) -> bool:
        return bool(lo <= r["eventTime"] <= hi)

    proc = await aws(app, ADMIN, "lookup-events", "--start-time", lo, "--end-time", hi)
    assert proc.returncode == 0, proc.stderr
    assert {e["EventId"] for e in json.loads(proc.stdout)["Events"]} == {
        r["eventID"] for r in sent if inside(r)
    }
    proc = await aws(
        app, ADMIN, "lookup-events", "--lookup-attributes", "AttributeKey=ReadOnly,AttributeValue=false"
    )
    assert proc.returncode == 0, proc.stderr
    assert {e["EventId"] for e in json.loads(proc.stdout)["Events"]} == {
        r["eventID"] for r in sent if r.get("readOnly") is False
    }
    key_id = next(
        r["userIdentity"]["accessKeyId"] for r in sent if r.get("userIdentity", {}).get("accessKeyId")
    )
    proc = await aws(
        app,
        ADMIN,
        "lookup-events",
        "--lookup-attributes",
        f"AttributeKey=AccessKeyId,AttributeValue={key_id}",
    )
    assert proc.returncode == 0, proc.stderr
    assert {e["EventId"] for e in json.loads(proc.stdout)["Events"]} == {
        r["eventID"] for r in sent if r.get("userIdentity", {}).get("accessKeyId") == key_id
    }


async def test_wrong_secret_unknown_key_and_bad_input_are_refused_as_aws_errors(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, _ = daemon
    wrong = await aws(app, (ADMIN[0], "not-the-secret-of-this-key"), "lookup-events")
    unknown = await aws(app, ("AKIANOSUCHKEY0000000", ADMIN[1]), "lookup-events")
    for proc in (wrong, unknown):
        assert proc.returncode != 0
        assert "UnrecognizedClientException" in proc.stderr, proc.stderr
    # The same answer for both: it does not tell which key ids exist.
    assert wrong.stderr.replace(ADMIN[0], "K") == unknown.stderr.replace("AKIANOSUCHKEY0000000", "K")
    two = await aws(
        app,
        ADMIN,
        "lookup-events",
        "--lookup-attributes",
        "AttributeKey=EventName,AttributeValue=A",
        "AttributeKey=EventName,AttributeValue=B",
    )
    assert two.returncode != 0 and "InvalidLookupAttributesException" in two.stderr, two.stderr


async def test_a_request_signed_twenty_minutes_ago_is_refused(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    # A captured request replayed later: the signature is right, the time is not.
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    app, _ = daemon
    url = f"http://127.0.0.1:{app.http_port}/"
    body = b"{}"
    headers = {
        "X-Amz-Target": "com.amazonaws.cloudtrail.v20131101.CloudTrail_20131101.LookupEvents",
        "Content-Type": "application/x-amz-json-1.1",
    }

    def signed(at: dt.datetime) -> dict[str, str]:
        req = AWSRequest(method="POST", url=url, data=body, headers=dict(headers))
        req.context["timestamp"] = at.strftime("%Y%m%dT%H%M%SZ")
        auth = SigV4Auth(Credentials(*ADMIN), "cloudtrail", "us-east-1")
        req.headers["X-Amz-Date"] = req.context["timestamp"]
        canonical = auth.canonical_request(req)
        sig = auth.signature(auth.string_to_sign(req, canonical), req)
        scope = auth.credential_scope(req)
        names = auth.signed_headers(auth.headers_to_sign(req))
        req.headers["Authorization"] = (
            f"{sigv4.ALGORITHM} Credential={ADMIN[0]}/{scope}, SignedHeaders={names}, Signature={sig}"
        )
        return dict(req.headers.items())

    now = dt.datetime.now(dt.UTC)
    async with aiohttp.ClientSession() as s:
        async with s.post(url, data=body, headers=signed(now)) as r:
            assert r.status == 200, await r.text()
        async with s.post(url, data=body, headers=signed(now - dt.timedelta(minutes=20))) as r:
            assert r.status == 401
            doc = await r.json(content_type=None)
            assert doc["__type"] == "UnrecognizedClientException" and "too far" in doc["message"]
        # A body other than the one signed.
        good = signed(now)
        async with s.post(url, data=b'{"MaxResults": 1}', headers=good) as r:
            assert r.status == 401, await r.text()


async def test_max_items_pages_on_the_client_and_each_event_comes_once(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, sent = daemon
    seen: list[str] = []
    token: str | None = None
    while True:
        args = ["lookup-events", "--max-items", "40", "--page-size", "15"]
        if token:
            args += ["--starting-token", token]
        proc = await aws(app, ADMIN, *args)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert len(doc["Events"]) <= 40
        seen += [e["EventId"] for e in doc["Events"]]
        token = doc.get("NextToken")
        if not token:
            break
    assert sorted(seen) == sorted(r["eventID"] for r in sent)


def lake_event(uid: str, account: str, name: str = "CreateWidget") -> dict[str, Any]:
    return {
        "version": "1.0",
        "UID": uid,
        "userIdentity": {
            "type": "CustomUserIdentity",
            "principalId": "alice@example.com",
            "details": {"k": "v"},
        },
        "eventSource": "widgets.example.com",
        "eventName": name,
        "eventTime": "2026-12-04T10:00:00Z",
        "sourceIPAddress": "10.1.2.3",
        "recipientAccountId": account,
        "requestParameters": {"widget": uid},
    }


async def test_put_audit_events_from_the_cli_are_stored_archived_and_found(
    daemon: tuple[App, list[dict[str, Any]]], tmp_path: Path
) -> None:
    app, sent = daemon
    channel = "arn:aws:cloudtrail:us-east-1:111122223333:channel/widgets"
    events = [lake_event(f"w-{i}", "tenant-a") for i in range(3)]
    batch = [{"id": f"e{i}", "eventData": json.dumps(e)} for i, e in enumerate(events)]
    batch.append({"id": "broken", "eventData": "{not json"})
    proc = await aws(
        app,
        PRODUCER_KEY_A,
        "put-audit-events",
        "--channel-arn",
        channel,
        "--audit-events",
        json.dumps(batch),
        service="cloudtrail-data",
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert sorted(s["id"] for s in doc["successful"]) == ["e0", "e1", "e2"]
    assert [f["id"] for f in doc["failed"]] == ["broken"] and doc["failed"][0][
        "errorCode"
    ] == "InvalidEventData"
    # Found by LookupEvents, with every field as sent.
    assert app.index is not None
    async with asyncio.timeout(20):
        while (await app.index.count()) < len(sent) + 3:
            await asyncio.sleep(0.1)
    proc = await aws(
        app,
        AUDITOR_A,
        "lookup-events",
        "--lookup-attributes",
        "AttributeKey=EventName,AttributeValue=CreateWidget",
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)["Events"]
    assert {e["EventId"] for e in found} == {s["eventID"] for s in doc["successful"]}
    for e in found:
        stored = json.loads(e["CloudTrailEvent"])
        original = next(x for x in events if x["UID"] == stored["UID"])
        assert {k: stored[k] for k in original} == original and stored["channelArn"] == channel
    # A retried call stores nothing twice: the same UID gives the same eventID.
    again = await aws(
        app,
        PRODUCER_KEY_A,
        "put-audit-events",
        "--channel-arn",
        channel,
        "--audit-events",
        json.dumps(batch[:1]),
        service="cloudtrail-data",
    )
    assert json.loads(again.stdout)["successful"][0]["eventID"] == next(
        s["eventID"] for s in doc["successful"] if s["id"] == "e0"
    )
    # Archived: the record is in an archive file of tenant-a.
    async with asyncio.timeout(20):
        while not any(b"w-1" in r for r in read_archive(tmp_path / "archive")):
            await asyncio.sleep(0.2)
    # The broken one is quarantined with its reason, not dropped.
    async with asyncio.timeout(20):
        while not any(
            b"{not json" in _quarantined(p) for p in (tmp_path / "archive" / "quarantine").rglob("*.gz")
        ):
            await asyncio.sleep(0.2)


def _quarantined(path: Path) -> bytes:
    import base64
    import gzip

    try:
        lines = gzip.decompress(path.read_bytes()).splitlines()
    except (OSError, EOFError):
        return b""
    return b"\n".join(base64.b64decode(json.loads(line)["raw_b64"]) for line in lines)


async def test_put_audit_events_for_another_tenant_writes_nothing(
    daemon: tuple[App, list[dict[str, Any]]],
) -> None:
    app, _sent = daemon
    assert app.index is not None
    before = await app.index.count()
    batch = [
        {"id": "mine", "eventData": json.dumps(lake_event("x-1", "tenant-a"))},
        {"id": "theirs", "eventData": json.dumps(lake_event("x-2", "tenant-b"))},
    ]
    proc = await aws(
        app,
        PRODUCER_KEY_A,
        "put-audit-events",
        "--channel-arn",
        "arn:aws:cloudtrail:us-east-1:1:channel/c",
        "--audit-events",
        json.dumps(batch),
        service="cloudtrail-data",
    )
    assert proc.returncode != 0 and "AccessDeniedException" in proc.stderr, proc.stderr
    await asyncio.sleep(1.0)
    page = await app.index.search(Query.from_params({"operation": "CreateWidget"}))
    assert not page.items and await app.index.count() <= before + 2  # at most the audit records
