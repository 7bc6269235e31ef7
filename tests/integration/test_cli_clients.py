"""`trailkeeper send` and `trailkeeper query` as processes, against a real daemon process.

Both take the daemon's base URL (with or without a path), trust a private CA with
--cafile, and turn every failure to talk to the daemon (TLS, refused connection,
an HTTP error, something that is not the daemon) into one line on stderr.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from tests.conftest import ROOT, DaemonProcess, free_port
from tests.integration.query_support import TOKENS, config_yaml
from tests.integration.test_access_matrix import _self_signed
from tests.integration.test_crash_recovery import _record

pytestmark = pytest.mark.integration

PRODUCER = TOKENS["producer-all"].secret
ADMIN = TOKENS["admin"].secret


async def cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def one_line(code: int, err: str) -> str:
    """The single error line of a failed run: nonzero exit, no traceback, nothing else."""
    assert code != 0
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def daemon(tmp: Path, *, tls: bool = False) -> tuple[DaemonProcess, Path | None]:
    cert: Path | None = None
    extra = ""
    if tls:
        cert, key = _self_signed(tmp)
        extra = f"    tls: {{cert_file: {cert}, key_file: {key}}}"
    port = free_port()
    text = config_yaml(tmp, http_extra=extra).replace('listen: "127.0.0.1:0"', f'listen: "127.0.0.1:{port}"')
    return DaemonProcess(tmp, text, port, 0), cert


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"\n".join(_record(i) for i in range(20)) + b"\n")
    return path


@pytest.fixture
def plain_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    d, _ = daemon(tmp_path)
    d.start()
    try:
        yield d
    finally:
        d.terminate()


async def _query_ids(url: str, tmp: Path, *extra: str) -> set[str]:
    # The index catches up within moments of the 202. The service filter leaves out the
    # daemon's own records of these queries.
    ids: set[str] = set()
    args = ("--token", ADMIN, "--service", "ec2.amazonaws.com", "--json", "--all", *extra)
    for _ in range(50):
        code, out, err = await cli("query", "--url", url, *args, cwd=tmp)
        assert code == 0, err
        ids = {orjson.loads(line)["id"] for line in out.splitlines()}
        if len(ids) >= 20:
            break
        await asyncio.sleep(0.1)
    return ids


async def test_send_and_query_take_the_same_base_url(
    plain_daemon: DaemonProcess, events_file: Path, tmp_path: Path
) -> None:
    want = {f"crash-{i:08d}" for i in range(20)}
    # No path at all: the crash this fixes.
    code, out, err = await cli(
        "send", str(events_file), "--url", plain_daemon.url, "--token", PRODUCER, "-q", cwd=tmp_path
    )
    assert code == 0, err
    assert orjson.loads(out) == {"accepted": 20, "rejected": [], "failed": 0}
    assert await _query_ids(plain_daemon.url, tmp_path) == want
    # The old spelling with the path (and a trailing slash) still works, for both.
    code, out, err = await cli(
        "send", str(events_file), "--url", f"{plain_daemon.url}/v1/events/", "--token", PRODUCER, "-q",
        cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, err
    assert await _query_ids(f"{plain_daemon.url}/v1/events", tmp_path) == want

    # An HTTP error with the daemon's JSON error: its message, on one line.
    code, _, err = await cli(
        "send", str(events_file), "--url", plain_daemon.url, "--token", "wrong", cwd=tmp_path
    )
    line = one_line(code, err)
    assert "401" in line and "--token" in line and plain_daemon.url in line
    code, _, err = await cli("query", "--url", plain_daemon.url, "--token", "wrong", cwd=tmp_path)
    line = one_line(code, err)
    assert "401" in line and "--token" in line


@pytest.fixture
async def not_the_daemon() -> AsyncIterator[str]:
    async def page(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=200, text="<html><body>It works!</body></html>", content_type="text/html")

    async def missing(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=404, text="404 page not found", content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/ok/{tail:.*}", page)
    app.router.add_route("*", "/{tail:.*}", missing)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", ["", "/ok"])
async def test_a_server_that_is_not_the_daemon_gives_one_line(
    not_the_daemon: str, path: str, events_file: Path, tmp_path: Path
) -> None:
    url = not_the_daemon + path
    for args in (["send", str(events_file)], ["query", "--token", ADMIN]):
        code, _out, err = await cli(*args, "--url", url, cwd=tmp_path)
        line = one_line(code, err)
        assert f"{url}/v1/events" in line and "ingest.http.listen" in line
        assert "JSONDecodeError" not in err


async def test_a_refused_port_gives_one_line(events_file: Path, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["send", str(events_file)], ["query", "--token", ADMIN]):
        code, _, err = await cli(*args, "--url", url, cwd=tmp_path)
        line = one_line(code, err)
        assert url in line and "cannot connect" in line


async def test_https_daemon_with_and_without_cafile(events_file: Path, tmp_path: Path) -> None:
    d, cert = daemon(tmp_path, tls=True)
    assert cert is not None
    await asyncio.to_thread(d.start)
    try:
        url = f"https://127.0.0.1:{d.http_port}"
        code, out, err = await cli(
            "send", str(events_file), "--url", url, "--token", PRODUCER, "--cafile", str(cert), cwd=tmp_path
        )
        assert code == 0, err
        assert orjson.loads(out)["accepted"] == 20
        assert len(await _query_ids(url, tmp_path, "--cafile", str(cert))) == 20

        # Without it, the self-signed certificate is not trusted: say so, and name the flag.
        for args in (["send", str(events_file), "--token", PRODUCER], ["query", "--token", ADMIN]):
            code, _, err = await cli(*args, "--url", url, cwd=tmp_path)
            line = one_line(code, err)
            assert url in line and "certificate" in line and "--cafile" in line
        # Plain http to the TLS port: the hint is https.
        code, _, err = await cli(
            "send", str(events_file), "--url", f"http://127.0.0.1:{d.http_port}", cwd=tmp_path
        )
        assert "https://" in one_line(code, err)
    finally:
        await asyncio.to_thread(d.terminate)


def test_bad_url_or_cafile_gives_one_line(
    tmp_path: Path, events_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from daemon.cli import main

    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    assert main(["send", str(events_file), "--url", "https://127.0.0.1:1", "--cafile", str(bogus)]) == 2
    line = one_line(2, capsys.readouterr().err)
    assert str(bogus) in line and "CA bundle" in line
    assert main(["send", str(events_file), "--url", "127.0.0.1:8787"]) == 2
    line = one_line(2, capsys.readouterr().err)
    assert "--url" in line and "http(s)://HOST:PORT" in line
