"""The archive file format: CloudTrail's envelope with one record per line.

    {"Records":[
    <record bytes>,
    <record bytes>
    ]}

Tools that read CloudTrail files read ours, and a verifier can hash each
record's exact bytes without re-serialising JSON: line i+1 of the
decompressed file is record i, followed by a comma except on the last.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import zstandard

from daemon.integrity import merkle

HEAD = b'{"Records":[\n'
TAIL = b"]}\n"


class FileFormatError(ValueError):
    """The bytes are not an archive file in our format."""


@dataclass(frozen=True, slots=True)
class BuiltFile:
    data: bytes  # the stored (compressed) bytes
    sha256: str  # hex SHA-256 of ``data``
    raw_bytes: int  # uncompressed size
    # With ``build(..., leaves=True)``: the records' Merkle leaf hashes and their root, so the
    # integrity recorder need not hash the records again on the daemon's busiest process.
    leaves: list[bytes] | None = None
    leaves_root: bytes | None = None


def render(records: Sequence[bytes]) -> bytes:
    if not records:
        return HEAD + TAIL
    return HEAD + b",\n".join(records) + b"\n" + TAIL


def build(
    records: Sequence[bytes], compression: str = "gzip", level: int = 6, leaves: bool = False
) -> BuiltFile:
    """Render and compress a file; deterministic for the same records (gzip mtime 0).

    CPU-heavy for large batches: call it from a thread or a worker process (it is
    pure and picklable). ``leaves`` also computes the records' Merkle leaf hashes.
    """
    raw = render(records)
    if compression == "gzip":
        data = gzip.compress(raw, compresslevel=level, mtime=0)
    elif compression == "zstd":
        # Frame header carries the content size; no timestamps: deterministic like gzip mtime 0.
        data = zstandard.ZstdCompressor(level=level, write_content_size=True).compress(raw)
    elif compression == "none":
        data = raw
    else:
        raise ValueError(f"unknown compression {compression!r}")
    digest = hashlib.sha256(data).hexdigest()
    if leaves:
        hashes = merkle.leaf_hashes(records)
        return BuiltFile(data, digest, len(raw), hashes, merkle.root_of(hashes))
    return BuiltFile(data, digest, len(raw))


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def decompress(data: bytes) -> bytes:
    """Undo gzip or zstd by their magic bytes; anything else is returned as is."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().decompress(data)
    return data


def extension(compression: str) -> str:
    return {"gzip": "json.gz", "zstd": "json.zst"}.get(compression, "json")


def split_records(raw: bytes) -> list[bytes]:
    """The exact bytes of each record of a decompressed file. Raises FileFormatError."""
    if not raw.startswith(HEAD) or not raw.endswith(TAIL):
        raise FileFormatError("not a trailkeeper archive file (envelope lines missing)")
    body = raw[len(HEAD) : len(raw) - len(TAIL)]
    if not body:
        return []
    if not body.endswith(b"\n"):
        raise FileFormatError("last record line is not terminated")
    lines = body[:-1].split(b",\n")
    return lines


def read_records(data: bytes) -> list[bytes]:
    return split_records(decompress(data))
