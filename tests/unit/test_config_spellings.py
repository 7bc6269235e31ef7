"""Each config key has one spelling: the one the reference documents. Any other is an unknown key."""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from daemon.config import Config, ConfigError, parse_config
from daemon.notify.config import EmailSubscription


def _models(annotation: object) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    for arg in typing.get_args(annotation):
        yield from _models(arg)


def _all_models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [Config]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo.extend(_models(field.annotation))
    return seen


def test_the_walk_reaches_the_nested_models() -> None:
    names = {m.__name__ for m in _all_models()}
    # Through lists, optionals, dicts and discriminated unions.
    assert {"BackupJobConfig", "EmailSubscription", "S3StoreConfig", "ObjectLockConfig"} <= names


@pytest.mark.parametrize("model", _all_models(), ids=lambda m: m.__name__)
def test_no_model_accepts_a_second_spelling(model: type[BaseModel]) -> None:
    cfg = model.model_config
    assert not cfg.get("populate_by_name"), f"{model.__name__} accepts field names beside aliases"
    assert not cfg.get("validate_by_name"), f"{model.__name__} accepts field names beside aliases"
    assert cfg.get("alias_generator") is None
    for name, field in model.model_fields.items():
        # An alias replaces the Python name as the one YAML spelling; a choice of aliases would not.
        assert field.validation_alias is None or field.validation_alias == field.alias, (
            f"{model.__name__}.{name} has validation aliases {field.validation_alias!r}"
        )
        assert type(field.alias) in (str, types.NoneType)


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.problems


STORES = "stores: {local: {type: local, path: /tmp/tk-a}, offsite: {type: local, path: /tmp/tk-b}}\n"


@pytest.mark.parametrize(
    ("job", "unknown", "missing"),
    [
        ("{name: j, source: local, to: offsite}", "source", "from"),
        ("{name: j, from: local, destination: offsite}", "destination", "to"),
    ],
)
def test_backup_job_refuses_the_python_names(job: str, unknown: str, missing: str) -> None:
    problems = _problems(STORES + f"backup:\n  jobs:\n    - {job}\n")
    assert f"backup.jobs[0].{unknown}: unknown key (check its spelling and indentation)" in problems
    assert any(p.startswith(f"backup.jobs[0].{missing}:") for p in problems), problems


def test_backup_job_takes_the_documented_spelling() -> None:
    config = parse_config(STORES + "backup:\n  jobs:\n    - {name: j, from: local, to: offsite}\n")
    (job,) = config.backup.jobs
    assert (job.source, job.destination) == ("local", "offsite")


EMAIL = (
    "notify:\n  topics:\n    security:\n      subscriptions:\n"
    "        - {{name: m, protocol: email, host: smtp.example.org, {sender}, to: [soc@example.org]}}\n"
)


def test_email_refuses_sender() -> None:
    problems = _problems(EMAIL.format(sender="sender: tk@example.org"))
    assert any(
        p.startswith("notify.topics.security.subscriptions[0]") and "sender: unknown key" in p
        for p in problems
    ), problems


def test_email_takes_from() -> None:
    config = parse_config(EMAIL.format(sender="from: tk@example.org"))
    (sub,) = config.notify.topics["security"].subscriptions
    assert isinstance(sub, EmailSubscription)
    assert sub.sender == "tk@example.org"
