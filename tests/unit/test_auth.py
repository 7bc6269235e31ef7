"""Tokens, roles, tenant scope and rate limits (no network)."""

from __future__ import annotations

import hashlib

import pytest

from daemon.api.auth import AuthConfig, Authenticator, AuthFailure, Principal, RateLimitConfig, RateLimiter
from daemon.config import ConfigError, parse_config


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def config(**extra: object) -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "tokens": [
                {"name": "prod", "sha256": digest("p"), "role": "producer", "tenants": ["t1"]},
                {
                    "name": "aud",
                    "sha256": "SHA256:" + digest("a").upper(),
                    "role": "auditor",
                    "tenants": ["*"],
                },
            ],
            **extra,
        }
    )


def test_tokens_resolve_to_principals_by_digest() -> None:
    auth = Authenticator(config())
    p = auth.authenticate("Bearer p")
    assert isinstance(p, Principal) and p.name == "prod" and p.tenants == frozenset({"t1"})
    a = auth.authenticate("bearer   a")
    assert isinstance(a, Principal) and a.tenants is None and a.sees(None) and a.sees("x")
    assert not p.sees(None) and not p.sees("t2") and p.sees("t1")
    assert p.may("ingest") and not p.may("read") and not p.may("admin")
    assert a.may("read") and not a.may("ingest")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no_token"),
        ("", "no_token"),
        ("Basic abc", "no_token"),
        ("Bearer ", "no_token"),
        ("Bearer x", "bad_token"),
    ],
)
def test_missing_or_unknown_tokens_fail(header: str | None, reason: str) -> None:
    result = Authenticator(config()).authenticate(header)
    assert isinstance(result, AuthFailure) and result.reason == reason


def test_plain_text_tokens_and_duplicates_are_config_errors() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            "auth:\n  tokens:\n    - {name: x, sha256: my-secret-token, role: admin, tenants: ['*']}\n"
        )
    assert "auth.tokens[0].sha256" in str(err.value) and "never the token itself" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(
            f"auth:\n  tokens:\n    - {{name: x, sha256: {digest('a')}, role: admin, tenants: ['*']}}\n"
            f"    - {{name: x, sha256: {digest('a')}, role: auditor, tenants: [t]}}\n"
        )
    assert "defined twice" in str(err.value)
    with pytest.raises(ConfigError) as err:
        parse_config(
            f"auth:\n  tokens:\n    - {{name: x, sha256: {digest('a')}, role: root, tenants: ['*']}}\n"
        )
    assert "auth.tokens[0].role" in str(err.value)
    with pytest.raises(ConfigError):
        parse_config(
            f"auth:\n  tokens:\n    - {{name: x, sha256: {digest('a')}, role: admin, tenants: ['*', t]}}\n"
        )


def test_legacy_ingest_tokens_become_all_tenant_producers_and_open_ingest_only_without_tokens() -> None:
    auth = Authenticator(AuthConfig(), [digest("old")])
    p = auth.authenticate("Bearer old")
    assert isinstance(p, Principal) and p.role == "producer" and p.tenants is None
    assert not auth.open_ingest
    assert Authenticator(AuthConfig()).open_ingest


def test_rate_limiter_refills_per_token() -> None:
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    limit = RateLimitConfig(requests_per_second=2, burst=2)
    assert limiter.take("a", limit) == 0 and limiter.take("a", limit) == 0
    wait = limiter.take("a", limit)
    assert wait == pytest.approx(0.5)
    assert limiter.take("b", limit) == 0
    now[0] = 0.5
    assert limiter.take("a", limit) == 0
    assert limiter.take("a", None) == 0
