"""Huawei Cloud AK/SK request signing (SDK-HMAC-SHA256), for the CTS-compatible API.

The caller's signature is recomputed from the request as received, with the secret key
of the access key it names, and compared in constant time. The algorithm is the one the
Huawei Cloud SDKs and API Gateway document ("AK/SK-based authentication"): a canonical
request of the method, the URI (each path segment percent-encoded, ``~`` kept, ending
in ``/``), the query parameters sorted and encoded the same way, the signed headers
(lower-case name, trimmed value), their names, and the SHA-256 of the body; the string
to sign is ``SDK-HMAC-SHA256``, the ``X-Sdk-Date`` and that request's SHA-256; the
signature is the hex HMAC-SHA256 of it under the secret key itself.

Refused: another algorithm, a request time more than ``MAX_SKEW`` from now (a captured
request cannot be replayed later), ``host`` or ``x-sdk-date`` left out of the signed
headers, and a body whose hash is not the signed one (``UNSIGNED-PAYLOAD`` is accepted
for an empty body only).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from dataclasses import dataclass
from urllib.parse import quote, unquote

from daemon.api.signing import SignatureError, header_fields, signed_headers, uses

ALGORITHM = "SDK-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=15)
DATE_FORMAT = "%Y%m%dT%H%M%SZ"

MISMATCH = "the request signature does not match; check the access key (AK) and the secret key (SK)"

@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of an ``Authorization: SDK-HMAC-SHA256 ...`` header."""

    access_key_id: str
    signed_headers: tuple[str, ...]
    signature: str


def is_hwsign(header: str | None) -> bool:
    return uses(header, ALGORITHM)


def parse_authorization(header: str) -> Authorization:
    """Raises SignatureError when the header is not a well-formed SDK-HMAC-SHA256 one."""
    fields = header_fields(header, ALGORITHM, ("Access", "SignedHeaders", "Signature"))
    signed = signed_headers(fields["SignedHeaders"], ("host", "x-sdk-date"))
    return Authorization(fields["Access"], signed, fields["Signature"])


def _encode(text: str) -> str:
    return quote(text, safe="~")


def canonical_uri(raw_path: str) -> str:
    path = "/".join(_encode(segment) for segment in unquote(raw_path or "/").split("/"))
    return path if path.endswith("/") else path + "/"


def canonical_query(raw_query: str) -> str:
    """Parameters decoded, sorted by name then value, encoded again."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name.replace("+", " ")), unquote(value.replace("+", " "))))
    return "&".join(f"{_encode(n)}={_encode(v)}" for n, v in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    signed: tuple[str, ...],
    payload_hash: str,
) -> str:
    values: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in values:
            # Two values for one signed header: which one the client signed is unknowable.
            if lower in signed:
                raise SignatureError(f"signed header {lower!r} is sent more than once")
            continue
        values[lower] = value.strip()
    lines = []
    for name in signed:
        if name not in values:
            raise SignatureError(f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{values[name]}\n")
    return "\n".join(
        [
            method.upper(),
            canonical_uri(raw_path),
            canonical_query(raw_query),
            "".join(lines),
            ";".join(signed),
            payload_hash,
        ]
    )


def request_time(headers: list[tuple[str, str]]) -> dt.datetime:
    for name, value in headers:
        if name.lower() == "x-sdk-date":
            try:
                return dt.datetime.strptime(value.strip(), DATE_FORMAT).replace(tzinfo=dt.UTC)
            except ValueError as exc:
                raise SignatureError("X-Sdk-Date must be YYYYMMDDTHHMMSSZ") from exc
    raise SignatureError("a signed request needs an X-Sdk-Date header")


def sign(secret: str, creq: str, when: str) -> str:
    to_sign = f"{ALGORITHM}\n{when}\n{hashlib.sha256(creq.encode()).hexdigest()}"
    return hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def verify(
    auth: Authorization,
    secret: str,
    method: str,
    raw_path: str,
    raw_query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    now: dt.datetime,
) -> None:
    """Raises SignatureError unless the request carries a valid signature by ``secret``,
    made within ``MAX_SKEW`` of ``now``."""
    when = request_time(headers)
    if abs(now - when) > MAX_SKEW:
        raise SignatureError(
            "the request time is too far from the server's time (more than 15 minutes); check the clock"
        )
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = next((v.strip() for n, v in headers if n.lower() == "x-sdk-content-sha256"), None)
    if body and claimed is not None and claimed != body_hash:
        raise SignatureError(
            "X-Sdk-Content-Sha256 is not the SHA-256 of the body (unsigned bodies are refused)"
        )
    creq = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers, body_hash)
    expected = sign(secret, creq, when.strftime(DATE_FORMAT))
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(MISMATCH, f"signature mismatch for access key {auth.access_key_id}")
