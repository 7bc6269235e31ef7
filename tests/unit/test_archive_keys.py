"""Archive key naming: conflict copies keep the extension that names their codec."""

from __future__ import annotations

import pytest

from daemon.archive import keys

SHA = "cb0548628933" + "0" * 52


@pytest.mark.parametrize("ext", ["json.gz", "json.zst", "json", "jsonl.gz"])
def test_conflict_key_keeps_the_extension(ext: str) -> None:
    part = keys.Partition("acct.1", "eu-west-1", "2026/01/02")
    key = keys.file_key("p/x.y", "t.v1", "w.1", part, 0, 3, 9, extension=ext)
    copy = keys.conflict_key(key, SHA)
    assert copy == key.removesuffix("." + ext) + "_cb0548628933." + ext


def test_conflict_key_refuses_a_foreign_key() -> None:
    with pytest.raises(ValueError):
        keys.conflict_key("trails/some/other.json.gz", SHA)
