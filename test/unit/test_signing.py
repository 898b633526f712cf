"""Signed bundles (wsa_ros/runtime/signing.py) and the agent that acts only on trusted ones."""
import shutil
import stat

import numpy as np
import pytest
import torch
import yaml

from test_agent_core import Robot
from wsa_ros.runtime.bundle import MANIFEST, load_bundle, sha256_file
from wsa_ros.runtime.signing import SignatureError, generate_keypair, load_public_keys, manifest_sha256, \
    sign_bundle, verify_bundle


@pytest.fixture()
def keys(tmp_path):
    """Two key pairs: the learner's (trusted) and a stranger's."""
    out = {}
    for who in ("learner", "stranger"):
        generate_keypair(tmp_path / "keys" / f"{who}.key", tmp_path / "keys" / f"{who}.pub")
        out[who] = (tmp_path / "keys" / f"{who}.key", tmp_path / "keys" / f"{who}.pub")
    return out


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _tampered_weights(bundle, dst):
    """The issue's attack: two weight tensors x 1.5 and the manifest's hash rewritten to match,
    which load_bundle (hashes) accepts."""
    root = _copy(bundle, dst)
    b = load_bundle(root)
    wfile = root / b.weights["file"]
    sd = torch.load(wfile, weights_only=True)
    for k in [k for k, v in sd.items() if v.dtype.is_floating_point][:2]:
        sd[k] = sd[k] * 1.5
    torch.save(sd, wfile)
    m = yaml.safe_load((root / MANIFEST).read_text())
    m["weights"]["sha256"] = sha256_file(wfile)
    (root / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    load_bundle(root)  # the hashes agree again
    return root


def test_keys_private_file_is_the_owners_only_and_never_overwritten(keys, tmp_path):
    priv, pub = keys["learner"]
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    with pytest.raises(SignatureError, match="never overwritten"):
        generate_keypair(priv, tmp_path / "other.pub")
    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    (bundle_dir / MANIFEST).write_text("name: x\n")
    with pytest.raises(SignatureError, match="must never travel inside a bundle"):
        generate_keypair(bundle_dir / "k.key", tmp_path / "k.pub")
    priv.chmod(0o644)
    with pytest.raises(SignatureError, match="readable by others"):
        sign_bundle(bundle_dir, priv)


def test_signed_unsigned_unknown_and_altered_bundles(tiny_bundle, keys, tmp_path):
    trusted = load_public_keys([keys["learner"][1]])
    good = _copy(tiny_bundle, tmp_path / "good")
    info = sign_bundle(good, keys["learner"][0])
    assert verify_bundle(good, trusted) == info and info.signed and info.key_id in trusted
    with pytest.raises(SignatureError, match="unsigned"):
        verify_bundle(tiny_bundle, trusted)
    assert not verify_bundle(tiny_bundle, trusted, allow_unsigned=True).signed
    strange = _copy(tiny_bundle, tmp_path / "strange")
    sign_bundle(strange, keys["stranger"][0])
    with pytest.raises(SignatureError, match="not among the trusted keys"):
        verify_bundle(strange, trusted)
    altered = _tampered_weights(good, tmp_path / "altered")  # the signature of 'good' came along
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_bundle(altered, trusted)
    (good / "manifest.sig").write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        verify_bundle(good, trusted)
    assert manifest_sha256(altered) != info.manifest_sha256  # two policies never share one identity


def test_the_agent_refuses_untrusted_bundles_by_every_route_and_keeps_acting(tiny_bundle, keys, tmp_path):
    signed = _copy(tiny_bundle, tmp_path / "v1")
    sign_bundle(signed, keys["learner"][0])
    plain = Robot(signed)  # the default (no trusted_keys, allow_unsigned): signatures are not looked at
    assert dict(plain.core.diagnostics(plain.t)[2])["policy_signed_by"] == "not checked (no trusted_keys)"
    assert plain.core.swap(str(tiny_bundle))[0]
    cfg = dict(trusted_keys=[str(keys["learner"][1])], allow_unsigned=False)
    with pytest.raises(SignatureError, match="unsigned"):  # start-up with an unsigned bundle
        Robot(tiny_bundle, **cfg)
    r = Robot(signed, **cfg)
    r.tick(3)
    n = len(r.sink.commands)
    strange = _copy(tiny_bundle, tmp_path / "strange")
    sign_bundle(strange, keys["stranger"][0])
    altered = _tampered_weights(signed, tmp_path / "altered")
    for bad, why in ((tiny_bundle, "unsigned"), (strange, "not among the trusted keys"),
                     (altered, "altered after signing")):
        ok, msg = r.core.swap(str(bad))
        assert not ok and why in msg and "keeps running" in msg, msg
        r.tick(2)
    assert r.core.counters["signature_rejected"] == 3 and r.core.counters["swap_rejected"] == 3
    assert r.core.engine_path == str(signed) and len(r.sink.commands) == n + 6  # the signed policy kept acting
    resigned = _copy(altered, tmp_path / "resigned")
    sign_bundle(resigned, keys["learner"][0])
    ok, msg = r.core.swap(str(resigned))  # signed, but a different policy under the running version's name
    assert not ok and "different policy" in msg and "version '1'" in msg, msg
    m = yaml.safe_load((resigned / MANIFEST).read_text())
    m["version"] = "1+ft1"
    (resigned / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    sign_bundle(resigned, keys["learner"][0])  # the learner's own next export: a version of its own
    ok, msg = r.core.swap(str(resigned))
    assert ok, msg
    kv = dict(r.core.diagnostics(r.t)[2])
    assert kv["policy_signed_by"] == next(iter(load_public_keys([keys["learner"][1]])))
    assert kv["policy_manifest_sha256"] == manifest_sha256(resigned) != manifest_sha256(signed)
    assert np.isfinite(r.sink.commands[-1]).all()


def test_keygen_and_sign_bundle_commands(tiny_bundle, tmp_path, capsys):
    from wsa_ros.tools import cli

    k, p = tmp_path / "k" / "site.key", tmp_path / "k" / "site.pub"
    assert cli.main(["keygen", "--private", str(k), "--public", str(p)]) == 0
    assert cli.main(["keygen", "--private", str(k), "--public", str(tmp_path / "x.pub")]) == 1
    assert "never overwritten" in capsys.readouterr().err
    b = _copy(tiny_bundle, tmp_path / "b")
    assert cli.main(["sign-bundle", str(b), "--key", str(k)]) == 0
    verify_bundle(b, load_public_keys([p]))
    broken = _copy(tiny_bundle, tmp_path / "broken")  # a file that no longer matches its manifest is never signed
    w = broken / load_bundle(broken).weights["file"]
    w.write_bytes(w.read_bytes() + b"x")
    assert cli.main(["sign-bundle", str(broken), "--key", str(k)]) == 1
    assert "sha256 mismatch" in capsys.readouterr().err and not (broken / "manifest.sig").exists()
