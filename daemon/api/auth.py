"""Access control: bearer tokens with a role and tenant scope, and per-token rate limits.

Tokens live in the config only as SHA-256 hex digests (``sha256sum`` of the
token), never as plain text. Roles:

- ``producer``: ``POST /v1/events`` only, and only events of its tenants. A
  request holding any event of another tenant is refused whole with 403 and
  nothing from it is written, so a producer never has half a batch accepted.
- ``auditor``: reads (``GET /v1/events``, ``GET /v1/events/{id}``) of its tenants.
- ``admin``: everything, every tenant's events (dead-letter replay, reload).

``tenants: ["*"]`` means every tenant, including events with no tenant; any
other list is an exact set.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["producer", "auditor", "admin"]
Action = Literal["ingest", "read", "admin"]

# Which roles may perform which action.
ALLOWED: dict[str, frozenset[str]] = {
    "ingest": frozenset({"producer", "admin"}),
    "read": frozenset({"auditor", "admin"}),
    "admin": frozenset({"admin"}),
}

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class RateLimitConfig(_Strict):
    """A token bucket: ``requests_per_second`` sustained, ``burst`` at once."""

    requests_per_second: float = Field(default=50.0, gt=0)
    """Sustained requests per second a token may make."""
    burst: int = Field(default=100, ge=1)
    """Requests a token may make at once before the sustained rate applies."""


class TokenConfig(_Strict):
    """One bearer token: a name (appears in the audit trail), its SHA-256, a role and tenants."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
    """Names the caller in the audit trail (user.name of trailkeeper's own events)."""
    sha256: str
    """SHA-256 hex of the token (printf %s TOKEN | sha256sum), never the token itself."""
    role: Role
    """producer: ingest only; auditor: read; admin: everything (replay, reload)."""
    tenants: list[str] = Field(min_length=1)
    """Tenants (account or project ids) this token may send or read; ["*"]: every tenant."""
    rate_limit: RateLimitConfig | None = None
    """This token's own limit; null: auth.rate_limit applies."""

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        digest = value.strip().lower().removeprefix("sha256:")
        if not _HEX64.match(digest):
            raise ValueError(
                "expected the 64-hex-digit SHA-256 of the token (printf %s TOKEN | sha256sum), "
                "never the token itself"
            )
        return digest

    @field_validator("tenants")
    @classmethod
    def _tenants(cls, value: list[str]) -> list[str]:
        if "*" in value and len(value) > 1:
            raise ValueError('"*" (every tenant) cannot be combined with named tenants')
        if any(not t for t in value):
            raise ValueError("a tenant cannot be empty")
        return value


class AuthConfig(_Strict):
    """``auth:``: who may call the API."""

    tokens: list[TokenConfig] = Field(default_factory=list)
    """Bearer tokens. None at all: ingest is open (as before auth existed) and reads answer 401."""
    rate_limit: RateLimitConfig | None = Field(default_factory=RateLimitConfig)
    """Per-token request rate limit (429 with Retry-After beyond it); null: unlimited."""
    audit_tenant: str = Field(default="trailkeeper", min_length=1)
    """Tenant of the events recording API use; only tokens with it (or "*") read who queried."""

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        problems = []
        names: set[str] = set()
        digests: set[str] = set()
        for i, token in enumerate(self.tokens):
            if token.name in names:
                problems.append(f"tokens[{i}].name: token {token.name!r} is defined twice")
            if token.sha256 in digests:
                problems.append(f"tokens[{i}].sha256: the same token is defined twice")
            names.add(token.name)
            digests.add(token.sha256)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``tenants`` None means every tenant."""

    name: str
    role: str
    tenants: frozenset[str] | None
    rate_limit: RateLimitConfig | None

    def may(self, action: Action) -> bool:
        return self.role in ALLOWED[action]

    def sees(self, tenant: str | None) -> bool:
        return self.tenants is None or (tenant is not None and tenant in self.tenants)


@dataclass(frozen=True, slots=True)
class AuthFailure:
    reason: Literal["no_token", "bad_token"]
    message: str


class Authenticator:
    """Resolves ``Authorization: Bearer`` headers to principals.

    ``legacy_ingest_hashes`` are the spine's ``ingest.http.tokens``: each becomes a
    producer for every tenant named ``ingest-token-N``, so old configs keep working.
    With no token configured anywhere, ingest stays open (as before auth existed)
    and every read or admin endpoint refuses all callers.
    """

    def __init__(self, config: AuthConfig, legacy_ingest_hashes: list[str] | None = None) -> None:
        self.config = config
        self._by_digest: dict[str, Principal] = {}
        for token in config.tokens:
            tenants = None if token.tenants == ["*"] else frozenset(token.tenants)
            self._by_digest[token.sha256] = Principal(
                token.name, token.role, tenants, token.rate_limit or config.rate_limit
            )
        for i, digest in enumerate(legacy_ingest_hashes or []):
            d = digest.strip().lower().removeprefix("sha256:")
            self._by_digest.setdefault(d, Principal(f"ingest-token-{i}", "producer", None, config.rate_limit))
        self.open_ingest = not self._by_digest

    def authenticate(self, header: str | None) -> Principal | AuthFailure:
        if not header:
            return AuthFailure("no_token", "a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return AuthFailure("no_token", "the Authorization header must be 'Bearer <token>'")
        # Looking up a digest leaks nothing useful about any token: digests cannot be steered.
        principal = self._by_digest.get(hash_token(token))
        if principal is None:
            return AuthFailure("bad_token", "the bearer token is not valid")
        return principal


class RateLimiter:
    """Token buckets keyed by principal name. ``take`` returns 0 or the seconds to wait."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, last refill)

    def take(self, name: str, limit: RateLimitConfig | None) -> float:
        if limit is None:
            return 0.0
        now = self._clock()
        tokens, last = self._buckets.get(name, (float(limit.burst), now))
        tokens = min(float(limit.burst), tokens + (now - last) * limit.requests_per_second)
        if tokens >= 1.0:
            self._buckets[name] = (tokens - 1.0, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1.0 - tokens) / limit.requests_per_second
