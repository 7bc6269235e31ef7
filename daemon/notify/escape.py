"""Making event values inert in each platform's message markup.

Every event field is chosen by whoever made the API call (a user name of
``<!channel> <https://x|click>``, a resource name ``[click](https://evil)``,
U+202E to reverse what follows, NUL), so a value substituted into a message
must not be able to add markup, mentions, links, lines or hidden text.

``sanitize`` removes what no protocol should carry in a value: C0 and C1
control characters, DEL, and Unicode bidirectional controls; it turns line
breaks and tabs into spaces, so a value cannot fake a line of the message
("Rule: none"). ``escape(style, value)`` then neutralises the markup of the
platform that renders it:

- ``slack`` (mrkdwn): ``&``, ``<``, ``>`` as ``&amp;``, ``&lt;``, ``&gt;``,
  Slack's documented escaping, which leaves ``<!channel>`` and ``<url|text>``
  as text (https://api.slack.com/reference/surfaces/formatting#escaping).
- ``teams``, ``dingtalk``, ``wecom`` (markdown): ``&``, ``<``, ``>`` as HTML
  entities (no ``<font>``, ``<@userid>`` mention or autolink), and a backslash
  before each markdown character that can form a link, an image, emphasis or
  code. A renderer that ignores backslash escapes still shows no link: the
  backslash separates ``]`` from ``(``.
- ``feishu`` (text message): ``<`` and ``>`` as entities (no ``<at user_id="all">``)
  and ``[]()`` backslashed (no hyperlink).
- ``text`` (webhook, email, SNS): nothing beyond ``sanitize``; these are plain
  text read by mail clients and programs.

Only substituted values are escaped; the operator's template text (and the
``b`` filter's markup) is markup on purpose. ``Literal`` marks a string that
is already markup, so rendering passes it through unchanged.
"""

from __future__ import annotations

import re
from typing import Literal as TypingLiteral

Style = TypingLiteral["text", "slack", "teams", "dingtalk", "wecom", "feishu"]

# C0 (but tab, LF, CR: mapped to spaces), DEL, C1, the bidi controls: embeddings and
# overrides (U+202A-U+202E), isolates (U+2066-U+2069), marks (U+200E, U+200F, U+061C); and
# lone surrogates (a JSON escape can make one), which no UTF-8 payload can carry.
_STRIP = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\ud800-\udfff]"
)
# Line breaks of any kind, and tabs: a value stays on its line.
_BREAKS = re.compile("\r\n|[\t\n\r\u2028\u2029]")
# Controls a whole rendered message may not carry (NUL and the like), breaks kept.
_TRANSPORT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_MD_CHARS = "\\`*_~[]()#|"
_MD = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in _MD_CHARS}})
# DingTalk and WeCom document only ``*`` emphasis; a backslash before ``_`` or ``~`` (common in
# identifiers) would show literally where the client ignores escapes.
_CN_MD_CHARS = "\\`*[]()#|"
_CN_MD = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in _CN_MD_CHARS}})
_FEISHU = str.maketrans({"<": "&lt;", ">": "&gt;", **{c: "\\" + c for c in "\\[]()"}})


class Literal(str):
    """A string that is already markup of the message (not escaped again when rendered)."""

    __slots__ = ()


def sanitize(value: str) -> str:
    """``value`` without control, bidi or lone surrogate characters, on one line (breaks and tabs
    as spaces)."""
    return _STRIP.sub("", _BREAKS.sub(" ", value))


def strip_controls(text: str, *, one_line: bool = False) -> str:
    """A rendered message fit to send: no NUL/C0/C1 controls (tab and line breaks kept unless
    ``one_line``, which makes every break a space: titles, subjects)."""
    if one_line:
        text = _BREAKS.sub(" ", text)
    return _TRANSPORT.sub("", text)


def escape(style: Style, value: str) -> str:
    """``value`` sanitized and made inert in ``style``'s markup."""
    clean = sanitize(value)
    if style == "slack":
        return clean.translate(_HTML)
    if style == "teams":
        return clean.translate(_MD)
    if style in ("dingtalk", "wecom"):
        return clean.translate(_CN_MD)
    if style == "feishu":
        return clean.translate(_FEISHU)
    return clean
