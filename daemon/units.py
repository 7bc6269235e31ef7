"""Human-friendly sizes (``16MiB``) and durations (``60s``) for the YAML config."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_size(value: Any) -> int:
    """Parse ``262144``, ``256KiB`` or ``2GiB`` into bytes; raise ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 16MiB, got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "B").lower()
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ValueError(f"expected a size such as 262144, 256KiB or 2GiB, got {value!r}")


def parse_duration(value: Any) -> float:
    """Parse ``60``, ``60s``, ``500ms``, ``1h30m`` or ``7d`` into seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60s, got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        pos = 0
        total = 0.0
        for m in _DURATION_RE.finditer(text):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
            pos = m.end()
        if pos == len(text) and pos > 0:
            return total
    raise ValueError(f"expected a duration such as 500ms, 60s, 5m, 1h or 7d, got {value!r}")


Size = Annotated[int, BeforeValidator(parse_size), PlainSerializer(int)]
Duration = Annotated[float, BeforeValidator(parse_duration), PlainSerializer(float)]
