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


def test_the_cloudtrail_layout_is_cloudtrail_s_and_deterministic() -> None:
    part = keys.partition_of("111122223333", "eu-west-1", 1_722_431_184_000)
    key = keys.cloudtrail_file_key("logs/", "tk5e1", part, 1_722_431_184_000, 3, 9)
    assert key == (
        "logs/AWSLogs/111122223333/CloudTrail/eu-west-1/2024/07/31/"
        "111122223333_CloudTrail_eu-west-1_20240731T1306Z_tk5e1-00000000000000000003-00000000000000000009.json.gz"
    )
    # The same batch again (a re-delivery after a crash) is the same key: no duplicate file.
    assert keys.cloudtrail_file_key("logs", "tk5e1", part, 1_722_431_184_000, 3, 9) == key
    assert keys.cloudtrail_file_key("logs", "tk5e2", part, 1_722_431_184_000, 3, 9) != key
    copy = keys.conflict_key(key, SHA)
    assert copy == key.removesuffix(".json.gz") + "_cb0548628933.json.gz"
