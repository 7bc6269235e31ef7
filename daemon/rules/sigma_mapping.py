"""How Sigma rules map onto trailkeeper events: log sources, field names, level, tags.

Log sources (``logsource`` of a rule; other keys such as ``category`` must be absent):

- ``product: aws``, ``service: cloudtrail``: CloudTrail records. Field names are
  CloudTrail's own, dotted for nesting (``userIdentity.arn``).
- ``product: huaweicloud``, ``service: cts``: CTS traces. Field names are the
  trace's own (``trace_name``, ``user.name``, ``request``) or the CloudTrail names
  of ``CTS_FIELDS`` below, so that a rule written against CloudTrail's vocabulary
  reads the CTS field with the same meaning.

A rule only ever matches events of its own log source (the compiled pattern pins
the canonical ``format``). The field that names the service (``eventSource``,
``service_type``) and the one that names the operation (``eventName``,
``trace_name``) are read from the canonical ``service`` and ``operation``, which
hold the same values, so the rule index files a rule under its operations.
"""

from __future__ import annotations

from typing import Final

from daemon.events import FORMAT_CLOUDTRAIL, FORMAT_CTS

# (product, service) of a Sigma logsource -> the event format it describes.
LOGSOURCES: Final[dict[tuple[str, str], str]] = {
    ("aws", "cloudtrail"): FORMAT_CLOUDTRAIL,
    ("huaweicloud", "cts"): FORMAT_CTS,
}

# Fields read from the canonical fields instead of the raw record, per format.
CANONICAL_SIGMA_FIELDS: Final[dict[str, dict[str, str]]] = {
    FORMAT_CLOUDTRAIL: {"eventSource": "service", "eventName": "operation"},
    FORMAT_CTS: {"service_type": "service", "trace_name": "operation"},
}

# Fields whose canonical twin holds the same value whenever the record's is a non-empty
# string (``daemon.events.canonicalise``): a string comparison with one reads the canonical
# field, which costs no parse of the raw record and, for the cache key's fields (user_type,
# trace_type, code), is decided once per key instead of per event. Comparisons that could
# tell an empty or missing value apart (null, |exists, a regex that matches "") keep
# reading the record. user_agent and user_arn are match fields (daemon.events.MATCH_FIELDS).
# Names are after CTS_FIELDS for CTS rules.
CANONICAL_STRING_TWINS: Final[dict[str, dict[str, str]]] = {
    FORMAT_CLOUDTRAIL: {
        "userIdentity.type": "user_type",
        "eventType": "trace_type",
        "sourceIPAddress": "source_ip",
        "errorCode": "code",
        "errorMessage": "error",
        "awsRegion": "region",
        "userAgent": "user_agent",
        "userIdentity.arn": "user_arn",
    },
    FORMAT_CTS: {
        "user.type": "user_type",
        "trace_type": "trace_type",
        "source_ip": "source_ip",
        "code": "code",
        "message": "error",
        "user_agent": "user_agent",
    },
}

# CloudTrail field names accepted in CTS rules, and the CTS trace field each one reads.
CTS_FIELDS: Final[dict[str, str]] = {
    "eventSource": "service_type",
    "eventName": "trace_name",
    "eventType": "trace_type",
    "eventTime": "time",
    "eventID": "trace_id",
    "sourceIPAddress": "source_ip",
    "userAgent": "user_agent",
    "errorCode": "code",
    "errorMessage": "message",
    "awsRegion": "region",
    "requestParameters": "request",
    "responseElements": "response",
    "resources.type": "resource_type",
    "resources.ARN": "resource_id",
    "userIdentity.type": "user.type",
    "userIdentity.userName": "user.name",
    "userIdentity.principalId": "user.id",
    "userIdentity.accountId": "user.domain.id",
    "recipientAccountId": "domain_id",
}

# Sigma level -> trailkeeper severity. A rule without a level is medium.
LEVELS: Final[dict[str, str]] = {
    "informational": "info",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}

# Default for rules.sigma_categories: the first entry, in this order, whose tag a rule carries.
DEFAULT_TAG_CATEGORIES: Final[dict[str, str]] = {
    # Using someone else's account for compute (mining) is first of all a bill.
    "attack.t1496": "cost_sensitive",
    "attack.resource-hijacking": "cost_sensitive",
    "attack.impact": "high_risk",
    "attack.defense-evasion": "high_risk",
    # ATT&CK v18 split defense evasion into these two.
    "attack.defense-impairment": "high_risk",
    "attack.stealth": "high_risk",
    "attack.persistence": "high_risk",
    "attack.privilege-escalation": "high_risk",
    "attack.credential-access": "high_risk",
    "attack.initial-access": "high_risk",
    "attack.exfiltration": "high_risk",
    "attack.lateral-movement": "high_risk",
    "attack.execution": "high_risk",
}

# Default for rules.sigma_level_categories: hunting leads, reported but not key events.
DEFAULT_LEVEL_CATEGORIES: Final[dict[str, str]] = {
    "informational": "sigma_hunting",
    "low": "sigma_hunting",
}

DEFAULT_CATEGORY: Final = "service_sensitive"
