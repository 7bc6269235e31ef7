"""``check-config`` and ``run`` refuse the same notification settings, naming the YAML path.

A template that does not compile, a route pattern on a field events do not have and a
TLS file that cannot be read are operator mistakes: ``check-config`` must report them (so
a deployment pipeline catches them), and ``run`` must exit 2 with the same lines, never a
traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, base_config_text

pytestmark = pytest.mark.integration

BAD_TEMPLATE = "notify.topics.sec.subscriptions[1].template.title"
BAD_PATTERN = "notify.routes[0].pattern"
BAD_CA_FILE = "notify.topics.sec.subscriptions[0]"


def _notify(ca_file: str | None = None, template: str = "{{ event.operation ", pattern: str = "no_such_field") -> str:
    ca = f", ca_file: {ca_file}" if ca_file else ""
    return (
        "notify:\n  topics:\n    sec:\n      subscriptions:\n"
        f"      - {{name: hook, protocol: webhook, url: 'https://127.0.0.1:9/hook'{ca}}}\n"
        f"      - {{name: chat, protocol: slack, url: 'http://127.0.0.1:9/slack',"
        f" template: {{title: {template!r}}}}}\n"
        f"  routes:\n    - {{topic: sec, pattern: {{{pattern}: [x]}}}}\n"
    )


def _daemon(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def _lines(out: str) -> list[str]:
    return sorted(line.strip() for line in out.splitlines() if line.strip().startswith("- "))


def test_check_config_and_run_report_the_same_template_and_pattern_problems(tmp_path: Path) -> None:
    path = tmp_path / "trailkeeper.yaml"
    path.write_text(base_config_text(tmp_path) + _notify())

    check = _daemon("check-config", "--config", str(path))
    assert check.returncode == 1, check
    assert BAD_TEMPLATE in check.stderr and "does not compile" in check.stderr, check.stderr
    assert BAD_PATTERN in check.stderr and "no_such_field" in check.stderr, check.stderr
    assert "Traceback" not in check.stderr + check.stdout

    run = _daemon("run", "--config", str(path))
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert _lines(run.stderr) == _lines(check.stderr)
    # The positional form of check-config reads the same file the same way.
    assert _lines(_daemon("check-config", str(path)).stderr) == _lines(check.stderr)


def test_unreadable_tls_file_of_a_subscription_is_a_config_error_for_both(tmp_path: Path) -> None:
    path = tmp_path / "trailkeeper.yaml"
    missing = tmp_path / "no-such-ca.pem"
    path.write_text(
        base_config_text(tmp_path)
        + _notify(ca_file=str(missing), template="[{{ severity }}] {{ event.operation }}", pattern="operation")
    )

    check = _daemon("check-config", "--config", str(path))
    assert check.returncode == 1, check
    assert BAD_CA_FILE in check.stderr and str(missing) in check.stderr, check.stderr

    run = _daemon("run", "--config", str(path))
    assert run.returncode == 2, run
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    assert BAD_CA_FILE in run.stderr and str(missing) in run.stderr, run.stderr


def test_a_good_notify_section_passes_both(tmp_path: Path) -> None:
    path = tmp_path / "trailkeeper.yaml"
    path.write_text(
        base_config_text(tmp_path)
        + _notify(template="[{{ severity|upper }}] {{ event.operation }}", pattern="operation")
    )
    check = _daemon("check-config", "--config", str(path))
    assert check.returncode == 0, check.stderr
