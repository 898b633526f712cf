"""Bundles as bytes (wsa_ros/runtime/transfer.py) and the agent that takes them (AgentCore.receive)."""
import hashlib
import io
import shutil
import tarfile

import pytest

from test_agent_core import Robot
from wsa_ros.runtime.bundle import BundleError, load_bundle
from wsa_ros.runtime.signing import generate_keypair, manifest_sha256, sign_bundle
from wsa_ros.runtime.transfer import FORMAT, TransferError, pack_bundle, prune_cache, receive_bundle


def _label(blob: bytes, name="tiny", version="1") -> str:
    return f"{FORMAT} {name} {version} {hashlib.sha256(blob).hexdigest()}"


def _tar(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            if data is None:  # a symlink
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _leftovers(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_round_trip_is_the_same_policy_and_deterministic(tiny_bundle, tmp_path):
    src = shutil.copytree(tiny_bundle, tmp_path / "src")
    (src / "notes.txt").write_text("not part of the policy")  # only what the manifest names travels
    blob, label = pack_bundle(src)
    assert pack_bundle(src) == (blob, label)  # the same bundle, the same bytes
    assert label.split()[:3] == [FORMAT, "tiny", "1"]
    cache = tmp_path / "cache"
    got = receive_bundle(blob, label, cache)
    assert got.parent == cache and got.name.startswith("tiny-1-")
    assert manifest_sha256(got) == manifest_sha256(tiny_bundle) and not (got / "notes.txt").exists()
    b, b0 = load_bundle(got), load_bundle(tiny_bundle)
    assert [e.file for e in b.encoders] == [e.file for e in b0.encoders]
    assert receive_bundle(blob, label, cache) == got  # received twice: reused
    assert _leftovers(cache) == [got.name]


def test_truncated_corrupt_unsafe_or_padded_transfers_leave_nothing(tiny_bundle, tmp_path):
    blob, label = pack_bundle(tiny_bundle)
    cache = tmp_path / "cache"
    manifest = (tiny_bundle / "manifest.yaml").read_bytes()
    corrupt = bytearray(blob)
    corrupt[len(blob) // 2] ^= 0xFF
    cases = [
        (blob[: len(blob) // 2], label, "truncated or corrupted"),
        (bytes(corrupt), label, "truncated or corrupted"),
        (blob, "wsa-bundle-v1 tiny 1", "not a wsa bundle transfer"),
        (blob, label.replace("tiny 1", "../x 1"), "not a wsa bundle transfer"),
    ]
    # bytes whose label matches (an attacker can compute a sha256) but whose content is not a clean bundle
    for members, why in (({"manifest.yaml": manifest, "../evil": b"x"}, "unsafe file name"),
                         ({"manifest.yaml": manifest, "/abs": b"x"}, "unsafe file name"),
                         ({"manifest.yaml": manifest, "link": None}, "not a regular file"),
                         ({"weights.pt": b"x"}, "no manifest.yaml"),
                         ({"manifest.yaml": manifest}, "missing")):
        data = _tar(members)
        cases.append((data, _label(data), why))
    full = {m.name: tarfile.open(fileobj=io.BytesIO(blob)).extractfile(m).read()
            for m in tarfile.open(fileobj=io.BytesIO(blob)).getmembers()}
    data = _tar({**full, "extra.py": b"import os"})
    cases.append((data, _label(data), "files the manifest does not name"))
    data = _tar(full)
    cases.append((data, _label(data, version="2"), "its manifest is tiny 1"))
    for data, lab, why in cases:
        with pytest.raises(BundleError) as exc:
            receive_bundle(data, lab, cache)
        assert why in str(exc.value), (why, str(exc.value))
        assert _leftovers(cache) == [], why  # nothing half-written
    with pytest.raises(TransferError):
        receive_bundle(b"", "", cache)


def test_prune_keeps_the_newest_and_those_in_use(make_bundle, tmp_path):
    cache = tmp_path / "cache"
    got = []
    for v in range(6):
        blob, label = pack_bundle(make_bundle(version=str(v + 1), seed=v))
        got.append(receive_bundle(blob, label, cache))
    (cache / ".incoming-stale").mkdir()
    gone = prune_cache(cache, {str(got[0])}, keep=2)
    assert sorted(p.name for p in gone) == sorted([".incoming-stale"] + [g.name for g in got[1:4]])
    assert {p.name for p in cache.iterdir()} == {g.name for g in (got[0], got[4], got[5])}


def test_the_agent_swaps_in_a_received_signed_bundle_and_refuses_the_rest(make_bundle, tiny_bundle, tmp_path):
    priv, pub = tmp_path / "k" / "learner.key", tmp_path / "k" / "learner.pub"
    generate_keypair(priv, pub)
    start = shutil.copytree(tiny_bundle, tmp_path / "start")
    sign_bundle(start, priv)
    cache = tmp_path / "agent_cache"
    r = Robot(start, trusted_keys=[str(pub)], allow_unsigned=False, policy_topic="/finetune_node/policy",
              policy_cache_dir=str(cache))
    r.tick(3)
    unsigned = make_bundle(version="2", seed=2)
    ok, msg = r.core.receive(*pack_bundle(unsigned))
    assert not ok and "unsigned" in msg and "keeps running" in msg
    assert r.core.counters["signature_rejected"] == 1
    blob, label = pack_bundle(start)
    ok, msg = r.core.receive(blob[:-10], label)
    assert not ok and "truncated or corrupted" in msg and r.core.counters["transfer_rejected"] == 1
    r.tick(2)
    assert {rec["version"] for rec in r.sink.records} == {"1"}  # the signed policy kept acting
    v3 = make_bundle(version="3", seed=3)
    sign_bundle(v3, priv)
    ok, msg = r.core.receive(*pack_bundle(v3))
    assert ok, msg
    assert r.core.engine.version == "3" and r.core.engine_path.startswith(str(cache))
    assert r.core.previous[1] == str(start)  # ~/rollback returns to the start
    ok, msg = r.core.receive(*pack_bundle(v3))  # sent again (a restarted learner): nothing to do
    assert ok and "running already" in msg and r.core.engine.version == "3"
    r.tick(2)
    assert [rec["version"] for rec in r.sink.records][-2:] == ["3", "3"]


def test_a_push_the_agent_went_past_is_answered_not_timed_out():
    """push_via topic: the learner reads the answer to a push from the agent's action records. An
    agent that took v5 and then v6 between two of the learner's looks answered both pushes; a push
    to one agent is not answered by another agent acting on its version, nor by an older version;
    records naming another manifest under the pushed version refuse the push."""
    from wsa_ros.learn.online import answered_by_records

    a, b = "a" * 64, "b" * 64

    def push(agent, version, done=None, sha=a):
        return {"agent": agent, "version": version, "done": done, "sha256": sha}

    pushes = [push("/a", "1+ft4", done=1.0), push("/a", "1+ft5"), push("/b", "1+ft5"), push("/a", "1+ft6"),
              push("/b", "1+ft6"), push("/c", "1+ft6"), push("/d", "1+ft6")]
    got = answered_by_records(pushes, {"/a": ("1+ft6", a), "/b": ("1+ft5", ""), "/c": ("1+ft4", a),
                                       "/d": ("1+ft6", b)})
    assert [(r["agent"], r["version"], ok) for r, ok, _ in got] == [
        ("/a", "1+ft5", True), ("/b", "1+ft5", True), ("/a", "1+ft6", True), ("/d", "1+ft6", False)]
    assert got[0][2].startswith("superseded: acting on 1+ft6") and got[2][2].startswith("acting")
    assert "different policy" in got[3][2] and "bbbbbbbbbbbb" in got[3][2]  # /d: another manifest under 1+ft6
    assert answered_by_records(pushes, {}) == []  # no records from any agent: nothing answered
