"""Store, tracker, retention and backup settings as the YAML file spells them."""

from __future__ import annotations

import re

import pytest

from daemon.config import ConfigError, embedded_default_text, parse_config
from daemon.stores import build_store
from daemon.stores.s3 import S3Store


def uncommented_s3_example() -> str:
    """The embedded default with its commented ``offsite`` S3 store switched on."""
    lines = embedded_default_text().splitlines()
    out = []
    inside = False
    for line in lines:
        if line.startswith("  # offsite:"):
            inside = True
        elif inside and not line.startswith("  #   ") and not line.startswith("  #     "):
            inside = False
        out.append(re.sub(r"^  # ", "  ", line, count=1) if inside else line)
    return "\n".join(out)


def test_the_documented_s3_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "AKIAFROMENV")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "secret-from-env")
    text = uncommented_s3_example()
    config = parse_config(text)
    s3 = config.stores["offsite"]
    assert s3.type == "s3"
    assert s3.access_key_id == "AKIAFROMENV"
    assert s3.secret_access_key is not None and s3.secret_access_key.get_secret_value() == "secret-from-env"
    assert "secret-from-env" not in repr(s3), "secrets never show in reprs or logs"
    assert s3.object_lock is not None and s3.object_lock.mode == "COMPLIANCE"
    assert isinstance(build_store("offsite", s3), S3Store)


def test_missing_env_secret_names_the_yaml_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("S3_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("S3_SECRET_ACCESS_KEY", raising=False)
    with pytest.raises(ConfigError) as err:
        parse_config(uncommented_s3_example())
    assert any(
        p.startswith("stores.offsite.access_key_id: environment variable S3_ACCESS_KEY_ID")
        for p in err.value.problems
    )


def test_store_type_errors_point_at_the_yaml_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            "stores:\n  local: {type: local}\n  b: {type: s3, bucket: x1, sse: rot13, colour: red}\n"
        )
    assert "stores.b.sse: Input should be 'AES256' or 'aws:kms'" in err.value.problems
    assert "stores.b.colour: unknown key (check its spelling and indentation)" in err.value.problems


def test_backup_jobs_reference_existing_distinct_stores() -> None:
    base = "stores:\n  local: {type: local}\n  b: {type: local, path: /tmp/b}\n"
    ok = parse_config(base + "backup:\n  jobs:\n    - {name: offsite, from: local, to: b, interval: 10m}\n")
    assert ok.backup.jobs[0].source == "local" and ok.backup.jobs[0].interval == 600
    with pytest.raises(ConfigError) as err:
        parse_config(
            base + "backup:\n  jobs:\n    - {name: j, from: local, to: nowhere}\n"
            "    - {name: j, from: b, to: b}\n"
        )
    text = "; ".join(err.value.problems)
    assert "a backup needs a second store" in text


def test_tracker_retention_and_filter() -> None:
    cfg = parse_config("trackers:\n  - {name: t, retention_days: 30, filter: {service: [ecs]}}\n")
    assert cfg.trackers[0].retention_days == 30
    assert cfg.trackers[0].filter == {"service": ["ecs"]}
    with pytest.raises(ConfigError):
        parse_config("trackers:\n  - {name: t, retention_days: 0}\n")
