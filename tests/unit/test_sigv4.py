"""SigV4 verification against requests signed by botocore (an independent signer)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from daemon.api import sigv4
from daemon.api.auth import AuthConfig

KEY, SECRET = "AKIAEXAMPLEKEY000001", "example-secret-key-0001"
NOW = dt.datetime(2026, 12, 4, 12, 0, 0, tzinfo=dt.UTC)


def signed(
    url: str = "http://127.0.0.1:8787/v1/events?b=2&a=1%20x",
    body: bytes = b'{"MaxResults": 5}',
    at: dt.datetime = NOW,
    secret: str = SECRET,
) -> tuple[str, str, str, list[tuple[str, str]], bytes]:
    req = AWSRequest(
        method="POST", url=url, data=body, headers={"Content-Type": "application/x-amz-json-1.1"}
    )
    stamp = at.strftime("%Y%m%dT%H%M%SZ")
    req.context["timestamp"] = stamp
    req.headers["X-Amz-Date"] = stamp
    auth = SigV4Auth(Credentials(KEY, secret), "cloudtrail", "us-east-1")
    canonical = auth.canonical_request(req)
    sig = auth.signature(auth.string_to_sign(req, canonical), req)
    names = auth.signed_headers(auth.headers_to_sign(req))
    header = f"{sigv4.ALGORITHM} Credential={KEY}/{auth.credential_scope(req)}, SignedHeaders={names}, Signature={sig}"
    path, _, query = url.split("8787", 1)[1].partition("?")
    headers = [*req.headers.items(), ("Host", "127.0.0.1:8787")]
    return header, path, query, headers, body


def check(
    header: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes, **kw: object
) -> None:
    auth = sigv4.parse_authorization(header)
    sigv4.verify(auth, str(kw.get("secret", SECRET)), "POST", path, query, headers, body, NOW)


def test_a_request_signed_by_botocore_verifies() -> None:
    check(*signed())
    check(*signed(url="http://127.0.0.1:8787/", body=b""))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, p, q, hs, b: (h, p, q, hs, b + b" "),  # another body
        lambda h, p, q, hs, b: (h, p, "b=2&a=1", hs, b),  # another query
        lambda h, p, q, hs, b: (h, "/v1/other", q, hs, b),  # another path
        lambda h, p, q, hs, b: (h, p, q, [(n, "text/plain" if n == "Content-Type" else v) for n, v in hs], b),
    ],
)
def test_any_change_to_a_signed_part_fails(tamper: object) -> None:
    parts = tamper(*signed())  # type: ignore[operator]
    with pytest.raises(sigv4.SignatureError) as exc:
        check(*parts)
    assert exc.value.public == sigv4.MISMATCH


def test_a_wrong_secret_fails_with_the_same_words_as_any_mismatch() -> None:
    with pytest.raises(sigv4.SignatureError) as exc:
        check(*signed(), secret="another-secret-key-0002")
    assert exc.value.public == sigv4.MISMATCH


def test_an_old_request_is_refused_even_with_a_good_signature() -> None:
    with pytest.raises(sigv4.SignatureError, match="too far"):
        check(*signed(at=NOW - dt.timedelta(minutes=16)))
    check(*signed(at=NOW - dt.timedelta(minutes=14)))


def test_a_claimed_payload_hash_must_be_the_body_s() -> None:
    header, path, query, headers, body = signed()
    headers = [*headers, ("X-Amz-Content-SHA256", "0" * 64)]
    with pytest.raises(sigv4.SignatureError, match="x-amz-content-sha256"):
        check(header, path, query, headers, body)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (
            "AWS4-HMAC-SHA1 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
            "must use",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/b/c/aws4_request, SignedHeaders=host, Signature=" + "0" * 64,
            "scope",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=x-amz-date, Signature="
            + "0" * 64,
            "host",
        ),
        (
            "AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=x;host, Signature=" + "0" * 64,
            "sorted",
        ),
        ("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request, SignedHeaders=host, Signature=zz", "hex"),
        ("AWS4-HMAC-SHA256 Credential=a/b/c/d/aws4_request", "needs"),
    ],
)
def test_malformed_authorization_headers_are_refused_with_what_is_wrong(header: str, words: str) -> None:
    with pytest.raises(sigv4.SignatureError, match=words):
        sigv4.parse_authorization(header)


def test_an_access_key_name_cannot_repeat_a_token_s_and_ids_are_unique() -> None:
    token = {"name": "ops", "sha256": "a" * 64, "role": "admin", "tenants": ["*"]}
    key = {"name": "ops", "id": KEY, "secret": SECRET, "role": "auditor", "tenants": ["t"]}
    with pytest.raises(ValueError, match=r"access_keys\[0\].name"):
        AuthConfig.model_validate({"tokens": [token], "access_keys": [key]})
    with pytest.raises(ValueError, match=r"access_keys\[1\].id"):
        AuthConfig.model_validate({"access_keys": [key, {**key, "name": "other"}]})
