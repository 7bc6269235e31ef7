"""Every error a daemon server answers is the JSON Error body: aiohttp's own too.

A small application behind ``JsonErrorAppRunner`` on a real socket; requests aiohttp's
client would refuse to send are written raw.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from daemon.api import errors
from daemon.api.errors import MAX_REQUEST_LINE_BYTES, JsonErrorAppRunner, json_app


async def _ok(_request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _boom(_request: web.Request) -> web.Response:
    raise RuntimeError("secret detail that must stay in the log")


async def _text_error(_request: web.Request) -> web.Response:
    return web.Response(status=418, text="I'm a teapot", reason="Teapot")


async def _small_body(request: web.Request) -> web.Response:
    await request.read()
    return web.json_response({"ok": True})


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    runner = JsonErrorAppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def _app() -> web.Application:
    app = json_app(client_max_size=1024)
    app.router.add_get("/ok", _ok)
    app.router.add_get("/boom", _boom)
    app.router.add_get("/teapot", _text_error)
    app.router.add_post("/small", _small_body)
    return app


async def raw(port: int, data: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``data`` as is; the status, headers and JSON body of the answer. The header
    ``x-closed`` says whether the server closed the connection after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        body = await reader.readexactly(int(headers["content-length"]))
        try:
            closed = await asyncio.wait_for(reader.read(1), 0.2) == b""
        except TimeoutError:
            closed = False
        headers["x-closed"] = str(closed)
    finally:
        writer.close()
    assert headers["content-type"].startswith("application/json"), (status, headers, body)
    return status, headers, json.loads(body)


def _get(target: str, headers: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()


async def test_a_request_line_over_the_limit_is_414_json() -> None:
    async with serving(_app()) as port:
        status, _, doc = await raw(port, _get("/ok?q=" + "a" * (MAX_REQUEST_LINE_BYTES + 10)))
    assert status == 414 and "request line" in doc["error"] and str(MAX_REQUEST_LINE_BYTES) in doc["error"]


async def test_a_request_line_over_aiohttps_default_is_served() -> None:
    # aiohttp refuses lines over 8190 bytes by default; the query API needs more.
    async with serving(_app()) as port:
        status, _, doc = await raw(port, _get("/ok?q=" + "a" * 20_000))
    assert status == 200 and doc == {"ok": True}


async def test_an_oversize_header_and_too_many_headers_are_431_json() -> None:
    async with serving(_app()) as port:
        status, _, doc = await raw(port, _get("/ok", f"X-Big: {'b' * 9000}\r\n"))
        assert status == 431 and "header" in doc["error"]
        many = "".join(f"X-H{i}: v\r\n" for i in range(200))
        status, _, doc = await raw(port, _get("/ok", many))
        assert status == 431 and "128" in doc["error"]


async def test_malformed_http_is_400_json() -> None:
    async with serving(_app()) as port:
        status, headers, doc = await raw(port, _get("/ok", "X-Bad: a\x00b\r\n"))
        assert status == 400 and doc["error"].startswith("the request is not valid HTTP")
        assert headers["x-closed"] == "True"  # after a parse error the framing is unknown
        status, _, doc = await raw(port, b"\x16\x03\x01 not http at all\r\n\r\n")
        assert status == 400 and "error" in doc


async def test_router_errors_are_json() -> None:
    async with serving(_app()) as port:
        status, _, doc = await raw(port, _get("/nope"))
        assert status == 404 and "/nope" in doc["error"]
        status, headers, doc = await raw(port, b"DELETE /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 405 and headers["allow"] == "GET,HEAD"
        assert doc["allowed_methods"] == ["GET", "HEAD"] and "DELETE" in doc["error"]
        body = b"x" * 5000
        status, _, doc = await raw(
            port, b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body
        )
        assert status == 413 and "1024" in doc["error"]
        status, _, doc = await raw(port, _get("/teapot"))
        assert status == 418 and doc == {"error": "Teapot"}


async def test_an_unhandled_exception_is_500_json_with_a_request_id_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logged: list[dict[str, Any]] = []
    orig = errors.log.error

    def capture(event: str, **kw: Any) -> None:
        logged.append({"event": event, **kw})
        orig(event, **kw)

    errors.log.error = capture  # type: ignore[method-assign]
    try:
        async with serving(_app()) as port:
            status, headers, doc = await raw(port, _get("/boom", "X-Request-Id: req-42\r\n"))
            status2, _, doc2 = await raw(port, _get("/boom"))
    finally:
        errors.log.error = orig  # type: ignore[method-assign]
    assert status == 500 and doc["request_id"] == "req-42" and headers["x-request-id"] == "req-42"
    assert "secret" not in json.dumps(doc) and "Traceback" not in json.dumps(doc)
    assert "req-42" in doc["error"]
    assert status2 == 500 and len(doc2["request_id"]) == 32 and doc2["request_id"] != "req-42"
    (entry, _) = [e for e in logged if e["event"] == "api.unhandled_error"]
    assert entry["request_id"] == "req-42" and "secret detail" in entry["error"]
    assert isinstance(entry["exc_info"], RuntimeError)


async def test_an_exception_escaping_every_middleware_is_500_json() -> None:
    # An application without the middleware: aiohttp's protocol handler answers, as JSON.
    app = web.Application()
    app.router.add_get("/boom", _boom)
    async with serving(app) as port:
        status, _, doc = await raw(port, _get("/boom"))
    assert status == 500 and doc["request_id"] and "secret" not in json.dumps(doc)
