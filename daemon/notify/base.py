"""What every protocol module shares: the sender contract, delivery errors, HTTP posting."""

from __future__ import annotations

import email.utils
import ssl
import time
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from daemon.notify.escape import strip_controls
from daemon.notify.outbox import OutMessage

# Failure reasons label metrics: a closed set.
REASON_CONNECT = "connect"
REASON_TIMEOUT = "timeout"
REASON_TLS = "tls"
REASON_HTTP_4XX = "http_4xx"
REASON_HTTP_5XX = "http_5xx"
REASON_THROTTLED = "throttled"
REASON_REJECTED = "rejected"  # the platform answered 200 with an error code
REASON_SMTP = "smtp"
REASON_SNS = "sns"
REASON_MAX_AGE = "max_age"


class DeliveryError(Exception):
    """One attempt failed. ``retryable`` False means retrying cannot help (bad URL, 4xx, auth)."""

    def __init__(
        self, reason: str, detail: str, *, retryable: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.retry_after = retry_after


class Sender(Protocol):
    """Delivers one message. Raises DeliveryError; must not raise anything else for endpoint
    trouble. ``send`` may be called again with the same message (at-least-once)."""

    async def send(self, msg: OutMessage) -> None: ...

    async def close(self) -> None: ...


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def ssl_context(
    verify: bool, ca_file: Path | None = None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """TLS verification is on unless the operator turns it off; optional client certificate."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key) if key else None)
    return ctx


class HttpPoster:
    """One aiohttp session per subscription; classifies responses into DeliveryErrors."""

    def __init__(self, timeout: float, ctx: ssl.SSLContext | None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.ctx = ctx
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ctx if self.ctx is not None else True, limit=8)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout)
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        """POST; returns (status, body) for 2xx, raises DeliveryError otherwise."""
        try:
            async with self.session().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                data = await resp.read()
                status = resp.status
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientSSLError as exc:
            raise DeliveryError(REASON_TLS, f"TLS with {_host(url)} failed: {exc}", retryable=True) from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            if isinstance(exc, aiohttp.ServerTimeoutError):
                raise DeliveryError(REASON_TIMEOUT, f"{_host(url)} timed out", retryable=True) from exc
            raise DeliveryError(
                REASON_CONNECT, f"cannot reach {_host(url)}: {exc or type(exc).__name__}", retryable=True
            ) from exc
        except TimeoutError as exc:
            raise DeliveryError(
                REASON_TIMEOUT, f"{_host(url)} did not answer in time", retryable=True
            ) from exc
        if 200 <= status < 300:
            return status, data
        snippet = data[:200].decode("utf-8", "replace")
        detail = f"{_host(url)} answered HTTP {status}: {snippet}"
        if status == 429:
            raise DeliveryError(REASON_THROTTLED, detail, retryable=True, retry_after=retry_after)
        if status == 408 or status >= 500:
            raise DeliveryError(
                REASON_HTTP_5XX if status >= 500 else REASON_TIMEOUT,
                detail,
                retryable=True,
                retry_after=retry_after,
            )
        # Other 4xx (and 3xx: redirects are not followed, a signed POST must not be re-sent
        # elsewhere) cannot succeed by retrying: park it for an operator.
        raise DeliveryError(REASON_HTTP_4XX, detail, retryable=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _host(url: str) -> str:
    """The endpoint without its path or query (those often carry tokens)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def json_headers(extra: dict[str, str]) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "trailkeeper", **extra}


def text_of(msg: OutMessage) -> tuple[str, str, dict[str, Any]]:
    """(title, text, document) of a stored message. The title is one line and neither carries
    control characters (NUL and the like), whatever rendered them."""
    body = msg.body
    title = strip_controls(str(body.get("title", "")), one_line=True).strip()
    return title, strip_controls(str(body.get("text", ""))), dict(body.get("doc", {}))
