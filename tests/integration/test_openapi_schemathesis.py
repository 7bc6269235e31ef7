"""Property-based run of schemathesis against the served OpenAPI document of a live daemon.

It checks that no generated request gets a 5xx, and that every response (status
code, content type, headers, body) matches the document.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from daemon.api.routes import load_openapi
from tests.integration.query_support import TOKENS, ndjson, running, stratus_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "ignored_auth",
        "unsupported_method",
    )
)


def test_document_in_the_repo_describes_every_route() -> None:
    doc = load_openapi()
    assert set(doc["paths"]) == {
        "/v1/events",
        "/v1/events/{event_id}",
        "/openapi.json",
        "/healthz",
        "/readyz",
    }
    assert set(doc["paths"]["/v1/events"]) == {"get", "post"}


async def test_schemathesis_finds_no_server_error_and_no_schema_violation(tmp_path: Path) -> None:
    examples = os.environ.get("TK_SCHEMATHESIS_EXAMPLES", "40")
    async with running(tmp_path) as d:
        records = stratus_records()[:30]
        assert (await d.post(ndjson(records), TOKENS["admin"]))[0] == 202
        await d.settle()
        served = await d.get("/openapi.json")
        assert served[0] == 200 and served[1] == load_openapi()
        # Point GET /v1/events/{event_id} at an indexed event, so its 200 body is checked too.
        config = tmp_path / "schemathesis.toml"
        config.write_text(f'[parameters]\n"path.event_id" = "{records[0]["eventID"]}"\n')
        exe = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "--config-file",
            str(config),
            "run",
            f"{d.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {TOKENS['admin'].secret}",
            "--checks",
            CHECKS,
            "--max-examples",
            examples,
            "--workers",
            "1",
            "--generation-deterministic",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-6000:]
        assert " passed" in text and "Missing test data" not in text, text[-3000:]
