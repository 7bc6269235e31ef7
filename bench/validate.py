"""Validation throughput (MB/s of stored bytes) against `gunzip -c | sha256sum` on the same files.
Every run reads and hashes every file (there is no cache to trust), so the figure is the best of
two full runs. Prints one JSON line.

    python bench/validate.py [EVENTS] [EVENTS_PER_FILE]
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from integrity_harness import build_archive

from daemon.integrity.keys import KeyStore
from daemon.integrity.validate import Validator
from daemon.stores.local import LocalStore, LocalStoreConfig


async def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    per_file = int(sys.argv[2]) if len(sys.argv) > 2 else 1900
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        await build_archive(root, events, per_file, 10)
        files = sorted(str(p) for p in (root / "archive").rglob("*.json.gz"))
        stored = sum(Path(f).stat().st_size for f in files)  # noqa: ASYNC240 - timing harness
        t = time.perf_counter()
        # One pipeline over all files, so process start-up is not charged per file.
        subprocess.run(  # noqa: ASYNC221 - the baseline is timed alone
            ["sh", "-c", 'for f in "$@"; do gunzip -c "$f" | sha256sum; done > /dev/null', "sh", *files],
            check=True,
        )
        base = time.perf_counter() - t
        store = LocalStore("bench", LocalStoreConfig(path=root / "archive", fsync=False))
        verifiers = KeyStore(root / "keys").verifiers()
        runs = []
        for _ in range(2):
            t = time.perf_counter()
            report = await Validator(store, "", verifiers).run()
            runs.append(time.perf_counter() - t)
            assert report.ok and report.files_read == len(files), report.findings[:3]
        ours = min(runs)
        print(
            orjson.dumps(
                {
                    "events": events,
                    "files": len(files),
                    "stored_mb": round(stored / 1e6, 2),
                    "validate_mb_s": round(stored / 1e6 / ours, 2),
                    "gunzip_sha256sum_mb_s": round(stored / 1e6 / base, 2),
                    "ratio": round(base / ours, 2),
                    "runs_s": [round(r, 3) for r in runs],
                }
            ).decode()
        )


if __name__ == "__main__":
    asyncio.run(main())
