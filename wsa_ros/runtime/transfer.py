"""Bundles as bytes, ROS-free and torch-free: how a policy travels from the learner to the agents
without a shared filesystem.

    blob, label = pack_bundle(root)                 # the learner, after validation and signing
    path = receive_bundle(blob, label, cache_dir)   # the agent: checked, then stored in its own cache

The blob is an uncompressed POSIX tar of exactly the files the bundle's manifest names (each
with its sha256) plus ``manifest.yaml`` and, when signed, ``manifest.sig``; nothing else in
the folder travels. ``label`` = ``wsa-bundle-v1 <name> <version> <sha256 of the blob>``. On the
wire it is one ``std_msgs/UInt8MultiArray``: ``layout.dim[0].label`` = label, ``data`` = blob
(``wsa_ros.ros.messages.bundle_msg``).

A received blob is data, never code: its sha256 must match the label (a truncated or
corrupted transfer stops here), every member must be a regular file at a plain relative path
(no links, devices, absolute paths or ``..``), no name twice, within size bounds, and only
the manifest, its signature and the files the manifest names. It is unpacked into a hidden
folder of ``cache_dir``, loaded with :func:`wsa_ros.runtime.bundle.load_bundle` (which checks
every file's hash) and only then renamed into place as ``<name>-<version>-<digest12>``; any
failure removes the hidden folder, so the cache never holds a half-written bundle. Signatures,
compatibility, warm-up and the live observation are the agent's swap checks
(:meth:`wsa_ros.runtime.agent_core.AgentCore.swap`), as for any other route.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

from wsa_ros.runtime.bundle import MANIFEST, WIRE_CHARS, BundleError, hashed_files, load_bundle

FORMAT = "wsa-bundle-v1"
SIGNATURE = "manifest.sig"
MAX_BYTES = 512 * 2 ** 20  # a bundle bigger than this is refused (the shipped one: 4.9 MB)
MAX_MEMBERS = 256
KEEP = 4  # bundles kept in an agent's cache besides those in use (rollback needs the previous one)
_SAFE = re.compile(rf"^[{WIRE_CHARS}]+$")


class TransferError(BundleError):
    """A received bundle that cannot be used (the message names why)."""


def pack_bundle(root: str | os.PathLike) -> tuple[bytes, str]:
    """(blob, label) of the bundle folder ``root``, its hashes checked first."""
    b = load_bundle(root)
    names = [MANIFEST] + ([SIGNATURE] if (b.root / SIGNATURE).is_file() else []) + [r for r, _ in hashed_files(b)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in names:
            data = (b.root / rel).read_bytes()
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = len(data), 0o644, 0  # the same bundle -> the same bytes
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    return blob, f"{FORMAT} {_token(b.name)} {_token(b.version)} {hashlib.sha256(blob).hexdigest()}"


def _token(s: str) -> str:
    return re.sub(rf"[^{WIRE_CHARS}]", "_", str(s)) or "_"


def parse_label(label: str) -> tuple[str, str, str]:
    """(name, version, sha256) of a label, or TransferError."""
    parts = str(label).split(" ")
    if len(parts) != 4 or parts[0] != FORMAT or not re.fullmatch(r"[0-9a-f]{64}", parts[3]) \
            or not all(_SAFE.match(p) for p in parts[1:3]):
        raise TransferError(f"not a wsa bundle transfer: label '{str(label)[:120]}' (expected "
                            f"'{FORMAT} <name> <version> <sha256>', as the fine-tuner's ~/policy sends)")
    return parts[1], parts[2], parts[3]


def _members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    out, seen, total = [], set(), 0
    for m in tar.getmembers():
        if len(out) >= MAX_MEMBERS:
            raise TransferError(f"more than {MAX_MEMBERS} files")
        name = m.name
        parts = name.split("/")
        if not m.isreg():
            raise TransferError(f"'{name}' is not a regular file (links and devices are refused)")
        if name.startswith("/") or any(p in ("", ".", "..") or not _SAFE.match(p) for p in parts):
            raise TransferError(f"unsafe file name '{name}' (only plain relative paths)")
        if name in seen:
            raise TransferError(f"'{name}' appears twice")
        seen.add(name)
        total += m.size
        if total > MAX_BYTES:
            raise TransferError(f"unpacks to more than {MAX_BYTES // 2 ** 20} MB")
        out.append(m)
    return out


def receive_bundle(blob: bytes, label: str, cache_dir: str | os.PathLike) -> Path:
    """Check ``blob`` against ``label``, unpack it into ``cache_dir`` and return the bundle
    folder (an identical one already there is reused). Raises TransferError (or BundleError
    from the manifest checks) naming the cause; nothing is left behind on failure."""
    name, version, digest = parse_label(label)
    if len(blob) > MAX_BYTES:
        raise TransferError(f"{len(blob)} bytes, over the {MAX_BYTES // 2 ** 20} MB limit")
    got = hashlib.sha256(blob).hexdigest()
    if got != digest:
        raise TransferError(f"bundle {name} {version}: the bytes received ({len(blob)}) hash to {got[:12]}, not "
                            f"the {digest[:12]} sent: a truncated or corrupted transfer")
    cache = Path(cache_dir).expanduser()
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / f"{name}-{version}-{digest[:12]}"
    if final.is_dir():
        load_bundle(final)  # still intact (hashes) or an error naming what changed
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=cache))
    try:
        try:
            tar = tarfile.open(fileobj=io.BytesIO(blob), mode="r:")
        except tarfile.TarError as exc:
            raise TransferError(f"bundle {name} {version}: not a readable tar: {exc}") from exc
        with tar:
            members = _members(tar)
            names = {m.name for m in members}
            if MANIFEST not in names:
                raise TransferError(f"bundle {name} {version}: no {MANIFEST} in the transfer")
            for m in members:
                dst = tmp / m.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(m)
                with open(dst, "wb") as f:
                    shutil.copyfileobj(src, f)
        b = load_bundle(tmp)  # every named file present with its hash
        expected = {MANIFEST, SIGNATURE} | {r for r, _ in hashed_files(b)}
        extra = sorted(names - expected)
        if extra:
            raise TransferError(f"bundle {name} {version}: files the manifest does not name: {extra}")
        if _token(b.name) != name or _token(b.version) != version:
            raise TransferError(f"the transfer says {name} {version} but its manifest is {b.name} {b.version}")
        try:
            os.rename(tmp, final)
        except OSError:  # another receiver won the race with the same bytes
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prune_cache(cache_dir: str | os.PathLike, in_use: set[str], keep: int = KEEP) -> list[Path]:
    """Remove all but the newest ``keep`` received bundles not in ``in_use`` (paths), and any
    leftover hidden folders; returns what was removed."""
    cache = Path(cache_dir).expanduser()
    if not cache.is_dir():
        return []
    used = {str(Path(p).resolve()) for p in in_use if p}
    gone = []
    for d in cache.iterdir():
        if d.name.startswith(".incoming-") and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    folders = sorted((d for d in cache.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: d.stat().st_mtime, reverse=True)
    for d in [d for d in folders if str(d.resolve()) not in used][keep:]:
        shutil.rmtree(d, ignore_errors=True)
        gone.append(d)
    return gone
