"""The ``integrity:`` section of the YAML config."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from daemon.units import Duration


class WitnessConfig(BaseModel):
    """A C2SP tlog-witness that cosigns each new checkpoint (``trailkeeper witness`` or any other)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    url: AnyHttpUrl
    """Base URL; the daemon POSTs to <url>/add-checkpoint."""
    vkey: str = Field(min_length=1)
    """The witness's public key (name+keyid+base64, type 0x04), as `trailkeeper witness init` prints it."""
    timeout: Duration = 10.0
    """Per request."""

    @field_validator("vkey")
    @classmethod
    def _vkey(cls, v: str) -> str:
        from daemon.integrity.checkpoint import NoteError
        from daemon.integrity.cosignature import parse_cosigner_vkey

        try:
            parse_cosigner_vkey(v)
        except NoteError as exc:
            raise ValueError(str(exc)) from exc
        return v.strip()


class IntegrityConfig(BaseModel):
    """Signing keys, digest cadence and where the Merkle tree state lives."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    keys_dir: Path = Path("var/keys")
    """Signing keys; the embedded default generates one here on first run (mode 0600)."""
    key_file: Path | None = None
    """Production: an unencrypted PEM Ed25519 private key file (openssl genpkey -algorithm ed25519), e.g. a
    mounted Secret; only read, so it may be read-only. Its public half and rotations are recorded in
    keys_dir (on the data volume). Read when the config is loaded. Null (or empty): keys_dir's own key."""
    origin: str = Field(default="trailkeeper", min_length=1, max_length=200)
    """The signer name on every note; also the first part of the checkpoint origin."""
    digest_interval: Duration = 3600.0
    """How often a signed digest lists the files of the interval (also written at shutdown)."""
    state_dir: Path | None = None
    """Leaf hashes and digest chain state; null: <journal.dir>/integrity."""
    trust_file: Path | None = None
    """Pinned keys for `trailkeeper validate` (written by `trailkeeper keys export-public`); keep it off
    the archive host. Without it (or --trust / --public-key) validate refuses to trust keys_dir."""
    checkpoint_stores: list[str] = Field(default_factory=list)
    """Extra stores (names from `stores`) that also get every published checkpoint, for example a locked
    bucket in another account: validate reads them too, so a rolled-back archive host is caught."""
    witnesses: list[WitnessConfig] = Field(default_factory=list)
    """Witnesses that cosign each digest interval's checkpoint; validate --witness-key checks their work."""
    witness_alert_after: int = Field(default=3, ge=1)
    """Intervals without a cosignature from a witness before /readyz and the metrics report it."""

    @field_validator("key_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, v: object) -> object:
        # "${TRAILKEEPER_KEY_FILE:-}" with the variable unset: no key file, not Path(".").
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("key_file")
    @classmethod
    def _key_file(cls, v: Path | None) -> Path | None:
        # Checked at load so check-config and run refuse a missing or empty Secret alike.
        from daemon.integrity.keys import KeyError_, read_key_file

        if v is not None:
            try:
                read_key_file(v)
            except KeyError_ as exc:
                raise ValueError(str(exc)) from exc
        return v

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
