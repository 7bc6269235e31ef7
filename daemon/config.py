"""The YAML configuration: strict pydantic models, ``${ENV}`` interpolation, readable errors.

Component configs live beside their component; this module assembles them into
the root model and is the one place that registers them.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from daemon.api.auth import AuthConfig
from daemon.archive.backup import BackupConfig
from daemon.archive.retention import RetentionConfig
from daemon.index.base import IndexConfig
from daemon.integrity.config import IntegrityConfig
from daemon.notify.config import NotifyConfig
from daemon.rules.config import RulesConfig
from daemon.sources.registry import SourceConfig
from daemon.stores import STORE_TYPES, StoreConfig
from daemon.stores.local import LocalStoreConfig
from daemon.units import Duration, Size

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    # Attribute docstrings become field descriptions: they are the configuration
    # reference (daemon/configdoc.py), so every field needs one.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class TlsConfig(Strict):
    """Serve HTTPS with this certificate chain and private key (PEM files)."""

    cert_file: Path
    """PEM certificate chain (server certificate first)."""
    key_file: Path
    """PEM private key of that certificate."""


class HttpIngestConfig(Strict):
    """HTTP ingest: ``POST /v1/events``, and the query API on the same listener."""

    listen: str = "127.0.0.1:8787"
    """host:port to bind; port 0 picks a free port. Use 0.0.0.0 in a container."""
    max_event_bytes: Size = 262_144
    """One event over this size is rejected and quarantined (CloudTrail's limit is 256KiB)."""
    max_body_bytes: Size = 32 * 1024 * 1024
    """A request body over this size is refused with 413."""
    retry_after: Duration = 5.0
    """Retry-After sent with 503 when the journal is at its disk budget."""
    tokens: list[str] = Field(default_factory=list)
    """Deprecated, use auth.tokens: SHA-256 hex digests of producer tokens (``sha256:<hex>``
    or bare hex); each acts as a producer for every tenant, named ingest-token-N."""
    decode_workers: int | None = Field(default=None, ge=0)
    """Processes that parse request bodies and queue batches, read Redis streams ahead and
    build archive files (compression, hashing) outside the daemon's own process, so that work
    never competes with the event loop; null: one per CPU; 0: all of it in the daemon's own
    process."""
    tls: TlsConfig | None = None
    """Serve ingest and the query API over HTTPS with these files; null: plain HTTP."""


class IngestConfig(Strict):
    """Sources that accept events over the network."""

    http: HttpIngestConfig | None = Field(default_factory=HttpIngestConfig)
    """HTTP ingest; null disables the HTTP listener."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """Queue sources (sqs, nats, amqp, redis); each message is acked only once its events are durable."""

    @model_validator(mode="after")
    def _unique_sources(self) -> IngestConfig:
        seen: dict[str, int] = {}
        for i, source in enumerate(self.sources):
            name = source.source_name
            if name == "http":
                raise ValueError(f"sources[{i}].name: 'http' is the HTTP ingest's name; choose another")
            if name in seen:
                raise ValueError(
                    f"sources[{i}].name: {name!r} is already used by sources[{seen[name]}]; "
                    "give each source a distinct name (it labels metrics and events)"
                )
            seen[name] = i
        return self


class JournalConfig(Strict):
    """The durable local log every source appends to and every consumer reads."""

    dir: Path = Path("var/journal")
    """Directory of segments, cursors and consumer state; keep it on persistent storage."""
    max_bytes: Size = 2 * 1024**3
    """Disk budget; beyond it HTTP ingest answers 503 and queue sources stop pulling."""
    segment_bytes: Size = 64 * 1024**2
    """Segment size; a segment is deleted once every consumer has passed it."""
    fsync: bool = True
    """Acknowledge only after fsync; turning this off risks losing acknowledged events."""

    @model_validator(mode="after")
    def _segments_fit(self) -> JournalConfig:
        # The newest segment is never deleted, and a full journal refuses intake until
        # usage falls under 90% of the budget: a segment as big as that would never clear.
        if self.segment_bytes > self.max_bytes // 4:
            raise ValueError(
                f"segment_bytes ({self.segment_bytes}) must be at most a quarter of max_bytes "
                f"({self.max_bytes}); lower segment_bytes or raise max_bytes"
            )
        return self


class QuarantineConfig(Strict):
    """Where rejected input is kept, with its raw bytes and reason."""

    store: str = "local"
    """Name of the store (under stores) that keeps rejected input."""
    prefix: str = "quarantine"
    """Key prefix inside that store."""
    max_age: Duration = 10.0
    """How long rejected items are batched before their file is written."""


class FileConfig(Strict):
    """When an archive file closes, and how it is compressed."""

    max_events: int = Field(default=10_000, ge=1)
    """Close a file after this many events."""
    max_bytes: Size = 16 * 1024**2
    """... or after this many uncompressed bytes."""
    max_age: Duration = 60.0
    """... or when its oldest event has waited this long."""
    compression: Literal["gzip", "zstd"] = "gzip"
    """File compression: gzip (.json.gz, what CloudTrail tools read) or zstd (.json.zst)."""
    compression_level: int = Field(default=1, ge=1, le=19)
    """Compression level: gzip 1 (fastest) to 9, zstd 1 to 19. On real CloudTrail records gzip
    level 1 makes files about 13% larger than level 6 at about a third of the CPU, which is
    what lets the archive keep up with ingest on a small machine."""

    @model_validator(mode="after")
    def _level(self) -> FileConfig:
        if self.compression == "gzip" and self.compression_level > 9:
            raise ValueError("compression_level: gzip takes 1 to 9")
        return self


class TrackerConfig(Strict):
    """A tracker selects events and delivers them as files to a store under a prefix."""

    name: str = Field(pattern=_NAME)
    """Tracker name; appears in archive keys and metric labels."""
    store: str = "local"
    """Name of the store (under stores) that receives the files."""
    prefix: str = "trails"
    """Key prefix: <prefix>/<tracker>/<tenant>/<region>/YYYY/MM/DD/..."""
    retention_days: int | None = Field(default=None, ge=1, le=36500)
    """Archive files older than this many days are deleted by the retention sweeper (never
    digests, never an S3 object whose Object Lock has not expired). Absent: kept forever."""
    file: FileConfig = Field(default_factory=FileConfig)
    """When files close and how they are compressed."""
    verify: bool = True
    """Sign this tracker's files: Merkle leaves, signed checkpoints and a digest chain."""
    filter: dict[str, Any] | None = None
    """An event pattern (the rules' language) selecting this tracker's events; null: all events."""
    layout: Literal["trailkeeper", "cloudtrail"] = "trailkeeper"
    """Archive key layout. trailkeeper: <prefix>/<tracker>/<tenant>/<region>/YYYY/MM/DD/...;
    cloudtrail: CloudTrail's own, <prefix>/AWSLogs/<tenant>/CloudTrail/<region>/YYYY/MM/DD/
    <tenant>_CloudTrail_<region>_<time>_<unique>.json.gz, which tools made for CloudTrail archives
    read as they are (needs gzip; one such tracker per store and prefix). Digests stay under
    <prefix>/<tracker>/_digest either way."""

    @model_validator(mode="after")
    def _cloudtrail_gzip(self) -> TrackerConfig:
        if self.layout == "cloudtrail" and self.file.compression != "gzip":
            raise ValueError(
                "file.compression: layout cloudtrail writes .json.gz as CloudTrail does; use gzip"
            )
        return self

    @field_validator("filter")
    @classmethod
    def _pattern(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            from daemon.rules.pattern import Pattern, PatternError

            try:
                Pattern(value, path="filter")
            except PatternError as exc:
                raise ValueError(str(exc)) from exc
        return value


class MetricsConfig(Strict):
    """The Prometheus metrics endpoint."""

    listen: str | None = "127.0.0.1:9464"
    """host:port of the Prometheus /metrics listener; null disables it."""


class LogConfig(Strict):
    """Structured logs on stderr."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level logged."""
    format: Literal["json", "console"] = "json"
    """json (one object per line, for production) or console."""


def _default_trackers() -> list[TrackerConfig]:
    return [TrackerConfig(name="default")]


def _default_stores() -> dict[str, StoreConfig]:
    return {"local": LocalStoreConfig()}


class Config(Strict):
    """The root of ``trailkeeper.yaml``."""

    writer_id: str | None = Field(default=None, pattern=_NAME)
    """Identifies this replica in archive keys and digest chains. Unset: a random id is
    generated once and kept in the journal directory, so it survives restarts."""
    shutdown_grace: Duration = Field(default=30.0, gt=0)
    """Longest time SIGTERM waits, in total, to store open archive files and write the
    chain-end digests before the process exits. One budget for every stage: a store that
    stays down does not make each stage wait its own. What is not stored by then stays in
    the journal and is archived on the next start (deterministic keys: once in the store).
    Keep it below the orchestrator's kill timeout (Kubernetes terminationGracePeriodSeconds)."""
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    """Sources that accept events."""
    journal: JournalConfig = Field(default_factory=JournalConfig)
    """The durable local log."""
    stores: dict[str, StoreConfig] = Field(default_factory=_default_stores)
    """Named object stores; trackers and the quarantine refer to them by name."""
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    """Where rejected input is kept."""
    trackers: list[TrackerConfig] = Field(default_factory=_default_trackers)
    """Trackers: each delivers the events it selects as files to a store."""
    rules: RulesConfig = Field(default_factory=RulesConfig)
    """Key-operation classification: built-in packs, rule files, disabled rule ids."""
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    """Topics, subscriptions and routes for key-event notifications."""
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    """When expired archive files are swept."""
    backup: BackupConfig = Field(default_factory=BackupConfig)
    """Periodic verified copies of archive objects to a second store."""
    index: IndexConfig = Field(default_factory=IndexConfig)
    """The query index of recent events behind GET /v1/events."""
    auth: AuthConfig = Field(default_factory=AuthConfig)
    """Bearer tokens, roles, tenant scopes and rate limits for the HTTP API."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics endpoint."""
    log: LogConfig = Field(default_factory=LogConfig)
    """Structured logging."""
    integrity: IntegrityConfig = Field(default_factory=IntegrityConfig)
    """Signing keys and digest chains that make the archive tamper-evident."""
    config_watch: Duration | None = None
    """Poll the config file (and the rule files it names) this often and reload when their
    content changes, as SIGHUP does; null: reload on SIGHUP only. Follows symlinks on every
    poll, so a Kubernetes ConfigMap mounted as a directory (not with subPath) is picked up
    after the kubelet's update; the shipped manifests set 5s. A content that fails to load
    is logged once and the config in force stays. Off by default, because an editor saving
    in place could have a half-written file loaded. This key itself is read at start only."""

    @field_validator("config_watch")
    @classmethod
    def _watch_interval(cls, value: float | None) -> float | None:
        if value is not None and value <= 0:
            raise ValueError("must be above 0 (such as 5s); write null to reload on SIGHUP only")
        return value

    @model_validator(mode="after")
    def _references(self) -> Config:
        errors: list[str] = []
        if self.quarantine.store not in self.stores:
            errors.append(f"quarantine.store: no store named {self.quarantine.store!r} in stores")
        seen: set[str] = set()
        for i, tracker in enumerate(self.trackers):
            if tracker.store not in self.stores:
                errors.append(f"trackers[{i}].store: no store named {tracker.store!r} in stores")
            if tracker.name in seen:
                errors.append(f"trackers[{i}].name: tracker {tracker.name!r} is defined twice")
            seen.add(tracker.name)
        cloudtrail: dict[tuple[str, str], str] = {}
        for tracker in self.trackers:
            if tracker.layout == "cloudtrail":
                cloudtrail.setdefault((tracker.store, tracker.prefix.strip("/")), tracker.name)
        for i, tracker in enumerate(self.trackers):
            owner = cloudtrail.get((tracker.store, tracker.prefix.strip("/")))
            if tracker.layout == "cloudtrail" and owner != tracker.name:
                errors.append(
                    f"trackers[{i}].layout: tracker {owner!r} already writes the CloudTrail layout under "
                    f"store {tracker.store!r} prefix {tracker.prefix!r}; give each its own prefix"
                )
            elif owner is not None and tracker.layout != "cloudtrail" and tracker.name == "AWSLogs":
                errors.append(
                    f"trackers[{i}].name: AWSLogs is where tracker {owner!r} writes the CloudTrail layout "
                    f"under prefix {tracker.prefix!r}; rename the tracker"
                )
        jobs: set[str] = set()
        for i, job in enumerate(self.backup.jobs):
            for field_name, store in (("from", job.source), ("to", job.destination)):
                if store not in self.stores:
                    errors.append(f"backup.jobs[{i}].{field_name}: no store named {store!r} in stores")
            if job.name in jobs:
                errors.append(f"backup.jobs[{i}].name: backup job {job.name!r} is defined twice")
            jobs.add(job.name)
        for i, name in enumerate(self.integrity.checkpoint_stores):
            if name not in self.stores:
                errors.append(f"integrity.checkpoint_stores[{i}]: no store named {name!r} in stores")
        if errors:
            raise ValueError("; ".join(errors))
        return self


class ConfigError(Exception):
    """The configuration cannot be used. ``problems`` lists each one with its YAML path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "(top level)"


def _interpolate(value: Any, path: tuple[int | str, ...], problems: list[str]) -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string of the document."""
    if isinstance(value, dict):
        return {k: _interpolate(v, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, (*path, i), problems) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            problems.append(
                f"{_yaml_path(path)}: environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
            return ""

        return _ENV_RE.sub(sub, value)
    return value


def _pydantic_problems(exc: ValidationError) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not str(p).startswith("function-"))
        if len(loc) >= 3 and loc[0] == "stores" and loc[2] in STORE_TYPES:
            # The discriminated union puts the chosen type into the path; YAML has no such level.
            loc = loc[:2] + loc[3:]
        path = _yaml_path(loc)
        if err["type"] == "extra_forbidden":
            problems.append(f"{path}: unknown key (check its spelling and indentation)")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{path}: {msg}")
    return problems


def parse_config(text: str, source: str = "<config>") -> Config:
    """Parse and validate YAML text. Raises ConfigError listing every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(source, [f"not valid YAML: {exc}"]) from exc
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(source, ["(top level): expected a mapping of sections"])
    problems: list[str] = []
    doc = _interpolate(doc, (), problems)
    try:
        config = Config.model_validate(doc)
    except ValidationError as exc:
        problems += _pydantic_problems(exc)
        raise ConfigError(source, problems) from exc
    if problems:
        raise ConfigError(source, problems)
    return config


def embedded_default_text() -> str:
    return resources.files("daemon").joinpath("trailkeeper.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path | None) -> Config:
    """Load a config file, or the embedded default when ``path`` is None."""
    if path is None:
        return parse_config(embedded_default_text(), "embedded default config")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(p), [f"cannot read the file: {exc.strerror}"]) from exc
    return parse_config(text, str(p))
