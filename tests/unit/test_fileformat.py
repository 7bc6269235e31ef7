import gzip
import json

import pytest

from daemon.archive import fileformat
from daemon.archive.keys import Partition, file_key, partition_of, safe_segment


def test_one_record_per_line_and_cloudtrail_readable() -> None:
    recs = [b'{"eventID":"a","x":1}', b'{"eventID":"b","x":[1,2]}']
    built = fileformat.build(recs)
    raw = gzip.decompress(built.data)
    assert raw.split(b"\n")[1:3] == [recs[0] + b",", recs[1]]
    assert [r["eventID"] for r in json.loads(raw)["Records"]] == ["a", "b"]
    assert fileformat.read_records(built.data) == recs
    assert fileformat.build(recs).data == built.data  # deterministic


def test_empty_and_malformed() -> None:
    assert fileformat.read_records(fileformat.build([]).data) == []
    with pytest.raises(fileformat.FileFormatError):
        fileformat.split_records(b'{"Records":[1]}')


def test_keys_are_deterministic_and_safe() -> None:
    part = partition_of("12345", "ap-isob-east-1r", 1_700_000_000_000)
    assert part == Partition("12345", "ap-isob-east-1r", "2023/11/14")
    key = file_key("trails", "default", "w1", part, 1_700_000_000_000, 3, 9)
    assert key == (
        "trails/default/12345/ap-isob-east-1r/2023/11/14/"
        "w1_default_20231114T2213Z_00000000000000000003-00000000000000000009.json.gz"
    )
    assert safe_segment("../etc/passwd") == ".._etc_passwd"
    assert safe_segment("..") == "__"
    assert safe_segment(None) == "_unknown"


def test_zstd_files_roundtrip_deterministically() -> None:
    recs = [b'{"eventID":"a"}', b'{"eventID":"b"}']
    built = fileformat.build(recs, compression="zstd", level=3)
    assert built.data[:4] == fileformat.ZSTD_MAGIC
    assert fileformat.read_records(built.data) == recs
    assert fileformat.build(recs, compression="zstd", level=3).data == built.data
    assert fileformat.extension("zstd") == "json.zst"
