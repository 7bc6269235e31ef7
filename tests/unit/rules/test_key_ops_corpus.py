"""The built-in rules on a labelled corpus of CloudTrail records (tests/data/key_ops_corpus).

Labels come from the corpus's own policy (policy.yaml: CIS AWS Foundations monitoring
controls, GuardDuty and Security Hub, ATT&CK), not from the packs. The default rule set
must flag at least 95% of the key operations in a key category and at most 1% of the
routine reads; parameter-aware public-exposure rules must tell public from private.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.events import Decoder, Event
from daemon.rules.config import RulesConfig
from daemon.rules.engine import RuleEngine
from daemon.rules.loader import load_rules
from daemon.rules.model import KEY_CATEGORIES

CORPUS = Path(__file__).resolve().parents[2] / "data" / "key_ops_corpus" / "corpus.jsonl.gz"
GROUPS = {"cis", "identity", "logging_detection_off", "data_exposure", "network", "expensive"}
# Tags of the parameter-aware rules: a resource made public or shared out, a protection removed.
EXPOSURE_TAGS = frozenset({"public-exposure", "protection-removed"})

Row = dict[str, Any]


@pytest.fixture(scope="module")
def engine() -> RuleEngine:
    return RuleEngine(load_rules(RulesConfig()), metrics=False)


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    with gzip.open(CORPUS, "rt", encoding="utf-8") as fh:
        out = [json.loads(line) for line in fh]
    return out


@pytest.fixture(scope="module")
def classified(engine: RuleEngine, rows: list[Row]) -> list[tuple[Row, list[Any]]]:
    decoder = Decoder(max_event_bytes=16 * 1024 * 1024)
    out = []
    for row in rows:
        decoded = decoder.decode(orjson.dumps(row["record"]))
        assert len(decoded) == 1 and isinstance(decoded[0], Event), (row["id"], decoded)
        out.append((row, engine.match(decoded[0])))
    return out


def _key(matches: list[Any]) -> list[Any]:
    return [m for m in matches if m.category in KEY_CATEGORIES]


def _describe(row: Row) -> str:
    rec = row["record"]
    return f"{row['id']} ({rec['eventSource']} {rec['eventName']}, group={row.get('group')})"


def test_corpus_is_broad(rows: list[Row]) -> None:
    labels = Counter(r["label"] for r in rows)
    assert labels["key"] >= 1000 and labels["routine"] >= 2000, labels
    real = Counter(r["label"] for r in rows if r["origin"] == "real")
    assert real["key"] >= 300 and real["routine"] >= 200, real
    groups = Counter(r["group"] for r in rows if r["label"] == "key")
    assert set(groups) == GROUPS, groups
    assert min(groups.values()) >= 40, groups
    sources = {r["record"]["eventSource"] for r in rows if r["label"] == "key"}
    assert len(sources) >= 60, sorted(sources)


def test_key_operations_are_flagged_in_a_key_category(classified: list[tuple[Row, list[Any]]]) -> None:
    key = [(row, m) for row, m in classified if row["label"] == "key"]
    missed = [row for row, m in key if not _key(m)]
    rate = 1 - len(missed) / len(key)
    by_group: dict[str, list[int]] = {}
    for row, m in key:
        counts = by_group.setdefault(row["group"], [0, 0])
        counts[0] += bool(_key(m))
        counts[1] += 1
    report = "\n".join(_describe(r) for r in missed)
    assert rate >= 0.95, f"{rate:.2%} of {len(key)} key records flagged; missed:\n{report}"
    for group, (hit, total) in by_group.items():
        assert hit / total >= 0.9, f"group {group}: {hit}/{total} flagged; missed:\n{report}"
    real = [(row, m) for row, m in key if row["origin"] == "real"]
    real_missed = [_describe(row) for row, m in real if not _key(m)]
    assert len(real_missed) <= 0.02 * len(real), "\n".join(real_missed)


def test_routine_reads_are_not_flagged(classified: list[tuple[Row, list[Any]]]) -> None:
    routine = [(row, m) for row, m in classified if row["label"] == "routine"]
    flagged = [(row, sorted({x.rule for x in _key(m)})) for row, m in routine if _key(m)]
    report = "\n".join(f"{_describe(r)}: {rules}" for r, rules in flagged)
    assert len(flagged) <= 0.01 * len(routine), (
        f"{len(flagged)}/{len(routine)} routine reads flagged:\n{report}"
    )
    # Outside the Sigma pack (upstream, filtered by its owner), the packs flag none.
    own = [(r, [x for x in rules if not x.startswith("sigma.")]) for r, rules in flagged]
    own_report = "\n".join(f"{_describe(r)}: {rules}" for r, rules in own if rules)
    assert not own_report, own_report


def _exposure_hits(matches: list[Any]) -> list[str]:
    """High-severity exposure rules among the matches."""
    return [m.rule for m in matches if m.severity in ("high", "critical") and EXPOSURE_TAGS & set(m.tags)]


def test_parameter_aware_rules_tell_exposed_from_private(classified: list[tuple[Row, list[Any]]]) -> None:
    cases = [(row, m) for row, m in classified if row["origin"] == "param"]
    assert len(cases) >= 40
    assert {r["exposed"] for r, _ in cases} == {True, False}
    wrong = []
    for row, matches in cases:
        hits = _exposure_hits(matches)
        if row["exposed"] and not hits:
            wrong.append(f"{row['id']}: exposed but no high exposure rule")
        if not row["exposed"] and hits:
            wrong.append(f"{row['id']}: private or protected but flagged by {hits}")
        # Either way the operation itself is a key operation.
        if not _key(matches):
            wrong.append(f"{row['id']}: not flagged in a key category")
    assert not wrong, "\n".join(wrong)


def test_real_public_exposure_records(classified: list[tuple[Row, list[Any]]]) -> None:
    """Published records that grant AllUsers, share a snapshot or image outside the account, or
    switch deletion protection off are caught; the same operations that do not, are not."""
    expected = {}
    for row, matches in classified:
        if row["origin"] != "real":
            continue
        rec = row["record"]
        params = rec.get("requestParameters") or {}
        text = json.dumps(params)
        name = rec["eventName"]
        if name in ("PutBucketAcl", "PutObjectAcl"):
            exposed = "global/AllUsers" in text or "public-read" in text
        elif name in ("ModifySnapshotAttribute", "ModifyImageAttribute"):
            added = (params.get("createVolumePermission") or params.get("launchPermission") or {}).get(
                "add"
            ) or {}
            exposed = any(i.get("group") == "all" or "userId" in i for i in added.get("items", []))
        elif name in ("ModifyDBSnapshotAttribute", "ModifyDBClusterSnapshotAttribute"):
            exposed = bool(params.get("valuesToAdd"))
        elif name in ("ModifyDBInstance", "ModifyDBCluster"):
            exposed = (
                params.get("deletionProtection") is False
                or params.get("publiclyAccessible") is True
                or "masterUserPassword" in params
            )
        else:
            continue
        expected[row["id"]] = (exposed, _exposure_hits(matches))
    assert sum(exposed for exposed, _ in expected.values()) >= 8, expected
    assert sum(not exposed for exposed, _ in expected.values()) >= 5, expected
    wrong = {k: v for k, v in expected.items() if v[0] != bool(v[1])}
    assert not wrong, wrong


# --- beyond the corpus: every operation of the AWS API models -------------------------------

_READ_PREFIXES = ("Describe", "List", "Get", "Head", "Lookup")
_WEAKENING_PREFIXES = ("Delete", "Disable", "Disassociate", "Stop", "Deactivate", "Deregister")
# Services whose every Delete/Disable/Disassociate/Stop/Deactivate/Deregister call turns
# detection, logging or account governance down.
_DETECTION_SERVICES = ("guardduty", "securityhub", "config", "detective", "organizations", "identitystore")


def _model_record(source: str, operation: str) -> dict[str, Any]:
    """A successful call by an IAM user, in the shape CloudTrail records it."""
    return {
        "eventVersion": "1.08",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE",
            "arn": "arn:aws:iam::111122223333:user/alice",
            "accountId": "111122223333",
            "userName": "alice",
        },
        "eventTime": "2024-05-01T12:00:00Z",
        "eventSource": source,
        "eventName": operation,
        "awsRegion": "eu-west-1",
        "sourceIPAddress": "198.51.100.7",
        "userAgent": "aws-cli/2.15.0",
        "requestParameters": None,
        "responseElements": None,
        "eventID": "00000000-0000-4000-8000-000000000000",
        "readOnly": operation.startswith(_READ_PREFIXES),
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": "111122223333",
        "eventCategory": "Management",
    }


def _model_operations(services: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(service, eventSource, operation) for the botocore service models."""
    import botocore.session

    session = botocore.session.get_session()
    out: list[tuple[str, str, str]] = []
    for service in services or session.get_available_services():
        model = session.get_service_model(service)
        source = f"{model.metadata.get('signingName') or model.endpoint_prefix}.amazonaws.com"
        out.extend((service, source, operation) for operation in model.operation_names)
    return out


_DECODER = Decoder(max_event_bytes=1 << 20)


def _flags(engine: RuleEngine, record: dict[str, Any]) -> list[str]:
    decoded = _DECODER.decode(orjson.dumps(record))
    assert isinstance(decoded[0], Event)
    return [m.rule for m in _key(engine.match(decoded[0]))]


def test_no_read_operation_of_any_aws_service_is_flagged(engine: RuleEngine) -> None:
    """Every Describe/List/Get/Head/Lookup operation in the botocore models (thousands, most
    of them not in the corpus), called by an IAM user and successful, stays unflagged; reads
    of secrets and credentials are left out as the corpus policy does."""
    import yaml

    policy = yaml.safe_load((CORPUS.parent / "policy.yaml").read_text())
    secret_reads = set(policy["secret_reads"])
    checked, flagged = 0, []
    for service, source, operation in _model_operations():
        if not operation.startswith(_READ_PREFIXES) or operation in secret_reads:
            continue
        checked += 1
        rules = _flags(engine, _model_record(source, operation))
        if rules:
            flagged.append(f"{service}:{operation}: {rules}")
    assert checked >= 5000
    assert len(flagged) <= 0.01 * checked, "\n".join(flagged)
    assert not [f for f in flagged if "sigma." not in f], "\n".join(flagged)


def test_weakening_calls_of_detection_services_are_flagged_as_families(engine: RuleEngine) -> None:
    """Operation families, not lists: every weakening call these services' API models define
    today, including ones neither the corpus nor the rules name, is a key operation."""
    missed, checked = [], 0
    for service, source, operation in _model_operations(list(_DETECTION_SERVICES)):
        if operation.startswith(_WEAKENING_PREFIXES):
            checked += 1
            if not _flags(engine, _model_record(source, operation)):
                missed.append(f"{service}:{operation}")
    assert checked >= 60
    assert not missed, missed
