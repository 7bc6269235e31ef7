"""The ``integrity:`` section of the YAML config."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.units import Duration


class IntegrityConfig(BaseModel):
    """Signing keys, digest cadence and where the Merkle tree state lives."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    keys_dir: Path = Path("var/keys")
    """Signing keys; the embedded default generates one here on first run (mode 0600)."""
    key_file: Path | None = None
    """Production: a PEM Ed25519 private key file (the path may come from ${ENV})."""
    origin: str = Field(default="trailkeeper", min_length=1, max_length=200)
    """The signer name on every note; also the first part of the checkpoint origin."""
    digest_interval: Duration = 3600.0
    """How often a signed digest lists the files of the interval (also written at shutdown)."""
    state_dir: Path | None = None
    """Leaf hashes and digest chain state; null: <journal.dir>/integrity."""

    @field_validator("origin")
    @classmethod
    def _origin(cls, v: str) -> str:
        if re.search(r"[\s+]", v):
            raise ValueError("origin must not contain spaces or '+' (it names the signing key)")
        return v

    @field_validator("digest_interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v < 1:
            raise ValueError("digest_interval must be at least 1s")
        return v
