"""Token expiry, tokens from a file, the tokens CLI, and the summarised audit of refusals."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
from pathlib import Path
from typing import Any

import orjson
import pytest

from daemon.api.audit import SUMMARY_OPERATION, Auditor
from daemon.api.auth import AuthConfig, Authenticator, AuthFailure, FailureConfig, Principal
from daemon.api.tokens import parse_expiry
from daemon.cli import main
from daemon.config import ConfigError, parse_config
from daemon.events import Event
from daemon.intake import Intake
from daemon.journal import JournalFull


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def entry(name: str, token: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "sha256": digest(token), "role": "auditor", "tenants": ["t1"], **extra}


# --- expiry -----------------------------------------------------------------------------------


def test_an_expired_token_fails_like_an_unknown_one_with_the_reason_kept_apart() -> None:
    now = [dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()]
    config = AuthConfig.model_validate(
        {
            "tokens": [
                entry("ci", "c", expires="2030-01-02T00:00:00Z"),
                entry("dated", "d", expires="2030-01-01"),
            ]
        }
    )
    auth = Authenticator(config, clock=lambda: now[0])
    assert isinstance(auth.authenticate("Bearer c"), Principal)
    expired = auth.authenticate("Bearer d")  # a date is its midnight, UTC
    unknown = auth.authenticate("Bearer nobody")
    assert isinstance(expired, AuthFailure) and isinstance(unknown, AuthFailure)
    assert expired.reason == "expired_token" and unknown.reason == "bad_token"
    assert expired.message == unknown.message
    assert expired.detail is not None and "'dated' expired at 2030-01-01T00:00:00Z" in expired.detail
    assert expired.principal is not None and expired.principal.name == "dated"
    assert expired.digest == digest("d") and unknown.detail is None
    now[0] += 86400
    assert isinstance(auth.authenticate("Bearer c"), AuthFailure)


def test_expiry_without_a_zone_is_utc_and_bad_times_name_the_key() -> None:
    config = AuthConfig.model_validate({"tokens": [entry("ci", "c", expires="2030-01-02T03:04:05")]})
    assert config.tokens[0].expires == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    with pytest.raises(ConfigError, match=r"auth\.tokens\[0\]\.expires"):
        parse_config(
            f"auth:\n  tokens:\n    - {{name: x, sha256: {digest('a')}, role: admin, tenants: ['*'], expires: soon}}\n"
        )


# --- tokens from a file or the environment ----------------------------------------------------------


def test_tokens_file_adds_tokens_and_its_problems_name_the_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "tokens.yaml"
    path.write_text(f"- {{name: soc, sha256: {digest('s')}, role: auditor, tenants: ['*']}}\n")
    config = parse_config(
        f"auth:\n  tokens_file: {path}\n  tokens:\n    - {{name: ci, sha256: {digest('c')}, role: producer, tenants: [t]}}\n"
    )
    auth = Authenticator(config.auth)
    assert {p.name for p in map(auth.authenticate, ["Bearer s", "Bearer c"]) if isinstance(p, Principal)} == {
        "soc",
        "ci",
    }
    path.write_text(f"tokens:\n  - {{name: ci, sha256: {digest('x')}, role: admin, tenants: ['*']}}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(
            f"auth:\n  tokens_file: {path}\n  tokens:\n    - {{name: ci, sha256: {digest('c')}, role: producer, tenants: [t]}}\n"
        )
    assert f"tokens_file {path}: [0].name: token 'ci' is defined twice" in str(err.value)
    path.write_text(f"- {{name: soc, sha256: {digest('s')}, role: root, tenants: ['*']}}\n- {{name: x}}\n")
    with pytest.raises(ConfigError) as err:
        parse_config(f"auth:\n  tokens_file: {path}\n")
    text = str(err.value)
    assert (
        f"tokens_file {path}: [0].role" in text and f"tokens_file {path}: [1].sha256: Field required" in text
    )
    assert text.startswith("<config>: auth: ")
    with pytest.raises(ConfigError, match="cannot read the file"):
        parse_config(f"auth:\n  tokens_file: {tmp_path / 'missing.yaml'}\n")
    path.write_text("{name: soc}\n")
    with pytest.raises(ConfigError, match="expected a list of tokens"):
        parse_config(f"auth:\n  tokens_file: {path}\n")


def test_token_digests_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TK_SOC_SHA256", digest("from-a-secret"))
    config = parse_config(
        "auth:\n  tokens:\n    - {name: soc, sha256: '${TK_SOC_SHA256}', role: auditor, tenants: ['*']}\n"
    )
    assert isinstance(Authenticator(config.auth).authenticate("Bearer from-a-secret"), Principal)


def test_trusted_proxies_must_be_addresses_or_networks() -> None:
    assert parse_config("auth: {trusted_proxies: [10.0.0.0/8, '::1']}\n").auth.trusted_proxies
    with pytest.raises(ConfigError, match=r"auth\.trusted_proxies: \[1\] 'proxy\.local'"):
        parse_config("auth: {trusted_proxies: [10.0.0.0/8, proxy.local]}\n")


def test_no_queue_source_may_take_the_audit_source_name() -> None:
    for name in ("trailkeeper", "audit"):
        with pytest.raises(
            ConfigError, match=r"ingest\.sources\[0\]\.(redis\.)?name: .*trailkeeper's own audit records"
        ):
            parse_config(f"ingest:\n  sources:\n    - {{type: redis, stream: s, name: {name}}}\n")


# --- the tokens command -----------------------------------------------------------------------


def test_tokens_create_prints_a_token_once_and_a_config_line_that_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["tokens", "create", "--role", "auditor", "--tenant", "A", "--tenant", "B", "--name", "soc-1",
                 "--expires", "30d"]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("#")]
    token, config_line = lines
    assert token.startswith("tk_") and len(token) > 40
    assert digest(token) in config_line and token not in config_line
    config = parse_config(f"auth:\n  tokens:\n    {config_line}\n")
    created = config.auth.tokens[0]
    assert (created.name, created.role, created.tenants) == ("soc-1", "auditor", ["A", "B"])
    assert created.expires is not None
    left = created.expires - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=29, hours=23) < left <= dt.timedelta(days=30)
    principal = Authenticator(config.auth).authenticate(f"Bearer {token}")
    assert isinstance(principal, Principal) and principal.name == "soc-1"

    assert main(["tokens", "create", "--role", "admin", "--tenant", "*"]) == 0
    out = capsys.readouterr().out.splitlines()
    again = parse_config(f"auth:\n  tokens:\n    {out[-1]}\n").auth.tokens[0]
    assert again.tenants == ["*"] and again.name.startswith("admin-") and again.expires is None
    assert out[1] != token


def test_tokens_create_refuses_bad_input_with_the_option_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "create", "--role", "auditor", "--tenant", "A", "--expires", "someday"]) == 2
    assert "--expires" in capsys.readouterr().err
    assert main(["tokens", "create", "--role", "auditor", "--tenant", "*", "--tenant", "A"]) == 2
    assert "--tenants" in capsys.readouterr().err


def test_tokens_hash_reads_stdin(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("my-token\n"))
    assert main(["tokens", "hash"]) == 0
    assert capsys.readouterr().out.strip() == digest("my-token")
    monkeypatch.setattr("sys.stdin", io.StringIO("\n"))
    assert main(["tokens", "hash"]) == 2


def test_parse_expiry() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert parse_expiry("12h", now) == dt.datetime(2030, 1, 1, 12, tzinfo=dt.UTC)
    assert parse_expiry("2031-02-03T04:05:06Z", now) == dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    assert parse_expiry("2031-02-03", now) == dt.datetime(2031, 2, 3, tzinfo=dt.UTC)


# --- summarised audit of refusals -------------------------------------------------------------


class FakeIntake(Intake):
    """Collects what the Auditor submits; ``full`` makes the journal refuse."""

    def __init__(self) -> None:
        self.reserved_tenant = ""
        self.events: list[dict[str, Any]] = []
        self.full = False

    async def submit(self, items: Any, source: str, ref: str | None = None) -> Any:
        if self.full:
            raise JournalFull(100, 100)
        assert source == "trailkeeper"
        self.events += [orjson.loads(e.record) for e in items if isinstance(e, Event)]


async def refuse(auditor: Auditor, address: str, kind: str = "bad_token", n: int = 1) -> None:
    for i in range(n):
        await auditor.refused(
            kind=kind,
            operation="authenticate",
            principal=None,
            source_ip=address,
            resource_type="events",
            resource_name="/v1/events",
            request={"method": "GET", "operation": "queryEvents"},
            message="the bearer token is not valid",
            token_digest=digest(f"guess{i}"),
        )


def summaries(intake: FakeIntake) -> list[dict[str, Any]]:
    return [e for e in intake.events if e["trace_name"] == SUMMARY_OPERATION]


async def test_refusals_are_recorded_first_then_summarised_per_window() -> None:
    now = [0.0]
    intake = FakeIntake()
    auditor = Auditor(intake, "trailkeeper", failures=FailureConfig(audit_window=10, audit_first=2),
                      clock=lambda: now[0])  # fmt: skip
    assert intake.reserved_tenant == "trailkeeper"  # the Auditor claims its tenant
    await refuse(auditor, "192.0.2.1", n=50)
    await refuse(auditor, "192.0.2.1", kind="throttled", n=3)
    assert len(intake.events) == 4 and not summaries(intake)
    now[0] = 11.0
    await auditor.close_expired()
    got = {s["request"]["kind"]: s for s in summaries(intake)}
    assert (
        got["bad_token"]["request"]["count"] == 50
        and got["bad_token"]["request"]["recorded_individually"] == 2
    )
    assert got["bad_token"]["request"]["distinct_tokens"] == 50
    assert got["bad_token"]["code"] == "401" and got["throttled"]["code"] == "429"
    assert got["bad_token"]["request"]["operations"] == {"queryEvents": 50}
    assert got["bad_token"]["project_id"] == "trailkeeper" and got["bad_token"]["source_ip"] == "192.0.2.1"
    # A new window starts with records of its own again.
    await refuse(auditor, "192.0.2.1")
    assert intake.events[-1]["trace_name"] == "authenticate"
    await auditor.close()
    assert len(summaries(intake)) == 2  # a window of one needs no summary


async def test_rotating_addresses_fold_into_one_window_and_the_journal_cost_is_bounded() -> None:
    intake = FakeIntake()
    auditor = Auditor(intake, "trailkeeper", failures=FailureConfig(audit_first=1, audit_max_sources=10))
    for i in range(5000):
        await refuse(auditor, f"10.0.{i // 250}.{i % 250}")
    await auditor.close()
    # Ten windows of one refusal each (recorded alone, nothing left to summarise), then one
    # summary for every other address.
    assert len(intake.events) == 10 + 1
    other = [s for s in summaries(intake) if s["request"]["source"] == "*"]
    assert len(other) == 1 and other[0]["request"]["count"] == 4990
    assert (
        other[0]["request"]["distinct_addresses"] == 100 and other[0]["request"]["distinct_addresses_capped"]
    )
    alone = [e for e in intake.events if e["trace_name"] == "authenticate"]
    assert len(alone) == 10


async def test_a_summary_the_journal_cannot_take_is_retried_then_logged_never_silently_lost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = [0.0]
    intake = FakeIntake()
    auditor = Auditor(intake, "trailkeeper", failures=FailureConfig(audit_window=1, audit_first=0),
                      clock=lambda: now[0])  # fmt: skip
    await refuse(auditor, "192.0.2.1", n=7)
    intake.full = True
    now[0] = 2.0
    await auditor.close_expired()
    assert not intake.events
    intake.full = False
    await auditor.close_expired()
    assert [s["request"]["count"] for s in summaries(intake)] == [7]
    await refuse(auditor, "192.0.2.1", n=3)
    intake.full = True
    await auditor.close()
    captured = capsys.readouterr()
    assert "audit.summary_lost" in captured.out + captured.err
