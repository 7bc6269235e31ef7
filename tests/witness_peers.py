"""An independent C2SP tlog-witness for the tests: the ``aics-witness`` package, run as its own
process, so trailkeeper's witnessing is checked against an implementation it did not write.

aics-witness needs Python 3.12+, newer than the project's floor, so it gets a virtualenv of its
own (TRAILKEEPER_AICS_VENV, default ~/.cache/trailkeeper/venv-aics-witness), created once from
the first Python 3.12+ found (TRAILKEEPER_PY312, PATH, then pyenv's versions). Without one the
test skips with the reason, or fails under CI=true.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploytools import cached_venv, unavailable

AICS_SPEC = "aics-witness==0.1.0"


def _python312() -> str:
    candidates = [os.environ.get("TRAILKEEPER_PY312", "")]
    candidates += [shutil.which(n) or "" for n in ("python3.13", "python3.12")]
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    candidates += sorted((str(p) for p in Path(root).glob("versions/3.1[2-9]*/bin/python3")), reverse=True)
    for c in candidates:
        if not c:
            continue
        try:
            out = subprocess.run(
                [c, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except OSError:
            continue
        if out.stdout.strip() == "True":
            return c
    unavailable("aics-witness needs Python 3.12+ and none was found (set TRAILKEEPER_PY312)")
    raise AssertionError("unreachable")


def aics_venv() -> Path:
    default = Path.home() / ".cache" / "trailkeeper" / "venv-aics-witness"
    venv = Path(os.environ.get("TRAILKEEPER_AICS_VENV", default))
    stamp = venv / "trailkeeper-venv.stamp"
    if stamp.exists() and stamp.read_text() == AICS_SPEC:
        return venv
    return cached_venv(venv, AICS_SPEC, _python312())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AicsWitness:
    """One aics-witness process: ``vkey`` is its cosigner key, ``url`` where it listens."""

    def __init__(self, directory: Path, name: str = "aics.witness.test/w1") -> None:
        self.dir = directory
        self.name = name
        self.config = directory / "witness.json"
        self.bin = str(aics_venv() / "bin" / "aics-witness")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.vkey = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def _run(self, command: str, *args: str) -> str:
        env = {**os.environ, "AICS_WITNESS_CONFIG": str(self.config)}
        proc = subprocess.run(
            [self.bin, command, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"aics-witness {' '.join(args)}: {proc.stderr or proc.stdout}")
        return proc.stdout

    def init(self, origin: str, log_vkey: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        out = self._run("init", "--name", self.name, "--listen", f"127.0.0.1:{self.port}")
        self.vkey = next(ln.strip() for ln in out.splitlines() if ln.strip().startswith(self.name + "+"))
        self._run("add-log", "--origin", origin, "--vkey", log_vkey)

    def start(self) -> None:
        env = {**os.environ, "AICS_WITNESS_CONFIG": str(self.config)}
        self.proc = subprocess.Popen(
            [self.bin, "serve", "--config", str(self.config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.dir / "serve.log", "wb"),  # noqa: SIM115 - lives as long as the process
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        raise RuntimeError(f"aics-witness did not start: {(self.dir / 'serve.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


@contextmanager
def aics_witness(directory: Path, origin: str, log_vkey: str) -> Iterator[AicsWitness]:
    w = AicsWitness(directory)
    w.init(origin, log_vkey)
    w.start()
    try:
        yield w
    finally:
        w.stop()
