"""The ``rules:`` section of the configuration."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field


class RulesConfig(BaseModel):
    """Which classification rules are in force.

    ``builtin`` turns the packs shipped with trailkeeper on or off; ``files`` are
    rule files (or directories of ``*.yaml``) loaded after them, in order, where a
    rule with an existing id replaces it; ``disable`` lists rule ids to switch off.
    """

    model_config = ConfigDict(extra="forbid")
    builtin: bool = True
    files: list[Path] = Field(default_factory=list)
    disable: list[str] = Field(default_factory=list)
