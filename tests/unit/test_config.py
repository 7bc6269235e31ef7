from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import ConfigError, embedded_default_text, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]

ISSUE_SHAPE = """
ingest:
  http: {listen: "127.0.0.1:8787", max_event_bytes: 262144}
journal: {dir: var/journal, max_bytes: 2GiB}
stores:
  local: {type: local, path: var/archive}
quarantine: {store: local, prefix: quarantine}
trackers:
  - name: default
    store: local
    prefix: trails
    file: {max_events: 10000, max_bytes: 16MiB, max_age: 60s, compression: gzip}
metrics: {listen: "127.0.0.1:9464"}
"""


def test_documented_shape_is_accepted() -> None:
    c = parse_config(ISSUE_SHAPE)
    assert c.journal.max_bytes == 2 * 1024**3
    assert c.trackers[0].file.max_age == 60.0
    assert c.trackers[0].file.max_bytes == 16 * 1024**2


def test_embedded_default_is_the_config_file_and_valid() -> None:
    assert embedded_default_text() == (ROOT / "config" / "trailkeeper.yaml").read_text()
    c = load_config(None)
    assert c.ingest.http is not None and c.ingest.http.listen == "127.0.0.1:8787"
    assert c.stores["local"].file_mode == 0o444


def test_every_problem_is_reported_with_its_yaml_path() -> None:
    text = (
        ISSUE_SHAPE.replace("max_age: 60s", "max_age: soon").replace(
            "journal: {dir: var/journal", "journal: {dri: x, dir: var/journal"
        )
        + "trackerz: []\n"
    )
    with pytest.raises(ConfigError) as err:
        parse_config(text, "t.yaml")
    problems = "\n".join(err.value.problems)
    assert "trackers[0].file.max_age: expected a duration" in problems
    assert "journal.dri: unknown key" in problems
    assert "trackerz: unknown key" in problems


def test_dangling_store_reference_names_the_path() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(ISSUE_SHAPE.replace("    store: local\n", "    store: s3main\n"))
    assert "trackers[0].store: no store named 's3main'" in str(err.value)


def test_env_interpolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TK_DIR", "/data/j")
    c = parse_config(ISSUE_SHAPE.replace("dir: var/journal", 'dir: "${TK_DIR}"'))
    assert str(c.journal.dir) == "/data/j"
    c = parse_config(ISSUE_SHAPE.replace("dir: var/journal", 'dir: "${TK_UNSET_X:-/fallback}"'))
    assert str(c.journal.dir) == "/fallback"
    with pytest.raises(ConfigError) as err:
        parse_config(ISSUE_SHAPE.replace("dir: var/journal", 'dir: "${TK_UNSET_X}"'))
    assert "journal.dir: environment variable TK_UNSET_X is not set" in str(err.value)


def test_check_config_cli_exit_codes(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(ISSUE_SHAPE)
    bad = tmp_path / "bad.yaml"
    bad.write_text(ISSUE_SHAPE.replace("max_events: 10000", "max_events: 0, colour: red"))
    ok = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(good)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    res = subprocess.run(
        [sys.executable, "-m", "daemon", "check-config", str(bad)], capture_output=True, text=True
    )
    assert res.returncode == 1
    assert (
        "trackers[0].file.max_events" in res.stderr and "trackers[0].file.colour: unknown key" in res.stderr
    )


def test_journal_segment_must_fit_the_budget() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config("journal: {max_bytes: 100MiB, segment_bytes: 64MiB}\n")
    assert "journal: segment_bytes" in str(err.value) or "journal" in str(err.value)
    assert "a quarter of max_bytes" in str(err.value)
