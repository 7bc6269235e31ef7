"""AWS Signature Version 4 verification, for the CloudTrail-compatible API.

The caller's signature is recomputed from the request as received (method, path, query,
the headers it lists as signed, the SHA-256 of the body) with the secret of the access key
it names, and compared in constant time. The algorithm is AWS's published one
(https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_sigv-create-signed-request.html);
what a client such as the AWS CLI or an SDK sends verifies unchanged.

Refused: another algorithm, a credential scope whose date is not the request's, a request
time more than ``MAX_SKEW`` from now (a captured request cannot be replayed later), a
``host`` header left out of the signed ones, and a signed ``x-amz-content-sha256`` that is
not the body's hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, unquote

from daemon.api.signing import SignatureError, header_fields, signed_headers, uses

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = dt.timedelta(minutes=15)  # AWS's own window for a signed request's time

MISMATCH = "the request signature does not match; check the access key id and the secret access key"

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Authorization:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    access_key_id: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def is_sigv4(header: str | None) -> bool:
    return uses(header, ALGORITHM)


def parse_authorization(header: str) -> Authorization:
    """Raises SignatureError when the header is not a well-formed SigV4 authorization."""
    fields = header_fields(header, ALGORITHM, ("Credential", "SignedHeaders", "Signature"))
    scope = fields["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise SignatureError("the credential scope must be <key id>/<date>/<region>/<service>/aws4_request")
    signed = signed_headers(fields["SignedHeaders"], ("host",))
    return Authorization(scope[0], scope[1], scope[2], scope[3], signed, fields["Signature"])


def _uri_encode(text: str) -> str:
    return quote(text, safe="-_.~")


def canonical_query(raw_query: str) -> str:
    """Query parameters decoded, encoded again as SigV4 wants, sorted by name then value."""
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append(
            (_uri_encode(unquote(name.replace("+", " "))), _uri_encode(unquote(value.replace("+", " "))))
        )
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def canonical_request(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    signed: tuple[str, ...],
    payload_hash: str,
) -> str:
    """The canonical request of AWS's algorithm. ``headers`` are (name, value) pairs as
    received (a name may repeat); ``raw_path`` is the path as sent, already URI-encoded
    (non-S3 services sign it so)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    lines = []
    for name in signed:
        if name not in values:
            raise SignatureError(f"signed header {name!r} is missing from the request")
        lines.append(f"{name}:{','.join(values[name])}\n")
    path = raw_path or "/"
    return "\n".join(
        [method.upper(), path, canonical_query(raw_query), "".join(lines), ";".join(signed), payload_hash]
    )


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def request_time(headers: Iterable[tuple[str, str]]) -> dt.datetime:
    """The signed request time: ``X-Amz-Date`` (YYYYMMDDTHHMMSSZ). Raises SignatureError."""
    for name, value in headers:
        if name.lower() == "x-amz-date":
            try:
                return dt.datetime.strptime(value.strip(), "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
            except ValueError as exc:
                raise SignatureError("X-Amz-Date must be YYYYMMDDTHHMMSSZ") from exc
    raise SignatureError("a signed request needs an X-Amz-Date header")


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
    if "x-amz-date" not in auth.signed_headers:
        raise SignatureError("the x-amz-date header must be signed")
    if when.strftime("%Y%m%d") != auth.date:
        raise SignatureError("the credential scope's date is not the request's date")
    if abs(now - when) > MAX_SKEW:
        raise SignatureError(
            "the request time is too far from the server's time (more than 15 minutes); check the clock"
        )
    body_hash = hashlib.sha256(body).hexdigest()
    claimed = next((v.strip() for n, v in headers if n.lower() == "x-amz-content-sha256"), None)
    if claimed is not None and claimed != body_hash:
        raise SignatureError("x-amz-content-sha256 is not the SHA-256 of the body")
    creq = canonical_request(method, raw_path, raw_query, headers, auth.signed_headers, body_hash)
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    to_sign = "\n".join(
        [ALGORITHM, when.strftime("%Y%m%dT%H%M%SZ"), scope, hashlib.sha256(creq.encode()).hexdigest()]
    )
    key = signing_key(secret, auth.date, auth.region, auth.service)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(MISMATCH, f"signature mismatch for access key {auth.access_key_id}")
