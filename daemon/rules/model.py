"""What a classification rule is, and what a match reports."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final

from daemon.rules.pattern import Pattern

SEVERITIES: Final = ("info", "low", "medium", "high", "critical")
# The categories of the key-event practice; users may add their own next to these.
KEY_CATEGORIES: Final = ("high_risk", "cost_sensitive", "service_sensitive")


_CATEGORY_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def header_problems(raw: dict[str, Any], where: str, known: tuple[str, ...]) -> list[str]:
    """What is wrong with the keys, ``id``, ``category``, ``severity`` and ``description``
    of a rule or correlation document (the parts the two have in common)."""
    problems = [f"{where}: {key}: unknown key (known: {', '.join(known)})" for key in raw if key not in known]
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _ID_RE.match(rule_id):
        problems.append(f"{where}: id: required; letters, digits and . _ : - (up to 128 characters)")
    category = raw.get("category")
    if not isinstance(category, str) or not _CATEGORY_RE.match(category):
        problems.append(
            f"{where}: category: required; lower-case letters, digits and _ "
            "(high_risk, cost_sensitive, service_sensitive, or your own)"
        )
    if raw.get("severity") not in SEVERITIES:
        problems.append(f"{where}: severity: expected one of {', '.join(SEVERITIES)}")
    if not isinstance(raw.get("description", ""), str):
        problems.append(f"{where}: description: expected a string")
    return problems


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity) if severity in SEVERITIES else -1


def summarise(matches: list[Match]) -> tuple[str, str]:
    """The one (category, severity) an index row keeps for an event with several matches.

    The category is the first of KEY_CATEGORIES that any match has (high-risk before cost
    before service), else that of the most severe match: an event that is a security risk
    stays under ``category=high_risk`` even when a cost rule rates it more severe (a refused
    RunInstances of a large instance), so filtering by the risk category never hides it.
    The severity is the highest of all matches. ``matches`` must not be empty.
    """
    severity = max((m.severity for m in matches), key=severity_rank)
    present = {m.category for m in matches}
    for category in KEY_CATEGORIES:
        if category in present:
            return category, severity
    top = max(matches, key=lambda m: severity_rank(m.severity))
    return top.category, severity


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that matched one event. Immutable: the engine hands out shared instances."""

    rule: str
    category: str
    severity: str
    description: str
    tags: tuple[str, ...] = ()

    def brief(self) -> dict[str, str]:
        """The short form printed by ``trailkeeper rules match``."""
        return {"rule": self.rule, "category": self.category, "severity": self.severity}

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "description": self.description,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: its identity, its pattern, and the example events it carries.

    ``source`` names where the rule was defined (a pack name or a file path), for
    ``rules list`` and for error messages.
    """

    id: str
    category: str
    severity: str
    description: str
    pattern: Pattern
    tags: tuple[str, ...] = ()
    source: str = ""
    examples_match: tuple[dict[str, Any], ...] = ()
    examples_no_match: tuple[dict[str, Any], ...] = ()
    match: Match = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "match", Match(self.id, self.category, self.severity, self.description, self.tags)
        )
