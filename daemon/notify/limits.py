"""Size limits of each platform, and clipping that keeps a message meaningful within them.

A platform refuses (or silently cuts) a message over its limit, and a storm
summary of thousands of principals is far over any of them. The payload
builders therefore fit the whole payload, as the platform measures it, not
one field: ``fit`` shortens the longest lines first (each keeps its start
and a visible marker), so the lines after a huge list (when, why, event ids)
survive, and only then cuts the end. Clipping works on characters, so a cut
never splits a UTF-8 sequence, and it never leaves half an escape (``&am``,
a dangling backslash) that would change what follows.

Documented limits (bytes where the platform counts bytes):

- DingTalk custom robot: a message of at most 20,000 bytes.
- Microsoft Teams webhooks: "The message size limit is 28 KB" for the whole
  payload (learn.microsoft.com, "Create an Incoming Webhook"); 27,000 bytes
  of JSON leaves room for the Workflows envelope.
- WeCom group robot: markdown ``content`` at most 4,096 bytes, UTF-8
  (developer.work.weixin.qq.com, group robot configuration; text is 2,048).
- Slack: ``text`` is truncated past 40,000 characters; a section block's text
  holds at most 3,000 characters and a header's plain_text 150.
- Feishu/Lark custom bot: the request body at most 20 KB (the API answers
  code 19036 past 30 KB for cards); 20,000 bytes satisfies both.
- Amazon SNS Publish: the message, with subject and attributes, at most
  256 KB (262,144 bytes, not characters); Subject up to 100 printable ASCII
  characters on one line; at most 10 message attributes reach an SQS
  subscription with raw delivery.
- Email: a header line at most 998 octets (RFC 5322 2.1.1); the subject is
  kept well below, before encoding and folding.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MARKER = "… [truncated]"
ASCII_MARKER = "... [truncated]"

DINGTALK_PAYLOAD_BYTES = 20_000
TEAMS_PAYLOAD_BYTES = 27_000
WECOM_CONTENT_BYTES = 4_096
FEISHU_PAYLOAD_BYTES = 20_000
SLACK_TEXT_UNITS = 40_000
SLACK_SECTION_UNITS = 3_000
SLACK_HEADER_UNITS = 150
SNS_TOTAL_BYTES = 262_144
SNS_SUBJECT_CHARS = 100
SNS_MAX_ATTRIBUTES = 10
SNS_ATTRIBUTE_VALUE_BYTES = 256
EMAIL_SUBJECT_CHARS = 250
EMAIL_BODY_BYTES = 1_000_000
# A chat heading longer than this is no heading; the body says the rest.
CHAT_TITLE_CHARS = 256
# Lines are not clipped shorter than this while later lines could be dropped instead.
LINE_FLOOR = 160

# A cut may end inside an entity (``&am``) or after an escaping backslash.
_PARTIAL_ENTITY = re.compile(r"&[#A-Za-z0-9]{0,10}$")


def utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def utf16_len(text: str) -> int:
    """Length as JavaScript counts it (UTF-16 code units): what Slack's character limits count."""
    return len(text.encode("utf-16-le")) // 2


def _tidy(cut: str) -> str:
    cut = _PARTIAL_ENTITY.sub("", cut)
    trailing = len(cut) - len(cut.rstrip("\\"))
    if trailing % 2:
        cut = cut[:-1]
    return cut.rstrip()


def clip(text: str, limit: int, measure: Callable[[str], int] = len, marker: str = MARKER) -> str:
    """``text`` if ``measure(text) <= limit``, else its longest start that fits with ``marker``
    appended. Never longer than ``limit`` (empty if not even the marker fits)."""
    if measure(text) <= limit:
        return text
    if measure(marker) > limit:
        return ""
    lo, hi = 0, len(text)  # largest prefix length that fits, with the marker
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(_tidy(text[:mid]) + marker) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return _tidy(text[:lo]) + marker


def fit(text: str, size: Callable[[str], int], limit: int, line_floor: int = LINE_FLOOR) -> str:
    """The longest form of ``text`` with ``size(form) <= limit``, where ``size`` measures the
    whole payload built around it. Long lines are clipped first (to one common length, at least
    ``line_floor`` characters), then the end. Returns "" when not even the marker fits."""
    if size(text) <= limit:
        return text
    lines = text.split("\n")
    longest = max(len(line) for line in lines)

    def capped(cap: int) -> str:
        return "\n".join(clip(line, cap) for line in lines)

    if longest > line_floor:
        if size(capped(line_floor)) <= limit:
            lo, hi = line_floor, longest - 1
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if size(capped(mid)) <= limit:
                    lo = mid
                else:
                    hi = mid - 1
            return capped(lo)
        text = capped(line_floor)
    return clip(text, limit, size)
