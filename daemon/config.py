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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.sources import SourceConfig
from daemon.stores import StoreConfig
from daemon.stores.local import LocalStoreConfig
from daemon.units import Duration, Size

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class HttpIngestConfig(Strict):
    """HTTP ingest: ``POST /v1/events``."""

    listen: str = "127.0.0.1:8787"
    max_event_bytes: Size = 262_144
    max_body_bytes: Size = 32 * 1024 * 1024
    retry_after: Duration = 5.0
    tokens: list[str] = Field(default_factory=list)


class IngestConfig(Strict):
    http: HttpIngestConfig | None = Field(default_factory=HttpIngestConfig)
    # Queue sources (sqs, nats, amqp, redis), each acked only once its events are durable.
    sources: list[SourceConfig] = Field(default_factory=list)

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
    max_bytes: Size = 2 * 1024**3
    segment_bytes: Size = 64 * 1024**2
    fsync: bool = True


class QuarantineConfig(Strict):
    """Where rejected input is kept, with its raw bytes and reason."""

    store: str = "local"
    prefix: str = "quarantine"
    max_age: Duration = 10.0


class FileConfig(Strict):
    """When an archive file closes, and how it is compressed."""

    max_events: int = Field(default=10_000, ge=1)
    max_bytes: Size = 16 * 1024**2
    max_age: Duration = 60.0
    compression: Literal["gzip"] = "gzip"
    compression_level: int = Field(default=6, ge=1, le=9)


class TrackerConfig(Strict):
    """A tracker selects events and delivers them as files to a store under a prefix."""

    name: str = Field(pattern=_NAME)
    store: str = "local"
    prefix: str = "trails"
    file: FileConfig = Field(default_factory=FileConfig)


class MetricsConfig(Strict):
    listen: str | None = "127.0.0.1:9464"


class LogConfig(Strict):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


def _default_trackers() -> list[TrackerConfig]:
    return [TrackerConfig(name="default")]


def _default_stores() -> dict[str, StoreConfig]:
    return {"local": LocalStoreConfig()}


class Config(Strict):
    """The root of ``trailkeeper.yaml``."""

    writer_id: str | None = Field(default=None, pattern=_NAME)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    journal: JournalConfig = Field(default_factory=JournalConfig)
    stores: dict[str, StoreConfig] = Field(default_factory=_default_stores)
    quarantine: QuarantineConfig = Field(default_factory=QuarantineConfig)
    trackers: list[TrackerConfig] = Field(default_factory=_default_trackers)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    log: LogConfig = Field(default_factory=LogConfig)

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
        path = _yaml_path(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
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
