"""Message text from sandboxed Jinja2 templates, with defaults per protocol.

A template sees ``event`` (canonical fields; single-event messages), ``group``
(grouped messages: key, count, operations, principals, first/last time, first
event ids), ``matches`` (rule, category, severity, description, tags),
``rule`` (the most severe match), ``severity``, ``topic`` and ``kind``
("event" or "group"). Templates run in ``SandboxedEnvironment``: a template
from the config cannot reach Python internals.

Event values are written by whoever made the API call, so every value a
template substitutes (``{{ ... }}``) is sanitized and escaped for the
protocol's markup (see daemon/notify/escape.py) before it joins the
operator's template text, which stays markup. Markup belongs in the template
text or comes from the ``b`` filter (bold in the protocol's syntax); ``safe``
marks a value as markup on purpose. A substituted value is one line: its
line breaks become spaces, so it cannot fake a line of the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError, Undefined
from jinja2.sandbox import SandboxedEnvironment

from daemon.notify.escape import Literal, Style, escape, strip_controls

DEFAULT_TITLE = (
    "{% if kind == 'group' %}[{{ severity|upper }}] {{ group.count }} key event{{ 's' if group.count != 1 }}"
    ": {{ group.operations|join(', ') }} by {{ group.principals|join(', ') }}"
    "{% else %}[{{ severity|upper }}] {{ event.operation }} on {{ event.service }}"
    " by {{ event.user_name or event.user_id or 'unknown principal' }}{% endif %}"
)

DEFAULT_BODY = """\
{%- if kind == 'group' -%}
{{ 'What'|b }}: {{ group.count }} event{{ 's' if group.count != 1 }} matching {{ group.rules|join(', ') }}
{{ 'Operations'|b }}: {{ group.operations|counts }}
{{ 'Principals'|b }}: {{ group.principals|counts }}
{{ 'Grouped by'|b }}: {{ group.key|pairs }}
{{ 'When'|b }}: {{ group.first_time }} to {{ group.last_time }}
{{ 'Why'|b }}: {{ rule.description }} ({{ rule.category }}, severity {{ rule.severity }})
{{ 'First event ids'|b }}: {{ group.event_ids|join(', ') }}
{%- else -%}
{{ 'What'|b }}: {{ event.operation }} ({{ event.service }}){{ ', failed: ' ~ event.code if event.code }}
{{ 'Who'|b }}: {{ event|who }}
{{ 'From'|b }}: {{ event.source_ip or 'unknown' }}
{{ 'Resource'|b }}: {{ event.resource_type or '-' }} {{ event.resource_name or event.resource_id or '-' }}
{{ 'When'|b }}: {{ event.time }}{% if event.region %} in {{ event.region }}{% endif %}
{% for m in matches %}{{ 'Rule'|b }}: {{ m.rule }} ({{ m.category }}, {{ m.severity }}): {{ m.description }}
{% endfor %}{{ 'Event id'|b }}: {{ event.id }}
{%- endif -%}
"""

PROTOCOL_STYLE: dict[str, Style] = {
    "webhook": "text",
    "email": "text",
    "sns": "text",
    "feishu": "feishu",
    "slack": "slack",
    "teams": "teams",
    "dingtalk": "dingtalk",
    "wecom": "wecom",
}


def _bold_filter(style: Style) -> Any:
    def bold(value: Any) -> Literal:
        inner = str(value) if isinstance(value, Literal) else escape(style, str(value))
        if style in ("teams", "dingtalk", "wecom"):
            return Literal(f"**{inner}**")
        if style == "slack":
            return Literal(f"*{inner}*")
        return Literal(inner)

    return bold


def _finalizer(style: Style) -> Any:
    """Applied by Jinja2 to every ``{{ ... }}`` result: escapes values, keeps ``Literal`` markup."""

    def finalize(value: Any) -> str:
        if isinstance(value, Literal):
            return value
        return escape(style, str(value))

    return finalize


def _safe(value: Any) -> Literal:
    """``{{ x|safe }}``: the operator declares ``x`` markup (no escaping; controls still go)."""
    return Literal(strip_controls(str(value)))


def _counts(value: Any) -> str:
    """``{"DeleteBucket": 3}`` -> ``DeleteBucket x3``."""
    if not isinstance(value, dict):
        return str(value)
    return ", ".join(f"{k} x{n}" for k, n in value.items())


def _pairs(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _who(event: Any) -> str:
    if not isinstance(event, dict):
        return "unknown"
    out = str(event.get("user_name") or event.get("user_id") or "unknown")
    if event.get("user_type"):
        out += f" ({event['user_type']})"
    if event.get("account"):
        out += f", account {event['account']}"
    return out


class TemplateConfigError(ValueError):
    """A configured template does not compile."""


@dataclass(slots=True)
class Rendered:
    title: str
    text: str


class Renderer:
    """Compiles a subscription's title/body templates once; renders notices.

    ``render`` never raises for a bad configured template at run time: it falls
    back to the default and reports the failure in ``Rendered.text``, so a
    message is never lost to a template bug.
    """

    def __init__(self, protocol: str, title: str | None, body: str | None, where: str) -> None:
        style = PROTOCOL_STYLE[protocol]
        self.style: Style = style
        self.env = SandboxedEnvironment(
            autoescape=False, undefined=Undefined, keep_trailing_newline=False, finalize=_finalizer(style)
        )
        self.env.filters.update(b=_bold_filter(style), counts=_counts, pairs=_pairs, who=_who, safe=_safe)
        self.default_title = self.env.from_string(DEFAULT_TITLE)
        self.default_body = self.env.from_string(DEFAULT_BODY)
        try:
            self.title = self.env.from_string(title) if title else self.default_title
            self.body = self.env.from_string(body) if body else self.default_body
        except TemplateError as exc:
            raise TemplateConfigError(f"{where}: template does not compile: {exc}") from exc

    def render(self, ctx: dict[str, Any]) -> Rendered:
        try:
            title = self.title.render(ctx)
            text = self.body.render(ctx)
        except TemplateError as exc:
            title = self.default_title.render(ctx)
            problem = escape(self.style, str(exc))
            text = self.default_body.render(ctx).strip() + f"\n(template error: {problem})"
        # A title is one line (email subject, chat heading), whatever the template wrote.
        return Rendered(strip_controls(title, one_line=True).strip(), strip_controls(text).strip())


def context(doc: dict[str, Any]) -> dict[str, Any]:
    """Template context from a notification document (see notifier.make_doc)."""
    matches = doc.get("matches") or []
    rule = matches[0] if matches else {}
    return {
        "kind": doc.get("kind", "event"),
        "topic": doc.get("topic"),
        "event": doc.get("event") or {},
        "group": doc.get("group") or {},
        "matches": matches,
        "rule": rule,
        "severity": doc.get("severity") or rule.get("severity") or "info",
    }
