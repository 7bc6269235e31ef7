"""How any text a producer can send is stored in, searched in and read back from the index.

Three kinds of value do not fit an index text column as they are:

- NUL: PostgreSQL text cannot hold it (``invalid byte sequence for encoding "UTF8":
  0x00``), and SQLite's string functions (``LIKE``, ``length``) stop at it;
- lone surrogates (a JSON escape such as ``"\\ud800"``): not UTF-8, so neither driver
  can bind them;
- long values: a PostgreSQL B-tree entry holds at most about 2.7 kB, and every filter
  column is indexed together with ``time``, ``id`` and ``tenant``.

So every text value is stored in its *column form* (``column_text``):

- a value without NUL, surrogates or the escape character ``ESC`` (U+E000), at most
  ``MAX_COLUMN_BYTES`` of UTF-8, is stored unchanged (every ordinary value);
- otherwise NUL, ``ESC`` and each lone surrogate become a two-character escape that
  starts with ``ESC`` (see ``escape_text``);
- if the escaped value is still longer than ``MAX_COLUMN_BYTES``, it is cut to a
  prefix and followed by ``ESC``, a marker and the SHA-256 of the whole value.

The column form is injective (two different values never share one), so exact-match
filters compare column forms and stay exact, and the identity ``(tenant, id)`` stays
an identity. The escapes and digest use Private Use Area characters, which a
case-insensitive substring search for ordinary text never matches by accident. A
row whose column forms differ from its values also stores the values themselves
(``exact_json``), so the API shows what the producer sent, not the column form.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

ESC = "\ue000"
_NUL = "\ue001"  # ESC + this: a NUL
_DIGEST = "\ue002"  # ESC + this: the rest is the SHA-256 of the whole value
_SURROGATE_BASE = 0xF0000  # ESC + chr(base + n): the lone surrogate U+D800 + n
_DIGEST_BASE = 0xE100  # each digest byte b is chr(base + b)

# Three such values plus a time fit one PostgreSQL B-tree entry (about 2700 bytes).
MAX_COLUMN_BYTES = 768
_DIGEST_CHARS_BYTES = 2 * 3 + 32 * 3
_PREFIX_BYTES = MAX_COLUMN_BYTES - _DIGEST_CHARS_BYTES

_ODD = re.compile("[\x00\ue000\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape_one(match: re.Match[str]) -> str:
    c = match.group()
    if c == "\x00":
        return ESC + _NUL
    if c == ESC:
        return ESC + ESC
    return ESC + chr(_SURROGATE_BASE + ord(c) - 0xD800)


def escape_text(value: str) -> str:
    """``value`` with NUL, ``ESC`` and lone surrogates escaped: storable, and a substring
    of the escaped value is the escape of a substring of the value (for ``LIKE``)."""
    if value.isascii() and "\x00" not in value:
        return value
    return _ODD.sub(_escape_one, value) if _ODD.search(value) else value


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def column_text(value: str) -> str:
    """The column form of ``value`` (see the module docstring): storable in both backends,
    at most MAX_COLUMN_BYTES of UTF-8, equal to ``value`` for every ordinary value, and
    different for different values. Deterministic: writes and filters use the same form.
    """
    escaped = escape_text(value)
    if len(escaped) * 4 <= MAX_COLUMN_BYTES or _utf8_len(escaped) <= MAX_COLUMN_BYTES:
        return escaped
    # Lossless for any Python string, lone surrogates included.
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()
    # Cut the value, not its escaped form, so the prefix never ends inside an escape.
    k = min(len(value), _PREFIX_BYTES)
    while True:
        prefix = escape_text(value[:k])
        size = _utf8_len(prefix)
        if size <= _PREFIX_BYTES:
            break
        # One character is at most 7 bytes escaped: shrink by at least the excess.
        k -= max(1, -(-(size - _PREFIX_BYTES) // 7))
    return prefix + ESC + _DIGEST + "".join(chr(_DIGEST_BASE + b) for b in digest)


def column_or_none(value: str | None) -> str | None:
    return None if value is None else column_text(value)


def display_text(value: str) -> str:
    """``value`` as valid Unicode for a JSON answer: a lone surrogate becomes U+FFFD.

    The record itself (``record_text`` in the API) keeps the producer's exact escape.
    """
    return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value


def exact_json(values: dict[str, str]) -> bytes:
    """The original values of the fields whose column form differs, as ASCII JSON
    (``\\u0000`` and ``\\ud800`` escapes carry NUL and lone surrogates exactly)."""
    return json.dumps(values, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def load_exact(data: bytes | memoryview | None) -> dict[str, Any]:
    """The values ``exact_json`` stored, or {} for a row that needed none."""
    if not data:
        return {}
    value = json.loads(bytes(data))
    return value if isinstance(value, dict) else {}
