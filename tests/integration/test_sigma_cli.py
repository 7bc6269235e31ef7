"""`trailkeeper rules import-sigma` as a real process: a per-rule report and documented exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PACK = ROOT / "daemon" / "rules" / "packs" / "sigma" / "aws"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", "rules", "import-sigma", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_vendored_folder_reports_every_rule_and_exits_0() -> None:
    proc = _run(str(PACK))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    compiled = [line for line in lines if line.startswith("compiled sigma.")]
    refused = [line for line in lines if line.startswith("refused ")]
    assert len(compiled) == 56 and len(refused) == 1
    assert "055fb148-60f8-462d-ad16-26926ce050f1" in refused[0] and "modifier |fieldref" in refused[0]
    assert lines[-1] == "# 56 compiled, 1 refused, 57 in all"


def test_nothing_compiled_exits_1_and_a_missing_path_exits_2(tmp_path: Path) -> None:
    (tmp_path / "k.yml").write_text(
        "title: k\nid: 0b7c9c52-0000-4000-8000-000000000001\n"
        "logsource: {product: aws, service: cloudtrail}\n"
        "detection: {keywords: [evil], condition: keywords}\n"
    )
    proc = _run(str(tmp_path))
    assert proc.returncode == 1
    assert "refused 0b7c9c52-0000-4000-8000-000000000001" in proc.stdout
    assert "keywords (a value without a field)" in proc.stdout
    missing = _run(str(tmp_path / "nope"))
    assert missing.returncode == 2
    assert "no such file or directory" in missing.stderr
    assert "Traceback" not in missing.stderr
