"""The public health endpoints disclose no paths, URLs or error texts; the admin one has them.

/readyz and /healthz/downstream answer anyone who reaches the listener, so a failing store
or journal must be reported in fixed words. Real failures: the local store's root and the
journal's segment directory are replaced by regular files (tests run as root, for whom
chmod does not block writes), so every write fails with the path in the error.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.app import App
from daemon.config import parse_config
from daemon.health import Problem, Report
from tests.conftest import base_config_text
from tests.notify_support import key_events

pytestmark = pytest.mark.integration

ADMIN = "tk_health-disclosure-admin-token"
PUBLIC_ROUTES = {"/v1/admin/health", "/healthz/downstream"}


def assert_discloses_nothing(body: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in body, f"{secret!r} disclosed in {body}"
    assert "://" not in body, body
    # Anything path-like must be one of the API's own routes.
    assert set(re.findall(r"[^\s\"]*/[^\s\"]*", body)) <= PUBLIC_ROUTES, body


async def get(s: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with s.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


def replace_with_file(directory: Path) -> None:
    # The running archiver may create the directory again between the rename and the write:
    # set it aside again until the file is in place.
    for attempt in range(100):
        if directory.is_dir():
            directory.rename(directory.with_name(f"{directory.name}.aside{attempt}"))
        try:
            directory.write_text("not a directory")
            return
        except IsADirectoryError:
            continue
    raise AssertionError(f"{directory} kept coming back as a directory")


async def test_failures_are_public_in_fixed_words_and_admin_in_full(tmp_path: Path) -> None:
    secret_dir = tmp_path / "secret-mount-name"
    digest = hashlib.sha256(ADMIN.encode()).hexdigest()
    text = base_config_text(
        secret_dir,
        journal=f"journal: {{dir: {secret_dir}/journal, max_bytes: 256MiB, segment_bytes: 16KiB}}\n",
        auth=(f"auth:\n  tokens: [{{name: admin, sha256: {digest}, role: admin, tenants: ['*']}}]\n"),
    )
    app = App(parse_config(text))
    await app.start()
    base = f"http://127.0.0.1:{app.http_port}"
    try:
        async with aiohttp.ClientSession() as s:
            assert (await get(s, f"{base}/healthz/downstream"))[0] == 200

            replace_with_file(secret_dir / "archive")
            # Reports are shared for a couple of seconds: wait for a check after the change.
            async with asyncio.timeout(10):
                while (await get(s, f"{base}/healthz/downstream"))[0] != 503:
                    await asyncio.sleep(0.2)
            status, body = await get(s, f"{base}/healthz/downstream")
            assert status == 503, body
            assert json.loads(body)["problems"] == ["store local: not writable"]
            assert_discloses_nothing(body, [str(secret_dir), "secret-mount-name"])
            # Admins get the error itself, path included: that is where to look.
            status, admin = await get(s, f"{base}/v1/admin/health", ADMIN)
            assert status == 200 and "secret-mount-name" in admin, admin
            # The store outage does not touch readiness.
            status, body = await get(s, f"{base}/readyz")
            assert status == 200, body

            # The journal's next segment cannot be created: its error names the file.
            replace_with_file(secret_dir / "journal" / "segments")
            payload = "\n".join(json.dumps(r) for r in key_events(40)).encode()
            for _ in range(20):
                headers = {"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/x-ndjson"}
                async with s.post(f"{base}/v1/events", data=payload, headers=headers) as resp:
                    await resp.read()
                if app.journal.failed is not None:
                    break
            assert app.journal.failed is not None, "the journal did not fail"
            assert "secret-mount-name" in str(app.journal.failed)
            status, body = await get(s, f"{base}/readyz")
            assert status == 503, body
            assert json.loads(body)["problems"][0].startswith("journal write failed")
            assert_discloses_nothing(body, [str(secret_dir), "secret-mount-name"])
            status, body = await get(s, f"{base}/healthz/downstream")
            assert_discloses_nothing(body, [str(secret_dir), "secret-mount-name"])
    finally:
        await app.stop(grace=1)


def test_witness_warnings_are_counted_not_shown_in_public() -> None:
    url = "https://witness.internal.example:8443/tlog"
    report = Report(
        [Problem("store", "s3", "store s3: not writable", f"store s3: {url} refused")],
        [f"witness {url} has not cosigned for 3 intervals"],
    )
    public: dict[str, Any] = report.body(detailed=False)
    assert_discloses_nothing(json.dumps(public), [url, "witness.internal"])
    assert public["warnings"] == ["1 witness warning(s): details in GET /v1/admin/health"]
    assert url in json.dumps(report.body(detailed=True))
