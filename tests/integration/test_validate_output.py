"""What `trailkeeper validate` prints against S3 (a moto server on loopback), as a process.

Its stdout is the report and its stderr the problems: no library or retry chatter at
debug level, and a host name that does not resolve because the bucket was put in it
(virtual-hosted addressing) names the key that fixes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import ROOT
from tests.fixtures.s3 import new_bucket, s3_store_config

pytestmark = pytest.mark.integration


def _validate(tmp: Path, store: dict[str, object]) -> subprocess.CompletedProcess[str]:
    config = tmp / "trailkeeper.yaml"
    config.write_text(
        f"journal: {{dir: {tmp}/journal}}\n"
        f"integrity: {{keys_dir: {tmp}/keys}}\n"
        f"stores:\n  local: {{type: local, path: {tmp}/archive}}\n  archive: {json.dumps(store)}\n"
        "quarantine: {store: local}\n"
        "trackers:\n  - {name: default, store: archive}\n"
    )
    trust = tmp / "trust.json"
    if not trust.exists():
        for args in (["generate"], ["export-public", "--out", str(trust)]):
            subprocess.run(
                [sys.executable, "-m", "daemon", "keys", *args, "-c", str(config)],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
    return subprocess.run(
        [sys.executable, "-m", "daemon", "validate", "-c", str(config), "--trust", str(trust)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        timeout=60,
    )


def _no_chatter(result: subprocess.CompletedProcess[str]) -> None:
    for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        assert "debug" not in text.lower(), f"debug-level lines on {stream}:\n{text}"
        assert "Traceback" not in text, text


def test_unresolvable_virtual_host_names_addressing_style_without_debug_lines(
    s3_server: str, tmp_path: Path
) -> None:
    bucket = new_bucket(s3_server)
    # "localhost" resolves, "<bucket>.localhost" does not (no wildcard in /etc/hosts).
    port = urlsplit(s3_server).port
    store = s3_store_config(
        f"http://localhost:{port}",
        bucket,
        addressing_style="virtual",
        # Several tries, so that today's debug line for each retry would show.
        retries={"attempts": 3, "initial": "10ms", "max": "20ms"},
    )
    result = _validate(tmp_path, store)
    assert result.returncode != 0
    _no_chatter(result)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert f"{bucket}.localhost" in lines[0]
    assert "stores.archive.addressing_style: path" in lines[0]
    assert "unreachable or slow" not in lines[0]

    # The suggested fix works: the same server, path-style, validates (an empty archive).
    fixed = _validate(tmp_path, {**store, "addressing_style": "path"})
    _no_chatter(fixed)
    assert "addressing_style" not in fixed.stderr
    assert fixed.stdout.strip(), fixed.stderr
