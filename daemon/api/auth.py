"""Access control: bearer tokens with a role and tenant scope, and per-token rate limits.

Tokens live in the config only as SHA-256 hex digests (``sha256sum`` of the
token), never as plain text. Roles:

- ``producer``: ``POST /v1/events`` only, and only events of its tenants. A
  request holding any event of another tenant is refused whole with 403 and
  nothing from it is written, so a producer never has half a batch accepted.
- ``auditor``: reads (``GET /v1/events``, ``GET /v1/events/{id}``) of its tenants.
- ``admin``: everything, every tenant's events (dead-letter replay, reload).

``tenants: ["*"]`` means every tenant, including events with no tenant; any
other list is an exact set. No token, whatever its tenants, may write into the
audit tenant (``audit_tenant``): that tenant holds trailkeeper's own records.

Tokens come from ``auth.tokens`` and from ``auth.tokens_file`` (the same list in
a file of its own, for a mounted Kubernetes Secret or a file only root reads);
any string of the config may also be ``${ENV}``. A token may carry ``expires``:
from then on it is refused like an unknown token (401), and only the audit
record says it expired. ``trailkeeper tokens create`` makes a token and its
config entry; ``trailkeeper tokens hash`` prints the digest of one.

Failed authentication is throttled per source address and per unknown token
(``auth.failures``, see daemon.api.throttle) and audited in summaries (see
daemon.api.audit), so a flood of bad requests costs bounded CPU and journal space.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.api import hwsign, sigv4
from daemon.api.signing import SignatureError
from daemon.api.throttle import FailureThrottle, SourceResolver, parse_networks
from daemon.intake import DEFAULT_AUDIT_TENANT
from daemon.telemetry import get_logger
from daemon.units import Duration

log = get_logger("api.auth")

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
    expires: dt.datetime | None = None
    """When the token stops working (ISO 8601, e.g. 2026-06-30T00:00:00Z; a date means its midnight,
    no zone means UTC); null: never. An expired token is answered 401 like an unknown one; only the
    audit record says it expired.
    """

    @field_validator("expires")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value

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


class FailureLimitConfig(_Strict):
    """A token bucket for failed authentication: ``requests_per_second`` sustained, ``burst`` at once."""

    requests_per_second: float = Field(default=1.0, gt=0)
    """Failed authentications per second a source address (or one unknown token) may make once its
    burst is spent.
    """
    burst: int = Field(default=100, ge=1)
    """Failed authentications a source address (or one unknown token) may make at once."""


class FailureConfig(_Strict):
    """``auth.failures``: throttling of failed authentication, and its audit in summaries.

    Requests without a valid token draw on the bucket of their source address and, with an
    unknown token, on that token's (by its SHA-256); valid tokens never draw on these buckets.
    Refusals (401, and 429 of any kind) are audited per source address and kind in windows:
    the first few one by one, at once; the rest counted in one summary event when the window
    closes (and at shutdown).
    """

    rate_limit: FailureLimitConfig | None = Field(default_factory=FailureLimitConfig)
    """Failed authentications allowed per source address and per unknown token (429 with Retry-After
    beyond); null: unlimited.
    """
    max_tracked: int = Field(default=10_000, ge=1)
    """Buckets held in memory at most, least recently used dropped first (a dropped bucket starts full
    again, as a new address would).
    """
    audit_window: Duration = Field(default=60.0, gt=0)
    """Refusals of one source address and kind within this time share one summary audit event (count,
    first and last time).
    """
    audit_first: int = Field(default=5, ge=0)
    """Refusals of each window recorded one by one, at once, before the rest are only counted in the
    window's summary.
    """
    audit_max_sources: int = Field(default=100, ge=1)
    """Windows open at once at most; refusals from further source addresses are only counted, in one
    window per kind for all other addresses.
    """


class AccessKeyConfig(_Strict):
    """One AWS-style access key for the CloudTrail-compatible API (SigV4-signed requests): an id,
    its secret, and like a token a name, a role and tenants."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
    """Names the caller in the audit trail, like a token's name (unique across tokens and keys)."""
    id: str = Field(pattern=r"^[A-Z0-9]{16,128}$")
    """The access key id clients send (aws_access_key_id): 16 to 128 upper-case letters or digits."""
    secret: str = Field(min_length=16)
    """The secret access key. SigV4 signs with the secret itself, so it must be here: write it as
    ${ENV} (or mount it through auth.tokens_file's Secret) rather than in the file."""
    role: Role
    """producer, auditor or admin, as for tokens."""
    tenants: list[str] = Field(min_length=1)
    """Tenants this key may read or send; ["*"]: every tenant."""
    rate_limit: RateLimitConfig | None = None
    """This key's own limit; null: auth.rate_limit applies."""


class AuthConfig(_Strict):
    """``auth:``: who may call the API."""

    tokens: list[TokenConfig] = Field(default_factory=list)
    """Bearer tokens. None at all: reads and admin answer 401, and ingest is open only while
    auth.anonymous_ingest is true."""
    tokens_file: Path | None = None
    """A YAML file with more tokens: a list like auth.tokens (or {tokens: [...]}), e.g. a mounted
    Kubernetes Secret. Read at start and by check-config; a relative path is from the working
    directory; no ${ENV} inside it. Null (or an empty string, so "${VAR:-}" can leave it unset): only
    auth.tokens.
    """
    anonymous_ingest: bool = True
    """With no token configured anywhere (auth.tokens, auth.tokens_file, ingest.http.tokens), accept
    POST /v1/events without a token, for a first local try. false: every request needs a valid token,
    and with no token at all the daemon starts but answers 401 to everything. Once any token exists,
    ingest needs one whatever this says.
    """
    rate_limit: RateLimitConfig | None = Field(default_factory=RateLimitConfig)
    """Per-token request rate limit (429 with Retry-After beyond it); null: unlimited."""
    audit_tenant: str = Field(default=DEFAULT_AUDIT_TENANT, min_length=1)
    """Tenant of the events recording API use; only tokens with it (or "*") read who queried. Reserved:
    no producer, "*" included, may write events into it, on any ingest path.
    """
    failures: FailureConfig = Field(default_factory=FailureConfig)
    """Throttling of failed authentication, and summarised audit of refusals (401, 429)."""
    access_keys: list[AccessKeyConfig] = Field(default_factory=list)
    """AWS-style access keys for the CloudTrail-compatible API (POST / with SigV4, as the AWS CLI
    and SDKs send); empty: that API refuses every caller."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or CIDR networks of reverse proxies whose X-Forwarded-For names the client; empty: the
    peer address is the source and X-Forwarded-For is ignored.
    """

    _file_tokens: list[TokenConfig] = PrivateAttr(default_factory=list)

    @field_validator("tokens_file", mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        # "${TRAILKEEPER_TOKENS_FILE:-}" with the variable unset: no file, rather than Path("."),
        # which would name the working directory.
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        parse_networks(value)
        return value

    @model_validator(mode="after")
    def _unique(self) -> AuthConfig:
        self._file_tokens = _read_tokens_file(self.tokens_file) if self.tokens_file is not None else []
        problems = []
        names: set[str] = set()
        digests: set[str] = set()
        where = [f"tokens[{i}]" for i in range(len(self.tokens))]
        where += [f"tokens_file {self.tokens_file}: [{i}]" for i in range(len(self._file_tokens))]
        for at, token in zip(where, self.all_tokens(), strict=True):
            if token.name in names:
                problems.append(f"{at}.name: token {token.name!r} is defined twice")
            if token.sha256 in digests:
                problems.append(f"{at}.sha256: the same token is defined twice")
            names.add(token.name)
            digests.add(token.sha256)
        key_ids: set[str] = set()
        for i, key in enumerate(self.access_keys):
            if key.name in names:
                problems.append(f"access_keys[{i}].name: {key.name!r} is already a token or key name")
            if key.id in key_ids:
                problems.append(f"access_keys[{i}].id: access key {key.id} is defined twice")
            names.add(key.name)
            key_ids.add(key.id)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def all_tokens(self) -> list[TokenConfig]:
        """``tokens`` then the tokens of ``tokens_file``, as read when the config was loaded."""
        return [*self.tokens, *self._file_tokens]


def _read_tokens_file(path: Path) -> list[TokenConfig]:
    """The token entries of ``auth.tokens_file``. Raises ValueError naming the file and entry."""
    label = f"tokens_file {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"{label}: cannot read the file: {reason}") from exc
    try:
        doc: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{label}: not valid YAML: {exc}") from exc
    if doc is None:
        return []
    if isinstance(doc, dict) and set(doc) == {"tokens"}:
        doc = doc["tokens"]
    if not isinstance(doc, list):
        raise ValueError(f"{label}: expected a list of tokens like auth.tokens (or tokens: [...])")
    tokens: list[TokenConfig] = []
    problems: list[str] = []
    for i, entry in enumerate(doc):
        try:
            tokens.append(TokenConfig.model_validate(entry))
        except ValidationError as exc:
            for err in exc.errors():
                loc = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                problems.append(f"{label}: [{i}]{loc}: {msg}")
    if problems:
        raise ValueError("; ".join(problems))
    return tokens


def hash_token(token: str) -> str:
    """The SHA-256 hex of a token: what auth.tokens[].sha256 holds."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. ``tenants`` None means every tenant; ``expires_at`` epoch seconds."""

    name: str
    role: str
    tenants: frozenset[str] | None
    rate_limit: RateLimitConfig | None
    expires_at: float | None = None

    def may(self, action: Action) -> bool:
        return self.role in ALLOWED[action]

    def sees(self, tenant: str | None) -> bool:
        return self.tenants is None or (tenant is not None and tenant in self.tenants)


FailureReason = Literal["no_token", "bad_token", "expired_token"]


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a request is not authenticated.

    ``message`` is the answer's; ``detail`` goes to the audit record only (an expired token
    gets the answer an unknown one gets). ``digest`` is the SHA-256 of a presented token,
    ``principal`` the token's owner when the token is known but expired.
    """

    reason: FailureReason
    message: str
    detail: str | None = None
    digest: str | None = None
    principal: Principal | None = None


class Authenticator:
    """Resolves ``Authorization: Bearer`` headers to principals.

    ``legacy_ingest_hashes`` are the spine's ``ingest.http.tokens``: each becomes a
    producer for every tenant named ``ingest-token-N``, so old configs keep working.
    With no token configured anywhere, every read or admin endpoint refuses all
    callers, and ingest is open only if ``auth.anonymous_ingest`` allows it.
    """

    def __init__(
        self,
        config: AuthConfig,
        legacy_ingest_hashes: list[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._clock = clock
        self._by_digest: dict[str, Principal] = {}
        now = clock()
        for token in config.all_tokens():
            tenants = None if token.tenants == ["*"] else frozenset(token.tenants)
            expires_at = token.expires.timestamp() if token.expires is not None else None
            self._by_digest[token.sha256] = Principal(
                token.name, token.role, tenants, token.rate_limit or config.rate_limit, expires_at
            )
            if expires_at is not None and expires_at <= now:
                log.warning("auth.token_expired", token=token.name, expired=_iso(expires_at))
            elif expires_at is not None and expires_at - now < 7 * 86400:
                log.warning("auth.token_expires_soon", token=token.name, expires=_iso(expires_at))
        for i, digest in enumerate(legacy_ingest_hashes or []):
            d = digest.strip().lower().removeprefix("sha256:")
            self._by_digest.setdefault(d, Principal(f"ingest-token-{i}", "producer", None, config.rate_limit))
        self._by_key_id: dict[str, tuple[str, Principal]] = {}
        for key in config.access_keys:
            tenants = None if key.tenants == ["*"] else frozenset(key.tenants)
            self._by_key_id[key.id] = (
                key.secret,
                Principal(key.name, key.role, tenants, key.rate_limit or config.rate_limit),
            )
        self.open_ingest = not self._by_digest and config.anonymous_ingest
        if self.open_ingest:
            log.warning(
                "auth.ingest_open",
                detail="no token is configured: POST /v1/events accepts events from anyone who can reach it",
                action="add tokens (auth.tokens or auth.tokens_file), or set auth.anonymous_ingest: false",
            )
        elif not self._by_digest:
            log.warning(
                "auth.no_tokens",
                detail="no token is configured and auth.anonymous_ingest is false: every API request "
                "is refused with 401",
                action="make a token with `trailkeeper tokens create --role producer --tenant '*'`, put "
                "its entry under auth.tokens or into the file named by auth.tokens_file, and restart",
            )
        self.sources = SourceResolver(parse_networks(config.trusted_proxies))
        limit = config.failures.rate_limit
        self.failures = FailureThrottle(
            limit.requests_per_second if limit is not None else None,
            limit.burst if limit is not None else 1,
            config.failures.max_tracked,
            monotonic,
        )

    def client_address(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The request's source address: the peer, or the client a trusted proxy forwarded."""
        return self.sources.client(peer, forwarded_for)

    def throttle(self, failure: AuthFailure, address: str) -> float:
        """Count a failed authentication; 0 within the limits, else seconds to wait (answer 429)."""
        return self.failures.take(address, failure.digest)

    def authenticate(self, header: str | None) -> Principal | AuthFailure:
        if not header:
            return AuthFailure("no_token", "a bearer token is required (Authorization: Bearer <token>)")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return AuthFailure("no_token", "the Authorization header must be 'Bearer <token>'")
        # Looking up a digest leaks nothing useful about any token: digests cannot be steered.
        digest = hash_token(token)
        principal = self._by_digest.get(digest)
        if principal is None:
            return AuthFailure("bad_token", _INVALID, digest=digest)
        if principal.expires_at is not None and self._clock() >= principal.expires_at:
            detail = f"token {principal.name!r} expired at {_iso(principal.expires_at)}"
            return AuthFailure("expired_token", _INVALID, detail, digest, principal)
        return principal


    def authenticate_signed(
        self,
        header: str,
        method: str,
        raw_path: str,
        raw_query: str,
        headers: list[tuple[str, str]],
        body: bytes,
    ) -> Principal | AuthFailure:
        """A signed request: SigV4 (``Authorization: AWS4-HMAC-SHA256 ...``) or Huawei Cloud's
        AK/SK signing (``SDK-HMAC-SHA256 ...``). The principal of its access key when the
        signature, recomputed with that key's secret, matches."""
        scheme: Any = hwsign if hwsign.is_hwsign(header) else sigv4
        try:
            auth = scheme.parse_authorization(header)
        except SignatureError as exc:
            return AuthFailure("no_token", exc.public)
        # The failure throttle keys unknown credentials by a digest, as for tokens.
        digest = hash_token(f"sigv4:{auth.access_key_id}")
        found = self._by_key_id.get(auth.access_key_id)
        if found is None:
            return AuthFailure(
                "bad_token", scheme.MISMATCH, f"unknown access key {auth.access_key_id[:128]}", digest=digest
            )
        secret, principal = found
        try:
            now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
            scheme.verify(auth, secret, method, raw_path, raw_query, headers, body, now)
        except SignatureError as exc:
            return AuthFailure("bad_token", exc.public, f"{principal.name}: {exc}", digest=digest)
        return principal


# One answer for an unknown key id and a wrong signature: it must not tell which key ids exist.
_INVALID_KEY = sigv4.MISMATCH

# One answer for unknown and expired tokens: the answer must not tell which tokens exist.
_INVALID = "the bearer token is not valid"


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat().replace("+00:00", "Z")


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
