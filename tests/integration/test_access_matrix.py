"""Every endpoint x every role and tenant: 401 without a valid token, 403 for the wrong role
or a tenant outside the token's scope (404 for an event id held only by such a tenant,
which must not reveal that it exists), and no response ever carries an event of a tenant
the caller may not see. The admin endpoints are in it too, with an admin token limited to
one tenant: it lists and replays only that tenant's dead letters."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import ssl
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.admin_support import running_admin
from tests.integration.query_support import (
    AUDIT_TENANT,
    TENANT_A,
    TENANT_B,
    TOKENS,
    Token,
    auth_yaml,
    config_yaml,
    ndjson,
    running,
    stratus_records,
)

pytestmark = pytest.mark.integration

ANONYMOUS = None
BAD = Token("bad", "not-a-configured-token", "admin", ("*",))
# An admin for one tenant: admin actions, but only that tenant's events and dead letters.
ADMIN_A = Token("admin-a", "adm-a-secret-0006", "admin", (TENANT_A,))
CALLERS: list[Token | None] = [ANONYMOUS, BAD, *TOKENS.values(), ADMIN_A]
PUBLIC = ("/healthz", "/readyz", "/openapi.json")


def expected_status(endpoint: str, token: Token | None, tenant: str | None) -> int:
    """The status ``token`` gets from ``endpoint`` for data of ``tenant``."""
    if endpoint in PUBLIC:
        return 200
    if token is None or token is BAD:
        return 401
    if endpoint == "POST":
        if token.role not in ("producer", "admin"):
            return 403
        return 202 if token.sees(tenant) else 403
    if endpoint.startswith("admin"):
        if token.role != "admin":
            return 403
        if endpoint == "admin dlq by tenant":
            return 200 if token.sees(tenant) else 403
        return 200
    if token.role not in ("auditor", "admin"):
        return 403
    if endpoint == "GET one":
        # One lookup among the caller's tenants: another tenant's id is simply not found.
        return 200 if token.sees(tenant) else 404
    if endpoint == "GET list by tenant":
        return 200 if token.sees(tenant) else 403
    return 200


def _headers(token: Token | None) -> dict[str, str]:
    return {"Content-Type": "application/json", **(token.headers if token else {})}


async def test_every_endpoint_by_every_role_and_tenant(tmp_path: Path) -> None:
    records = stratus_records()
    by_tenant: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_tenant.setdefault(r["recipientAccountId"], []).append(r)
    tenants = sorted(by_tenant)
    digest = hashlib.sha256(ADMIN_A.secret.encode()).hexdigest()
    extra = (
        f'    - {{name: {ADMIN_A.name}, sha256: {digest}, role: admin, tenants: ["{TENANT_A}"]}}\n'
        # The matrix makes hundreds of unauthenticated calls on purpose: no failure throttle.
        "  failures: {rate_limit: null}\n"
    )
    async with running_admin(tmp_path, auth=auth_yaml(extra)) as a:
        d = a.d
        status, _, text = await d.post(ndjson(records), TOKENS["admin"])
        assert status == 202, text
        # Dead letters of both tenants (their events are in the index too).
        dead = {TENANT_A: await a.park(2, TENANT_A), TENANT_B: await a.park(2, TENANT_B)}
        confirm_token = await a.confirm_token()
        # An audit event exists too (tenant "trailkeeper"): only some tokens may see it.
        await d.get("/v1/events", TOKENS["admin"], limit="1")
        await d.settle()
        id_tenant = {r["eventID"]: r["recipientAccountId"] for r in records}
        for tenant, parked in dead.items():
            id_tenant.update({m["event_id"]: tenant for m in parked})
        _, doc, _ = await d.get("/v1/events", TOKENS["admin"], tenant=AUDIT_TENANT)
        for e in doc["events"]:
            id_tenant[e["id"]] = AUDIT_TENANT
        assert AUDIT_TENANT in id_tenant.values()
        all_tenants = [*tenants, AUDIT_TENANT]

        def leaks(token: Token | None, body: str) -> list[str]:
            """Events (as list items, details, records or dead letters) and tenant fields the
            token may not see.

            Audit events of reads do name the id that was read (as resource_id): that
            records who looked at what, and discloses no event content.
            """
            hidden = [i for i, t in id_tenant.items() if not (token is not None and token.sees(t))]
            found = [
                i
                for i in hidden
                if f'"id":"{i}"' in body or f'"eventID":"{i}"' in body or f'"event_id":"{i}"' in body
            ]
            found += [
                t
                for t in all_tenants
                if not (token is not None and token.sees(t)) and f'"tenant":"{t}"' in body
            ]
            return found

        async def call(method: str, path: str, token: Token | None, body: Any = None) -> tuple[int, Any, str]:
            data = orjson.dumps(body) if body is not None else None
            async with d.session.request(method, d.url + path, data=data, headers=_headers(token)) as r:
                text = await r.text()
                assert r.content_type == "application/json", (method, path, r.status, text)
                return r.status, orjson.loads(text), text

        checked = 0
        for token in CALLERS:
            who = token.name if token else "anon"
            for path in PUBLIC:
                status, _, body = await d.get(path, token)
                assert status == expected_status(path, token, None), (path, token)
                assert not leaks(token, body)
                checked += 1

            # The webhook confirmation link is public: only its token counts.
            confirm = "/v1/subscriptions/ops/confirm/confirm"
            status, _, body = await call("GET", f"{confirm}?token=not-the-token", token)
            assert status == 403, (token, body)
            status, doc, body = await call("GET", f"{confirm}?token={confirm_token}", token)
            assert status == 200 and doc["confirmed"] is True, (token, body)
            checked += 2

            status, doc, body = await d.get("/v1/events", token, limit="1000")
            assert status == expected_status("GET list", token, None), (token, body)
            assert not leaks(token, body), token
            if status == 200:
                assert doc["next_cursor"] is None
                got = {e["id"] for e in doc["events"]}
                visible = {i for i, t in id_tenant.items() if token is not None and token.sees(t)}
                # Every visible stratus event is returned (audit events keep growing meanwhile).
                assert {i for i in visible if id_tenant[i] != AUDIT_TENANT} <= got
            checked += 1

            for tenant in (TENANT_A, TENANT_B, AUDIT_TENANT, tenants[-1]):
                status, doc, body = await d.get("/v1/events", token, tenant=tenant, limit="1000")
                assert status == expected_status("GET list by tenant", token, tenant), (token, tenant, body)
                assert not leaks(token, body), (token, tenant)
                if status == 200:
                    assert doc["events"] and {e["tenant"] for e in doc["events"]} == {tenant}
                checked += 1

            for tenant in all_tenants:
                event_id = next(i for i, t in id_tenant.items() if t == tenant)
                status, doc, body = await d.get(f"/v1/events/{event_id}", token)
                assert status == expected_status("GET one", token, tenant), (token, tenant, body)
                assert not leaks(token, body), (token, tenant)
                if status == 200:
                    assert doc["event"]["id"] == event_id
                checked += 1

            # The admin API: every call needs the admin role; dead letters follow tenants.
            status, doc, body = await d.get("/v1/admin/dlq", token, limit="1000")
            assert status == expected_status("admin dlq", token, None), (token, body)
            assert not leaks(token, body), token
            if status == 200:
                assert token is not None
                listed = {m["event_id"] for m in doc["dead_letters"]}
                for tenant, parked in dead.items():
                    ids = {m["event_id"] for m in parked}
                    assert (ids <= listed) if token.sees(tenant) else not (ids & listed), (token, tenant)
            checked += 1
            for tenant in (TENANT_A, TENANT_B):
                status, doc, body = await d.get("/v1/admin/dlq", token, tenant=tenant)
                assert status == expected_status("admin dlq by tenant", token, tenant), (token, tenant, body)
                assert not leaks(token, body), (token, tenant)
                if status == 200:
                    assert {m["tenant"] for m in doc["dead_letters"]} == {tenant}
                checked += 1
            for tenant, parked in dead.items():
                ids = [m["id"] for m in parked]
                status, doc, body = await call("POST", "/v1/admin/dlq/replay", token, {"ids": ids})
                assert status == expected_status("admin replay", token, tenant), (token, tenant, body)
                assert not leaks(token, body), (token, tenant)
                if status == 200:
                    assert token is not None
                    # A dead letter the token may not see is neither replayed nor confirmed to exist.
                    if token.sees(tenant):
                        assert doc["replayed"] + len(doc["missing"]) == len(ids), (token, body)
                    else:
                        assert doc == {"replayed": 0, "missing": sorted(ids), "subscriptions": []}
                checked += 1
            for method, path, endpoint in (
                ("POST", "/v1/admin/reload", "admin reload"),
                ("GET", "/v1/admin/integrity", "admin integrity"),
            ):
                status, doc, body = await call(method, path, token)
                assert status == expected_status(endpoint, token, None), (token, path, body)
                assert not leaks(token, body), (token, path)
                if status == 200 and path.endswith("reload"):
                    assert doc == {"reloaded": True, "config": str(a.config_path)}
                if status == 200 and path.endswith("integrity"):
                    assert [c["tracker"] for c in doc["chains"]] == ["default"]
                checked += 1

            for tenant in (TENANT_A, TENANT_B):
                # Fresh copies with new ids, so an accepted post is visible as new data.
                fresh = [dict(r, eventID=f"{r['eventID']}-{who}") for r in by_tenant[tenant][:2]]
                status, _, body = await d.post(ndjson(fresh), token)
                assert status == expected_status("POST", token, tenant), (token, tenant, body)
                assert not leaks(token, body)
                checked += 1
            # A mixed request from a single-tenant producer is refused whole.
            pair = by_tenant[TENANT_A][:1] + by_tenant[TENANT_B][:1]
            mixed = [dict(r, eventID=f"mixed-{who}-{i}") for i, r in enumerate(pair)]
            status, doc, body = await d.post(ndjson(mixed), token)
            single = token is TOKENS["producer-a"] or token is ADMIN_A
            assert status == expected_status("POST", token, None if single else TENANT_A)
            if single:
                assert doc["items"] == [{"index": 1, "tenant": TENANT_B}]
        await d.settle()
        # Nothing from a refused request was written: only the all-tenant writers' mixed posts exist.
        mixed_ids = set()
        for tenant in (TENANT_A, TENANT_B):
            _, doc, _ = await d.get("/v1/events", TOKENS["admin"], tenant=tenant, limit="1000")
            mixed_ids |= {e["id"] for e in doc["events"] if e["id"].startswith("mixed-")}
        assert mixed_ids == {f"mixed-{w}-{i}" for w in ("producer-all", "admin") for i in (0, 1)}
        # Each admin call is in the trail, refusals included.
        _, doc, _ = await d.get(
            "/v1/events", TOKENS["admin"], tenant=AUDIT_TENANT, operation="reloadConfig", limit="1000"
        )
        codes = sorted(e["code"] for e in doc["events"])
        # Two admins answered, four other roles refused; no token at all is "authenticate".
        assert codes == ["200"] * 2 + ["403"] * 4, codes
        assert checked > 200


async def test_refused_requests_write_nothing(tmp_path: Path) -> None:
    rec = stratus_records()[0]
    async with running(tmp_path) as d:
        body = ndjson([dict(rec, eventID="refused-1", recipientAccountId=TENANT_B)])
        for token in (None, BAD, TOKENS["auditor-a"], TOKENS["producer-a"]):
            status, _, _ = await d.post(body, token)
            assert status in (401, 403)
        await d.settle()
        status, _, _ = await d.get("/v1/events/refused-1", TOKENS["admin"])
        assert status == 404


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    text = config_yaml(tmp_path, auth=auth_yaml(rate="{requests_per_second: 0.5, burst: 3}"))
    async with running(tmp_path, text) as d:
        statuses = [(await d.get("/v1/events", TOKENS["auditor-a"]))[0] for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        async with d.session.get(d.url + "/v1/events", headers=TOKENS["auditor-a"].headers) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
        # Buckets are per token: another token is unaffected.
        assert (await d.get("/v1/events", TOKENS["admin"]))[0] == 200


async def test_legacy_ingest_tokens_still_work(tmp_path: Path) -> None:
    legacy = "legacy-producer-token"
    digest = hashlib.sha256(legacy.encode()).hexdigest()
    text = config_yaml(tmp_path, http_extra=f"    tokens: [{digest}]")
    async with running(tmp_path, text) as d:
        rec = stratus_records()[0]
        assert (await d.post(ndjson([rec]), Token("legacy", legacy, "producer", ("*",))))[0] == 202
        assert (await d.post(ndjson([rec]), None))[0] == 401
        # A producer token reads nothing.
        assert (await d.get("/v1/events", Token("legacy", legacy, "producer", ("*",))))[0] == 403


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_tls_switch_serves_https_only(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    text = config_yaml(tmp_path, http_extra=f"    tls: {{cert_file: {cert}, key_file: {key}}}")
    client = ssl.create_default_context(cafile=str(cert))
    async with running(tmp_path, text, ssl=client, scheme="https") as d:
        rec = stratus_records()[0]
        assert (await d.post(ndjson([rec]), TOKENS["producer-all"]))[0] == 202
        await d.settle()
        status, doc, _ = await d.get(f"/v1/events/{rec['eventID']}", TOKENS["admin"])
        assert status == 200 and doc["record"] == rec
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises(Exception):  # noqa: B017 - any client error: the port speaks TLS only
            async with d.session.get(f"http://127.0.0.1:{d.app.http_port}/healthz") as r:
                await r.read()
                assert r.status >= 400
                raise RuntimeError("plain HTTP got a response over the TLS port")


async def test_an_auditor_query_is_in_the_trail_and_in_the_archive(tmp_path: Path) -> None:
    auditor = TOKENS["auditor-a"]
    async with running(tmp_path) as d:
        status, _, _ = await d.get("/v1/events", auditor, operation="StopLogging", limit="5")
        assert status == 200
        status, _, _ = await d.get("/v1/events", None)
        assert status == 401
        await d.settle()
        # In the trail: queryable by a token that may see the audit tenant.
        status, doc, text = await d.get(
            "/v1/events",
            TOKENS["auditor-b"],
            service="trailkeeper",
            operation="queryEvents",
            user="auditor-a",
        )
        assert status == 200 and len(doc["events"]) == 1, text
        query_event = doc["events"][0]
        assert query_event["tenant"] == AUDIT_TENANT and query_event["format"] == "cts"
        _, doc, _ = await d.get(
            "/v1/events", TOKENS["admin"], service="trailkeeper", operation="authenticate"
        )
        assert len(doc["events"]) == 1 and doc["events"][0]["code"] == "401"
        assert doc["events"][0]["rating"] == "warning"
        # The auditor cannot read who queried the trail: that is the audit tenant's business.
        assert (await d.get("/v1/events", auditor, tenant=AUDIT_TENANT))[0] == 403

        # In the archive: the CTS trace, in a file under the audit tenant.
        found: list[dict[str, Any]] = []
        for _ in range(100):
            found = [
                r
                for r in d.archived_records()
                if r.get("trace_name") == "queryEvents"
                and r["user"]["name"] == "auditor-a"
                and r["code"] == "200"
            ]
            if found:
                break
            await asyncio.sleep(0.05)
        assert len(found) == 1
        trace = found[0]
        assert trace["service_type"] == "trailkeeper"
        assert trace["trace_id"] == query_event["id"]
        assert trace["request"]["filters"] == {"operation": "StopLogging", "limit": "5"}
        assert trace["source_ip"] == "127.0.0.1"
        assert f"/{AUDIT_TENANT}/" in trace["_key"]
        raw = gzip.decompress((d.archive / trace["_key"]).read_bytes())
        assert orjson.dumps({k: v for k, v in trace.items() if k != "_key"}) in raw


async def test_unreadable_certificate_fails_the_start_naming_the_files(tmp_path: Path) -> None:
    from daemon.app import App
    from daemon.config import parse_config

    missing = tmp_path / "nope.pem"
    text = config_yaml(tmp_path, http_extra=f"    tls: {{cert_file: {missing}, key_file: {missing}}}")
    app = App(parse_config(text))
    with pytest.raises(ValueError, match=r"ingest\.http\.tls: cannot load certificate .*nope\.pem"):
        await app.start()
