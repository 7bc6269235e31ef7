"""check_notify: every notification problem `run` would stop on, each with its YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError
from daemon.notify.config import NotifyConfig
from daemon.notify.notifier import check_notify, probe_address


def _problems(doc: dict[str, object]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        check_notify(NotifyConfig.model_validate(doc), "t.yaml")
    assert err.value.source == "t.yaml"
    return err.value.problems


def _hook(**extra: object) -> dict[str, object]:
    return {"name": "h", "protocol": "webhook", "url": "https://127.0.0.1:9/x", **extra}


def test_every_problem_is_collected_with_its_yaml_path(tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    doc = {
        "topics": {
            "sec": {
                "subscriptions": [
                    _hook(template={"body": "{% for x in %}"}),
                    _hook(name="h2", ca_file=str(garbage)),
                    _hook(name="h3", client_key=str(garbage)),
                    {
                        "name": "mail",
                        "protocol": "email",
                        "host": "127.0.0.1",
                        "from": "a@example.org",
                        "to": ["b@example.org"],
                        "ca_file": str(tmp_path / "missing.pem"),
                    },
                ]
            }
        },
        "routes": [
            {"topic": "sec", "pattern": {"operation": ["x"]}},
            {"topic": "sec", "pattern": {"operation": [{"numeric": ["~", 1]}]}},
        ],
    }
    problems = _problems(doc)
    assert len(problems) == 5, problems
    p_body, p_ca, p_key, p_mail, p_route = problems
    assert p_body.startswith("notify.topics.sec.subscriptions[0].template.body: template does not compile")
    assert p_ca.startswith("notify.topics.sec.subscriptions[1]: the TLS files do not load (ca_file ")
    assert p_key.startswith("notify.topics.sec.subscriptions[2].client_key: set without client_cert")
    assert p_mail.startswith("notify.topics.sec.subscriptions[3].ca_file: cannot read ")
    assert "missing.pem" in p_mail
    assert p_route.startswith("notify.routes[1].pattern.operation[0].numeric[0]: unknown numeric operator")


def test_a_valid_section_passes_and_plain_email_needs_no_ca_file(tmp_path: Path) -> None:
    doc = {
        "topics": {
            "sec": {
                "subscriptions": [
                    _hook(template={"title": "[{{ severity|upper }}]", "body": "{{ event.id }}"}),
                    {
                        "name": "mail",
                        "protocol": "email",
                        "host": "127.0.0.1",
                        "security": "none",
                        "from": "a@example.org",
                        "to": ["b@example.org"],
                        "ca_file": str(tmp_path / "unused.pem"),
                    },
                ]
            }
        },
        "routes": [{"topic": "sec", "pattern": {"record": {"anything": ["x"]}, "service": ["s3"]}}],
    }
    check_notify(NotifyConfig.model_validate(doc), "t.yaml")


def test_the_probe_address_is_the_endpoints_host_and_port() -> None:
    cfg = NotifyConfig.model_validate(
        {
            "topics": {
                "t": {
                    "subscriptions": [
                        _hook(url="https://hooks.example.org/a?token=x"),
                        _hook(name="b", url="http://[::1]:8080/a"),
                        {
                            "name": "s",
                            "protocol": "sns",
                            "topic_arn": "arn:aws:sns:eu-west-1:1:t",
                            "region": "eu-west-1",
                        },
                        {
                            "name": "m",
                            "protocol": "email",
                            "host": "smtp.example.org",
                            "port": 465,
                            "from": "a@b.c",
                            "to": ["d@e.f"],
                        },
                    ]
                }
            }
        }
    )
    subs = cfg.topics["t"].subscriptions
    assert [probe_address(s) for s in subs] == [
        ("hooks.example.org", 443),
        ("::1", 8080),
        ("sns.eu-west-1.amazonaws.com", 443),
        ("smtp.example.org", 465),
    ]
