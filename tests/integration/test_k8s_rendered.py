"""The Kubernetes manifests, rendered with example Secret values, run as shipped.

The StatefulSet's volumes are written into a temp directory laid out like the pod
(tests.deploytools.render_pod): the ConfigMap's trailkeeper.yaml, the Secret's keys filled
with a token entry made by ``trailkeeper tokens create`` and a freshly generated Ed25519 key,
and an empty data volume. The config is the ConfigMap's text, unchanged: its
``${VAR:-/pod/path}`` defaults are pointed at the temp directory through the environment
only. Then ``check-config`` and ``python -m daemon run`` are real subprocesses on free
loopback ports.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from daemon.integrity.checkpoint import Signer
from tests.deploytools import ROOT, RenderedPod, free_port, kubelet_volume, kustomize_build, render_pod

pytestmark = [pytest.mark.integration]


@dataclass(frozen=True)
class Token:
    secret: str
    entry: str


def make_token(role: str, name: str) -> Token:
    """A token and its auth.tokens entry, as an operator makes them for the Secret."""
    proc = subprocess.run(
        [sys.executable, "-m", "daemon", "tokens", "create", "--role", role, "--tenant", "*", "--name", name],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = [line for line in proc.stdout.splitlines() if not line.startswith("#")]
    secret, entry = lines
    return Token(secret, entry)


@pytest.fixture(scope="module")
def tokens() -> dict[str, Token]:
    return {role: make_token(role, f"{role}-example") for role in ("producer", "auditor", "admin")}


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def pem(key: Ed25519PrivateKey) -> str:
    # PKCS#8 PEM, what `openssl genpkey -algorithm ed25519` writes.
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()


def run_cli(pod: RenderedPod, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=pod.workdir,
        env={**os.environ, **pod.env},
    )


def record(tenant: str = "123456789012") -> dict[str, Any]:
    return {
        "eventVersion": "1.08",
        "eventID": str(uuid.uuid4()),
        "eventTime": "2026-01-02T03:04:05Z",
        "eventSource": "iam.amazonaws.com",
        "eventName": "CreateUser",
        "awsRegion": "us-east-1",
        "recipientAccountId": tenant,
        "userIdentity": {"type": "IAMUser", "userName": "alice"},
    }


class Pod:
    """``python -m daemon run --config <the ConfigMap's file>`` with the pod's environment."""

    def __init__(self, pod: RenderedPod) -> None:
        self.pod = pod
        self.http = pod.ports[8787]
        self.log_path = pod.root / "daemon.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon", "run", "--config", str(pod.config)],
            cwd=pod.workdir,
            env={**os.environ, **pod.env, "PYTHONUNBUFFERED": "1"},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}: {self.output()}")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon did not answer /healthz: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def request(
        self, method: str, path: str, token: str | None = None, body: list[dict[str, Any]] | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        data = None
        if body is not None:
            data = gzip.compress(b"\n".join(json.dumps(r).encode() for r in body))
            headers |= {"Content-Type": "application/x-ndjson", "Content-Encoding": "gzip"}
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http}{path}", data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    started: list[Pod] = []
    yield started
    for p in started:
        p.stop()


def assert_refuses_anonymous(pod: Pod) -> None:
    for method, path, body in (
        ("POST", "/v1/events", [record()]),
        ("GET", "/v1/events", None),
        ("GET", "/v1/admin/integrity", None),
    ):
        status, answer = pod.request(method, path, body=body)
        assert status == 401, (method, path, status, answer)
        status, _ = pod.request(method, path, token="tk_not-a-token", body=body)
        assert status == 401, (method, path, status)


def test_rendered_manifests_pass_check_config_and_run_refusing_anonymous_requests(
    tmp_path: Path, tokens: dict[str, Token], signing_key: Ed25519PrivateKey, pods: list[Pod]
) -> None:
    api_tokens = "".join(t.entry + "\n" for t in tokens.values())
    pod = render_pod(tmp_path / "pod", {"api-tokens": api_tokens, "signing-key.pem": pem(signing_key)})
    checked = run_cli(pod, "check-config", str(pod.config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith(": ok")

    daemon = Pod(pod)
    pods.append(daemon)
    assert_refuses_anonymous(daemon)
    # With the Secret's tokens: the producer sends, the auditor reads, the admin administers.
    event = record()
    status, answer = daemon.request("POST", "/v1/events", tokens["producer"].secret, [event])
    assert status == 202 and answer["accepted"] == 1, answer
    status, _ = daemon.request("GET", "/v1/events?limit=1", tokens["auditor"].secret)
    assert status == 200
    status, _ = daemon.request("GET", "/v1/admin/integrity", tokens["admin"].secret)
    assert status == 200
    # Roles still bind: a producer may not read.
    assert daemon.request("GET", "/v1/events", tokens["producer"].secret)[0] == 403

    # The key that signs is the Secret's: the daemon reports its id, and the public key it keeps
    # on the data volume (what `keys export-public` pins) is the one derived from the example key.
    expected = Signer("trailkeeper", signing_key).verifier
    (loaded,) = [e for e in daemon.logs() if e.get("event") == "integrity.key_loaded"]
    assert loaded["key_id"] == expected.key_id.hex()
    exported = run_cli(pod, "keys", "export-public", "--config", str(pod.config))
    assert exported.returncode == 0, exported.stderr
    (active,) = [k for k in json.loads(exported.stdout)["keys"] if k["status"] == "active"]
    assert active["vkey"] == expected.vkey()
    # The private key stays in the Secret: nothing private is copied to the volume.
    data = pod.host("/var/lib/trailkeeper")
    assert not [p for p in data.rglob("*.key")], "a private key was written to the data volume"

    # The end-of-run digest is signed with that key: the archive validates against it alone.
    assert daemon.stop() == 0, daemon.output()
    validated = run_cli(pod, "validate", "--config", str(pod.config), "--public-key", expected.vkey())
    assert validated.returncode == 0, validated.stdout + validated.stderr


def test_manifests_as_committed_name_the_empty_signing_key(tmp_path: Path) -> None:
    pod = render_pod(tmp_path / "pod", {})
    checked = run_cli(pod, "check-config", str(pod.config))
    assert checked.returncode == 1
    key = pod.secret_files["signing-key.pem"]
    assert checked.stderr.splitlines()[1:] == [
        f"  - integrity.key_file: {key} is empty: "
        + (
            "it must hold an unencrypted PEM Ed25519 private key (make one with "
            "`openssl genpkey -algorithm ed25519`)"
        )
    ], checked.stderr
    ran = run_cli(pod, "run", "--config", str(pod.config))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert f"integrity.key_file: {key} is empty" in ran.stderr


def test_an_empty_token_secret_starts_and_refuses_everything_saying_how_to_add_tokens(
    tmp_path: Path, signing_key: Ed25519PrivateKey, pods: list[Pod]
) -> None:
    pod = render_pod(tmp_path / "pod", {"api-tokens": "", "signing-key.pem": pem(signing_key)})
    daemon = Pod(pod)
    pods.append(daemon)
    assert_refuses_anonymous(daemon)
    (warning,) = [e for e in daemon.logs() if e.get("event") == "auth.no_tokens"]
    assert warning["level"] == "warning" if "level" in warning else warning["log_level"] == "warning"
    assert "trailkeeper tokens create" in warning["action"]
    assert not [e for e in daemon.logs() if e.get("event") == "auth.ingest_open"]


def test_the_image_config_refuses_anonymous_requests(
    tmp_path: Path, tokens: dict[str, Token], pods: list[Pod]
) -> None:
    """config/examples/container.yaml, the image's /etc/trailkeeper/trailkeeper.yaml."""
    data = tmp_path / "data"
    data.mkdir()
    http, metrics = free_port(), free_port()
    env = {
        "TRAILKEEPER_DATA_DIR": str(data),
        "TRAILKEEPER_HTTP_LISTEN": f"127.0.0.1:{http}",
        "TRAILKEEPER_METRICS_LISTEN": f"127.0.0.1:{metrics}",
    }
    config = tmp_path / "etc" / "trailkeeper.yaml"
    config.parent.mkdir()
    config.write_text((ROOT / "config" / "examples" / "container.yaml").read_text())
    image = RenderedPod(tmp_path, config, data, env, ports={8787: http})
    daemon = Pod(image)
    pods.append(daemon)
    assert_refuses_anonymous(daemon)
    assert [e for e in daemon.logs() if e.get("event") == "auth.no_tokens"]
    assert daemon.stop() == 0

    # A mounted token file, named by TRAILKEEPER_TOKENS_FILE, lets its producer in.
    token_file = tmp_path / "secrets" / "api-tokens"
    token_file.parent.mkdir()
    token_file.write_text(tokens["producer"].entry + "\n")
    image.env["TRAILKEEPER_TOKENS_FILE"] = str(token_file)
    daemon = Pod(image)
    pods.append(daemon)
    assert daemon.request("POST", "/v1/events", body=[record()])[0] == 401
    assert daemon.request("POST", "/v1/events", tokens["producer"].secret, [record()])[0] == 202


# --- the ConfigMap follows edits: mounted as a directory, watched by the daemon ----------------


def rendered(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in kustomize_build() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_the_configmap_is_mounted_as_a_directory_and_watched() -> None:
    sts = rendered("StatefulSet", "trailkeeper")
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config_volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    mounts = [m for m in container["volumeMounts"] if m["name"] in config_volumes]
    assert mounts, "the ConfigMap is not mounted"
    for mount in mounts:
        assert "subPath" not in mount, f"{mount}: a subPath mount never sees a ConfigMap update"
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    (mount,) = [m for m in mounts if config_path.startswith(m["mountPath"].rstrip("/") + "/")]
    key = config_path[len(mount["mountPath"].rstrip("/")) + 1 :]
    cm = rendered("ConfigMap", config_volumes[mount["name"]])
    assert key in cm["data"], f"--config {config_path} names no key of the ConfigMap"
    assert re.search(r"^config_watch: \d+(ms|s)$", cm["data"][key], re.M), "the ConfigMap turns no watch on"


def _rules_loaded(metrics_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    m = re.search(r"^trailkeeper_rules_loaded (\S+)$", text, re.M)
    assert m, "trailkeeper_rules_loaded missing from /metrics"
    return int(float(m.group(1)))


def test_a_configmap_update_reaches_the_running_pod_without_a_signal(
    tmp_path: Path, signing_key: Ed25519PrivateKey, pods: list[Pod]
) -> None:
    pod = render_pod(tmp_path / "pod", {"api-tokens": "", "signing-key.pem": pem(signing_key)})
    daemon = Pod(pod)
    pods.append(daemon)
    before = _rules_loaded(pod.ports[9464])
    text = pod.config.read_text()
    # What `kubectl apply` of an edited ConfigMap leads to: the kubelet swaps ..data.
    kubelet_volume(pod.config.parent, {pod.config.name: text + "rules: {disable: [cis.4.3-root-usage]}\n"})
    deadline = time.monotonic() + 20
    while _rules_loaded(pod.ports[9464]) != before - 1:
        assert time.monotonic() < deadline, f"the change was not reloaded: {daemon.output()}"
        time.sleep(0.2)
    assert [e for e in daemon.logs() if e.get("event") == "config.changed"]


# --- the NetworkPolicy: who may reach which port ------------------------------------------------


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; {} selects everything."""
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def admits(policy: dict[str, Any], port: int, namespace: dict[str, str], pod_labels: dict[str, str]) -> bool:
    """Whether ``policy`` lets a pod with ``pod_labels`` in a namespace labelled ``namespace``
    (kubernetes.io/metadata.name is the namespace's name) reach ``port`` of the selected pods."""
    own = policy["metadata"]["namespace"]
    for rule in policy["spec"].get("ingress") or []:
        ports = rule.get("ports") or []
        if ports and not any(p.get("port") == port or p.get("port") is None for p in ports):
            continue
        peers = rule.get("from") or []
        if not peers:
            return True  # no from: every source
        for peer in peers:
            if "ipBlock" in peer:
                return True  # addresses, whatever the namespace: treat as open
            ns_selector = peer.get("namespaceSelector")
            if ns_selector is None:
                in_scope = namespace.get("kubernetes.io/metadata.name") == own
            else:
                in_scope = _selects(ns_selector, namespace)
            if in_scope and _selects(peer.get("podSelector"), pod_labels):
                return True
    return False


def ns(name: str, **labels: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name, **labels}


INGEST_LABEL = {"trailkeeper.io/ingest": "true"}


def test_the_network_policy_admits_ingest_and_metrics_only_from_the_documented_peers() -> None:
    policy = rendered("NetworkPolicy", "trailkeeper")
    sts = rendered("StatefulSet", "trailkeeper")
    assert "Ingress" in policy["spec"]["policyTypes"]
    assert policy["metadata"]["namespace"] == sts["metadata"]["namespace"]
    assert _selects(policy["spec"]["podSelector"], sts["spec"]["template"]["metadata"]["labels"])

    app = {"app": "producer"}
    cases = [
        (8787, ns("trailkeeper"), True),
        (8787, ns("payments", **INGEST_LABEL), True),
        (8787, ns("payments"), False),
        (8787, ns("monitoring"), False),
        (8787, ns("default"), False),
        (9464, ns("monitoring"), True),
        (9464, ns("payments", **INGEST_LABEL), False),
        (9464, ns("trailkeeper"), False),
        (9464, ns("default"), False),
        (22, ns("trailkeeper"), False),
    ]
    for port, namespace, expected in cases:
        assert admits(policy, port, namespace, app) is expected, (port, namespace)
    text = (ROOT / "deploy" / "k8s" / "networkpolicy.yaml").read_text()
    assert "trailkeeper.io/ingest=true" in text, "the label producers need is not documented"


def test_no_rule_opens_ingest_to_every_namespace() -> None:
    policy = rendered("NetworkPolicy", "trailkeeper")
    for i, rule in enumerate(policy["spec"]["ingress"]):
        ports = {p.get("port") for p in rule.get("ports") or []}
        assert ports, f"ingress[{i}] admits every port"
        if 8787 not in ports and "http" not in ports:
            continue
        peers = rule.get("from") or []
        assert peers, f"ingress[{i}] admits every source to 8787"
        for peer in peers:
            assert "ipBlock" not in peer, f"ingress[{i}]: an ipBlock ignores namespaces"
            selector = peer.get("namespaceSelector")
            if selector is not None:
                assert selector.get("matchLabels") or selector.get("matchExpressions"), (
                    f"ingress[{i}]: namespaceSelector {{}} admits every namespace to 8787"
                )
