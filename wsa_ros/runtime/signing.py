"""Signed bundles, ROS-free and torch-free: Ed25519 from the ``cryptography`` package.

A bundle's ``manifest.yaml`` names every file with its sha256 (``load_bundle`` checks them), so a
signature over the manifest's bytes covers the whole bundle. The signature lives beside it::

    manifest.sig   {"format": "wsa-ed25519-v1", "key_id": "<16 hex>", "manifest_sha256": "...",
                    "signature": "<base64 of 64 bytes>"}

``key_id`` is the first 16 hex digits of the sha256 of the raw 32-byte public key; the
manifest's sha256 is the policy's identity (two different policies never share it).

    generate_keypair(private_path, public_path)      # `wsa keygen`; private key file mode 0600
    sign_bundle(root, private_path)                  # the learner, after validation
    verify_bundle(root, trusted)                     # the agent, before any swap -> SignatureInfo

A signature file is data: it is parsed as JSON, never evaluated; every failure is a
:class:`SignatureError` whose message names the cause (unsigned, unknown key, altered after
signing, malformed) and the fix.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from wsa_ros.runtime.bundle import MANIFEST, BundleError

SIGNATURE = "manifest.sig"
FORMAT = "wsa-ed25519-v1"


class SignatureError(BundleError):
    """A bundle whose signature does not let it act (the message names why)."""


@dataclass(frozen=True)
class SignatureInfo:
    signed: bool
    key_id: str  # "" when unsigned
    manifest_sha256: str


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # a declared dependency (requirements.txt); say so rather than fail obscurely
        raise SignatureError("bundle signatures need the 'cryptography' package (pip install cryptography)") from exc
    return serialization, ed25519


def key_id(public_key) -> str:
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def manifest_sha256(root: str | os.PathLike) -> str:
    p = Path(root) / MANIFEST
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError as exc:
        raise BundleError(f"{p}: cannot read the manifest: {exc}") from exc


def generate_keypair(private_path: str | os.PathLike, public_path: str | os.PathLike) -> str:
    """A new Ed25519 key pair: the private key (PEM, PKCS8) readable by its owner only (0600,
    created exclusively: an existing file is never overwritten), the public key (PEM) beside
    it for the robots. Returns the key id."""
    serialization, ed25519 = _crypto()
    priv_p, pub_p = Path(private_path), Path(public_path)
    for p in (priv_p, pub_p):
        if p.exists():
            raise SignatureError(f"{p} exists: keys are never overwritten (move it away or choose another path)")
    if (priv_p.parent / MANIFEST).exists():
        raise SignatureError(f"{priv_p.parent} is a bundle folder: a private key must never travel inside a bundle")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    priv_p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(priv_p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
    finally:
        os.close(fd)
    os.chmod(priv_p, 0o600)  # whatever the umask
    pub = key.public_key()
    pub_p.parent.mkdir(parents=True, exist_ok=True)
    pub_p.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(pub)


def load_private_key(path: str | os.PathLike):
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        mode = p.stat().st_mode & 0o777
        data = p.read_bytes()
    except OSError as exc:
        raise SignatureError(f"{p}: cannot read the signing key: {exc}") from exc
    if mode & 0o077:
        raise SignatureError(f"{p}: the signing key is readable by others (mode {mode:o}); chmod 600 {p}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"{p}: not a PEM private key without a password ({exc})") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"{p}: not an Ed25519 key (make one with `wsa keygen`)")
    return key


def load_public_keys(paths) -> dict[str, object]:
    """{key id: public key} from PEM files (each a `wsa keygen` public key)."""
    serialization, ed25519 = _crypto()
    out = {}
    for path in paths:
        p = Path(path).expanduser()
        try:
            key = serialization.load_pem_public_key(p.read_bytes())
        except OSError as exc:
            raise SignatureError(f"{p}: cannot read the trusted public key: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise SignatureError(f"{p}: not a PEM public key ({exc})") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SignatureError(f"{p}: not an Ed25519 public key (make one with `wsa keygen`)")
        out[key_id(key)] = key
    return out


def sign_bundle(root: str | os.PathLike, private_key) -> SignatureInfo:
    """Sign ``root``'s manifest (``private_key``: a key or its file); writes ``manifest.sig``
    atomically (tmp + rename)."""
    key = private_key if not isinstance(private_key, (str, os.PathLike)) else load_private_key(private_key)
    root = Path(root)
    data = (root / MANIFEST).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    kid = key_id(key.public_key())
    doc = {"format": FORMAT, "key_id": kid, "manifest_sha256": digest,
           "signature": base64.b64encode(key.sign(data)).decode("ascii")}
    tmp = root / (SIGNATURE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, root / SIGNATURE)
    return SignatureInfo(True, kid, digest)


def verify_bundle(root: str | os.PathLike, trusted: dict, allow_unsigned: bool = False) -> SignatureInfo:
    """Check ``root``'s signature against ``trusted`` ({key id: public key}). Unsigned: allowed
    only with ``allow_unsigned``. Raises :class:`SignatureError` naming the cause."""
    from cryptography.exceptions import InvalidSignature

    root = Path(root)
    data = (root / MANIFEST).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    sig_p = root / SIGNATURE
    if not sig_p.is_file():
        if allow_unsigned:
            return SignatureInfo(False, "", digest)
        raise SignatureError(f"{root}: unsigned (no {SIGNATURE}); sign it with the learner's key "
                             "(finetune_node signing_key, or `wsa sign-bundle`), or set allow_unsigned")
    try:
        doc = json.loads(sig_p.read_text(encoding="utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        kid, sig = str(doc["key_id"]), base64.b64decode(str(doc["signature"]), validate=True)
    except (OSError, ValueError, KeyError, binascii.Error, UnicodeDecodeError) as exc:
        raise SignatureError(f"{sig_p}: malformed signature file ({exc}); sign the bundle again") from exc
    key = trusted.get(kid)
    if key is None:
        raise SignatureError(f"{root}: signed by key {kid}, which is not among the trusted keys "
                             f"{sorted(trusted) or '(none)'}; add its public key to trusted_keys if you trust it")
    try:
        key.verify(sig, data)
    except InvalidSignature:
        raise SignatureError(f"{root}: the signature by key {kid} does not match the manifest: the bundle was "
                             "altered after signing") from None
    return SignatureInfo(True, kid, digest)
