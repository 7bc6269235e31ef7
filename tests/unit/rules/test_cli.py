"""``trailkeeper rules match|list|test``: output format and exit codes."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.rules.cli import main
from tests.unit.rules.conftest import shared_data

ENVELOPE = {
    "Records": [
        {"eventID": "e1", "eventSource": "cloudtrail.amazonaws.com", "eventName": "StopLogging"},
        {"eventID": "e2", "eventSource": "ec2.amazonaws.com", "eventName": "DescribeInstances"},
    ]
}


def run(argv: list[str], stdin: bytes = b"") -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "daemon.rules.cli", *argv],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def test_match_prints_one_exact_json_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "trail.json.gz"
    path.write_bytes(gzip.compress(json.dumps(ENVELOPE).encode()))
    code, out, err = run(["rules", "match", str(path)])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        '{"id":"e1","operation":"StopLogging","matches":[{"rule":"cis.4.5-cloudtrail-changes",'
        '"category":"high_risk","severity":"critical"}]}'
    )
    assert json.loads(lines[1]) == {"id": "e2", "operation": "DescribeInstances", "matches": []}
    assert list(json.loads(lines[0])) == ["id", "operation", "matches"]


def call(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, stdin: bytes = b""
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_match_reads_stdin_ndjson_and_cts_and_reports_refused_items(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    body = (
        b'{"trace_id":"t1","service_type":"ECS","trace_name":"rebootServer","code":"500"}\n'
        b'{"not":"an event"}\n'
    )
    code, out, err = call(["rules", "match", "-"], capsys, monkeypatch, body)
    assert code == 1
    [line] = out.splitlines()
    assert json.loads(line)["matches"] == [
        {"rule": "cts.ecs.server-stopped-or-rebooted", "category": "high_risk", "severity": "medium"}
    ]
    assert "-: item 1: refused: unknown_format" in err


def test_match_on_the_cts_manual_examples(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = shared_data() / "cts-examples" / "example_traces.json"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    code, out, _ = call(["rules", "match", str(path)], capsys, monkeypatch)
    assert code == 0
    ops = {json.loads(x)["operation"]: json.loads(x)["matches"] for x in out.splitlines()}
    assert ops["createSingleServer"][0]["rule"] == "cts.ecs.server-created-or-deleted"
    assert ops["deleteVolume"][0]["rule"] == "cts.evs.volume-deleted"


def test_bad_rule_file_exits_2_naming_rule_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n  - {id: x.y, category: high_risk, severity: high, match: {operation: [{prefx: A}]}}\n"
    )
    code, _, err = call(["rules", "list", "--rules", str(bad)], capsys, monkeypatch)
    assert code == 2
    assert f"{bad}: rule 'x.y': match.operation[0].prefx" in err


def test_list_and_test(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = call(["rules", "list", "--json"], capsys, monkeypatch)
    assert code == 0
    docs = [json.loads(x) for x in out.splitlines()]
    assert {"rule", "category", "severity", "description", "tags", "source", "match"} <= set(docs[0])
    code, out, _ = call(["rules", "list", "--disable", docs[0]["rule"]], capsys, monkeypatch)
    assert code == 0 and f"# {len(docs) - 1} rules" in out
    code, out, _ = call(["rules", "test", "--strict"], capsys, monkeypatch)
    assert code == 0
    assert out.strip().endswith("all passed")


def test_test_fails_on_a_wrong_example(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("""
rules:
  - id: t.r
    category: high_risk
    severity: low
    match: {operation: [StopLogging]}
    examples:
      match: [{eventSource: cloudtrail.amazonaws.com, eventName: StartLogging}]
      no_match: [{eventSource: cloudtrail.amazonaws.com, eventName: GetTrail}]
""")
    assert main(["rules", "test", "--no-builtin", "--rules", str(path)]) == 1
