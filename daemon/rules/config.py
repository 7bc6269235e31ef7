"""The ``rules:`` section of the configuration."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.rules.sigma_mapping import DEFAULT_CATEGORY, DEFAULT_LEVEL_CATEGORIES, DEFAULT_TAG_CATEGORIES

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_LEVELS = ("informational", "low", "medium", "high", "critical")


def _check_category(value: str, where: str) -> str:
    if not _CATEGORY_RE.match(value):
        raise ValueError(
            f"{where}: category {value!r}: lower-case letters, digits and _ "
            "(high_risk, cost_sensitive, service_sensitive, or your own)"
        )
    return value


class RulesConfig(BaseModel):
    """Which key-operation classification rules are in force (reloaded on SIGHUP)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    builtin: bool = True
    """Load the packs shipped with trailkeeper (CIS AWS, AWS and CTS key operations, and the
    Sigma pack unless `builtin_sigma` is false)."""
    builtin_sigma: bool = True
    """Load the built-in Sigma pack: SigmaHQ's CloudTrail rules (rules/cloud/aws, Detection Rule
    License 1.1), minus the operations another rule in force already flags without conditions.
    Only with `builtin: true`."""
    builtin_sigma_min_level: Literal["informational", "low", "medium", "high", "critical"] = "medium"
    """Built-in Sigma rules below this level are not loaded: SigmaHQ's low and informational
    CloudTrail rules are hunting leads (every assumed-role call, every ListBuckets...)."""
    files: list[Path] = Field(default_factory=list)
    """Rule files or directories of *.yaml, loaded in order; a rule with a loaded id replaces it."""
    sigma: list[Path] = Field(default_factory=list)
    """Sigma rule files or directories (searched recursively for *.yml, *.yaml) with logsource
    aws/cloudtrail or huaweicloud/cts; each rule gets the id `sigma.<its id>`. Check a folder with
    `trailkeeper rules import-sigma DIR`."""
    sigma_strict: bool = False
    """Refuse to load the rules when a Sigma rule cannot be compiled (an unsupported modifier,
    keywords, another log source...). False: such rules are left out and each is logged
    (`rules.sigma_refused`) with its id and the reason."""
    sigma_categories: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TAG_CATEGORIES))
    """Sigma tag -> category. The first entry, in this order, whose tag a rule carries gives its
    category. Replaces the default mapping as a whole."""
    sigma_level_categories: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_LEVEL_CATEGORIES))
    """Sigma level -> category, before the tags: by default informational and low rules (hunting
    leads) go to `sigma_hunting`, which is not a key category. `{}` lets tags decide for every level."""
    sigma_default_category: str = DEFAULT_CATEGORY
    """Category of a Sigma rule that neither its level nor its tags place."""
    disable: list[str] = Field(default_factory=list)
    """Rule or correlation ids to switch off; `trailkeeper rules list` shows the ids in force."""
    correlation_max_groups: int = Field(default=10_000, ge=1, le=1_000_000)
    """Groups (source addresses, principals...) each correlation tracks at once; past it the
    least recently seen group is dropped and counted (trailkeeper_correlation_groups_evicted_total)."""

    @field_validator("sigma_categories")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for tag, category in value.items():
            _check_category(category, f"tag {tag!r}")
        return value

    @field_validator("sigma_level_categories")
    @classmethod
    def _levels(cls, value: dict[str, str]) -> dict[str, str]:
        for level, category in value.items():
            if level not in _LEVELS:
                raise ValueError(f"level {level!r}: expected one of {', '.join(_LEVELS)}")
            _check_category(category, f"level {level!r}")
        return value

    @field_validator("sigma_default_category")
    @classmethod
    def _default(cls, value: str) -> str:
        return _check_category(value, "sigma_default_category")
