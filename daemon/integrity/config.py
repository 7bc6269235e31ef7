"""The ``integrity:`` section of the YAML config."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.units import Duration


class IntegrityConfig(BaseModel):
    """Signing keys, digest cadence and where the Merkle tree state lives."""

    model_config = ConfigDict(extra="forbid")
    # Embedded default: a key generated on first run, kept here with mode 0600.
    keys_dir: Path = Path("var/keys")
    # Production: a PEM Ed25519 private key file (the path may come from ${ENV}).
    key_file: Path | None = None
    # The signer name on every note; also the checkpoint origin's first part.
    origin: str = Field(default="trailkeeper", min_length=1, max_length=200)
    digest_interval: Duration = 3600.0
    # Leaf hashes and digest chain state; default <journal.dir>/integrity.
    state_dir: Path | None = None

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
