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
  does not fail validation), within one digest interval and a grace of the
  head's time and of now; ``skipped``: not read because of ``--since``;
- ``unwitnessed``: witness keys were given and the chain's newest checkpoint
  lacks the required cosignatures.

Nothing an attacker on the archive host controls is taken on trust: every file
reported on is read and hashed on every run (no cache keyed on size or mtime),
keys come from the caller (a trust file, ``--public-key``), and the tail is
checked against every checkpoint published beside the archive, in extra
checkpoint stores, and by witnesses, whose cosignatures pin what they saw.

Hashing and decompression run in a thread pool (hashlib and zlib release the
GIL), so chains are checked in parallel and the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import zstandard

from daemon.archive.fileformat import FileFormatError, decompress, split_records
from daemon.archive.keys import CHECKPOINT_DIR
from daemon.cpus import usable_cpus
from daemon.integrity import merkle
from daemon.integrity.checkpoint import (
    BadSignature,
    Checkpoint,
    NoteError,
    UnknownKey,
    Verifier,
    open_checkpoint,
)
from daemon.integrity.cosignature import CosignerKey, cosignatures, merge_signatures
from daemon.integrity.digest import DIGEST_DIR, parse_iso, verify_digest
from daemon.integrity.trust import Trust
from daemon.integrity.witnessing import WitnessError, fetch_witnessed
from daemon.stores.base import ObjectInfo, ObjectMissing, Store, StoreError

FAILING = {
    "modified",
    "missing",
    "unlisted",
    "moved",
    "bad-signature",
    "unknown-key",
    "chain-gap",
    "truncated",
    "unwitnessed",
}
# How far a pending file's name may run ahead of the chain head's time plus one
# interval, and of the validator's clock: clock skew and a file closing late.
PENDING_GRACE = 300.0
# A digest this young may not be witnessed yet: the daemon asks the witnesses right after it.
WITNESS_GRACE = 120.0
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
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    trust: str = ""
    checkpoints: list[dict[str, Any]] = field(default_factory=list)

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
            "bytes_read": self.bytes_read,
            "trust": self.trust,
            "checkpoints": self.checkpoints,
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
    except (OSError, EOFError, zlib.error, zstandard.ZstdError, FileFormatError) as exc:
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
    source: str = "--trusted-checkpoint"
    cosigned_by: list[str] = field(default_factory=list)


class Validator:
    """One validation run over the archive under ``prefix``. ``run()`` once; read ``report``.

    ``trust`` holds the signing keys accepted (with their validity windows);
    ``witness_keys`` and ``witnesses_required`` make the newest checkpoint of each
    chain need that many cosignatures; ``witness_urls`` are asked for what they
    cosigned; ``checkpoint_stores`` hold copies of the published checkpoints.
    """

    def __init__(
        self,
        store: Store,
        prefix: str,
        trust: Trust | Sequence[Verifier],
        *,
        trusted: list[str] | None = None,
        max_age: float | None = None,
        since: float | None = None,
        workers: int | None = None,
        progress: bool = False,
        now: float | None = None,
        digest_interval: float = 3600.0,
        witness_keys: Sequence[CosignerKey] = (),
        witnesses_required: int | None = None,
        witness_urls: Sequence[str] = (),
        checkpoint_stores: Sequence[Store] = (),
        witness_timeout: float = 10.0,
    ) -> None:
        self.store = store
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if not isinstance(trust, Trust):
            from daemon.integrity.trust import TrustedKey

            trust = Trust([TrustedKey(v) for v in trust], "--public-key")
        self.trust = trust
        self.verifiers = trust.verifiers
        self.trusted_notes = trusted or []
        self.max_age = max_age
        self.since = since
        self.workers = workers or min(8, usable_cpus().count)
        self.progress = progress
        self.now = now if now is not None else time.time()
        self.digest_interval = digest_interval
        self.witness_keys = list(witness_keys)
        self.witnesses_required = (
            witnesses_required if witnesses_required is not None else (1 if self.witness_keys else 0)
        )
        if self.witnesses_required > len(self.witness_keys):
            raise ValueError(
                f"--witnesses {self.witnesses_required} asks for more cosignatures than the "
                f"{len(self.witness_keys)} witness key(s) given"
            )
        self.witness_urls = list(witness_urls)
        self.checkpoint_stores = list(checkpoint_stores)
        self.witness_timeout = witness_timeout
        self.report = Report(trust=f"{trust.source}{'' if trust.pinned else ' (NOT pinned)'}")

    async def run(self) -> Report:
        report = await self._run_once()
        if any(f.category == "truncated" for f in report.findings) and await self._moved_on():
            # The daemon wrote a digest (and got it witnessed) while we read: measure again.
            self.report = Report(trust=report.trust)
            self.now = time.time()
            report = await self._run_once()
        return report

    async def _moved_on(self) -> bool:
        keys = {o.key async for o in self.store.list(self.prefix) if f"/{DIGEST_DIR}/" in f"/{o.key}"}
        return not keys <= self._digest_keys

    async def _run_once(self) -> Report:
        infos = {o.key: o async for o in self.store.list(self.prefix)}
        digest_keys = [k for k in infos if f"/{DIGEST_DIR}/" in f"/{k}" and k.endswith(".json")]
        checkpoint_keys = [k for k in infos if f"/{CHECKPOINT_DIR}/" in f"/{k}"]
        self._digest_keys = set(digest_keys)
        skip = set(digest_keys) | set(checkpoint_keys)
        file_keys = [k for k in infos if k not in skip]
        # Published checkpoints first: read before the digests, they can only be older.
        published = await self._published(checkpoint_keys)
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
            witnessed = await self._witnessed(published, chains)
            trusted += witnessed
            by_sha = {str(f["sha256"]): k for k, (_, f) in listed.items()}
            strays = await self._read_strays(pool, infos, file_keys, listed, chains)
            await self._check_files(pool, infos, chains, listed, by_sha, trusted, strays)
        self._unlisted(file_keys, listed, chains, strays)
        self._tail(chains, trusted)
        self._witness_coverage(chains, witnessed)
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
                    f"signed by {sig.get('key_name')} key {sig.get('key_id')}, which {self.trust.source} "
                    "does not list (a key swapped on the archive host, or a rotation newer than the "
                    "trust file: export it again with `trailkeeper keys export-public`)",
                )
                return None
            tk = self.trust.key_for(signer)
            interval = float(doc.get("digest_interval") or self.digest_interval)
            try:
                when = parse_iso(str(doc.get("end_time")))
            except ValueError:
                when = 0.0
            if tk is not None and not tk.covers(when, interval):
                self.report.flag(
                    "unknown-key",
                    key,
                    f"signed by key {signer.key_id.hex()} at {doc.get('end_time')}, outside the window "
                    f"{self.trust.source} gives it ({tk.window()})",
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
        strays: dict[str, _FileResult],
    ) -> None:
        to_read: list[str] = []
        for ds in chains.values():
            for d in ds:
                too_old = self.since is not None and parse_iso(d.doc["end_time"]) < self.since
                sizes = {t.checkpoint.size for t in trusted}
                for f in d.doc.get("files", []):
                    k = str(f["key"])
                    if k not in objects:
                        continue
                    first, n = int(f["first_leaf"]), int(f["records"])
                    # --since skips old files, except one a trusted checkpoint falls inside.
                    if not too_old or any(first < s < first + n for s in sizes):
                        to_read.append(k)
        results = await self._read_all(pool, objects, to_read)
        for (tracker, writer), ds in chains.items():
            self._walk_chain(tracker, writer, ds, objects, set(objects), results, by_sha, trusted, strays)

    async def _read_all(
        self, pool: ThreadPoolExecutor, objects: dict[str, ObjectInfo], keys: list[str]
    ) -> dict[str, _FileResult]:
        """Read and hash ``keys`` in parallel: every byte of every one of them, every run."""
        loop = asyncio.get_running_loop()
        results: dict[str, _FileResult] = {}
        total = sum(objects[k].size for k in keys)
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

            await asyncio.gather(*(read(k) for k in keys))
        return results

    async def _read_strays(
        self,
        pool: ThreadPoolExecutor,
        objects: dict[str, ObjectInfo],
        file_keys: list[str],
        listed: dict[str, tuple[tuple[str, str], dict[str, Any]]],
        chains: dict[tuple[str, str], list[_Digest]],
    ) -> dict[str, _FileResult]:
        """Hash the files no digest lists, so one whose bytes a digest lists elsewhere is ``moved``."""
        if not any(k not in objects for k in listed):
            return {}  # nothing is missing, so nothing can have moved: unlisted files stay unread
        return await self._read_all(pool, objects, [k for k in file_keys if k not in listed])

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
        strays: dict[str, _FileResult],
    ) -> None:
        stray_by_sha = {r.sha256: k for k, r in strays.items()}
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
                res = results.get(k)
                if k not in objects:
                    dest = stray_by_sha.get(str(f["sha256"]))
                    if dest is None:
                        self.report.flag("missing", k, f"listed in {d.key}")
                        frontier = None
                        continue
                    # Its bytes are intact at another key: name the move, and keep the tree going.
                    self.report.flag("moved", k, f"listed in {d.key}; its bytes are now at {dest}")
                    self.report.flag("moved", dest, f"holds the bytes listed for {k} in {d.key}")
                    res = strays[dest]
                if res is None:
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
                self.report.status.setdefault(k, "valid")
                if self.report.status[k] == "skipped":
                    self.report.status[k] = "valid"
                if frontier is not None and res.leaves is not None:
                    for s in sizes:
                        if first < s < first + n:
                            part = frontier.copy()
                            part.extend(res.leaves[: s - first])
                            roots_at[s] = part.root()
                    frontier.extend(res.leaves)
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
        strays: dict[str, _FileResult],
    ) -> None:
        for k in file_keys:
            if k in listed or self.report.status.get(k) == "moved":
                continue
            if self._pending(k, chains):
                self.report.status[k] = "pending"
                continue
            self.report.flag("unlisted", k, "present in the store but listed by no digest")

    def _pending(self, key: str, chains: dict[tuple[str, str], list[_Digest]]) -> bool:
        """A file the live chain's next digest will list: named after the head's interval began,
        and no later than one interval (plus a grace) after the head and after now."""
        m = _STAMP.search(key)
        if m is None:
            return False
        try:
            stamp = dt.datetime.strptime(m.group(1), "%Y%m%dT%H%M").replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            return False
        name = key.rsplit("/", 1)[-1]
        for (tracker, writer), ds in chains.items():
            if not ds or not name.startswith(f"{writer}_{tracker}_"):
                continue
            newest = ds[-1].doc
            if newest.get("chain_end"):
                return False
            # After a crash the restarted writer's chain-start digest comes first, and the journal's
            # backlog is archived after it under its original (earlier) receive times: those belong
            # to the crashed process's last interval, so the window opens where that one began.
            i = len(ds) - 1
            while i > 0 and ds[i].doc.get("chain_start") and not ds[i - 1].doc.get("chain_end"):
                i -= 1
            start = parse_iso(ds[i].doc["start_time"])
            head = parse_iso(newest["end_time"])
            interval = float(newest.get("digest_interval") or self.digest_interval)
            return start - 60 <= stamp <= min(head + interval, self.now) + PENDING_GRACE
        return False

    # --- published and witnessed checkpoints ------------------------------------------------

    async def _published(self, keys: list[str]) -> list[tuple[str, str]]:
        """(source, note) of every checkpoint published beside the archive and in the extra stores."""
        out: list[tuple[str, str]] = []

        async def read(store: Store, key: str, source: str) -> None:
            with contextlib.suppress(ObjectMissing):
                out.append((source, (await store.get(key)).decode("utf-8", "replace")))

        await asyncio.gather(*(read(self.store, k, k) for k in keys))
        for extra in self.checkpoint_stores:
            try:
                extra_keys = [
                    o.key async for o in extra.list(self.prefix) if f"/{CHECKPOINT_DIR}/" in f"/{o.key}"
                ]
                await asyncio.gather(*(read(extra, k, f"{extra.name}:{k}") for k in extra_keys))
            except StoreError as exc:
                where = f"{extra.name}:{self.prefix}"
                self.report.flag("missing", where, f"checkpoint store unreadable: {exc}")
        return out

    async def _witnessed(
        self, published: list[tuple[str, str]], chains: dict[tuple[str, str], list[_Digest]]
    ) -> list[Trusted]:
        """Every checkpoint the log signed that was published or that a witness holds.

        Each becomes a tail check: the archive must extend it. Cosignatures on one checkpoint
        are pooled across sources, so a copy without them does not hide the witnessed one.
        """
        notes = list(published)
        origins = set()
        for _, note in published:
            try:
                origins.add(Checkpoint.parse(note[: note.find("\n\n") + 1]).origin)
            except NoteError:
                continue
        for ds in chains.values():
            head = str(ds[-1].doc.get("checkpoint", "")) if ds else ""
            try:
                origins.add(Checkpoint.parse(head[: head.find("\n\n") + 1]).origin)
            except NoteError:
                continue
        if self.witness_urls and origins:
            async with aiohttp.ClientSession() as session:

                async def ask(url: str, origin: str) -> None:
                    try:
                        note = await fetch_witnessed(session, url, origin, self.witness_timeout)
                    except WitnessError as exc:
                        self.report.checkpoints.append({"source": url, "origin": origin, "error": str(exc)})
                        return
                    if note is not None:
                        notes.append((f"witness {url}", note))

                await asyncio.gather(*(ask(u, o) for u in self.witness_urls for o in sorted(origins)))
        by_text: dict[str, Trusted] = {}
        for source, note in notes:
            try:
                cp = open_checkpoint(note, self.verifiers)
            except BadSignature as exc:
                self.report.flag("bad-signature", source, f"published checkpoint: {exc}")
                continue
            except UnknownKey as exc:
                self.report.flag("unknown-key", source, f"published checkpoint: {exc}")
                continue
            except NoteError as exc:
                self.report.flag("modified", source, f"published checkpoint: {exc}")
                continue
            text = cp.text()
            t = by_text.get(text)
            if t is None:
                t = by_text[text] = Trusted(note, cp, source)
            else:
                t.note = merge_signatures(t.note, note[note.rfind("\n\n") + 2 :].splitlines())
                t.source += f", {source}"
        out = []
        for t in by_text.values():
            try:
                cos = cosignatures(t.note, self.witness_keys)
            except NoteError as exc:
                self.report.flag("bad-signature", t.source, f"checkpoint cosignature: {exc}")
                cos = []
            t.cosigned_by = sorted(c.witness.name for c in cos)
            self.report.checkpoints.append(
                {
                    "source": t.source,
                    "origin": t.checkpoint.origin,
                    "size": t.checkpoint.size,
                    "root": t.checkpoint.root.hex(),
                    "cosigned_by": t.cosigned_by,
                }
            )
            out.append(t)
        return out

    def _witness_coverage(
        self, chains: dict[tuple[str, str], list[_Digest]], checkpoints: list[Trusted]
    ) -> None:
        """With witnesses required: each chain's newest settled checkpoint must be cosigned."""
        need = self.witnesses_required
        if need <= 0:
            return
        for (tracker, writer), ds in chains.items():
            if not ds:
                continue
            settled = [d for d in ds if parse_iso(d.doc["end_time"]) <= self.now - WITNESS_GRACE] or ds[:1]
            size = int(settled[-1].doc.get("tree_size", 0))
            mine = [
                t
                for t in checkpoints
                if t.checkpoint.origin.endswith(f"/{tracker}/{writer}") and len(t.cosigned_by) >= need
            ]
            best = max((t.checkpoint.size for t in mine), default=None)
            if best is None or best < size:
                where = (
                    "no checkpoint" if best is None else f"the newest witnessed checkpoint has {best} records"
                )
                self.report.flag(
                    "unwitnessed",
                    settled[-1].key,
                    f"{tracker}/{writer}: {where} with {need} cosignature(s); this digest's has {size} "
                    "(is the witness reachable, and does the daemon list it in integrity.witnesses?)",
                )

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


LAST_VALIDATION = "last-validation.json"


def save_last_validation(state_dir: Path, report: Report, where: str, finished: float) -> None:
    """Keep a summary of a run where the daemon's admin API reads it. Blocking; best effort
    for the caller (an auditor's machine may not be able to write the daemon's state)."""
    doc = report.to_json()
    summary = {
        "finished_at": dt.datetime.fromtimestamp(finished, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "target": where,
        "ok": doc["ok"],
        "counts": doc["counts"],
        "findings_total": len(doc["findings"]),
        "findings": doc["findings"][:50],
        "trust": doc["trust"],
        "files_read": doc["files_read"],
        "bytes_read": doc["bytes_read"],
    }
    from daemon.durable import atomic_write

    state_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(state_dir / LAST_VALIDATION, orjson.dumps(summary))


def load_last_validation(state_dir: Path) -> dict[str, Any] | None:
    """The summary ``save_last_validation`` kept, or None. Blocking: call from a thread."""
    try:
        doc = orjson.loads((state_dir / LAST_VALIDATION).read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


async def validate(store: Store, prefix: str, verifiers: list[Verifier], **kw: Any) -> Report:
    return await Validator(store, prefix, verifiers, **kw).run()
