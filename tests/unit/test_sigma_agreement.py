"""Must show 3: SigmaHQ's CloudTrail rules import with a per-rule report, and on every test
event of those rules the engine agrees with an independent evaluator: pySigma's SQLite
backend turns each rule into an SQL query, run over the same events loaded into an
in-memory SQLite table.

The table holds each event flattened as Sigma sees it: one column per dotted path of
nested objects, every value as its text (objects and arrays as their compact JSON
text, booleans as true/false), null and absent as NULL, and columns compare without
regard to case (COLLATE NOCASE), as Sigma does.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest
from sigma.backends.sqlite import sqliteBackend
from sigma.collection import SigmaCollection
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule

from daemon.events import Decoder, Event
from daemon.rules.engine import RuleEngine
from daemon.rules.sigma import SigmaOptions, SigmaRefused, compile_builtin, compile_rule, compiled_tree
from daemon.rules.sigma_examples import candidate_events
from tests.unit.rules.conftest import stratus_dir

PACK = Path(__file__).resolve().parents[2] / "daemon" / "rules" / "packs" / "sigma"


def _flatten(value: Any, prefix: str, out: dict[str, str | None]) -> None:
    if prefix:
        out[prefix] = (
            None if value is None else value if isinstance(value, str) else orjson.dumps(value).decode()
        )
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}" if prefix else key, out)


def _fields(detection: SigmaDetection | SigmaDetectionItem) -> set[str]:
    if isinstance(detection, SigmaDetection):
        return set().union(*(_fields(d) for d in detection.detection_items))
    return {detection.field} if detection.field else set()


def _sqlite_verdicts(rule: SigmaRule, events: list[dict[str, Any]]) -> set[int]:
    """Indexes of the events pySigma's SQLite query selects."""
    rows = []
    for record in events:
        flat: dict[str, str | None] = {}
        _flatten(record, "", flat)
        rows.append(flat)
    columns = set().union(*(r.keys() for r in rows))
    columns |= set().union(*(_fields(d) for d in rule.detection.detections.values()))
    db = sqlite3.connect(":memory:")
    db.create_function(
        "regexp", 2, lambda pattern, value: value is not None and re.search(pattern, value) is not None
    )
    names = sorted(columns)
    db.execute(
        "CREATE TABLE logs (tk_row INTEGER, " + ", ".join(f'"{c}" TEXT COLLATE NOCASE' for c in names) + ")"
    )
    for i, flat in enumerate(rows):
        db.execute(
            f"INSERT INTO logs VALUES ({', '.join('?' * (len(names) + 1))})",
            [i, *(flat.get(c) for c in names)],
        )
    (query,) = sqliteBackend().convert_rule(rule)
    assert query.startswith("SELECT * FROM logs WHERE ")
    selected = db.execute(query.replace("SELECT *", "SELECT tk_row", 1)).fetchall()
    return {row[0] for row in selected}


def _stratus_records() -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for path in sorted(stratus_dir().glob("*.json")):
        doc = orjson.loads(path.read_bytes())
        records += doc["Records"] if isinstance(doc, dict) else doc
    return records


def _sigma_rules() -> list[SigmaRule]:
    collection = SigmaCollection.load_ruleset([str(PACK / "aws")])
    rules = [r for r in collection.rules if isinstance(r, SigmaRule)]
    assert len(rules) == 57
    return rules


def test_the_vendored_folder_imports_with_a_report_per_rule() -> None:
    result = compile_builtin(SigmaOptions())
    assert len(result.rules) + len(result.refused) == 57
    assert len(result.rules) == 56
    (refusal,) = result.refused
    assert refusal.rule_id == "055fb148-60f8-462d-ad16-26926ce050f1"
    assert refusal.reason == "modifier |fieldref"
    assert "aws_update_login_profile.yml" in refusal.message()
    for rule in result.rules:
        assert re.fullmatch(r"sigma\.[0-9a-f-]{36}", rule.id)
        assert rule.examples_match and rule.examples_no_match, rule.id


def test_compiled_rules_agree_with_the_sqlite_backend_on_every_test_event() -> None:
    real = _stratus_records()
    decoder = Decoder(max_event_bytes=16 * 1024 * 1024)
    checked = 0
    positives = 0
    compiled = 0
    for sigma_rule in _sigma_rules():
        try:
            rule = compile_rule(sigma_rule, "test", SigmaOptions())
        except SigmaRefused:
            continue
        compiled += 1
        tree, fmt = compiled_tree(sigma_rule)
        events = [*candidate_events(tree, fmt), *real]
        expected = _sqlite_verdicts(sigma_rule, events)
        engine = RuleEngine([rule], metrics=False)
        for i, record in enumerate(events):
            (event,) = decoder.decode(orjson.dumps(record))
            assert isinstance(event, Event)
            ours = bool(engine.match(event))
            assert ours == (i in expected), (rule.id, sigma_rule.title, record)
            checked += 1
        generated_hits = [i for i in expected if i < len(events) - len(real)]
        # Every compiled rule is exercised both ways by its own events.
        assert generated_hits, rule.id
        assert len(generated_hits) < len(events) - len(real), rule.id
        positives += len(expected)
    assert compiled == 56
    assert checked >= 56 * 310
    assert positives > 56


@pytest.mark.parametrize(
    ("detection", "events"),
    [
        # Wildcards, |all, |startswith/|endswith, a regex with a flag, numbers and booleans.
        (
            {
                "sel": {
                    "eventName|startswith": "Put",
                    "requestParameters.bucketName": "logs-?-*",
                    "requestParameters.policy|contains|all": ["Allow", "Principal"],
                },
                "size": {"requestParameters.size": 5, "requestParameters.public": True},
                "re": {"userAgent|re|i": "^BOTO3/"},
                "condition": "sel and (size or re)",
            },
            [
                {
                    "eventName": "PutBucketPolicy",
                    "requestParameters": {
                        "bucketName": "logs-a-1",
                        "policy": "allow principal",
                        "size": 5,
                        "public": True,
                    },
                },
                {
                    "eventName": "PutBucketPolicy",
                    "requestParameters": {"bucketName": "LOGS-a-1", "policy": "Allow Principal", "size": "5"},
                },
                {
                    "eventName": "PutBucketPolicy",
                    "requestParameters": {"bucketName": "logs-ab-1", "policy": "Allow Principal"},
                    "userAgent": "Boto3/1.0",
                },
                {
                    "eventName": "PutBucketPolicy",
                    "requestParameters": {"bucketName": "logs-a-1", "policy": "Allow"},
                    "userAgent": "Boto3/1.0",
                },
                {
                    "eventName": "PutBucketPolicy",
                    "requestParameters": {"bucketName": "logs-a-1", "policy": "Allow Principal"},
                    "userAgent": "boto3/1.0",
                },
                {
                    "eventName": "GetBucketPolicy",
                    "requestParameters": {"bucketName": "logs-a-1", "policy": "Allow Principal"},
                    "userAgent": "boto3/1.0",
                },
            ],
        ),
        # all of, not, null, |exists, |endswith, |cidr, lists of maps.
        (
            {
                "selection_a": {"eventSource|endswith": ".amazonaws.com"},
                "selection_b": [{"sourceIPAddress|cidr": "10.0.0.0/8"}, {"errorCode": None}],
                "filter": {"userIdentity.invokedBy|exists": True},
                "condition": "all of selection_* and not filter",
            },
            [
                {
                    "eventSource": "s3.amazonaws.com",
                    "sourceIPAddress": "10.1.2.3",
                    "errorCode": "AccessDenied",
                },
                {"eventSource": "s3.amazonaws.com", "sourceIPAddress": "192.0.2.1"},
                {
                    "eventSource": "s3.amazonaws.com",
                    "sourceIPAddress": "192.0.2.1",
                    "errorCode": "AccessDenied",
                },
                {
                    "eventSource": "s3.amazonaws.com",
                    "sourceIPAddress": "10.1.2.3",
                    "userIdentity": {"invokedBy": "x"},
                },
                {"eventSource": "s3.example.com", "sourceIPAddress": "10.1.2.3"},
            ],
        ),
    ],
)
def test_hand_written_rules_agree_with_the_sqlite_backend(
    detection: dict[str, Any], events: list[dict[str, Any]]
) -> None:
    text = orjson.dumps(
        {
            "title": "t",
            "id": "5f0b0a0e-0000-4000-8000-000000000001",
            "logsource": {"product": "aws", "service": "cloudtrail"},
            "detection": detection,
            "level": "high",
        }
    ).decode()
    (sigma_rule,) = SigmaCollection.from_yaml(text).rules
    assert isinstance(sigma_rule, SigmaRule)
    rule = compile_rule(sigma_rule, "test", SigmaOptions())
    engine = RuleEngine([rule], metrics=False)
    base = {"eventVersion": "1.08", "eventSource": "s3.amazonaws.com", "eventName": "PutBucketPolicy"}
    records = [{**base, **e} for e in events]
    expected = _sqlite_verdicts(sigma_rule, records)
    assert 0 < len(expected) < len(records)
    decoder = Decoder(max_event_bytes=1 << 20)
    for i, record in enumerate(records):
        (event,) = decoder.decode(orjson.dumps(record))
        assert isinstance(event, Event)
        assert bool(engine.match(event)) == (i in expected), record
