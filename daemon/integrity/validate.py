"""``trailkeeper validate``: check an archive's digest chains, files and tail.

Every object under the prefix ends up with one status:

- ``valid``; ``modified`` (bytes differ from what a digest lists, or a digest
  that does not parse); ``missing`` (listed or linked but absent); ``unlisted``
  (a file no digest lists: inserted); ``moved`` (a file's bytes belong to another
  listed key, or a digest sits at a key other than the one it signed);
  ``bad-signature``; ``unknown-key``; ``chain-gap`` (a digest whose link, sequence,
  time or tree continuity to its predecessor is broken); ``truncated`` (the tail
  is shorter than a trusted checkpoint, or older than ``--max-age``);
- ``pending``: a file after the newest digest of a live chain (not yet listed;
  does not fail validation); ``skipped``: not read because of ``--since``.

Hashing and decompression run in a thread pool (hashlib and zlib release the
GIL), so chains are checked in parallel and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from daemon.archive.fileformat import FileFormatError, decompress, split_records
from daemon.integrity import merkle
from daemon.integrity.checkpoint import (
    BadSignature,
    Checkpoint,
    NoteError,
    UnknownKey,
    Verifier,
    open_checkpoint,
)
from daemon.integrity.digest import DIGEST_DIR, parse_iso, verify_digest
from daemon.stores.base import ObjectInfo, ObjectMissing, Store

FAILING = {
    "modified",
    "missing",
    "unlisted",
    "moved",
    "bad-signature",
    "unknown-key",
    "chain-gap",
    "truncated",
}
_STAMP = re.compile(r"_(\d{8}T\d{4})Z_\d+-\d+\.json\.gz$")


@dataclass(slots=True)
class Finding:
    category: str
    key: str
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"category": self.category, "key": self.key, "detail": self.detail}


@dataclass(slots=True)
class Report:
    status: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    bytes_read: int = 0
    files_read: int = 0
    files_cached: int = 0
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)

    def flag(self, category: str, key: str, detail: str) -> None:
        self.findings.append(Finding(category, key, detail))
        # The first failing finding names the object's status; "valid" never overrides one.
        if self.status.get(key, "valid") in ("valid", "pending", "skipped") or key not in self.status:
            self.status[key] = category

    @property
    def ok(self) -> bool:
        return not any(f.category in FAILING for f in self.findings)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for s in self.status.values():
            out[s] += 1
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": self.counts(),
            "findings": [f.to_json() for f in self.findings],
            "chains": self.chains,
            "files_read": self.files_read,
            "files_cached": self.files_cached,
            "bytes_read": self.bytes_read,
        }


@dataclass(slots=True)
class _FileResult:
    sha256: str
    records: int
    root: str
    leaves: list[bytes] | None
    error: str | None = None


def analyze_file(data: bytes) -> _FileResult:
    """Hash a stored file and its records. CPU-bound; runs in a worker thread."""
    sha = hashlib.sha256(data).hexdigest()
    try:
        raw = decompress(data)
        records = split_records(raw)
    except (OSError, EOFError, FileFormatError) as exc:
        return _FileResult(sha, 0, "", None, f"cannot read records: {exc}")
    h = hashlib.sha256
    leaves = [h(b"\x00" + r).digest() for r in records]
    return _FileResult(sha, len(leaves), merkle.root_of(leaves).hex(), leaves)


@dataclass(slots=True)
class _Digest:
    key: str
    doc: dict[str, Any]
    sha256: str


@dataclass(slots=True)
class Trusted:
    note: str
    checkpoint: Checkpoint


class _Cache:
    """Verified file results keyed by (key, size, mtime) and the tree state before them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.files: dict[str, dict[str, Any]] = {}
        if path is not None and path.exists():
            try:
                self.files = orjson.loads(path.read_bytes()).get("files", {})
            except orjson.JSONDecodeError:
                self.files = {}

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(orjson.dumps({"files": self.files}))
        os.replace(tmp, self.path)


def default_cache_path(store: str, prefix: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "trailkeeper"
    tag = hashlib.sha256(f"{store}\n{prefix}".encode()).hexdigest()[:16]
    return base / f"validate-{tag}.json"


class Validator:
    def __init__(
        self,
        store: Store,
        prefix: str,
        verifiers: list[Verifier],
        *,
        trusted: list[str] | None = None,
        max_age: float | None = None,
        since: float | None = None,
        cache_path: Path | None = None,
        workers: int | None = None,
        progress: bool = False,
        now: float | None = None,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.verifiers = verifiers
        self.trusted_notes = trusted or []
        self.max_age = max_age
        self.since = since
        self.cache = _Cache(cache_path)
        self.workers = workers or min(8, (os.cpu_count() or 2))
        self.progress = progress
        self.now = now if now is not None else time.time()
        self.report = Report()

    async def run(self) -> Report:
        objects = {o.key: o async for o in self.store.list(self.prefix)}
        digest_keys = [k for k in objects if f"/{DIGEST_DIR}/" in f"/{k}" and k.endswith(".json")]
        file_keys = [k for k in objects if k not in set(digest_keys)]
        trusted = self._trusted()
        with ThreadPoolExecutor(self.workers, thread_name_prefix="validate") as pool:
            digests = await self._load_digests(digest_keys)
            chains: dict[tuple[str, str], list[_Digest]] = defaultdict(list)
            for d in digests:
                chains[(str(d.doc.get("tracker")), str(d.doc.get("writer")))].append(d)
            listed: dict[str, tuple[tuple[str, str], dict[str, Any]]] = {}
            for cid, ds in chains.items():
                ds.sort(key=lambda d: int(d.doc.get("sequence", 0)))
                for d in ds:
                    for f in d.doc.get("files", []):
                        listed[str(f["key"])] = (cid, f)
            by_sha = {str(f["sha256"]): k for k, (_, f) in listed.items()}
            await self._check_files(pool, objects, chains, listed, by_sha, trusted)
        self._unlisted(file_keys, listed, chains)
        self._tail(chains, trusted)
        self.cache.save()
        return self.report

    # --- digests ----------------------------------------------------------------------------

    def _trusted(self) -> list[Trusted]:
        out = []
        for note in self.trusted_notes:
            try:
                out.append(Trusted(note, open_checkpoint(note, self.verifiers)))
            except NoteError as exc:
                raise ValueError(f"the trusted checkpoint does not verify: {exc}") from exc
        return out

    async def _load_digests(self, keys: list[str]) -> list[_Digest]:
        sem = asyncio.Semaphore(32)

        async def one(key: str) -> _Digest | None:
            async with sem:
                try:
                    data = await self.store.get(key)
                except ObjectMissing:
                    self.report.flag("missing", key, "listed by the store but gone when read")
                    return None
            try:
                doc = orjson.loads(data)
                if not isinstance(doc, dict):
                    raise ValueError("not an object")
            except (orjson.JSONDecodeError, ValueError) as exc:
                self.report.flag("modified", key, f"digest is not valid JSON: {exc}")
                return None
            try:
                signer = verify_digest(doc, self.verifiers)
            except (ValueError, TypeError) as exc:
                self.report.flag("bad-signature", key, str(exc))
                return None
            if signer is None:
                sig = doc.get("signature") or {}
                self.report.flag(
                    "unknown-key",
                    key,
                    f"signed by {sig.get('key_name')} key {sig.get('key_id')}, which is not among the "
                    "public keys given (add it with --public-key if it is yours)",
                )
                return None
            if doc.get("key") != key:
                self.report.flag("moved", key, f"this digest was signed for key {doc.get('key')!r}")
                return None
            self.report.status[key] = "valid"
            return _Digest(key, doc, hashlib.sha256(data).hexdigest())

        results = await asyncio.gather(*(one(k) for k in keys))
        return [d for d in results if d is not None]

    def _check_link(self, prev: _Digest | None, d: _Digest, present: set[str]) -> None:
        doc = d.doc
        link = doc.get("previous")
        if prev is None:
            if link is not None:
                where = "missing" if link["key"] not in present else "not a valid digest"
                self.report.flag("chain-gap", d.key, f"previous digest {link['key']} is {where}")
                if link["key"] not in present:
                    self.report.flag("missing", link["key"], f"linked from {d.key}")
            elif int(doc.get("sequence", 0)) != 1:
                self.report.flag("chain-gap", d.key, "the chain's first digests are gone")
            return
        if link is None or link.get("key") != prev.key:
            lk = link.get("key") if link else None
            self.report.flag(
                "chain-gap", d.key, f"links to {lk!r}, but the previous valid digest is {prev.key}"
            )
            if lk and lk not in present:
                self.report.flag("missing", lk, f"linked from {d.key}")
            return
        if link.get("sha256") != prev.sha256 or link.get("signature") != prev.doc["signature"]["value"]:
            self.report.flag("chain-gap", d.key, f"the previous digest {prev.key} is not the one it linked")
        if int(doc.get("sequence", 0)) != int(prev.doc.get("sequence", 0)) + 1:
            self.report.flag("chain-gap", d.key, "sequence numbers are not consecutive")
        start, prev_end = parse_iso(doc["start_time"]), parse_iso(prev.doc["end_time"])
        if doc.get("chain_start") and not prev.doc.get("chain_end"):
            pass  # a restart after a crash: the previous chain has no end marker, the link still holds
        if (doc.get("chain_start") and start < prev_end) or (
            not doc.get("chain_start") and start != prev_end
        ):
            self.report.flag(
                "chain-gap",
                d.key,
                f"interval starts at {doc['start_time']}, previous ended {prev.doc['end_time']}",
            )
        if not doc.get("chain_start") and prev.doc.get("chain_end"):
            self.report.flag("chain-gap", d.key, "continues a chain that had ended")
        if int(doc.get("tree_size_before", -1)) != int(prev.doc.get("tree_size", -2)):
            self.report.flag("chain-gap", d.key, "tree size does not continue from the previous digest")

    # --- files ------------------------------------------------------------------------------

    async def _check_files(
        self,
        pool: ThreadPoolExecutor,
        objects: dict[str, ObjectInfo],
        chains: dict[tuple[str, str], list[_Digest]],
        listed: dict[str, tuple[tuple[str, str], dict[str, Any]]],
        by_sha: dict[str, str],
        trusted: list[Trusted],
    ) -> None:
        loop = asyncio.get_running_loop()
        present = set(objects)
        inside_trusted = {t.checkpoint.size for t in trusted}
        to_read: list[str] = []
        for ds in chains.values():
            for d in ds:
                too_old = self.since is not None and parse_iso(d.doc["end_time"]) < self.since
                for f in d.doc.get("files", []):
                    k = str(f["key"])
                    info = objects.get(k)
                    if info is None:
                        continue
                    cached = self.cache.files.get(k)
                    straddles = any(
                        int(f["first_leaf"]) < s < int(f["first_leaf"]) + int(f["records"])
                        for s in inside_trusted
                    )
                    if straddles or not (too_old or self._cache_hit(cached, info, f)):
                        to_read.append(k)
        results: dict[str, _FileResult] = {}
        total = sum(objects[k].size for k in to_read)
        from tqdm import tqdm

        sem = asyncio.Semaphore(self.workers * 2)
        with tqdm(total=total, unit="B", unit_scale=True, disable=not self.progress, desc="validate") as bar:

            async def read(key: str) -> None:
                async with sem:
                    try:
                        data = await self.store.get(key)
                    except ObjectMissing:
                        return
                    results[key] = await loop.run_in_executor(pool, analyze_file, data)
                    self.report.bytes_read += len(data)
                    self.report.files_read += 1
                    bar.update(len(data))

            await asyncio.gather(*(read(k) for k in to_read))
        for (tracker, writer), ds in chains.items():
            self._walk_chain(tracker, writer, ds, objects, present, results, by_sha, trusted)

    def _cache_hit(self, cached: dict[str, Any] | None, info: ObjectInfo, f: dict[str, Any]) -> bool:
        return (
            cached is not None
            and cached["size"] == info.size
            and cached["modified"] == info.modified
            and cached["sha256"] == f["sha256"]
        )

    def _walk_chain(
        self,
        tracker: str,
        writer: str,
        ds: list[_Digest],
        objects: dict[str, ObjectInfo],
        present: set[str],
        results: dict[str, _FileResult],
        by_sha: dict[str, str],
        trusted: list[Trusted],
    ) -> None:
        frontier: merkle.CompactRange | None = merkle.CompactRange()
        roots_at: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
        sizes = {t.checkpoint.size for t in trusted}
        prev: _Digest | None = None
        for d in ds:
            self._check_link(prev, d, present)
            prev = d
            doc = d.doc
            for f in doc.get("files", []):
                k = str(f["key"])
                first, n = int(f["first_leaf"]), int(f["records"])
                if frontier is not None and frontier.size != first:
                    self.report.flag(
                        "chain-gap", d.key, f"file {k} starts at leaf {first}, expected {frontier.size}"
                    )
                    frontier = None
                if k not in objects:
                    self.report.flag("missing", k, f"listed in {d.key}")
                    frontier = None
                    continue
                res = results.get(k)
                if res is None:
                    cached = self.cache.files.get(k)
                    before = frontier.to_json() if frontier is not None else None
                    if (
                        cached is not None
                        and cached["frontier_before"] == before
                        and self._cache_hit(cached, objects[k], f)
                    ):
                        frontier = merkle.CompactRange.from_json(cached["frontier_after"])
                        self.report.status[k] = "valid"
                        self.report.files_cached += 1
                    else:
                        self.report.status.setdefault(k, "skipped")
                        frontier = None
                    continue
                if res.sha256 != f["sha256"]:
                    other = by_sha.get(res.sha256)
                    if other is not None and other != k:
                        self.report.flag("moved", k, f"holds the bytes listed for {other}")
                    else:
                        self.report.flag(
                            "modified", k, f"SHA-256 {res.sha256} differs from {f['sha256']} in {d.key}"
                        )
                    frontier = None
                    continue
                if res.error or res.records != n or res.root != f["merkle_root"]:
                    self.report.flag(
                        "modified", k, res.error or "record count or Merkle root differs from the digest"
                    )
                    frontier = None
                    continue
                self.report.status[k] = "valid"
                if frontier is not None and res.leaves is not None:
                    before = frontier.to_json()
                    for s in sizes:
                        if first < s < first + n:
                            part = frontier.copy()
                            part.extend(res.leaves[: s - first])
                            roots_at[s] = part.root()
                    frontier.extend(res.leaves)
                    self.cache.files[k] = {
                        "size": objects[k].size,
                        "modified": objects[k].modified,
                        "sha256": res.sha256,
                        "frontier_before": before,
                        "frontier_after": frontier.to_json(),
                    }
            self._check_checkpoint(d, tracker, writer, frontier, roots_at)
        last = ds[-1].doc if ds else {}
        self.report.chains[f"{tracker}/{writer}"] = {
            "digests": len(ds),
            "tree_size": int(last.get("tree_size", 0)),
            "newest_digest": ds[-1].key if ds else None,
            "newest_end_time": last.get("end_time"),
            "ended": bool(last.get("chain_end")),
            "roots_at": {str(s): r.hex() for s, r in roots_at.items()},
            "origin": Checkpoint.parse(last["checkpoint"].split("\n\n")[0] + "\n").origin if ds else None,
        }

    def _check_checkpoint(
        self,
        d: _Digest,
        tracker: str,
        writer: str,
        frontier: merkle.CompactRange | None,
        roots_at: dict[int, bytes],
    ) -> None:
        try:
            cp = open_checkpoint(str(d.doc.get("checkpoint", "")), self.verifiers)
        except BadSignature as exc:
            self.report.flag("bad-signature", d.key, f"checkpoint: {exc}")
            return
        except UnknownKey as exc:
            self.report.flag("unknown-key", d.key, f"checkpoint: {exc}")
            return
        except NoteError as exc:
            self.report.flag("modified", d.key, f"checkpoint: {exc}")
            return
        if cp.size != int(d.doc.get("tree_size", -1)) or not cp.origin.endswith(f"/{tracker}/{writer}"):
            self.report.flag("modified", d.key, "checkpoint does not match the digest's tree or chain")
        roots_at[cp.size] = cp.root
        if frontier is not None and frontier.size == cp.size and frontier.root() != cp.root:
            self.report.flag("modified", d.key, "checkpoint root differs from the root of the listed files")

    # --- inserted files and the tail --------------------------------------------------------

    def _unlisted(
        self,
        file_keys: list[str],
        listed: dict[str, tuple[tuple[str, str], dict[str, Any]]],
        chains: dict[tuple[str, str], list[_Digest]],
    ) -> None:
        for k in file_keys:
            if k in listed:
                continue
            if self._pending(k, chains):
                self.report.status[k] = "pending"
                continue
            self.report.flag("unlisted", k, "present in the store but listed by no digest")

    def _pending(self, key: str, chains: dict[tuple[str, str], list[_Digest]]) -> bool:
        m = _STAMP.search(key)
        if m is None:
            return False
        name = key.rsplit("/", 1)[-1]
        for (tracker, writer), ds in chains.items():
            if not ds or not name.startswith(f"{writer}_{tracker}_"):
                continue
            newest = ds[-1].doc
            if newest.get("chain_end"):
                return False
            start = parse_iso(newest["start_time"])
            stamp = parse_iso(
                m.group(1)[:4]
                + "-"
                + m.group(1)[4:6]
                + "-"
                + m.group(1)[6:8]
                + "T"
                + m.group(1)[9:11]
                + ":"
                + m.group(1)[11:13]
                + ":00Z"
            )
            return stamp >= start - 60
        return False

    def _tail(self, chains: dict[tuple[str, str], list[_Digest]], trusted: list[Trusted]) -> None:
        for t in trusted:
            cp = t.checkpoint
            match = [(cid, ds) for cid, ds in chains.items() if cp.origin.endswith(f"/{cid[0]}/{cid[1]}")]
            if not match or not match[0][1]:
                self.report.flag("truncated", cp.origin, "no digest remains for the trusted checkpoint's log")
                continue
            (tracker, writer), ds = match[0]
            info = self.report.chains[f"{tracker}/{writer}"]
            newest = ds[-1]
            if int(info["tree_size"]) < cp.size:
                self.report.flag(
                    "truncated",
                    newest.key,
                    f"the newest digest has {info['tree_size']} records; the trusted one {cp.size}",
                )
                continue
            root = info["roots_at"].get(str(cp.size))
            if root is None:
                self.report.flag(
                    "truncated", newest.key, f"cannot rebuild the tree at {cp.size}: files damaged"
                )
            elif root != cp.root.hex():
                self.report.flag(
                    "truncated",
                    newest.key,
                    f"tree at {cp.size} differs from the trusted checkpoint",
                )
        if self.max_age is not None:
            for (tracker, writer), ds in chains.items():
                if not ds:
                    continue
                age = self.now - parse_iso(ds[-1].doc["end_time"])
                if age > self.max_age:
                    self.report.flag(
                        "truncated",
                        ds[-1].key,
                        f"newest digest of {tracker}/{writer} is {age:.0f}s old "
                        f"(--max-age {self.max_age:.0f}s)",
                    )
            if not chains:
                self.report.flag("truncated", self.prefix, "no digests at all under the prefix")


async def validate(store: Store, prefix: str, verifiers: list[Verifier], **kw: Any) -> Report:
    return await Validator(store, prefix, verifiers, **kw).run()
