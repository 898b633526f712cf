"""The durable replay store: append-only chunk files on disk (ROS-free, torch-free).

Layout of a store folder::

    store.json                      format, schema {field: [dtype, shape]}, fingerprint, meta
    chunks/c_<first>_<last>.npz     transitions with sequence numbers first..last (inclusive)

* **Append, then flush.** :meth:`ReplayStore.append` only queues a transition in memory;
  :meth:`flush` (run every ``flush_period_s`` by the store's own flusher thread, independent
  of ROS callbacks and training) writes everything queued as one new chunk: written to a
  hidden ``.tmp`` file, ``fsync``-ed, atomically renamed, and the folder ``fsync``-ed. A
  ``kill -9`` therefore loses at most the transitions of the last ``flush_period_s``, and a
  chunk file is either complete or absent.
* **Integrity.** Chunks are uncompressed ``.npz`` (zip): every array carries a CRC-32 that is
  checked on read, arrays are plain dtypes (strings are fixed-width unicode) and are read with
  ``allow_pickle=False``. At open, leftover ``.tmp`` files (torn writes) are removed and
  counted; a chunk that fails to read, has the wrong fields, shapes, dtypes or length is
  renamed ``*.corrupt`` (kept for inspection), counted and skipped - never a crash.
* **Compaction.** Many small chunks (one a second) are merged into one: the merged chunk is
  written first, then the small ones deleted. A crash in between leaves chunks whose range
  lies inside the merged one; they are recognised as redundant at the next open and removed.
* **Disk full.** A failed write (``ENOSPC`` and any other ``OSError``) sets :attr:`error`
  to a message naming the folder and the cause, keeps the queued transitions (up to
  ``max_pending``, the rest are dropped and counted) and retries every ``retry_s``; the
  caller keeps running.
* Nothing is ever evicted from disk: the in-memory replay buffers hold the newest
  transitions (``read(last_n=capacity)``), the disk holds everything.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import threading
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np

FORMAT = "wsa_replay/1"
META = "store.json"
CHUNKS = "chunks"
_CHUNK_RE = re.compile(r"^c_(\d{12})_(\d{12})\.npz$")
# what reading a damaged chunk raises (zip CRC / header checks, numpy format checks, I/O)
_CORRUPT = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)

log = logging.getLogger("wsa_ros.learn.store")


class StoreError(RuntimeError):
    """A store that cannot be used (wrong schema, unreadable metadata); names folder and fix."""


def _chunk_name(first: int, last: int) -> str:
    return f"c_{first:012d}_{last:012d}.npz"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _schema_json(schema: dict) -> dict:
    return {k: [d, list(s)] for k, (d, s) in schema.items()}


def _norm_dtype(d: str) -> str:
    return np.dtype(d).str


class ReplayStore:
    """Durable, append-only transition store. ``schema``: {field: (dtype, shape)};
    ``fingerprint``: what must match to reuse an existing store (e.g. the encoders)."""

    def __init__(self, root: str | os.PathLike, schema: dict, fingerprint: dict | None = None,
                 meta: dict | None = None, flush_period_s: float = 1.0, compact_min_chunks: int = 32,
                 compact_max_rows: int = 50_000, max_pending: int = 200_000, retry_s: float = 5.0,
                 create: bool = True, readonly: bool = False, on_error: Callable[[str], None] | None = None):
        self.root = Path(os.path.expanduser(str(root)))
        self.schema = {k: (_norm_dtype(d), tuple(int(x) for x in s)) for k, (d, s) in schema.items()}
        self.fingerprint = fingerprint or {}
        self.flush_period_s = float(flush_period_s)
        self.compact_min_chunks = int(compact_min_chunks)
        self.compact_max_rows = int(compact_max_rows)
        self.max_pending = int(max_pending)
        self.retry_s = float(retry_s)
        self.readonly = readonly
        self.on_error = on_error
        self._lock = threading.Lock()  # pending queue + counters
        self._write_lock = threading.Lock()  # one writer (flush / compaction) at a time
        self._pending: list[dict] = []
        self._chunks: dict[tuple[int, int], Path] = {}
        self.error: str | None = None
        self._next_retry = 0.0
        self.dropped = 0  # transitions lost because the disk kept failing
        self.torn_removed = 0
        self.corrupt = 0
        self.redundant_removed = 0
        self.written = 0  # transitions written by this process
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._open(create, meta or {})

    # ------------------------------------------------------------------ opening
    def _open(self, create: bool, meta: dict) -> None:
        mf = self.root / META
        want = {"format": FORMAT, "schema": _schema_json(self.schema), "fingerprint": self.fingerprint}
        if mf.is_file():
            try:
                have = json.loads(mf.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StoreError(f"{mf}: cannot read the store metadata: {exc}") from exc
            if have.get("format") != FORMAT:
                raise StoreError(f"{mf}: format {have.get('format')!r} is not {FORMAT!r}")
            if have.get("schema") != want["schema"]:
                diff = sorted(set(map(str, have.get("schema", {}).items())) ^ set(map(str, want["schema"].items())))
                raise StoreError(f"{self.root}: this store holds transitions of another shape ({diff[:4]}...); "
                                 "use a new store_dir for this bundle")
            if self.fingerprint and have.get("fingerprint") != self.fingerprint:
                raise StoreError(
                    f"{self.root}: this store was written for other encoders / joints "
                    f"({have.get('fingerprint')}) than the bundle's ({self.fingerprint}); its embeddings "
                    "would be meaningless: use a new store_dir")
            self.meta = have.get("meta", {})
        else:
            if self.readonly or not create:
                raise StoreError(f"{self.root}: no replay store here (no {META})")
            self.root.mkdir(parents=True, exist_ok=True)
            self.meta = dict(meta)
            tmp = mf.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({**want, "meta": self.meta, "created": time.time()}, indent=1), encoding="utf-8")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, mf)
            _fsync_dir(self.root)
        cdir = self.root / CHUNKS
        if not self.readonly:
            cdir.mkdir(exist_ok=True)
        if not cdir.is_dir():
            return
        for p in cdir.iterdir():
            if p.name.endswith(".tmp"):
                if not self.readonly:
                    p.unlink(missing_ok=True)
                self.torn_removed += 1
                continue
            m = _CHUNK_RE.match(p.name)
            if m:
                first, last = int(m.group(1)), int(m.group(2))
                if last >= first:
                    self._chunks[(first, last)] = p
        self._drop_redundant()

    def _drop_redundant(self) -> None:
        """Chunks whose range lies inside a bigger, readable chunk (left by a compaction that
        was interrupted before it deleted its inputs) are removed."""
        keys = sorted(self._chunks, key=lambda k: (k[0], -k[1]))
        cover: tuple[int, int] | None = None
        for k in keys:
            if cover is not None and k[1] <= cover[1] and k != cover:
                if self._readable(self._chunks[cover]):
                    if not self.readonly:
                        self._chunks[k].unlink(missing_ok=True)
                    del self._chunks[k]
                    self.redundant_removed += 1
                continue
            cover = k

    def _readable(self, path: Path) -> bool:
        try:
            self._load_chunk(path)
            return True
        except _CORRUPT as exc:
            log.debug("chunk %s unreadable: %s", path, exc)
            return False

    # ------------------------------------------------------------------ properties
    @property
    def count(self) -> int:
        """Transitions on disk (by chunk names; corrupt chunks found so far excluded)."""
        return sum(last - first + 1 for first, last in self._chunks)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stats(self) -> dict:
        with self._lock:
            pending = len(self._pending)
        return {"stored": self.count, "pending": pending, "chunks": len(self._chunks), "written": self.written,
                "dropped": self.dropped, "torn_removed": self.torn_removed, "corrupt": self.corrupt,
                "redundant_removed": self.redundant_removed, "error": self.error or ""}

    # ------------------------------------------------------------------ writing
    def append(self, rec: dict) -> bool:
        """Queue one transition (flat record); False when it was dropped (disk failing and
        ``max_pending`` reached). Shapes are checked here; values by the caller."""
        if self.readonly:
            raise StoreError(f"{self.root}: store opened read-only")
        for k, (_d, shape) in self.schema.items():
            if k not in rec:
                raise ValueError(f"transition lacks field '{k}'")
            if np.shape(rec[k]) != shape:
                raise ValueError(f"field '{k}' has shape {np.shape(rec[k])}, the store holds {shape}")
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self.dropped += 1
                return False
            self._pending.append(rec)
        return True

    def _arrays(self, recs: list[dict]) -> dict[str, np.ndarray]:
        out = {}
        for k, (d, shape) in self.schema.items():
            out[k] = np.asarray([r[k] for r in recs], dtype=d).reshape(len(recs), *shape)
        return out

    def _write(self, first: int, arrays: dict[str, np.ndarray]) -> Path:
        n = len(next(iter(arrays.values())))
        name = _chunk_name(first, first + n - 1)
        cdir = self.root / CHUNKS
        tmp = cdir / f".{name}.tmp"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, cdir / name)
        except BaseException:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise
        _fsync_dir(cdir)
        return cdir / name

    def flush(self) -> int:
        """Write everything queued as one chunk; returns the number written (0 on error,
        with :attr:`error` set). Safe to call from any thread."""
        if self.readonly:
            return 0
        with self._write_lock:
            now = time.monotonic()
            if self.error and now < self._next_retry:
                return 0
            with self._lock:
                recs, self._pending = self._pending, []
                first = max((k[1] for k in self._chunks), default=-1) + 1
            if not recs:
                return 0
            try:
                path = self._write(first, self._arrays(recs))
            except OSError as exc:
                with self._lock:
                    self._pending = recs + self._pending  # keep them, in order, for the retry
                    over = len(self._pending) - self.max_pending
                    if over > 0:  # keep the oldest (the next sequence numbers), drop the newest
                        del self._pending[self.max_pending:]
                        self.dropped += over
                self._set_error(exc)
                return 0
            with self._lock:
                self._chunks[(first, first + len(recs) - 1)] = path
            self.written += len(recs)
            if self.error:
                log.warning("replay store %s writable again; %d transitions kept while it failed were written",
                            self.root, len(recs))
                self.error = None
        self.compact()
        return len(recs)

    def _set_error(self, exc: OSError) -> None:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = (f"replay store {self.root}: disk full ({exc.strerror}); transitions are kept in memory "
                   f"(up to {self.max_pending}) and dropped beyond that; free space - writing is retried every "
                   f"{self.retry_s:g} s")
        else:
            msg = f"replay store {self.root}: cannot write a chunk: {exc}; retrying every {self.retry_s:g} s"
        first = self.error is None
        self.error = msg
        self._next_retry = time.monotonic() + self.retry_s
        if first:
            log.error(msg)
            if self.on_error:
                self.on_error(msg)

    @staticmethod
    def _tier(key: tuple[int, int]) -> int:
        """Size class of a chunk: rows < 32 -> 0, < 1024 -> 1, < 32768 -> 2, ..."""
        return (key[1] - key[0] + 1).bit_length() // 5

    def _merge_run(self) -> list[tuple[int, int]]:
        """The oldest ``compact_min_chunks`` consecutive chunks of one size class (each row is
        rewritten about log32(total) times, like an LSM tree)."""
        with self._lock:
            keys = sorted(self._chunks)
        run: list[tuple[int, int]] = []
        for k in keys:
            if run and (k[0] != run[-1][1] + 1 or self._tier(k) != self._tier(run[-1])):
                run = []
            run.append(k)
            if len(run) >= self.compact_min_chunks:
                rows = run[-1][1] - run[0][0] + 1
                return run if rows <= self.compact_max_rows else []
        return []

    def compact(self) -> int:
        """Merge a run of small chunks into one (written first, then the inputs deleted);
        returns how many chunks were merged."""
        with self._write_lock:
            run = self._merge_run()
            if len(run) < 2:
                return 0
            parts = []
            for k in run:
                try:
                    parts.append(self._load_chunk(self._chunks[k]))
                except _CORRUPT:
                    return 0  # leave it; read() reports and quarantines it
            merged = {f: np.concatenate([p[f] for p in parts]) for f in self.schema}
            try:
                path = self._write(run[0][0], merged)
            except OSError as exc:
                self._set_error(exc)
                return 0
            with self._lock:
                for k in run:
                    p = self._chunks.pop(k)
                    if p != path:
                        p.unlink(missing_ok=True)
                self._chunks[(run[0][0], run[-1][1])] = path
            _fsync_dir(self.root / CHUNKS)
            return len(run)

    # ------------------------------------------------------------------ flusher thread
    def start(self) -> "ReplayStore":
        """Flush every ``flush_period_s`` from a daemon thread until :meth:`close`."""
        if self._thread is None and not self.readonly:
            self._thread = threading.Thread(target=self._run, name="replay-store-flusher", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.flush_period_s):
            try:
                self.flush()
            except Exception as exc:  # noqa: BLE001 - never let the flusher die silently
                log.exception("replay store flush failed: %s", exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        if not self.readonly:
            self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ reading
    def _load_chunk(self, path: Path) -> dict[str, np.ndarray]:
        m = _CHUNK_RE.match(path.name)
        n = int(m.group(2)) - int(m.group(1)) + 1 if m else None
        with np.load(path, allow_pickle=False) as z:
            files = set(z.files)
            missing = sorted(set(self.schema) - files)
            if missing:
                raise ValueError(f"fields {missing} missing")
            out = {}
            for k, (d, shape) in self.schema.items():
                a = z[k]  # reading verifies the member's CRC-32
                if a.dtype.str != d or a.shape[1:] != shape or (n is not None and a.shape[0] != n):
                    raise ValueError(f"field '{k}' is {a.dtype.str}{a.shape}, expected {d}[{n}, {shape}]")
                out[k] = a
        return out

    def _quarantine(self, key: tuple[int, int], exc: Exception) -> None:
        p = self._chunks.pop(key)
        self.corrupt += 1
        msg = f"replay store {self.root}: chunk {p.name} is corrupt ({type(exc).__name__}: {exc}); skipped"
        log.error(msg)
        if not self.readonly:
            try:
                os.replace(p, p.with_name(p.name + ".corrupt"))
            except OSError:
                pass

    def iter_chunks(self, last_n: int | None = None):
        """(first seq, {field: array}) of the stored chunks, oldest first; with ``last_n``
        only the newest chunks holding at least that many transitions. Corrupt chunks are
        quarantined and skipped."""
        with self._lock:
            keys = sorted(self._chunks)
        if last_n is not None:
            sel, total = [], 0
            for k in reversed(keys):
                if total >= last_n:
                    break
                sel.append(k)
                total += k[1] - k[0] + 1
            keys = sorted(sel)
        for k in keys:
            try:
                arrays = self._load_chunk(self._chunks[k])
            except _CORRUPT as exc:
                with self._lock:
                    self._quarantine(k, exc)
                continue
            yield k[0], arrays

    def read(self, last_n: int | None = None) -> dict[str, np.ndarray]:
        """The stored transitions (the newest ``last_n``) as one array per field, oldest first,
        plus ``seq``."""
        parts, seqs = [], []
        for first, arrays in self.iter_chunks(last_n):
            parts.append(arrays)
            seqs.append(np.arange(first, first + len(next(iter(arrays.values()))), dtype=np.int64))
        if not parts:
            out = {k: np.zeros((0, *s), dtype=d) for k, (d, s) in self.schema.items()}
            out["seq"] = np.zeros((0,), np.int64)
            return out
        out = {k: np.concatenate([p[k] for p in parts]) for k in self.schema}
        out["seq"] = np.concatenate(seqs)
        if last_n is not None and len(out["seq"]) > last_n:
            out = {k: v[-last_n:] for k, v in out.items()}
        return out
