"""auth.anonymous_ingest: whether "no token configured" leaves ingest open (no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import structlog

from daemon.api.auth import AuthConfig, Authenticator
from daemon.config import ConfigError, parse_config


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def test_by_default_no_token_at_all_leaves_ingest_open_and_says_so() -> None:
    with structlog.testing.capture_logs() as logs:
        auth = Authenticator(AuthConfig())
    assert auth.open_ingest is True
    (warning,) = [e for e in logs if e["event"] == "auth.ingest_open"]
    assert warning["log_level"] == "warning"
    assert "anonymous_ingest" in warning["action"]


def test_anonymous_ingest_off_with_no_token_refuses_everything_and_says_how_to_add_one() -> None:
    with structlog.testing.capture_logs() as logs:
        auth = Authenticator(AuthConfig(anonymous_ingest=False))
    assert auth.open_ingest is False
    (warning,) = [e for e in logs if e["event"] == "auth.no_tokens"]
    assert warning["log_level"] == "warning"
    assert "trailkeeper tokens create" in warning["action"]
    assert "tokens_file" in warning["action"]
    # No token resolves, and a request without one fails authentication.
    assert auth.authenticate(None).__class__.__name__ == "AuthFailure"
    assert auth.authenticate("Bearer anything").__class__.__name__ == "AuthFailure"


@pytest.mark.parametrize("anonymous", [True, False])
def test_any_configured_token_closes_ingest_whatever_the_setting(anonymous: bool) -> None:
    token = {"name": "p", "sha256": digest("secret"), "role": "producer", "tenants": ["*"]}
    with structlog.testing.capture_logs() as logs:
        auth = Authenticator(AuthConfig.model_validate({"tokens": [token], "anonymous_ingest": anonymous}))
    assert auth.open_ingest is False
    assert not [e for e in logs if e["event"] in ("auth.ingest_open", "auth.no_tokens")]
    # The spine's ingest.http.tokens count as tokens too.
    legacy = Authenticator(AuthConfig(anonymous_ingest=anonymous), [digest("old")])
    assert legacy.open_ingest is False


def test_anonymous_ingest_is_a_strict_boolean_in_the_yaml() -> None:
    assert parse_config("auth: {anonymous_ingest: false}\n").auth.anonymous_ingest is False
    assert parse_config("").auth.anonymous_ingest is True
    with pytest.raises(ConfigError) as err:
        parse_config("auth: {anonymous_ingest: sometimes}\n")
    assert any(p.startswith("auth.anonymous_ingest:") for p in err.value.problems)


def test_an_empty_tokens_file_path_means_none_so_env_interpolation_can_leave_it_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TK_TEST_TOKENS_FILE", raising=False)
    text = 'auth: {tokens_file: "${TK_TEST_TOKENS_FILE:-}"}\n'
    assert parse_config(text).auth.tokens_file is None
    tokens = tmp_path / "api-tokens"
    tokens.write_text(f"- {{name: p, sha256: {digest('x')}, role: producer, tenants: ['*']}}\n")
    monkeypatch.setenv("TK_TEST_TOKENS_FILE", str(tokens))
    auth = parse_config(text).auth
    assert auth.tokens_file == tokens and [t.name for t in auth.all_tokens()] == ["p"]
