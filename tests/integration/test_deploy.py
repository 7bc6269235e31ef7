"""A real Prometheus scrapes a running daemon and evaluates the shipped alert rules.

The daemon runs as ``python -m daemon run`` (as in the image); Prometheus is Debian's
server on a free port with a temp data dir. The rules are deploy/prometheus/alerts.yaml
with every ``for:`` set to 0s and every range window shortened (see ``fast_rules``), so
the alert's logic is the shipped one and only the time scale changes.

Making the store unwritable: tests run as root, for whom chmod does not block writes.
Instead the local store's root directory is moved aside and a regular file is put in its
place: every write then fails with ENOTDIR/EEXIST whatever the uid, and recovery is moving
the directory back. The archiver sees a retryable StoreUnavailable, exactly as for a full or
unmounted disk.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.deploytools import ROOT, final_stage, prometheus_server, promtool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# shared/ sits beside the clone (CI) or beside the worktrees' parent (development).
STRATUS = next(
    (
        p / "shared" / "data" / "cloudtrail-stratus"
        for p in (ROOT.parent, ROOT.parent.parent)
        if (p / "shared" / "data" / "cloudtrail-stratus").exists()
    ),
    ROOT.parent / "shared" / "data" / "cloudtrail-stratus",
)
FAST_WINDOW = "12s"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.25) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (OSError, urllib.error.URLError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def fast_rules(text: str) -> str:
    """The shipped rules on a test time scale: ``for: 0s`` and every range ``[..]`` shortened."""
    doc = yaml.safe_load(text)
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule["for"] = "0s"
            rule["expr"] = re.sub(r"\[\d+[smhd]\]", f"[{FAST_WINDOW}]", rule["expr"])
    return yaml.safe_dump(doc, sort_keys=False)


class Daemon:
    def __init__(self, tmp: Path, journal: str = "max_bytes: 64MiB, segment_bytes: 4MiB") -> None:
        self.tmp = tmp
        tmp.mkdir(parents=True)
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.archive = tmp / "archive"
        config = tmp / "trailkeeper.yaml"
        config.write_text(
            f'ingest:\n  http: {{listen: "127.0.0.1:{self.http_port}"}}\n'
            f"journal: {{dir: {tmp}/journal, {journal}}}\n"
            f"stores:\n  local: {{type: local, path: {self.archive}}}\n"
            "quarantine: {store: local, prefix: quarantine, max_age: 200ms}\n"
            "trackers:\n  - name: default\n    store: local\n    prefix: trails\n"
            "    file: {max_events: 1000, max_age: 300ms}\n"
            f'metrics: {{listen: "127.0.0.1:{self.metrics_port}"}}\n'
            "log: {level: info, format: json}\n"
        )
        self.log = (tmp / "daemon.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(config)],
            cwd=tmp,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("daemon /healthz", self._healthy, timeout=20)

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.logs()}")
        return http_get(f"http://127.0.0.1:{self.http_port}/healthz")[0] == 200

    def logs(self) -> str:
        return (self.tmp / "daemon.log").read_text(errors="replace")[-3000:]

    def post(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        status, _headers, result = self.try_post(records)
        assert status == 202, (status, result)
        return result

    def try_post(self, records: list[dict[str, Any]]) -> tuple[int, dict[str, str], dict[str, Any]]:
        """POST /v1/events: the status, the headers and the JSON answer, whatever the status."""
        body = gzip.compress(b"\n".join(json.dumps(r).encode() for r in records))
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/v1/events",
            data=body,
            headers={"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        status, body = http_get(f"http://127.0.0.1:{self.http_port}{path}")
        return status, json.loads(body)

    def archived_event_ids(self) -> set[str]:
        ids: set[str] = set()
        for path in self.archive.rglob("*.json.gz"):
            for line in gzip.decompress(path.read_bytes()).splitlines():
                line = line.strip().rstrip(b",")
                if line.startswith(b"{") and b"eventID" in line and not line.startswith(b'{"Records"'):
                    ids.add(json.loads(line)["eventID"])
        return ids

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


class Prometheus:
    def __init__(self, tmp: Path, target_port: int) -> None:
        binary = prometheus_server()
        self.port = free_port()
        self.tmp = tmp
        tmp.mkdir(parents=True)
        rules = tmp / "alerts.fast.yaml"
        rules.write_text(fast_rules((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text()))
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(rules)],
                    "scrape_configs": [
                        {
                            "job_name": "trailkeeper",
                            "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}],
                        }
                    ],
                }
            )
        )
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for("prometheus /-/ready", self._ready, timeout=30)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {(self.tmp / 'prometheus.log').read_text()[-2000:]}")
        return http_get(f"http://127.0.0.1:{self.port}/-/ready")[0] == 200

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"http://127.0.0.1:{self.port}/api/v1/{path}{query}")
        assert status == 200, body
        return json.loads(body)["data"]

    def alert_state(self, name: str) -> str | None:
        states = [a["state"] for a in self.api("alerts")["alerts"] if a["labels"]["alertname"] == name]
        return states[0] if states else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "daemon")
    yield d
    d.stop()


@pytest.fixture
def prometheus(tmp_path: Path, daemon: Daemon) -> Iterator[Prometheus]:
    p = Prometheus(tmp_path / "prometheus", daemon.metrics_port)
    yield p
    p.stop()


@pytest.fixture
def records() -> list[dict[str, Any]]:
    if not STRATUS.exists():
        pytest.skip(f"shared CloudTrail data not found at {STRATUS}")
    out: list[dict[str, Any]] = []
    for path in sorted(STRATUS.glob("*.json"))[:3]:
        out.extend(json.loads(path.read_text()))
    return out


def test_healthcheck_command_and_live_metrics_pass_promtool(daemon: Daemon) -> None:
    # The image's HEALTHCHECK, run as the container would, against the live daemon.
    (health,) = [args for word, args in final_stage() if word == "HEALTHCHECK"]
    argv = json.loads(health.split(" CMD ", 1)[1])
    argv[0] = sys.executable
    env = {**os.environ, "TRAILKEEPER_HEALTH_URL": f"http://127.0.0.1:{daemon.http_port}/healthz"}
    assert subprocess.run(argv, env=env, timeout=10).returncode == 0
    env["TRAILKEEPER_HEALTH_URL"] = f"http://127.0.0.1:{daemon.http_port}/no-such-endpoint"
    assert subprocess.run(argv, env=env, capture_output=True, timeout=10).returncode != 0

    status, body = http_get(f"http://127.0.0.1:{daemon.metrics_port}/metrics")
    assert status == 200 and b"trailkeeper_journal_end_offset" in body
    proc = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=30)
    problems = (proc.stdout + proc.stderr).decode().strip()
    assert proc.returncode == 0 and problems == "", problems


def test_prometheus_fires_archive_alert_while_store_is_unwritable_and_resolves(
    daemon: Daemon, prometheus: Prometheus, records: list[dict[str, Any]]
) -> None:
    alert = "TrailkeeperArchiveStalled"
    half = len(records) // 2
    assert daemon.post(records[:half])["accepted"] == half
    wait_for("first archive file", lambda: daemon.archived_event_ids(), timeout=15)
    wait_for(
        "prometheus to scrape the daemon",
        lambda: prometheus.api("query", query='trailkeeper_archive_files_total{job="trailkeeper"} > 0')[
            "result"
        ],
        timeout=15,
    )
    up = prometheus.api("query", query='up{job="trailkeeper"}')["result"]
    assert [r["value"][1] for r in up] == ["1"]
    # The rules are loaded and evaluated, and a healthy store does not trip this one.
    groups = prometheus.api("rules")["groups"]
    assert any(r["name"] == alert for g in groups for r in g["rules"])
    time.sleep(2)
    assert prometheus.alert_state(alert) is None

    # Make the store unwritable: its root becomes a regular file.
    saved = daemon.archive.with_name("archive.saved")
    daemon.archive.rename(saved)
    daemon.archive.write_bytes(b"not a directory\n")
    try:
        assert daemon.post(records[half:])["accepted"] == len(records) - half
        firing = wait_for(
            f"{alert} to fire",
            lambda: [
                a
                for a in prometheus.api("alerts")["alerts"]
                if a["labels"]["alertname"] == alert and a["state"] == "firing"
            ],
            timeout=45,
        )
        assert firing[0]["labels"]["tracker"] == "default"
        assert firing[0]["labels"]["severity"] == "page"
        # The journal absorbs the outage: the pod stays in service; the downstream view says why.
        status, body = http_get(f"http://127.0.0.1:{daemon.http_port}/readyz")
        assert status == 200, body
        assert daemon.get("/healthz/downstream")[0] == 503
    finally:
        daemon.archive.unlink()
        saved.rename(daemon.archive)

    wait_for(f"{alert} to resolve", lambda: prometheus.alert_state(alert) is None, timeout=45)
    # Nothing acknowledged during the outage was lost: every event reached the archive.
    wanted = {r["eventID"] for r in records}
    wait_for("every event archived", lambda: wanted <= daemon.archived_event_ids(), timeout=15)
    assert http_get(f"http://127.0.0.1:{daemon.http_port}/readyz")[0] == 200
    assert daemon.stop() == 0, daemon.logs()


def _synthetic(start: int, count: int) -> list[dict[str, Any]]:
    """CloudTrail-shaped records of about 1 KiB each, with unique ids."""
    return [
        {
            "eventVersion": "1.08",
            "eventSource": "s3.amazonaws.com",
            "eventName": "PutObject",
            "eventTime": "2026-12-03T10:00:00Z",
            "awsRegion": "eu-west-1",
            "recipientAccountId": "111122223333",
            "eventID": f"budget-{n:06d}",
            "userIdentity": {"type": "IAMUser", "userName": f"u{n}"},
            "requestParameters": {"bucketName": "b", "key": f"k/{n}/" + "x" * 800},
        }
        for n in range(start, start + count)
    ]


@pytest.fixture
def small_journal_daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "daemon", journal="max_bytes: 1MiB, segment_bytes: 256KiB")
    yield d
    d.stop()


def test_store_outage_keeps_ingest_ready_until_the_journal_budget_and_alerts(
    small_journal_daemon: Daemon, tmp_path: Path
) -> None:
    daemon = small_journal_daemon
    prometheus = Prometheus(tmp_path / "prometheus", daemon.metrics_port)
    alert = "TrailkeeperDownstreamUnhealthy"
    try:
        assert daemon.get("/healthz/downstream") == (200, {"healthy": True, "problems": [], "warnings": []})
        wait_for(
            "prometheus to scrape the downstream health",
            lambda: prometheus.api(
                "query", query='trailkeeper_downstream_healthy{component="store",name="local"} == 1'
            )["result"],
            timeout=15,
        )
        assert any(r["name"] == alert for g in prometheus.api("rules")["groups"] for r in g["rules"])
        time.sleep(2)
        assert prometheus.alert_state(alert) is None

        saved = daemon.archive.with_name("archive.saved")
        daemon.archive.rename(saved)
        daemon.archive.write_bytes(b"not a directory\n")
        try:
            # The store is down: the probe keeps the pod in service and ingest answers 202
            # while the journal has room; the downstream endpoint names the store.
            accepted: list[str] = []
            n = 0
            while True:
                batch = _synthetic(n, 50)
                status, headers, answer = daemon.try_post(batch)
                n += 50
                if status != 202:
                    break
                accepted += [r["eventID"] for r in batch]
                ready = daemon.get("/readyz")
                assert ready[0] == 200 and ready[1]["ready"] is True, ready
                assert n < 5000, "the journal budget (1 MiB) was never reached"
            assert status == 503 and int(headers["Retry-After"]) >= 1, (status, answer)
            assert "journal.max_bytes" in answer["error"]
            assert len(accepted) >= 300  # ~1 MiB of ~1 KiB events went in before the 503
            status, ready_doc = daemon.get("/readyz")
            assert status == 503 and not ready_doc["ready"], ready_doc
            assert any("budget" in p for p in ready_doc["problems"]), ready_doc
            status, down = daemon.get("/healthz/downstream")
            assert status == 503 and down["healthy"] is False, down
            assert "store local: not writable" in down["problems"], down
            # The public answer says what is down, never the error text (paths, hosts, buckets).
            assert not any(str(daemon.tmp) in p for p in down["problems"]), down
            firing = wait_for(
                f"{alert} to fire",
                lambda: [
                    a
                    for a in prometheus.api("alerts")["alerts"]
                    if a["labels"]["alertname"] == alert and a["state"] == "firing"
                ],
                timeout=45,
            )
            assert {(a["labels"]["component"], a["labels"]["name"]) for a in firing} == {("store", "local")}
            assert firing[0]["labels"]["severity"] == "ticket"
        finally:
            daemon.archive.unlink()
            saved.rename(daemon.archive)

        # The store is back: the journal drains, ingest and readiness recover, the alert resolves.
        wait_for("/readyz ready again", lambda: daemon.get("/readyz")[0] == 200, timeout=45)
        wait_for("/healthz/downstream healthy again", lambda: daemon.get("/healthz/downstream")[0] == 200, 45)
        assert daemon.post(_synthetic(n, 10))["accepted"] == 10
        wait_for(f"{alert} to resolve", lambda: prometheus.alert_state(alert) is None, timeout=45)
        wanted = set(accepted) | {f"budget-{i:06d}" for i in range(n, n + 10)}
        wait_for("every accepted event archived", lambda: wanted <= daemon.archived_event_ids(), timeout=30)
    finally:
        prometheus.stop()
    assert daemon.stop() == 0, daemon.logs()
