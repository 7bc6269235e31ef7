"""The ``rules:`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class RulesConfig(BaseModel):
    """Which key-operation classification rules are in force (reloaded on SIGHUP)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    builtin: bool = True
    """Load the packs shipped with trailkeeper (CIS AWS, AWS and CTS key operations)."""
    files: list[Path] = Field(default_factory=list)
    """Rule files or directories of *.yaml, loaded in order; a rule with a loaded id replaces it."""
    disable: list[str] = Field(default_factory=list)
    """Rule ids to switch off; `trailkeeper rules list` shows the ids in force."""
