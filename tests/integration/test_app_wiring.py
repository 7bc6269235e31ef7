"""Retention and backup run inside the daemon, configured from the YAML."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
from pathlib import Path

import aiohttp
import orjson

from daemon.app import App
from daemon.archive.fileformat import build
from daemon.config import parse_config
from tests.conftest import base_config_text, stratus_records


async def test_backup_and_retention_run_in_the_daemon(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    old_key = "trails/default/111122223333/eu-west-1/2019/01/01/w_default_20190101T0000Z_00000000000000000001-00000000000000000002.json.gz"
    old = archive / old_key
    old.parent.mkdir(parents=True)
    old.write_bytes(build([b'{"eventID":"old"}']).data)
    cfg = parse_config(
        base_config_text(
            tmp_path,
            stores=(
                f"stores:\n  local: {{type: local, path: {archive}}}\n"
                f"  copy: {{type: local, path: {tmp_path}/backup}}\n"
            ),
            trackers=(
                "trackers:\n  - {name: default, store: local, retention_days: 30, file: {max_age: 200ms}}\n"
            ),
        )
        + "retention: {interval: 300ms}\n"
        + "backup: {jobs: [{name: offsite, from: local, to: copy, prefixes: [trails/], interval: 300ms}]}\n"
    )
    app = App(cfg)
    await app.start()
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"http://127.0.0.1:{app.http_port}/v1/events", data=orjson.dumps(stratus_records())
            ) as resp,
        ):
            assert resp.status == 202
        async with asyncio.timeout(30):
            while True:
                sources = {
                    p.relative_to(archive).as_posix(): p for p in (archive / "trails").rglob("*.json.gz")
                }
                copies = (
                    {
                        p.relative_to(tmp_path / "backup").as_posix(): p
                        for p in (tmp_path / "backup").rglob("*.json.gz")
                    }
                    if (tmp_path / "backup").exists()
                    else {}
                )
                if not old.exists() and sources and set(sources) <= set(copies):
                    break
                await asyncio.sleep(0.2)
    finally:
        await app.stop()
    assert old_key not in sources  # swept: its day is past retention_days
    total = 0
    for key, path in sources.items():
        assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(copies[key].read_bytes()).digest()
        total += len(orjson.loads(gzip.decompress(path.read_bytes()))["Records"])
    assert total == 310


def test_a_port_in_use_is_an_operator_error_not_a_traceback(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    from tests.conftest import base_config_text

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = tmp_path / "trailkeeper.yaml"
        cfg.write_text(base_config_text(tmp_path, http_port=port, metrics_port=None))
        proc = subprocess.run(
            [sys.executable, "-m", "daemon", "run", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"ingest.http.listen: cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr
