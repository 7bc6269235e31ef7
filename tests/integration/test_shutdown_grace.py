"""SIGTERM with a store that refuses every request: one bounded grace in total, nothing lost.

The store is a real HTTP server on loopback that answers every S3 request with 403
AccessDenied (as S3 does for a revoked key or a wrong bucket policy). The daemon has
open files to store and chain-end digests to write, both into that store; it must exit
within ``shutdown_grace`` (not once per stage), and a restart against a working S3
server (moto, same bucket and prefix) must archive every event exactly once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.fixtures.s3 import new_bucket, s3_store_config
from tests.integration.test_crash_recovery import _record
from tests.integration.test_s3_archive import (
    FAST_FILES,
    post,
    stores_yaml,
    trackers_yaml,
    wait_for_ids,
)

pytestmark = pytest.mark.integration

GRACE = 4.0
# Process start-up of the shutdown path, closing the journal, the worker pool and the logs.
MARGIN = 2.5

ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message>"
    b"<RequestId>TK0000000000</RequestId><HostId>trailkeeper-test</HostId></Error>"
)


class ForbiddenS3:
    """An S3 endpoint in its own thread and event loop that answers 403 to everything.

    Its own loop, so the test's blocking waits on the daemon process never delay an answer.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.requests: Counter[str] = Counter()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    async def _deny(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests[request.method] += 1
        return web.Response(status=403, body=ACCESS_DENIED, content_type="application/xml")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._deny)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.fixture
def forbidden_s3() -> Iterator[ForbiddenS3]:
    server = ForbiddenS3()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _config(tmp: Path, endpoint: str, bucket: str) -> dict[str, str]:
    return {
        "stores": stores_yaml(tmp, archive=s3_store_config(endpoint, bucket, prefix="org")),
        "trackers": trackers_yaml(
            {"name": "default", "store": "archive", "prefix": "AWSLogs", "file": FAST_FILES}
        ),
        "shutdown": f"shutdown_grace: {GRACE}s\n",
    }


async def test_sigterm_with_a_forbidden_store_exits_within_one_grace_and_loses_nothing(
    forbidden_s3: ForbiddenS3, s3_server: str, tmp_path: Path, daemon_process: Any
) -> None:
    bucket = new_bucket(s3_server)
    records = [_record(i) for i in range(300)]
    d = daemon_process(**_config(tmp_path, forbidden_s3.endpoint, bucket))
    await asyncio.to_thread(d.start)
    for start in range(0, len(records), 100):
        assert await post(d.url, b"\n".join(records[start : start + 100]), "application/x-ndjson") == 202
    # Both stages have work refused: an archive file and the chain-start digest.
    deadline = time.monotonic() + 15
    while forbidden_s3.requests["PUT"] < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert forbidden_s3.requests["PUT"] >= 3, "the daemon never tried the store"

    started = time.monotonic()
    code = await asyncio.to_thread(d.terminate, 4 * GRACE + 10)
    took = time.monotonic() - started
    assert code == 0
    assert took < GRACE + MARGIN, f"shutdown took {took:.1f}s with shutdown_grace {GRACE}s"
    events = [e.get("event") for e in d.logs()]
    assert "archive.stop_incomplete" in events
    assert "integrity.stop_incomplete" in events

    # The operator fixes the store (here: the endpoint) and starts again on the same journal.
    again = daemon_process(**_config(tmp_path, s3_server, bucket))
    await asyncio.to_thread(again.start)
    try:
        ids = await wait_for_ids(s3_server, bucket, len(records), timeout=30)
        # A duplicate would come with a later file: give the archiver time to (wrongly) make one.
        await asyncio.sleep(1.0)
        ids = await wait_for_ids(s3_server, bucket, len(records), timeout=5)
    finally:
        assert await asyncio.to_thread(again.terminate) == 0
    want = Counter(orjson.loads(r)["eventID"] for r in records)
    assert ids == want, "every event archived exactly once"
