"""The ``s3`` store: AWS S3 and S3-compatible servers (Huawei OBS, MinIO, Ceph RGW).

Contract (shared with every store, see ``base.Store``): ``put`` is idempotent and
write-once. A key that already holds the same bytes is success; different bytes
raise ObjectConflict. With ``if_none_match`` the server enforces write-once
(``If-None-Match: *``); a 412 then means "something is there" and the existing
object is compared by SHA-256 before answering.

Errors are precise so that callers can tell what to do:
- StoreUnavailable (retryable): connection refused/reset, timeouts, 5xx,
  throttling. The store already retried with backoff before raising it.
- StorePermanentError: bad credentials, access denied, missing bucket, wrong
  region, clock skew. The message names the bucket, the endpoint and the fix;
  retrying will not help until an operator acts.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
import botocore.exceptions as bexc
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from daemon.stores.base import (
    ObjectConflict,
    ObjectInfo,
    ObjectMissing,
    StoreError,
    StorePermanentError,
    StoreUnavailable,
    check_key,
)
from daemon.telemetry import STORE_OPERATIONS, STORE_SECONDS, get_logger
from daemon.units import Duration

log = get_logger("store.s3")

T = TypeVar("T")

# S3 bucket names (and the looser names S3-compatible servers accept: dots, uppercase on Ceph).
_BUCKET = r"^[A-Za-z0-9][A-Za-z0-9._-]{1,254}$"

# Codes that mean "try again later". Anything 5xx is retryable too.
_RETRYABLE_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "ConditionalRequestConflict",
    }
)

_REGION_CODES: Final = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)

_CONNECTION_ERRORS: Final = (
    bexc.ConnectionError,
    bexc.HTTPClientError,
    bexc.IncompleteReadError,
    ConnectionError,
    TimeoutError,
    asyncio.TimeoutError,
)


Checksum = Literal["md5", "sha256"]


def _default_checksums() -> list[Checksum]:
    return ["md5", "sha256"]


class ObjectLockConfig(BaseModel):
    """WORM protection applied to every object written (the bucket must have Object Lock on)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    """COMPLIANCE: nobody, root included, can delete or shorten it early; GOVERNANCE: privileged users can."""
    retain_days: int = Field(ge=1, le=36500)
    """Each object's retain-until date is its write time plus this many days."""
    legal_hold: bool = False
    """Also place a legal hold on every object (kept until explicitly removed)."""


class S3RetryConfig(BaseModel):
    """Backoff for retryable failures inside one store call (the caller retries beyond it)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    attempts: int = Field(default=4, ge=1, le=20)
    """Tries per store call for retryable errors (5xx, throttling, network, timeouts)."""
    initial: Duration = 0.2
    """Scale of the first backoff (random exponential, full jitter)."""
    max: Duration = 5.0
    """Longest backoff between two tries."""


class S3StoreConfig(BaseModel):
    """An S3 bucket (or an S3-compatible server's bucket) and a key prefix inside it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
    type: Literal["s3"]
    """Store type."""
    bucket: str = Field(pattern=_BUCKET)
    """The bucket; it must exist (with Object Lock enabled when object_lock is set)."""
    prefix: str = ""
    """Key prefix inside the bucket, prepended to every key."""
    endpoint_url: str | None = None
    """S3-compatible server URL (OBS, MinIO, Ceph); null: AWS S3."""
    region: str | None = None
    """The bucket's region; null: the usual chain (AWS_REGION, profile)."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """path (host/bucket/key, MinIO and Ceph) or virtual (bucket.host/key); auto lets the SDK choose."""
    access_key_id: str | None = None
    """Access key; set with secret_access_key, or leave both null for env, profile or instance role."""
    secret_access_key: SecretStr | None = None
    """Secret key (use ${ENV}); never logged."""
    session_token: SecretStr | None = None
    """Session token for temporary credentials."""
    sse: Literal["AES256", "aws:kms"] | None = None
    """Server-side encryption of every object; null: the bucket's default."""
    kms_key_id: str | None = None
    """KMS key id or ARN with sse: aws:kms; null: the account's default key."""
    storage_class: str | None = Field(default=None, pattern=r"^[A-Z][A-Z_]*$")
    """Storage class (STANDARD_IA, GLACIER_IR, ...); null: the bucket's default."""
    checksum: list[Checksum] = Field(default_factory=_default_checksums)
    """Integrity headers sent with every write: Content-MD5 and/or x-amz-checksum-sha256."""
    object_lock: ObjectLockConfig | None = None
    """WORM retention applied to every object written; null: none."""
    if_none_match: bool = True
    """Write-once on the server (If-None-Match: *); falls back to HEAD-then-PUT where unsupported."""
    connect_timeout: Duration = 5.0
    """Time to establish a connection."""
    read_timeout: Duration = 30.0
    """Time to wait for a response."""
    max_connections: int = Field(default=10, ge=1, le=1000)
    """HTTP connections kept open to the server."""
    retries: S3RetryConfig = Field(default_factory=S3RetryConfig)
    """Backoff for retryable errors within one call (the archiver retries beyond it)."""

    @model_validator(mode="after")
    def _coherent(self) -> S3StoreConfig:
        problems = []
        if (self.access_key_id is None) != (self.secret_access_key is None):
            problems.append(
                "access_key_id and secret_access_key go together: set both, or neither to use "
                "the usual credential chain (environment, profile, instance role)"
            )
        if self.session_token is not None and self.access_key_id is None:
            problems.append("session_token needs access_key_id and secret_access_key")
        if self.kms_key_id is not None and self.sse != "aws:kms":
            problems.append("kms_key_id is only used with sse: aws:kms")
        if self.object_lock is not None and not self.checksum:
            problems.append(
                "object_lock needs a checksum (md5 or sha256): S3 refuses Object Lock writes "
                "without Content-MD5 or x-amz-checksum"
            )
        if self.endpoint_url is not None and not re.match(r"^https?://[^/\s]+", self.endpoint_url):
            problems.append(
                f"endpoint_url {self.endpoint_url!r} must be an http:// or https:// URL "
                "(for example https://obs.eu-de.otc.t-systems.com or http://minio:9000)"
            )
        prefix = self.prefix.strip("/")
        if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
            problems.append(f"prefix {self.prefix!r} has an empty, '.' or '..' part")
        if problems:
            raise ValueError("; ".join(problems))
        self.prefix = prefix
        return self


def _error_code(exc: bexc.ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    code = str(err.get("Code") or status)
    return code, status


class S3Store:
    """One bucket/prefix. Safe for concurrent use; the HTTP client is created on first use."""

    list_page_size = 1000

    def __init__(self, name: str, config: S3StoreConfig) -> None:
        self.name = name
        self.config = config
        self.bucket = config.bucket
        self._where = f"bucket {config.bucket!r} at {config.endpoint_url or 'AWS S3'}"
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        # Servers that answer 501 to If-None-Match get the HEAD-then-PUT fallback.
        self._conditional = config.if_none_match

    # --- plumbing ---------------------------------------------------------------------------

    def _full(self, key: str) -> str:
        check_key(self.name, key)
        return f"{self.config.prefix}/{key}" if self.config.prefix else key

    def _relative(self, full: str) -> str:
        if self.config.prefix:
            return full[len(self.config.prefix) + 1 :]
        return full

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                cfg = self.config
                aio_config = AioConfig(
                    s3={"addressing_style": cfg.addressing_style},
                    signature_version="s3v4",
                    connect_timeout=cfg.connect_timeout,
                    read_timeout=cfg.read_timeout,
                    max_pool_connections=cfg.max_connections,
                    # One retry layer (ours), so permanent errors surface at once and
                    # retryable ones are counted and backed off in one place.
                    retries={"total_max_attempts": 1, "mode": "standard"},
                    # Send only the checksums we choose: S3-compatible servers differ in
                    # which trailing checksums they accept; Content-MD5 and
                    # x-amz-checksum-sha256 headers are widely understood.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                )
                kwargs: dict[str, Any] = {"config": aio_config}
                if cfg.endpoint_url:
                    kwargs["endpoint_url"] = cfg.endpoint_url
                if cfg.region:
                    kwargs["region_name"] = cfg.region
                if cfg.access_key_id and cfg.secret_access_key:
                    kwargs["aws_access_key_id"] = cfg.access_key_id
                    kwargs["aws_secret_access_key"] = cfg.secret_access_key.get_secret_value()
                    if cfg.session_token:
                        kwargs["aws_session_token"] = cfg.session_token.get_secret_value()
                stack = AsyncExitStack()
                try:
                    client = await stack.enter_async_context(get_session().create_client("s3", **kwargs))
                except Exception:
                    await stack.aclose()
                    raise
                self._stack = stack
                self._client = client
        return self._client

    def _classify(self, exc: BaseException, action: str, key: str) -> StoreError:
        """Turn a botocore/aiohttp failure into the typed error the caller acts on."""
        what = f"{action} {key!r} in {self._where}" if key else f"{action} {self._where}"
        where = f"stores.{self.name}"
        if isinstance(exc, bexc.ClientError):
            code, status = _error_code(exc)
            message = exc.response.get("Error", {}).get("Message") or ""
            detail = f"{what}: {code} (HTTP {status}){': ' + message if message else ''}"
            if code in ("NoSuchKey", "NotFound") or (status == 404 and key and code == "404"):
                return ObjectMissing(self.name, f"no object at {key!r} in {self._where}")
            if code == "NoSuchBucket" or (status == 404 and not key):
                return StorePermanentError(
                    self.name,
                    f"{what}: bucket {self.bucket!r} does not exist",
                    hint=f"create bucket {self.bucket!r}"
                    + (" with Object Lock enabled" if self.config.object_lock else "")
                    + f", or fix {where}.bucket / {where}.endpoint_url",
                )
            if code == "InvalidAccessKeyId":
                return StorePermanentError(
                    self.name,
                    detail,
                    hint=f"the server does not know this access key: fix {where}.access_key_id "
                    "(or AWS_ACCESS_KEY_ID / the profile in use)",
                )
            if code == "SignatureDoesNotMatch":
                return StorePermanentError(
                    self.name,
                    detail,
                    hint=f"the secret key does not match the access key: fix "
                    f"{where}.secret_access_key; check {where}.region and addressing_style too",
                )
            if code in ("ExpiredToken", "InvalidToken", "TokenRefreshRequired"):
                return StorePermanentError(
                    self.name,
                    detail,
                    hint=f"the session token is expired or invalid: refresh {where}.session_token "
                    "or use a credential source that renews itself (instance role, profile)",
                )
            if code in _REGION_CODES:
                return StorePermanentError(
                    self.name, detail, hint=f"set {where}.region to the bucket's region"
                )
            if code == "RequestTimeTooSkewed":
                return StorePermanentError(
                    self.name, detail, hint="this host's clock is off: synchronise it (NTP)"
                )
            if code in ("AccessDenied", "AllAccessDisabled", "AccountProblem", "Forbidden") or (
                status == 403
            ):
                op = {
                    "write": "s3:PutObject",
                    "read": "s3:GetObject",
                    "delete": "s3:DeleteObject",
                    "list": "s3:ListBucket",
                    "check": "s3:ListBucket",
                }.get(action, f"s3 {action}")
                hint = (
                    f"grant {op} on {self.bucket!r} to these credentials in the IAM or bucket "
                    f"policy (check {where}.access_key_id / the credential chain)"
                )
                if action == "delete" and self.config.object_lock is not None:
                    hint = (
                        "the object is under Object Lock retention: it cannot be deleted "
                        "before its retain-until date"
                    )
                return StorePermanentError(self.name, detail, hint=hint)
            if code in _RETRYABLE_CODES or status >= 500 or status == 429:
                return StoreUnavailable(self.name, detail, hint="retrying with backoff")
            if code == "InvalidRequest" and "lock" in message.lower():
                return StorePermanentError(
                    self.name,
                    detail,
                    hint=f"bucket {self.bucket!r} has no Object Lock configuration: enable Object "
                    f"Lock on it, or remove {where}.object_lock",
                )
            return StorePermanentError(self.name, detail)
        if isinstance(exc, bexc.NoCredentialsError | bexc.PartialCredentialsError):
            return StorePermanentError(
                self.name,
                f"{what}: no usable credentials ({exc})",
                hint=f"set {where}.access_key_id and secret_access_key, or provide AWS "
                "credentials in the environment, a profile or an instance role",
            )
        if isinstance(exc, bexc.CredentialRetrievalError):
            return StoreUnavailable(self.name, f"{what}: cannot fetch credentials ({exc})")
        if isinstance(exc, _CONNECTION_ERRORS):
            return StoreUnavailable(
                self.name,
                f"{what}: {type(exc).__name__}: {exc}",
                hint=self._dns_hint(exc) or "the server is unreachable or slow; retrying with backoff",
            )
        if isinstance(exc, bexc.BotoCoreError):
            return StorePermanentError(self.name, f"{what}: {type(exc).__name__}: {exc}")
        return StoreUnavailable(self.name, f"{what}: {type(exc).__name__}: {exc}")

    def _dns_hint(self, exc: BaseException) -> str | None:
        """The fix for a host name that does not resolve, or None if ``exc`` is no DNS failure.

        Virtual-hosted addressing puts the bucket in the host name (``bucket.host``), which
        self-hosted servers and their DNS rarely serve: that case names addressing_style.
        """
        host: str | None = None
        dns = False
        seen: set[int] = set()
        cause: BaseException | None = exc
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, bexc.EndpointConnectionError):
                host = urlsplit(str(cause.kwargs.get("endpoint_url", ""))).hostname or host
            if isinstance(cause, aiohttp.ClientConnectorDNSError):
                dns, host = True, cause.host or host
            if isinstance(cause, socket.gaierror):
                dns = True
            cause = cause.__cause__ or cause.__context__
        if not dns:
            return None
        where = f"stores.{self.name}"
        if host and host.lower().startswith(f"{self.bucket.lower()}."):
            chosen = "virtual" if self.config.addressing_style == "virtual" else "auto (virtual-hosted here)"
            return (
                f"host {host!r} does not resolve: with addressing_style {chosen} the bucket is "
                f"part of the host name; set {where}.addressing_style: path for MinIO, Ceph and "
                "most self-hosted servers (or add a DNS name for each bucket)"
            )
        named = f"host {host!r}" if host else "the server's host name"
        return f"{named} does not resolve: check {where}.endpoint_url and this host's DNS"

    async def _call(self, operation: str, action: str, key: str, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(client)`` with retries for retryable failures; raise a typed StoreError."""
        retry = self.config.retries
        started = time.perf_counter()
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(StoreUnavailable),
                stop=stop_after_attempt(retry.attempts),
                wait=wait_random_exponential(multiplier=retry.initial, max=retry.max),
                reraise=True,
            ):
                with attempt:
                    try:
                        client = await self._get_client()
                        return await fn(client)
                    except StoreError:
                        raise
                    except Exception as exc:
                        err = self._classify(exc, action, key)
                        if isinstance(err, StoreUnavailable):
                            log.debug("store.s3.retry", store=self.name, error=str(err))
                        raise err from exc
        except StoreError as err:
            STORE_OPERATIONS.labels(self.name, operation, _result(err)).inc()
            raise
        finally:
            STORE_SECONDS.labels(self.name, operation).observe(time.perf_counter() - started)
        raise AssertionError("unreachable: tenacity either returns or raises")

    # --- the Store protocol -----------------------------------------------------------------

    def _put_params(self, key: str, data: bytes) -> dict[str, Any]:
        """put_object arguments: checksums, encryption, storage class and Object Lock."""
        sha = hashlib.sha256(data).digest()
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._full(key), "Body": data}
        cfg = self.config
        if "md5" in cfg.checksum:
            params["ContentMD5"] = base64.b64encode(hashlib.md5(data).digest()).decode()
        if "sha256" in cfg.checksum:
            params["ChecksumAlgorithm"] = "SHA256"
            params["ChecksumSHA256"] = base64.b64encode(sha).decode()
        if cfg.sse:
            params["ServerSideEncryption"] = cfg.sse
            if cfg.kms_key_id:
                params["SSEKMSKeyId"] = cfg.kms_key_id
        if cfg.storage_class:
            params["StorageClass"] = cfg.storage_class
        if cfg.object_lock:
            params["ObjectLockMode"] = cfg.object_lock.mode
            params["ObjectLockRetainUntilDate"] = dt.datetime.now(dt.UTC) + dt.timedelta(
                days=cfg.object_lock.retain_days
            )
            if cfg.object_lock.legal_hold:
                params["ObjectLockLegalHoldStatus"] = "ON"
        return params

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` once. Idempotent; ObjectConflict on different bytes.

        May raise StoreUnavailable (after retries), StorePermanentError, ObjectConflict.
        """
        full = self._full(key)
        sha = hashlib.sha256(data).digest()
        params = self._put_params(key, data)

        async def attempt(client: Any) -> None:
            if self._conditional:
                try:
                    await client.put_object(IfNoneMatch="*", **params)
                    return
                except bexc.ClientError as exc:
                    code, status = _error_code(exc)
                    if status == 412 or code == "PreconditionFailed":
                        await self._same_or_conflict(client, key, full, sha, len(data))
                        return
                    if status == 501 or code == "NotImplemented":
                        # The server cannot do conditional writes: fall back for good.
                        self._conditional = False
                        log.warning(
                            "store.s3.conditional_write_unsupported",
                            store=self.name,
                            bucket=self.bucket,
                            fallback="head_then_put",
                        )
                    else:
                        raise
            # Without server-side write-once, look first. Archive keys are deterministic
            # per writer, so two writers never race for one key.
            if await self._head(client, full) is not None:
                await self._same_or_conflict(client, key, full, sha, len(data))
                return
            await client.put_object(**params)

        await self._call("put", "write", key, attempt)
        STORE_OPERATIONS.labels(self.name, "put", "ok").inc()

    async def replace(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key``, overwriting. On a versioned or locked bucket a new version.

        May raise StoreUnavailable (after retries) or StorePermanentError.
        """
        params = self._put_params(key, data)

        async def attempt(client: Any) -> None:
            await client.put_object(**params)

        await self._call("put", "write", key, attempt)
        STORE_OPERATIONS.labels(self.name, "put", "ok").inc()

    async def _head(self, client: Any, full: str) -> dict[str, Any] | None:
        try:
            resp: dict[str, Any] = await client.head_object(
                Bucket=self.bucket, Key=full, ChecksumMode="ENABLED"
            )
        except bexc.ClientError as exc:
            code, status = _error_code(exc)
            if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
                return None
            raise
        return resp

    async def _same_or_conflict(self, client: Any, key: str, full: str, sha: bytes, size: int) -> None:
        """The key holds an object: success if it is ours byte for byte, else ObjectConflict."""
        head = await self._head(client, full)
        if head is None:
            # Deleted between the 412 and now: let the retry write it again.
            raise StoreUnavailable(self.name, f"{key!r} vanished during a conditional write")
        if int(head.get("ContentLength", -1)) != size:
            raise self._conflict(key, "a different size")
        stored_sha = head.get("ChecksumSHA256")
        if stored_sha and "-" not in stored_sha:
            if base64.b64decode(stored_sha) == sha:
                return
            raise self._conflict(key, "a different SHA-256")
        existing = await self._read(client, full)
        if hashlib.sha256(existing).digest() != sha:
            raise self._conflict(key, "different bytes")

    def _conflict(self, key: str, what: str) -> ObjectConflict:
        return ObjectConflict(
            self.name,
            f"{key!r} in {self._where} already holds an object with {what}",
            hint="archive keys are written once; a different object there means another "
            "writer uses the same writer_id, or the object was replaced",
        )

    async def _read(self, client: Any, full: str) -> bytes:
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": full}
        if "sha256" in self.config.checksum:
            # botocore verifies the body against the stored checksum when one is returned.
            params["ChecksumMode"] = "ENABLED"
        resp = await client.get_object(**params)
        async with resp["Body"] as body:
            data: bytes = await body.read()
        return data

    async def get(self, key: str) -> bytes:
        """Read a whole object. Raises ObjectMissing, StoreUnavailable, StorePermanentError."""
        full = self._full(key)
        data = await self._call("get", "read", key, lambda c: self._read(c, full))
        STORE_OPERATIONS.labels(self.name, "get", "ok").inc()
        return data

    async def head(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        resp = await self._call("head", "read", key, lambda c: self._head(c, full))
        STORE_OPERATIONS.labels(self.name, "head", "ok").inc()
        if resp is None:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["LastModified"].timestamp())

    async def _list_page(self, client: Any, prefix: str, token: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": self.list_page_size}
        if token:
            params["ContinuationToken"] = token
        resp: dict[str, Any] = await client.list_objects_v2(**params)
        return resp

    async def list(self, prefix: str = "") -> AsyncIterator[ObjectInfo]:
        """Every key under ``prefix`` (relative to the store's prefix), in byte order."""
        full_prefix = f"{self.config.prefix}/{prefix}" if self.config.prefix else prefix
        token: str | None = None
        while True:

            def page_fn(client: Any, t: str | None = token) -> Awaitable[dict[str, Any]]:
                return self._list_page(client, full_prefix, t)

            page = await self._call("list", "list", prefix, page_fn)
            for item in page.get("Contents", []):
                yield ObjectInfo(
                    self._relative(item["Key"]), int(item["Size"]), item["LastModified"].timestamp()
                )
            if not page.get("IsTruncated"):
                break
            token = page.get("NextContinuationToken")
            if not token:
                break
        STORE_OPERATIONS.labels(self.name, "list", "ok").inc()

    async def delete(self, key: str) -> None:
        """Delete ``key`` (idempotent). On a versioned bucket this adds a delete marker."""
        full = self._full(key)

        async def attempt(client: Any) -> None:
            await client.delete_object(Bucket=self.bucket, Key=full)

        await self._call("delete", "delete", key, attempt)
        STORE_OPERATIONS.labels(self.name, "delete", "ok").inc()

    async def check(self) -> None:
        """Raise StoreError unless the bucket is reachable, ours to use, and lockable if needed."""

        async def attempt(client: Any) -> None:
            await client.head_bucket(Bucket=self.bucket)
            if self.config.object_lock is not None:
                try:
                    resp = await client.get_object_lock_configuration(Bucket=self.bucket)
                except bexc.ClientError as exc:
                    code, _ = _error_code(exc)
                    if code != "ObjectLockConfigurationNotFoundError":
                        raise
                    resp = {}
                enabled = resp.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
                if enabled != "Enabled":
                    raise StorePermanentError(
                        self.name,
                        f"{self._where} does not have Object Lock enabled",
                        hint=f"create the bucket with Object Lock enabled, or remove "
                        f"stores.{self.name}.object_lock",
                    )

        await self._call("check", "check", "", attempt)

    async def lock_until(self, key: str) -> dt.datetime | None:
        """When ``key``'s current version may be deleted: its Object Lock retain-until date,
        far in the future under a legal hold, or None when nothing holds it (or it is gone).
        """
        full = self._full(key)
        head = await self._call("head", "read", key, lambda c: self._head(c, full))
        if head is None:
            return None
        if head.get("ObjectLockLegalHoldStatus") == "ON":
            return dt.datetime.max.replace(tzinfo=dt.UTC)
        until = head.get("ObjectLockRetainUntilDate")
        return until if isinstance(until, dt.datetime) else None

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def _result(err: StoreError) -> str:
    if isinstance(err, ObjectConflict):
        return "conflict"
    if isinstance(err, ObjectMissing):
        return "missing"
    if isinstance(err, StorePermanentError):
        return "permanent"
    return "unavailable"
