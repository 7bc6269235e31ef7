"""Shared fixtures: configs on temp dirs, the daemon in-process and as a process, real data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daemon.app import App
from daemon.config import Config, parse_config
from tests.fixtures.s3 import restartable_s3, s3_auth_server, s3_bucket, s3_server

# Fixtures imported for every test package (pytest finds them by name here).
S3_FIXTURES = (restartable_s3, s3_auth_server, s3_bucket, s3_server)

ROOT = Path(__file__).resolve().parents[1]
# A git worktree elsewhere can point at the data with TRAILKEEPER_SHARED_DATA.
SHARED = Path(os.environ.get("TRAILKEEPER_SHARED_DATA", ROOT.parent / "shared" / "data"))
STRATUS = SHARED / "cloudtrail-stratus"
CTS_EXAMPLES = SHARED / "cts-examples" / "example_traces.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stratus_records() -> list[dict[str, Any]]:
    if not STRATUS.exists():
        pytest.skip(f"shared data not found at {STRATUS}")
    out: list[dict[str, Any]] = []
    for path in sorted(STRATUS.glob("*.json")):
        out.extend(json.loads(path.read_text()))
    return out


def base_config_text(tmp: Path, *, http_port: int = 0, metrics_port: int | None = 0, **over: str) -> str:
    """A config on a temp dir; keyword overrides replace whole top-level YAML sections."""
    sections = {
        "ingest": f'ingest:\n  http: {{listen: "127.0.0.1:{http_port}", max_event_bytes: 262144}}\n',
        "journal": f"journal: {{dir: {tmp}/journal, max_bytes: 256MiB, segment_bytes: 4MiB}}\n",
        "stores": f"stores:\n  local: {{type: local, path: {tmp}/archive}}\n",
        "quarantine": "quarantine: {store: local, prefix: quarantine, max_age: 200ms}\n",
        "trackers": (
            "trackers:\n  - name: default\n    store: local\n    prefix: trails\n"
            "    file: {max_events: 10000, max_bytes: 16MiB, max_age: 300ms}\n"
        ),
        "metrics": (
            f'metrics: {{listen: "127.0.0.1:{metrics_port}"}}\n'
            if metrics_port is not None
            else "metrics: {listen: null}\n"
        ),
        "log": "log: {level: warning, format: json}\n",
    }
    sections.update(over)
    return "".join(sections.values())


@pytest.fixture
def config_factory(tmp_path: Path):  # type: ignore[no-untyped-def]
    def make(**over: str) -> Config:
        return parse_config(base_config_text(tmp_path, **over))

    return make


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[App]:
    """The daemon in-process on ephemeral ports."""
    application = App(parse_config(base_config_text(tmp_path)))
    await application.start()
    try:
        yield application
    finally:
        await application.stop()


class DaemonProcess:
    """``python -m daemon run`` as a child process, for crash and signal tests."""

    def __init__(self, tmp: Path, config_text: str, http_port: int, metrics_port: int) -> None:
        self.tmp = tmp
        self.config_path = tmp / "trailkeeper.yaml"
        self.config_path.write_text(config_text)
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = tmp / "daemon.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> None:
        log = self.log_path.open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(self.config_path)],
            stdout=log,
            stderr=log,
            cwd=self.tmp,
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited early:\n{self.log_path.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.http_port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daemon did not listen in time:\n{self.log_path.read_text()}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


@pytest.fixture
def daemon_process(tmp_path: Path) -> Iterator[Any]:
    procs: list[DaemonProcess] = []

    def make(*, metrics: bool = False, **over: str) -> DaemonProcess:
        http_port, metrics_port = free_port(), free_port()
        over.setdefault("log", "log: {level: info, format: json}\n")
        text = base_config_text(
            tmp_path, http_port=http_port, metrics_port=metrics_port if metrics else None, **over
        )
        proc = DaemonProcess(tmp_path, text, http_port, metrics_port)
        procs.append(proc)
        return proc

    yield make
    for p in procs:
        if p.proc is not None and p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait(10)


def read_archive(root: Path, prefix: str = "trails") -> list[bytes]:
    """Every record line of every archive file under ``root/prefix``, in file order."""
    from daemon.archive.fileformat import read_records

    out: list[bytes] = []
    base = root / prefix
    if not base.exists():
        return out
    for path in sorted(base.rglob("*.json.gz")):
        out.extend(read_records(path.read_bytes()))
    return out


# --- PostgreSQL -------------------------------------------------------------------------------

PG_ADMIN_DSN = os.environ.get("TK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(service: str, exc: BaseException) -> None:
    """Skip when a real service is unreachable, except in CI where that is a failure."""
    message = f"{service} is unreachable ({exc}); start it to run this test"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def _pg_database() -> AsyncIterator[str]:
    import asyncpg

    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        unavailable(f"PostgreSQL at {PG_ADMIN_DSN}", exc)
        raise
    name = f"tk_test_{uuid.uuid4().hex[:12]}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
def pg_database() -> Callable[[], Any]:
    """``async with pg_database() as dsn``: a fresh PostgreSQL database, dropped afterwards.

    Skips when PostgreSQL is unreachable (fails when CI=true).
    """
    return _pg_database


@pytest.fixture
async def pg_dsn() -> AsyncIterator[str]:
    async with _pg_database() as dsn:
        yield dsn
