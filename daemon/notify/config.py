"""Configuration of topics, subscriptions, routes and delivery.

``notify.topics`` names topics; each topic has subscriptions, one per endpoint,
with a ``protocol`` and that protocol's settings. ``notify.routes`` send rule
matches to topics, optionally grouped to tame alert storms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from daemon.events import CANONICAL_FIELDS
from daemon.units import Duration

_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
SEVERITIES = ("info", "low", "medium", "high", "critical")


def severity_rank(value: str | None) -> int:
    """Rank of a severity; unknown severities rank lowest so a threshold never lets them slip by."""
    try:
        return SEVERITIES.index((value or "").lower())
    except ValueError:
        return -1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemplateConfig(_Strict):
    """Jinja2 templates (sandboxed) overriding a protocol's defaults. Unset parts keep the default."""

    title: str | None = None
    body: str | None = None


class DeliveryConfig(_Strict):
    """Retry and storm control of one subscription (defaults come from ``notify.delivery``)."""

    max_age: Duration = 3600.0  # then the message is parked in the dead-letter store
    initial_backoff: Duration = 0.5
    max_backoff: Duration = 300.0
    timeout: Duration = 10.0  # per attempt
    rate_limit: float | None = Field(default=None, gt=0)  # messages per second; None = unlimited
    burst: int = Field(default=10, ge=1)


class _SubscriptionBase(_Strict):
    name: str = Field(pattern=_NAME)
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    delivery: DeliveryConfig | None = None


class _HttpBase(_SubscriptionBase):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    verify_tls: bool = True
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v


class WebhookSubscription(_HttpBase):
    """A plain HTTP(S) endpoint, signed per Standard Webhooks when ``secrets`` are set."""

    protocol: Literal["webhook"]
    # whsec_<base64>: several secrets give several signatures, for rotation.
    secrets: list[str] = Field(default_factory=list)
    require_confirmation: bool = False

    @field_validator("secrets")
    @classmethod
    def _whsec(cls, v: list[str]) -> list[str]:
        from daemon.notify.signing import decode_secret

        for s in v:
            decode_secret(s)
        return v


class SlackSubscription(_HttpBase):
    protocol: Literal["slack"]


class TeamsSubscription(_HttpBase):
    protocol: Literal["teams"]


class FeishuSubscription(_HttpBase):
    protocol: Literal["feishu"]
    secret: str | None = None  # the bot's signature-verification secret


class DingTalkSubscription(_HttpBase):
    protocol: Literal["dingtalk"]
    secret: str | None = None  # the robot's "SEC..." signing secret
    at_mobiles: list[str] = Field(default_factory=list)


class WeComSubscription(_HttpBase):
    protocol: Literal["wecom"]
    mentioned_list: list[str] = Field(default_factory=list)


class EmailSubscription(_SubscriptionBase):
    """SMTP via aiosmtplib. ``security``: none, starttls (upgrade after EHLO) or tls (implicit)."""

    protocol: Literal["email"]
    host: str
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["none", "starttls", "tls"] = "starttls"
    username: str | None = None
    password: str | None = None
    verify_tls: bool = True
    ca_file: Path | None = None
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SnsSubscription(_SubscriptionBase):
    """AWS SNS Publish (any SNS-compatible endpoint)."""

    protocol: Literal["sns"]
    topic_arn: str
    region: str = "us-east-1"
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None


Subscription = Annotated[
    WebhookSubscription
    | SlackSubscription
    | TeamsSubscription
    | FeishuSubscription
    | DingTalkSubscription
    | WeComSubscription
    | EmailSubscription
    | SnsSubscription,
    Field(discriminator="protocol"),
]


class TopicConfig(_Strict):
    subscriptions: list[Subscription] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> TopicConfig:
        seen: set[str] = set()
        for i, s in enumerate(self.subscriptions):
            if s.name in seen:
                raise ValueError(f"subscriptions[{i}].name: subscription {s.name!r} is defined twice")
            seen.add(s.name)
        return self


class RouteConfig(_Strict):
    """Which matches go to a topic, and how they are grouped.

    Every filter given must hold (categories, min_severity, rules, tenants, pattern).
    With ``group_by`` empty each event is its own message, sent at once. With
    ``group_by`` set (canonical fields), events with equal values form a group:
    the first message waits ``group_wait`` to collect more, later events of a
    live group are summarised at most every ``group_interval``, and a group quiet
    for ``repeat_interval`` is forgotten, so the next event opens a new one.
    """

    topic: str
    categories: list[str] = Field(default_factory=list)
    min_severity: str | None = None
    rules: list[str] = Field(default_factory=list)
    tenants: list[str] = Field(default_factory=list)
    pattern: dict[str, object] | None = None
    group_by: list[str] = Field(default_factory=list)
    group_wait: Duration = 30.0
    group_interval: Duration = 300.0
    repeat_interval: Duration = 3600.0

    @field_validator("group_by")
    @classmethod
    def _fields(cls, v: list[str]) -> list[str]:
        bad = [f for f in v if f not in CANONICAL_FIELDS and f not in ("rule", "category")]
        if bad:
            raise ValueError(
                f"unknown field(s) {bad}; group_by takes canonical fields ({', '.join(CANONICAL_FIELDS)}), "
                "rule or category"
            )
        return v

    @field_validator("min_severity")
    @classmethod
    def _severity(cls, v: str | None) -> str | None:
        if v is not None and severity_rank(v) < 0:
            raise ValueError(f"unknown severity {v!r}; use one of {', '.join(SEVERITIES)}")
        return v


class NotifyConfig(_Strict):
    """``notify:`` in trailkeeper.yaml."""

    topics: dict[str, TopicConfig] = Field(default_factory=dict)
    routes: list[RouteConfig] = Field(default_factory=list)
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    # Base URL of this daemon's API as endpoints see it, for confirmation links.
    # Unset: http://<ingest listen address>.
    public_url: str | None = None
    # How long delivered message ids are kept to drop duplicates (replays, resent events).
    dedupe_window: Duration = 86400.0
    max_events_listed: int = Field(default=10, ge=1, le=100)

    @model_validator(mode="after")
    def _references(self) -> NotifyConfig:
        errors = []
        for name in self.topics:
            if not re.match(_NAME, name):
                errors.append(f"topics.{name}: a topic name uses letters, digits, '_', '.', '-'")
        for i, route in enumerate(self.routes):
            if route.topic not in self.topics:
                errors.append(f"routes[{i}].topic: no topic named {route.topic!r} in notify.topics")
        if errors:
            raise ValueError("; ".join(errors))
        return self
