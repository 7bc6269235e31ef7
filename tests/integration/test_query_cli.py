"""``trailkeeper query`` against a live daemon: same filters, table or JSON lines."""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
import pytest

from daemon.api import cli
from daemon.telemetry import configure_logging
from tests.integration.query_support import TOKENS, ndjson, running, stratus_records

pytestmark = pytest.mark.integration


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trailkeeper")
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["query", *argv])


async def test_query_command_filters_pages_and_prints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("error", "console")  # logs to stderr, so stdout is the command's output alone
    records = stratus_records()
    async with running(tmp_path) as d:
        assert (await d.post(ndjson(records), TOKENS["producer-all"]))[0] == 202
        await d.settle()
        token = TOKENS["admin"].secret
        want = sorted(r["eventID"] for r in records if r["eventName"] == "DescribeInstances")
        args = parse("--url", d.url, "--operation", "DescribeInstances", "--json", "--all")
        assert await cli._run(args, token) == 0
        lines = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert sorted(e["id"] for e in lines) == want

        args = parse("--url", d.url, "--user", "christophe", "--limit", "5")
        assert await cli._run(args, token) == 0
        out = capsys.readouterr()
        rows = out.out.splitlines()
        assert rows[0].startswith("TIME") and len(rows) == 6
        assert all("christophe" in row for row in rows[1:])
        assert "more" in out.err

        args = parse("--url", d.url, "--id", records[0]["eventID"])
        assert await cli._run(args, token) == 0
        assert orjson.loads(capsys.readouterr().out)["record"] == records[0]

        # The API's refusals reach the user as errors, not as empty results.
        args = parse("--url", d.url, "--tenant", "017622104382")
        assert await cli._run(args, TOKENS["auditor-a"].secret) == 1
        assert "403" in capsys.readouterr().err
