"""The daemon's servers (the API and the metrics listener) answer every error as JSON,
including those aiohttp produces before any handler runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api.errors import MAX_REQUEST_LINE_BYTES
from tests.integration.query_support import TOKENS, config_yaml, running
from tests.unit.test_api_errors import raw

pytestmark = pytest.mark.integration


def _with_metrics(tmp: Path) -> str:
    text = config_yaml(tmp, http_extra="    max_body_bytes: 4096")
    assert "metrics: {listen: null}" in text
    return text.replace("metrics: {listen: null}", 'metrics: {listen: "127.0.0.1:0"}')


async def _json(r: aiohttp.ClientResponse) -> Any:
    assert r.content_type == "application/json", (r.status, await r.text())
    return json.loads(await r.text())


async def test_api_and_metrics_errors_are_json(tmp_path: Path) -> None:
    async with running(tmp_path, _with_metrics(tmp_path)) as d:
        port = d.app.http_port
        assert port is not None and d.app.metrics_port is not None
        # aiohttp's parser: a request line over the limit (was a text/plain 400 from 8190 bytes).
        status, _, doc = await raw(
            port, f"GET /v1/events?q={'a' * MAX_REQUEST_LINE_BYTES} HTTP/1.1\r\n\r\n".encode()
        )
        assert status == 414 and "request line" in doc["error"]
        status, _, doc = await raw(port, f"GET /healthz HTTP/1.1\r\nX-Big: {'b' * 9000}\r\n\r\n".encode())
        assert status == 431
        # A 9 kB query (over aiohttp's default line limit) is an ordinary request.
        status, body, _ = await d.get("/v1/events", TOKENS["admin"], q="x" * 500, user="é" * 512)
        assert status == 200 and body["events"] == []
        for url in (d.url, f"http://127.0.0.1:{d.app.metrics_port}"):
            async with d.session.get(url + "/nope") as r:
                assert r.status == 404 and "/nope" in (await _json(r))["error"]
            async with d.session.put(url + "/healthz") as r:
                doc = await _json(r)
                assert r.status == 405 and r.headers["Allow"] == "GET,HEAD" and "PUT" in doc["error"]
        async with d.session.delete(d.url + "/v1/events", headers=TOKENS["admin"].headers) as r:
            assert r.status == 405 and (await _json(r))["allowed_methods"] == ["GET", "HEAD", "POST"]
        # Over client_max_size (ingest.http.max_body_bytes): the admin API's JSON body.
        headers = {"Content-Type": "application/json", **TOKENS["admin"].headers}
        body = json.dumps({"ids": ["x" * 200] * 30}).encode()
        async with d.session.post(d.url + "/v1/admin/dlq/replay", data=body, headers=headers) as r:
            assert r.status == 413 and "4096" in (await _json(r))["error"]


async def test_an_internal_error_is_json_with_a_request_id_and_no_traceback(tmp_path: Path) -> None:
    async with running(tmp_path) as d:
        assert d.app.index is not None

        async def broken(*_args: Any, **_kw: Any) -> Any:
            raise RuntimeError("index exploded: secret internals")

        d.app.index.search = broken  # type: ignore[method-assign]
        async with d.session.get(d.url + "/v1/events", headers=TOKENS["admin"].headers) as r:
            doc = await _json(r)
            text = json.dumps(doc)
            assert r.status == 500 and doc["request_id"] and r.headers["X-Request-Id"] == doc["request_id"]
            assert "secret" not in text and "Traceback" not in text and "RuntimeError" not in text
