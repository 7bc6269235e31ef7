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
    # Attribute docstrings are the configuration reference (daemon/configdoc.py).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class TemplateConfig(_Strict):
    """Jinja2 templates (sandboxed) overriding a protocol's defaults. Unset parts keep the default."""

    title: str | None = None
    """Jinja2 template of the title (email subject, chat heading); null keeps the default."""
    body: str | None = None
    """Jinja2 template of the message text; null keeps the protocol's default."""


class DeliveryConfig(_Strict):
    """Retry and storm control of one subscription (defaults come from ``notify.delivery``)."""

    max_age: Duration = 3600.0
    """How long a message is retried; then it is parked in the dead-letter store."""
    initial_backoff: Duration = 0.5
    """First retry delay; delays grow exponentially with full jitter (Retry-After wins if longer)."""
    max_backoff: Duration = 300.0
    """Longest delay between two attempts."""
    recovery_probe: Duration = Field(default=15.0, gt=0)
    """Longest time delivery stays stalled after a failing endpoint is back, however far the
    backoff has grown: while a message waits for its retry, the endpoint is probed every
    min(max_backoff, recovery_probe), and a probe that succeeds ends the wait at once. The
    probe of an endpoint that could not be reached is a TCP connection (no request reaches
    it); of one that answered with an error, the next attempt itself. Retry-After is honoured."""
    timeout: Duration = 10.0
    """Time limit of one attempt."""
    rate_limit: float | None = Field(default=None, gt=0)
    """Messages per second at most to this endpoint (token bucket); null: unlimited."""
    burst: int = Field(default=10, ge=1)
    """Messages that may go out back to back before the rate limit applies."""


class _SubscriptionBase(_Strict):
    name: str = Field(pattern=_NAME)
    """Subscription name, unique in its topic (outbox file, CLI --subscription TOPIC/NAME)."""
    template: TemplateConfig = Field(default_factory=TemplateConfig)
    """Sandboxed Jinja2 templates overriding the protocol's default title and text."""
    delivery: DeliveryConfig | None = None
    """Retry and rate settings of this subscription; null: notify.delivery."""


class _HttpBase(_SubscriptionBase):
    url: str
    """Endpoint URL (http:// or https://); for chat platforms, the incoming-webhook URL."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP headers sent with every request."""
    verify_tls: bool = True
    """Verify the endpoint's TLS certificate; turn off only for a test endpoint."""
    ca_file: Path | None = None
    """PEM bundle of CAs trusted for the endpoint; null: the system's."""
    client_cert: Path | None = None
    """PEM client certificate for mutual TLS."""
    client_key: Path | None = None
    """PEM key of the client certificate (null: inside client_cert)."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v


class WebhookSubscription(_HttpBase):
    """A plain HTTP(S) endpoint, signed per Standard Webhooks when ``secrets`` are set."""

    protocol: Literal["webhook"]
    """webhook: a JSON document signed per Standard Webhooks."""
    secrets: list[str] = Field(default_factory=list)
    """Standard Webhooks secrets (whsec_<base64>); several give several signatures, for rotation."""
    require_confirmation: bool = False
    """Send a SubscriptionConfirmation first and nothing else until its URL is fetched."""
    include_record: bool = False
    """Add ``record`` to each single-event body: the event as stored (the JSON received, parsed),
    beside the canonical fields. Webhooks only; grouped summaries carry none (no one record
    stands for them)."""

    @field_validator("secrets")
    @classmethod
    def _whsec(cls, v: list[str]) -> list[str]:
        from daemon.notify.signing import decode_secret

        for s in v:
            decode_secret(s)
        return v


class SlackSubscription(_HttpBase):
    protocol: Literal["slack"]
    """slack: an incoming webhook (text plus Block Kit blocks)."""


class TeamsSubscription(_HttpBase):
    protocol: Literal["teams"]
    """teams: a Workflows webhook receiving an Adaptive Card message."""


class FeishuSubscription(_HttpBase):
    protocol: Literal["feishu"]
    """feishu: a Feishu/Lark custom bot (text message)."""
    secret: str | None = None
    """The bot's signature-verification secret; null if signing is off."""


class DingTalkSubscription(_HttpBase):
    protocol: Literal["dingtalk"]
    """dingtalk: a DingTalk custom robot (markdown message)."""
    secret: str | None = None
    """The robot's SEC... signing secret (timestamp and sign added to the URL); null: unsigned."""
    at_mobiles: list[str] = Field(default_factory=list)
    """Mobile numbers to @-mention."""


class WeComSubscription(_HttpBase):
    protocol: Literal["wecom"]
    """wecom: a WeCom group robot (markdown message)."""
    mentioned_list: list[str] = Field(default_factory=list)
    """User ids to mention (kept for templates; markdown messages cannot mention)."""


class EmailSubscription(_SubscriptionBase):
    """SMTP via aiosmtplib. ``security``: none, starttls (upgrade after EHLO) or tls (implicit)."""

    protocol: Literal["email"]
    """email: SMTP via aiosmtplib."""
    host: str
    """SMTP server host."""
    port: int = Field(default=587, ge=1, le=65535)
    """SMTP server port (587 submission, 465 implicit TLS, 25 relay)."""
    security: Literal["none", "starttls", "tls"] = "starttls"
    """none, starttls (upgrade after EHLO) or tls (implicit TLS)."""
    username: str | None = None
    """SMTP AUTH user; null: no authentication."""
    password: str | None = None
    """SMTP AUTH password (use ${ENV})."""
    verify_tls: bool = True
    """Verify the server's certificate."""
    ca_file: Path | None = None
    """PEM bundle of CAs trusted for the server; null: the system's."""
    sender: str = Field(alias="from")
    """From address."""
    to: list[str] = Field(min_length=1)
    """Recipient addresses."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class SnsSubscription(_SubscriptionBase):
    """AWS SNS Publish (any SNS-compatible endpoint)."""

    protocol: Literal["sns"]
    """sns: AWS SNS Publish (or an SNS-compatible API)."""
    topic_arn: str
    """ARN of the SNS topic to publish to."""
    region: str = "us-east-1"
    """Region of the topic."""
    endpoint_url: str | None = None
    """SNS API endpoint; null: AWS's for the region."""
    access_key_id: str | None = None
    """Access key; null: the usual AWS credential chain."""
    secret_access_key: str | None = None
    """Secret key (use ${ENV})."""
    session_token: str | None = None
    """Session token for temporary credentials."""


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
    """Endpoints of this topic; each gets its own durable outbox and delivery worker."""

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
    """The topic receiving what this route selects (a topic gets one event once)."""
    categories: list[str] = Field(default_factory=list)
    """Rule categories selected (high_risk, cost_sensitive, ...); empty: any."""
    min_severity: str | None = None
    """Lowest rule severity selected (info, low, medium, high, critical); null: any."""
    rules: list[str] = Field(default_factory=list)
    """Rule ids selected; empty: any."""
    tenants: list[str] = Field(default_factory=list)
    """Tenants (canonical tenant field) selected; empty: any."""
    pattern: dict[str, object] | None = None
    """An event pattern in the rules' language the event must also match."""
    group_by: list[str] = Field(default_factory=list)
    """Canonical fields (or rule, category) grouping events into summaries; empty: one message per event."""
    group_wait: Duration = 30.0
    """How long a new group gathers events before its first summary."""
    group_interval: Duration = 300.0
    """Least time between two summaries of one group."""
    repeat_interval: Duration = 3600.0
    """A group quiet this long is forgotten; its next event opens a new group (group_wait again)."""

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
    """Topics by name, each with its subscriptions."""
    routes: list[RouteConfig] = Field(default_factory=list)
    """Which rule matches go to which topic, and how they are grouped. No route: notifications are off."""
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    """Default retry and rate settings of every subscription."""
    public_url: str | None = None
    """Base URL of this daemon's API as endpoints reach it (confirmation links); null: the ingest address."""
    dedupe_window: Duration = 86400.0
    """How long delivered message ids are kept, so a replayed or resent event is not sent twice."""
    max_events_listed: int = Field(default=10, ge=1, le=100)
    """How many event ids a grouped summary lists."""

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
