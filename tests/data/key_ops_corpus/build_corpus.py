"""Build corpus.jsonl.gz: labelled CloudTrail records for the key-operations test.

Usage (from the repository root)::

    .venv/bin/python tests/data/key_ops_corpus/build_corpus.py \\
        --stratus ../shared/data/cloudtrail-stratus --panther PANTHER_CHECKOUT

Labels come from policy.yaml alone (see its header and README.md); the rule packs are not
consulted. Three kinds of record are written:

- ``real``: records as published (Stratus Red Team detonation logs; the test events of
  Panther's CloudTrail rules), labelled by the policy;
- ``derived``: a real record with eventSource, eventName, requestParameters and
  responseElements replaced, for every operation of the policy's key lists and for the
  read operations (Describe/List/Get/Head/Lookup) of the services security teams watch,
  named from the botocore service models;
- ``param``: real-shaped records with request parameters that make a resource public or
  shared outside the account, or switch a protection off (deletion protection, encryption,
  master password), beside the same operations made private or left protected, for the
  parameter-aware rules (labelled ``exposed`` true/false).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import gzip
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import yaml

HERE = Path(__file__).resolve().parent
POLICY = yaml.safe_load((HERE / "policy.yaml").read_text())
NAMESPACE = uuid.UUID("4b0e7f57-7d8e-4f8a-9d43-5a3c7e1c2a10")

# Services whose read operations make up the derived routine reads.
READ_SERVICES = [
    "iam",
    "sts",
    "organizations",
    "cloudtrail",
    "config",
    "guardduty",
    "securityhub",
    "macie2",
    "inspector2",
    "detective",
    "accessanalyzer",
    "cloudwatch",
    "logs",
    "events",
    "kms",
    "secretsmanager",
    "ssm",
    "s3",
    "ec2",
    "elbv2",
    "elb",
    "rds",
    "lambda",
    "ecr",
    "ecs",
    "eks",
    "route53",
    "wafv2",
    "shield",
    "backup",
    "glacier",
    "sagemaker",
    "redshift",
    "emr",
    "cognito-idp",
    "cognito-identity",
    "sso-admin",
    "identitystore",
    "dynamodb",
    "sns",
    "sqs",
    "cloudformation",
    "autoscaling",
    "elasticache",
    "es",
    "kafka",
    "efs",
    "fsx",
    "apigateway",
    "cloudfront",
    "acm",
    "codebuild",
    "glue",
    "athena",
    "bedrock",
    "ram",
    "network-firewall",
    "route53resolver",
    "rolesanywhere",
    "servicecatalog",
    "codepipeline",
    "stepfunctions",
]
# eventSource when it is not signingName/endpointPrefix + ".amazonaws.com".
EVENT_SOURCE = {
    "opensearchserverless": "aoss.amazonaws.com",
    "s3control": "s3.amazonaws.com",
    "signin": "signin.amazonaws.com",
}
NO_MODEL = {"signin"}

_SESSION = botocore.session.get_session()


def event_source(service: str) -> str:
    if service in EVENT_SOURCE:
        return EVENT_SOURCE[service]
    model = _SESSION.get_service_model(service)
    prefix = model.metadata.get("signingName") or model.endpoint_prefix
    return f"{prefix}.amazonaws.com"


def operations(service: str) -> dict[str, str]:
    """Operation name -> request URI, from the botocore model."""
    if service in NO_MODEL:
        return {}
    model = _SESSION.get_service_model(service)
    out = {}
    for name in model.operation_names:
        http = model.operation_model(name).http
        out[name] = http.get("requestUri", "/")
    return out


def cloudtrail_name(service: str, op: str, uri: str) -> str:
    """Lambda's CloudTrail event names carry the API version of the request URI."""
    if service == "lambda":
        match = re.match(r"^/(\d{4})-(\d{2})-(\d{2})/", uri)
        if match:
            return op + "".join(match.groups())
    return op


def base_name(name: str) -> str:
    return re.sub(r"20\d{6}(v\d+)?$", "", name)


def is_refused(code: Any) -> bool:
    return isinstance(code, str) and any(fnmatch.fnmatchcase(code, p) for p in POLICY["refused_error_codes"])


# (eventSource, eventName) -> group, first group wins.
KEY_NAMES: dict[tuple[str, str], str] = {}
for _group, _by_service in POLICY["groups"].items():
    for _service, _names in _by_service.items():
        for _name in _names:
            KEY_NAMES.setdefault((event_source(_service), _name), _group)


def label(record: dict[str, Any]) -> tuple[str, str | None]:
    """The policy's label of a record: ("key", group), ("routine", None) or ("other", None)."""
    source, name = str(record.get("eventSource")), str(record.get("eventName") or "")
    ident = record.get("userIdentity") or {}
    code = record.get("errorCode")
    group = KEY_NAMES.get((source, base_name(name)))
    if group:
        return "key", group
    if (
        ident.get("type") == "Root"
        and not ident.get("invokedBy")
        and record.get("eventType") != "AwsServiceEvent"
    ):
        return "key", "cis"
    if is_refused(code):
        return "key", "cis"
    if name == "ConsoleLogin":
        mfa = (record.get("additionalEventData") or {}).get("MFAUsed")
        outcome = (record.get("responseElements") or {}).get("ConsoleLogin")
        if mfa != "Yes" or outcome == "Failure":
            return "key", "cis"
        return "other", None
    bare = base_name(name)
    if (
        any(bare.startswith(p) for p in POLICY["routine_prefixes"])
        and bare not in POLICY["secret_reads"]
        and record.get("eventType", "AwsApiCall") == "AwsApiCall"
    ):
        return "routine", None
    return "other", None


def uid(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "/".join(parts)))


# --- real records ----------------------------------------------------------------------


def stratus_records(stratus: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(stratus.glob("*.json")):
        for i, record in enumerate(json.loads(path.read_text())):
            yield f"stratus:{path.name}#{i}", record


def panther_records(panther: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Test events of Panther's CloudTrail rules whose eventSource and eventName agree
    with the AWS API (some tests pair names with the wrong service on purpose)."""
    valid = valid_pairs()
    for path in sorted((panther / "rules" / "aws_cloudtrail_rules").glob("*.yml")):
        doc = yaml.safe_load(path.read_text())
        for i, test in enumerate(doc.get("Tests") or []):
            log = test.get("Log")
            if not isinstance(log, dict) or "eventSource" not in log or "eventName" not in log:
                continue
            if "userIdentity" not in log or "eventTime" not in log:
                continue
            pair = (log["eventSource"], base_name(log["eventName"]))
            if pair not in valid and log["eventSource"] not in ("signin.amazonaws.com",):
                continue
            yield f"panther:{path.name}#{i}", log


def valid_pairs() -> set[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for service in _SESSION.get_available_services():
        try:
            source = event_source(service)
            names = operations(service)
        except Exception:  # a model that does not load names nothing
            continue
        pairs.update((source, n) for n in names)
    for service, names in POLICY["cloudtrail_names"].items():
        pairs.update((event_source(service), n) for n in names)
    return pairs


# --- derived records -------------------------------------------------------------------


def derive(template: dict[str, Any], source: str, name: str, read_only: bool, tag: str) -> dict[str, Any]:
    record = copy.deepcopy(template)
    record["eventSource"] = source
    record["eventName"] = name
    record["eventID"] = uid(tag, source, name)
    record["requestParameters"] = None
    record["responseElements"] = None
    record["readOnly"] = read_only
    record["eventType"] = "AwsConsoleSignIn" if source == "signin.amazonaws.com" else "AwsApiCall"
    record["eventCategory"] = "Management"
    for key in ("errorCode", "errorMessage", "resources", "additionalEventData", "serviceEventDetails"):
        record.pop(key, None)
    return record


def derived_key_records(write_template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group, by_service in POLICY["groups"].items():
        for service, names in by_service.items():
            source = event_source(service)
            ops = operations(service)
            extra = set(POLICY["cloudtrail_names"].get(service, []))
            for name in names:
                if name not in ops and name not in extra:
                    raise SystemExit(f"policy.yaml: {service} has no operation {name} ({group})")
                ct_name = cloudtrail_name(service, name, ops.get(name, "/"))
                yield f"derived:{service}:{ct_name}", derive(write_template, source, ct_name, False, "key")


def derived_read_records(read_template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for service in READ_SERVICES:
        source = event_source(service)
        for name, uri in sorted(operations(service).items()):
            if not any(name.startswith(p) for p in POLICY["routine_prefixes"]):
                continue
            ct_name = cloudtrail_name(service, name, uri)
            yield f"derived:{service}:{ct_name}", derive(read_template, source, ct_name, True, "read")


# --- parameter variants ----------------------------------------------------------------

ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"
AUTH_USERS = "http://acs.amazonaws.com/groups/global/AuthenticatedUsers"
OTHER_ACCOUNT = "999988887777"


def _acl(grantee: dict[str, Any]) -> dict[str, Any]:
    owner = {"ID": "4d5a0d1f3c2e0b1a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a"}
    return {
        "AccessControlPolicy": {
            "AccessControlList": {
                "Grant": [
                    {"Grantee": {"xsi:type": "CanonicalUser", **owner}, "Permission": "FULL_CONTROL"},
                    {"Grantee": grantee, "Permission": "READ"},
                ]
            },
            "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
            "Owner": owner,
        },
        "bucketName": "trail-corpus-bucket",
        "acl": [""],
        "Host": "trail-corpus-bucket.s3.amazonaws.com",
    }


def _policy(principal: Any, condition: dict[str, Any] | None = None) -> str:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": "*", "Resource": "*"}
    if condition:
        statement["Condition"] = condition
    return json.dumps({"Version": "2012-10-17", "Statement": [statement]})


def parameter_cases() -> list[tuple[str, str, str, dict[str, Any], bool]]:
    """(case, eventSource, eventName, requestParameters, exposed)."""
    me = "arn:aws:iam::111122223333:root"
    s3, ec2, rds = "s3.amazonaws.com", "ec2.amazonaws.com", "rds.amazonaws.com"
    cases: list[tuple[str, str, str, dict[str, Any], bool]] = [
        ("acl-allusers", s3, "PutBucketAcl", _acl({"xsi:type": "Group", "URI": ALL_USERS}), True),
        (
            "acl-authusers",
            s3,
            "PutObjectAcl",
            {**_acl({"xsi:type": "Group", "URI": AUTH_USERS}), "key": "a.txt"},
            True,
        ),
        (
            "acl-canned-public-read",
            s3,
            "PutBucketAcl",
            {
                "bucketName": "trail-corpus-bucket",
                "x-amz-acl": ["public-read"],
                "Host": "trail-corpus-bucket.s3.amazonaws.com",
            },
            True,
        ),
        (
            "acl-canned-public-read-write",
            s3,
            "PutObjectAcl",
            {"bucketName": "trail-corpus-bucket", "key": "a.txt", "x-amz-acl": ["public-read-write"]},
            True,
        ),
        (
            "acl-canned-private",
            s3,
            "PutBucketAcl",
            {
                "bucketName": "trail-corpus-bucket",
                "x-amz-acl": ["private"],
                "Host": "trail-corpus-bucket.s3.amazonaws.com",
            },
            False,
        ),
        (
            "acl-canonical-user",
            s3,
            "PutBucketAcl",
            _acl(
                {
                    "xsi:type": "CanonicalUser",
                    "ID": "79a59df900b949e55d96a1e698fbacedfd6e09d98eacf8f8d5218e7cd47ef2be",
                }
            ),
            False,
        ),
        (
            "acl-log-delivery",
            s3,
            "PutBucketAcl",
            _acl({"xsi:type": "Group", "URI": "http://acs.amazonaws.com/groups/s3/LogDelivery"}),
            False,
        ),
        (
            "bucket-policy-star",
            s3,
            "PutBucketPolicy",
            {"bucketName": "trail-corpus-bucket", "bucketPolicy": json.loads(_policy("*")), "policy": [""]},
            True,
        ),
        (
            "bucket-policy-aws-star",
            s3,
            "PutBucketPolicy",
            {
                "bucketName": "trail-corpus-bucket",
                "bucketPolicy": json.loads(_policy({"AWS": "*"})),
                "policy": [""],
            },
            True,
        ),
        (
            "bucket-policy-account",
            s3,
            "PutBucketPolicy",
            {
                "bucketName": "trail-corpus-bucket",
                "bucketPolicy": json.loads(_policy({"AWS": me})),
                "policy": [""],
            },
            False,
        ),
        (
            "bucket-policy-service",
            s3,
            "PutBucketPolicy",
            {
                "bucketName": "trail-corpus-bucket",
                "bucketPolicy": json.loads(_policy({"Service": "cloudtrail.amazonaws.com"})),
                "policy": [""],
            },
            False,
        ),
        (
            "sqs-policy-star",
            "sqs.amazonaws.com",
            "SetQueueAttributes",
            {
                "queueUrl": "https://sqs.us-east-1.amazonaws.com/111122223333/q",
                "attributes": {"Policy": _policy("*")},
            },
            True,
        ),
        (
            "sqs-policy-account",
            "sqs.amazonaws.com",
            "SetQueueAttributes",
            {
                "queueUrl": "https://sqs.us-east-1.amazonaws.com/111122223333/q",
                "attributes": {"Policy": _policy({"AWS": me})},
            },
            False,
        ),
        (
            "sqs-visibility",
            "sqs.amazonaws.com",
            "SetQueueAttributes",
            {
                "queueUrl": "https://sqs.us-east-1.amazonaws.com/111122223333/q",
                "attributes": {"VisibilityTimeout": "60"},
            },
            False,
        ),
        (
            "sns-policy-aws-star",
            "sns.amazonaws.com",
            "SetTopicAttributes",
            {
                "topicArn": "arn:aws:sns:us-east-1:111122223333:t",
                "attributeName": "Policy",
                "attributeValue": _policy({"AWS": "*"}),
            },
            True,
        ),
        (
            "sns-policy-account",
            "sns.amazonaws.com",
            "SetTopicAttributes",
            {
                "topicArn": "arn:aws:sns:us-east-1:111122223333:t",
                "attributeName": "Policy",
                "attributeValue": _policy({"AWS": me}),
            },
            False,
        ),
        (
            "lambda-permission-star",
            "lambda.amazonaws.com",
            "AddPermission20150331v2",
            {"functionName": "f", "statementId": "s", "action": "lambda:InvokeFunction", "principal": "*"},
            True,
        ),
        (
            "lambda-permission-service",
            "lambda.amazonaws.com",
            "AddPermission20150331v2",
            {
                "functionName": "f",
                "statementId": "s",
                "action": "lambda:InvokeFunction",
                "principal": "s3.amazonaws.com",
                "sourceAccount": "111122223333",
            },
            False,
        ),
        (
            "kms-policy-star",
            "kms.amazonaws.com",
            "PutKeyPolicy",
            {
                "keyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
                "policyName": "default",
                "policy": _policy({"AWS": "*"}),
            },
            True,
        ),
        (
            "kms-policy-account",
            "kms.amazonaws.com",
            "PutKeyPolicy",
            {
                "keyId": "1234abcd-12ab-34cd-56ef-1234567890ab",
                "policyName": "default",
                "policy": _policy({"AWS": me}),
            },
            False,
        ),
        (
            "ecr-policy-star",
            "ecr.amazonaws.com",
            "SetRepositoryPolicy",
            {"repositoryName": "r", "policyText": _policy("*")},
            True,
        ),
        (
            "ecr-policy-account",
            "ecr.amazonaws.com",
            "SetRepositoryPolicy",
            {"repositoryName": "r", "policyText": _policy({"AWS": me})},
            False,
        ),
        (
            "secret-policy-star",
            "secretsmanager.amazonaws.com",
            "PutResourcePolicy",
            {"secretId": "s", "resourcePolicy": _policy({"AWS": "*"}), "blockPublicPolicy": False},
            True,
        ),
        (
            "secret-policy-account",
            "secretsmanager.amazonaws.com",
            "PutResourcePolicy",
            {"secretId": "s", "resourcePolicy": _policy({"AWS": me}), "blockPublicPolicy": True},
            False,
        ),
        (
            "pab-delete",
            s3,
            "DeleteBucketPublicAccessBlock",
            {"bucketName": "trail-corpus-bucket", "publicAccessBlock": [""]},
            True,
        ),
        (
            "pab-put-false",
            s3,
            "PutBucketPublicAccessBlock",
            {
                "bucketName": "trail-corpus-bucket",
                "PublicAccessBlockConfiguration": {
                    "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
                    "RestrictPublicBuckets": False,
                    "BlockPublicPolicy": False,
                    "BlockPublicAcls": False,
                    "IgnorePublicAcls": False,
                },
            },
            True,
        ),
        (
            "pab-put-true",
            s3,
            "PutBucketPublicAccessBlock",
            {
                "bucketName": "trail-corpus-bucket",
                "PublicAccessBlockConfiguration": {
                    "xmlns": "http://s3.amazonaws.com/doc/2006-03-01/",
                    "RestrictPublicBuckets": True,
                    "BlockPublicPolicy": True,
                    "BlockPublicAcls": True,
                    "IgnorePublicAcls": True,
                },
            },
            False,
        ),
        (
            "rds-deletion-protection-off",
            rds,
            "ModifyDBInstance",
            {"dBInstanceIdentifier": "db1", "deletionProtection": False, "applyImmediately": True},
            True,
        ),
        (
            "rds-deletion-protection-on",
            rds,
            "ModifyDBInstance",
            {"dBInstanceIdentifier": "db1", "deletionProtection": True, "applyImmediately": True},
            False,
        ),
        (
            "rds-cluster-deletion-protection-off",
            rds,
            "ModifyDBCluster",
            {"dBClusterIdentifier": "c1", "deletionProtection": False},
            True,
        ),
        (
            "rds-master-password",
            rds,
            "ModifyDBInstance",
            {"dBInstanceIdentifier": "db1", "masterUserPassword": "HIDDEN_DUE_TO_SECURITY_REASONS"},
            True,
        ),
        (
            "rds-cluster-master-password",
            rds,
            "ModifyDBCluster",
            {"dBClusterIdentifier": "c1", "masterUserPassword": "HIDDEN_DUE_TO_SECURITY_REASONS"},
            True,
        ),
        (
            "rds-instance-class",
            rds,
            "ModifyDBInstance",
            {"dBInstanceIdentifier": "db1", "dBInstanceClass": "db.r6g.large"},
            False,
        ),
        (
            "ec2-termination-protection-off",
            ec2,
            "ModifyInstanceAttribute",
            {"instanceId": "i-0123456789abcdef0", "disableApiTermination": {"value": False}},
            True,
        ),
        (
            "ec2-termination-protection-on",
            ec2,
            "ModifyInstanceAttribute",
            {"instanceId": "i-0123456789abcdef0", "disableApiTermination": {"value": True}},
            False,
        ),
        (
            "s3-encryption-deleted",
            s3,
            "DeleteBucketEncryption",
            {"bucketName": "trail-corpus-bucket", "encryption": [""]},
            True,
        ),
        (
            "ebs-encryption-default-off",
            ec2,
            "DisableEbsEncryptionByDefault",
            {"DisableEbsEncryptionByDefaultRequest": ""},
            True,
        ),
        (
            "snapshot-public",
            ec2,
            "ModifySnapshotAttribute",
            {
                "snapshotId": "snap-0123456789abcdef0",
                "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"group": "all"}]}},
            },
            True,
        ),
        (
            "snapshot-other-account",
            ec2,
            "ModifySnapshotAttribute",
            {
                "snapshotId": "snap-0123456789abcdef0",
                "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"add": {"items": [{"userId": OTHER_ACCOUNT}]}},
            },
            True,
        ),
        (
            "snapshot-unshare",
            ec2,
            "ModifySnapshotAttribute",
            {
                "snapshotId": "snap-0123456789abcdef0",
                "attributeType": "CREATE_VOLUME_PERMISSION",
                "createVolumePermission": {"remove": {"items": [{"group": "all"}]}},
            },
            False,
        ),
        (
            "image-public",
            ec2,
            "ModifyImageAttribute",
            {
                "imageId": "ami-0123456789abcdef0",
                "launchPermission": {"add": {"items": [{"group": "all"}]}},
                "attributeType": "launchPermission",
            },
            True,
        ),
        (
            "image-other-account",
            ec2,
            "ModifyImageAttribute",
            {
                "imageId": "ami-0123456789abcdef0",
                "launchPermission": {"add": {"items": [{"userId": OTHER_ACCOUNT}]}},
                "attributeType": "launchPermission",
            },
            True,
        ),
        (
            "image-unshare",
            ec2,
            "ModifyImageAttribute",
            {
                "imageId": "ami-0123456789abcdef0",
                "launchPermission": {"remove": {"items": [{"userId": OTHER_ACCOUNT}]}},
                "attributeType": "launchPermission",
            },
            False,
        ),
        (
            "image-description",
            ec2,
            "ModifyImageAttribute",
            {
                "imageId": "ami-0123456789abcdef0",
                "description": {"value": "web"},
                "attributeType": "description",
            },
            False,
        ),
        (
            "db-snapshot-public",
            rds,
            "ModifyDBSnapshotAttribute",
            {"dBSnapshotIdentifier": "snap1", "attributeName": "restore", "valuesToAdd": ["all"]},
            True,
        ),
        (
            "db-snapshot-other-account",
            rds,
            "ModifyDBSnapshotAttribute",
            {"dBSnapshotIdentifier": "snap1", "attributeName": "restore", "valuesToAdd": [OTHER_ACCOUNT]},
            True,
        ),
        (
            "db-snapshot-unshare",
            rds,
            "ModifyDBSnapshotAttribute",
            {"dBSnapshotIdentifier": "snap1", "attributeName": "restore", "valuesToRemove": ["all"]},
            False,
        ),
        (
            "db-cluster-snapshot-public",
            rds,
            "ModifyDBClusterSnapshotAttribute",
            {"dBClusterSnapshotIdentifier": "csnap1", "attributeName": "restore", "valuesToAdd": ["all"]},
            True,
        ),
        (
            "db-cluster-snapshot-unshare",
            rds,
            "ModifyDBClusterSnapshotAttribute",
            {
                "dBClusterSnapshotIdentifier": "csnap1",
                "attributeName": "restore",
                "valuesToRemove": [OTHER_ACCOUNT],
            },
            False,
        ),
    ]
    return cases


def param_records(write_template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    for case, source, name, params, exposed in parameter_cases():
        record = derive(write_template, source, name, False, f"param:{case}")
        record["requestParameters"] = params
        yield f"param:{case}", record, exposed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stratus", type=Path, required=True)
    parser.add_argument("--panther", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=HERE / "corpus.jsonl.gz")
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    real = list(stratus_records(args.stratus)) + list(panther_records(args.panther))
    for ident, record in real:
        kind, group = label(record)
        rows.append({"id": ident, "origin": "real", "label": kind, "group": group, "record": record})

    by_id = dict(stratus_records(args.stratus))
    # A real IAM user's write (CreateUser) and read (DescribeInstances) give the shape.
    write_template = next(r for k, r in by_id.items() if r["eventName"] == "CreateUser")
    read_template = next(
        r
        for k, r in by_id.items()
        if r["eventName"] == "DescribeInstances" and r["userIdentity"]["type"] == "IAMUser"
    )
    assert write_template["eventName"] == "CreateUser", write_template["eventName"]
    for ident, record in list(derived_key_records(write_template)) + list(
        derived_read_records(read_template)
    ):
        kind, group = label(record)
        rows.append({"id": ident, "origin": "derived", "label": kind, "group": group, "record": record})
    # Root use and refused reads (CIS 4.3, 4.1), from the same real read.
    for ident, record in list(derived_read_records(read_template))[::25]:
        root = copy.deepcopy(record)
        root["userIdentity"] = {
            "type": "Root",
            "principalId": "111122223333",
            "arn": "arn:aws:iam::111122223333:root",
            "accountId": "111122223333",
            "accessKeyId": "ASIAEXAMPLEROOTKEY01",
        }
        root["eventID"] = uid("root", ident)
        rows.append(
            {"id": ident + ":root", "origin": "derived", "label": "key", "group": "cis", "record": root}
        )
        refused = copy.deepcopy(record)
        refused["errorCode"] = "AccessDenied"
        refused["errorMessage"] = "User is not authorized to perform this operation"
        refused["eventID"] = uid("refused", ident)
        rows.append(
            {"id": ident + ":refused", "origin": "derived", "label": "key", "group": "cis", "record": refused}
        )
    for ident, record, exposed in param_records(write_template):
        kind, group = label(record)
        rows.append(
            {
                "id": ident,
                "origin": "param",
                "label": kind,
                "group": group,
                "exposed": exposed,
                "record": record,
            }
        )

    for row in rows:
        if row["label"] == "key" and row["origin"] != "param":
            assert row["group"], row["id"]
    body = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode()
    with args.out.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(body)
    counts: dict[str, int] = {}
    for row in rows:
        counts[f"{row['origin']}/{row['label']}"] = counts.get(f"{row['origin']}/{row['label']}", 0) + 1
    print(json.dumps(counts, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
