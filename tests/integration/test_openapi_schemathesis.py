"""Property-based run of schemathesis, with every one of its checks, against the served
OpenAPI document of a live daemon, once with an admin token and once with an auditor's.

Besides "no 5xx" and "every response (status, content type, headers, body) matches the
document", ``--checks all`` holds the server to the document both ways: a request the
document allows must not be refused (positive data acceptance) and one it does not
allow must be (negative data rejection), methods the document does not list must be
405 with a JSON body, and so on.

Values a schema cannot describe are supplied the way a client gets them: an event id,
the cursors and the subscription's confirmation token are ones the daemon handed out (a cursor is opaque: only one the server
made is valid, whatever its characters).
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from daemon.api.routes import load_openapi
from tests.integration.admin_support import running_admin
from tests.integration.query_support import TENANT_A, TOKENS, ndjson, stratus_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What the schemas cannot state (start before end): see that file.
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def test_document_in_the_repo_describes_every_route() -> None:
    doc = load_openapi()
    assert set(doc["paths"]) == {
        "/v1/events",
        "/v1/events/{event_id}",
        "/v1/admin/dlq",
        "/v1/admin/dlq/replay",
        "/v1/admin/reload",
        "/v1/admin/integrity",
        "/v1/subscriptions/{topic}/{subscription}/confirm",
        "/openapi.json",
        "/healthz",
        "/readyz",
        "/healthz/downstream",
        "/v1/admin/health",
    }
    assert set(doc["paths"]["/v1/events"]) == {"get", "post"}


def _config(event_id: str, cursor: str, dlq_cursor: str, confirm_token: str) -> str:
    return (
        f'[parameters]\n"path.event_id" = "{event_id}"\n\n'
        '[[operations]]\ninclude-operation-id = "queryEvents"\n'
        f'parameters = {{ "query.cursor" = "{cursor}" }}\n\n'
        '[[operations]]\ninclude-operation-id = "listDeadLetters"\n'
        f'parameters = {{ "query.cursor" = "{dlq_cursor}" }}\n\n'
        '[[operations]]\ninclude-operation-id = "confirmSubscription"\n'
        'parameters = { "path.topic" = "ops", "path.subscription" = "confirm", '
        f'"query.token" = "{confirm_token}" }}\n'
    )


@pytest.mark.parametrize("token_name", ["admin", "auditor-a"])
async def test_schemathesis_all_checks_pass(tmp_path: Path, token_name: str) -> None:
    examples = os.environ.get("TK_SCHEMATHESIS_EXAMPLES", "25")
    token = TOKENS[token_name]
    async with running_admin(tmp_path) as a:
        d = a.d
        # Of the tenant both tokens read, so GET /v1/events/{event_id} finds it for either.
        records = [r for r in stratus_records() if r["recipientAccountId"] == TENANT_A][:30]
        assert (await d.post(ndjson(records), TOKENS["admin"]))[0] == 202
        await a.park(2)
        await d.settle()
        served = await d.get("/openapi.json")
        assert served[0] == 200 and served[1] == load_openapi()
        status, page, text = await d.get("/v1/events", TOKENS["admin"], limit="1")
        assert status == 200 and page["next_cursor"], text
        status, dlq, text = await d.get("/v1/admin/dlq", TOKENS["admin"], limit="1")
        assert status == 200 and dlq["next_cursor"], text
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            _config(records[0]["eventID"], page["next_cursor"], dlq["next_cursor"], await a.confirm_token())
        )
        exe = Path(sys.executable).with_name("schemathesis")
        proc = await asyncio.create_subprocess_exec(
            str(exe),
            "--config-file",
            str(config),
            "run",
            f"{d.url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token.secret}",
            "--checks",
            "all",
            "--max-examples",
            examples,
            "--workers",
            "1",
            "--generation-deterministic",
            "--continue-on-failure",
            "--no-color",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "SCHEMATHESIS_HOOKS": str(HOOKS)},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-8000:]
        assert " passed" in text and "Missing test data" not in text, text[-3000:]
        if token_name == "admin":
            assert "Authentication failed" not in text, text[-3000:]
