"""Inclusion and consistency proofs from the persistent tree, and their offline check.

A proof anchors to the newest published checkpoint (the one in the newest
digest), so it can be checked against the archive as well as on its own.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import orjson

from daemon.integrity import merkle
from daemon.integrity.checkpoint import Checkpoint, Verifier, open_checkpoint
from daemon.integrity.digest import load_chain_state
from daemon.integrity.tree import TreeLog

INCLUSION = "trailkeeper-inclusion-proof/1"
CONSISTENCY = "trailkeeper-consistency-proof/1"


class ProveError(Exception):
    """No proof can be made; the message says why and what to do."""


def _event_id(record: bytes) -> str | None:
    try:
        doc = orjson.loads(record)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    v = doc.get("eventID") or doc.get("trace_id") or doc.get("id")
    return str(v) if v is not None else None


def _published(tree: TreeLog) -> tuple[str, Checkpoint]:
    last = load_chain_state(tree.dir).get("last")
    if not last:
        raise ProveError(f"{tree.dir}: no digest published yet; a proof needs a published checkpoint")
    note = str(last["checkpoint"])
    return note, Checkpoint.parse(note.split("\n\n")[0] + "\n")


def inclusion_at(tree: TreeLog, event_id: str, key: str, position: int, record: bytes) -> dict[str, Any]:
    """The inclusion proof of ``record``, the ``position``-th record of the file at ``key``.

    Raises ProveError when the file is unknown to this tree, the record is not the leaf
    recorded there, or the leaf is newer than the newest published checkpoint.
    """
    note, cp = _published(tree)
    entry = tree.by_key.get(key)
    if entry is None:
        raise ProveError(f"{key}: not a file of this tree")
    index = entry.first_leaf + position
    if index >= cp.size:
        raise ProveError(
            f"event {event_id} is leaf {index}, after the newest digest's checkpoint ({cp.size} "
            "leaves); retry after the next digest"
        )
    leaf = merkle.leaf_hash(record)
    if tree.leaves_sync(index, index + 1) != [leaf]:
        raise ProveError(f"event {event_id}: the record is not leaf {index} of {key}")
    path = merkle.inclusion_proof(tree.leaves_sync, index, cp.size)
    return {
        "format": INCLUSION,
        "event_id": event_id,
        "file_key": key,
        "record": base64.b64encode(record).decode(),
        "leaf_index": index,
        "tree_size": cp.size,
        "leaf_hash": leaf.hex(),
        "audit_path": [h.hex() for h in path],
        "root_hash": cp.root.hex(),
        "checkpoint": note,
    }


def inclusion_from_records(
    tree: TreeLog, event_id: str, records_of: dict[str, list[bytes]]
) -> dict[str, Any]:
    """Build an inclusion proof for ``event_id`` found in the given files' records."""
    for key, records in records_of.items():
        if key not in tree.by_key:
            continue
        for i, rec in enumerate(records):
            if _event_id(rec) == event_id:
                return inclusion_at(tree, event_id, key, i, rec)
    raise ProveError(f"event {event_id} is in none of the files searched")


def consistency(tree: TreeLog, old_note: str, verifiers: list[Verifier]) -> dict[str, Any]:
    old = open_checkpoint(old_note, verifiers)
    note, cp = _published(tree)
    if old.size > cp.size:
        raise ProveError(f"the old checkpoint has {old.size} leaves, more than the current {cp.size}")
    if tree.root_at_sync(old.size) != old.root:
        raise ProveError(f"this log's tree at {old.size} leaves does not have the old checkpoint's root")
    proof = merkle.consistency_proof(tree.leaves_sync, old.size, cp.size)
    return {
        "format": CONSISTENCY,
        "old_checkpoint": old_note,
        "checkpoint": note,
        "old_size": old.size,
        "tree_size": cp.size,
        "proof": [h.hex() for h in proof],
    }


def verify_proof(doc: dict[str, Any], verifiers: list[Verifier]) -> str:
    """Check a proof document offline. Returns a one-line summary; raises ValueError."""
    cp = open_checkpoint(str(doc["checkpoint"]), verifiers)
    if doc.get("format") == INCLUSION:
        record = base64.b64decode(doc["record"])
        leaf = hashlib.sha256(b"\x00" + record).digest()
        if int(doc["tree_size"]) != cp.size:
            raise ValueError("the proof's tree size is not the checkpoint's")
        merkle.verify_inclusion(
            leaf, int(doc["leaf_index"]), cp.size, [bytes.fromhex(h) for h in doc["audit_path"]], cp.root
        )
        return f"event {doc.get('event_id')} is leaf {doc['leaf_index']} of {cp.origin} at size {cp.size}"
    if doc.get("format") == CONSISTENCY:
        old = open_checkpoint(str(doc["old_checkpoint"]), verifiers)
        if old.origin != cp.origin:
            raise ValueError(f"checkpoints of different logs: {old.origin} vs {cp.origin}")
        merkle.verify_consistency(
            old.size, cp.size, [bytes.fromhex(h) for h in doc["proof"]], old.root, cp.root
        )
        return f"{cp.origin}: size {cp.size} extends size {old.size}"
    raise ValueError(f"unknown proof format {doc.get('format')!r}")


def load_proof(path: Path) -> dict[str, Any]:
    doc = orjson.loads(path.read_bytes())
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a proof document")
    return doc
