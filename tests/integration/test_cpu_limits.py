"""The daemon sizes its decode pool to the CPUs it may use, not to the machine's.

The daemon runs as ``python -m daemon run`` with its affinity mask narrowed to one CPU before
it starts (as ``taskset`` or a cpuset cgroup would): it must start one decode worker, and say
why in its log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import base_config_text, free_port

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: fields follow the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes()).replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_one_cpu_in_the_affinity_mask_means_one_decode_worker(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least two CPUs to tell the mask from the machine")
    http_port = free_port()
    config = tmp_path / "trailkeeper.yaml"
    config.write_text(base_config_text(tmp_path, http_port=http_port, metrics_port=None,
                                       log="log: {level: info, format: json}\n"))
    log_path = tmp_path / "daemon.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            preexec_fn=lambda: os.sched_setaffinity(0, {cpus[-1]}),
        )
    try:
        started: dict[str, object] | None = None
        chosen: dict[str, object] | None = None
        deadline = time.monotonic() + 30
        while started is None and time.monotonic() < deadline:
            assert proc.poll() is None, log_path.read_text()
            for line in log_path.read_text().splitlines():
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("event") == "decode.workers":
                    chosen = doc
                if doc.get("event") == "app.started":
                    started = doc
            time.sleep(0.1)
        assert started is not None, log_path.read_text()
        # The pool has one worker: the fork server's only child.
        (server,) = [c for c in _children(proc.pid) if "forkserver" in _cmdline(c)]
        assert len(_children(server)) == 1
        assert chosen is not None, "the daemon must log how many decode workers it chose and why"
        assert chosen["workers"] == 1 and "affinity" in str(chosen["reason"]), chosen
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, log_path.read_text()[-3000:]


def test_validate_defaults_to_the_cpus_in_the_affinity_mask(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs at least two CPUs to tell the mask from the machine")
    script = (
        "from daemon.integrity.validate import Validator\n"
        "from daemon.stores.local import LocalStore, LocalStoreConfig\n"
        f"store = LocalStore('local', LocalStoreConfig(path={str(tmp_path)!r}))\n"
        "print(Validator(store, 'trails', []).workers)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {cpus[0]}),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
