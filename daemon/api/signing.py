"""What AWS SigV4 and Huawei Cloud's AK/SK signing share: the Authorization header's form.

Both send ``<ALGORITHM> Name=value, Name=value, ...`` with a sorted list of signed header
names and a hex HMAC-SHA256 signature; each scheme's module checks the rest.
"""

from __future__ import annotations

import re

_FIELD = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\S+?)\s*$")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SignatureError(ValueError):
    """Why a signed request does not verify. ``public`` is what the caller may be told."""

    def __init__(self, public: str, detail: str | None = None) -> None:
        super().__init__(detail or public)
        self.public = public


def uses(header: str | None, algorithm: str) -> bool:
    """True if the Authorization header names ``algorithm`` as its scheme."""
    return bool(header) and header.lstrip().startswith(algorithm + " ")  # type: ignore[union-attr]


def header_fields(header: str, algorithm: str, names: tuple[str, ...]) -> dict[str, str]:
    """The header's fields, exactly ``names``, each once. Raises SignatureError."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != algorithm:
        raise SignatureError(f"the Authorization header must use {algorithm}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        m = _FIELD.match(part)
        if m is None or m.group(1) in fields:
            raise SignatureError("the Authorization header is malformed")
        fields[m.group(1)] = m.group(2)
    if set(fields) != set(names):
        raise SignatureError(f"the Authorization header needs {', '.join(names[:-1])} and {names[-1]}")
    if not _HEX64.fullmatch(fields["Signature"]):
        raise SignatureError("the signature must be 64 lower-case hex digits")
    return fields


def signed_headers(text: str, required: tuple[str, ...]) -> tuple[str, ...]:
    """The SignedHeaders list: lower-case, sorted, no repeats, holding ``required``."""
    signed = tuple(text.split(";"))
    if list(signed) != sorted(set(signed)) or any(h != h.lower() or not h for h in signed):
        raise SignatureError("SignedHeaders must be lower-case names, sorted, without repeats")
    for name in required:
        if name not in signed:
            raise SignatureError(f"the {name} header must be signed")
    return signed
