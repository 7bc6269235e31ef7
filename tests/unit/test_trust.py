"""Trust files (daemon/integrity/trust.py): what `keys export-public` writes and validate pins."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from daemon.integrity.keys import KeyError_, KeyStore
from daemon.integrity.trust import CLOCK_SKEW, export_trust, load_trust_file, parse_trust


def test_export_lists_every_key_with_its_window_and_the_rotation(tmp_path: Path) -> None:
    ks = KeyStore(tmp_path / "keys")
    first = ks.generate("trailkeeper")
    before = time.time()
    second, old_id = ks.rotate()
    doc = export_trust(ks, [{"url": "http://w", "vkey": "w+1+x"}])
    by_id = {k["key_id"]: k for k in doc["keys"]}
    assert set(by_id) == {first.key_id.hex(), second.key_id.hex()} and old_id == first.key_id.hex()
    assert by_id[old_id]["status"] == "retired" and by_id[old_id]["valid_until"] is not None
    assert by_id[second.key_id.hex()]["status"] == "active" and by_id[second.key_id.hex()]["valid_until"] is None
    assert doc["rotations"] == [{"at": by_id[old_id]["valid_until"], "retired": old_id, "active": second.key_id.hex()}]
    path = tmp_path / "trust.json"
    path.write_bytes(orjson.dumps(doc))
    trust = load_trust_file(path)
    assert trust.pinned and trust.witnesses == [{"url": "http://w", "vkey": "w+1+x"}]
    old = trust.key_for(first.verifier)
    assert old is not None
    assert old.covers(before, interval=60)
    assert not old.covers(before + 60 + CLOCK_SKEW + 120, interval=60), "a retired key stops signing"
    assert not old.covers(before - 86400, interval=60), "nor signed before it existed"
    new = trust.key_for(second.verifier)
    assert new is not None and new.covers(time.time() + 10 * 86400, interval=60)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "JSON expected"),
        (b'{"format": "other"}', "not a trailkeeper-trust/1 file"),
        (b'{"format": "trailkeeper-trust/1", "keys": []}', "lists no keys"),
        (b'{"format": "trailkeeper-trust/1", "keys": [{"vkey": "a+00+AAAA"}]}', r"keys\[0\]"),
        (
            b'{"format": "trailkeeper-trust/1", "keys": [{"vkey": "%s", "valid_from": "yesterday"}]}',
            "not an ISO time",
        ),
    ],
)
def test_a_broken_trust_file_names_the_entry(tmp_path: Path, data: bytes, message: str) -> None:
    if b"%s" in data:
        data = data.replace(b"%s", KeyStore(tmp_path / "k").generate("trailkeeper").verifier.vkey().encode())
    with pytest.raises(KeyError_, match=message):
        parse_trust(data, "trust file t.json")
