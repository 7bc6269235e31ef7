"""Where the shared data is, from the main checkout or from a worktree beside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data() -> Path:
    """$TRAILKEEPER_DATA, else the nearest ancestor's shared/data."""
    env = os.environ.get("TRAILKEEPER_DATA")
    if env:
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parents[4] / "shared" / "data"


def stratus_dir() -> Path:
    path = shared_data() / "cloudtrail-stratus"
    if not path.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"shared data not found at {path} (set TRAILKEEPER_DATA)")
        pytest.skip(f"shared data not found at {path} (set TRAILKEEPER_DATA)")
    return path
