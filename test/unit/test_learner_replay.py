"""The learner's compact replay (``learn.replay``) against the layout it replaced: every
transition's observation and next observation stored separately in float32 (what the torchrl
buffers held). The same rows must give the same batch - bit for bit where the compact store is
lossless (proprioception, actions, rewards, flags; embeddings with ``dtype=float32``), within
float16's rounding where embeddings are kept in float16 - and the same SAC losses."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from wsa_ros.config import SACConfig
from wsa_ros.learn.replay import Buffer, Replay
from wsa_ros.learn.sac import SACLearner
from wsa_ros.learn.transitions import TransitionSpec
from wsa_ros.model.wsa import FusionPolicy, make_head_config

ENCODERS = (("map", (4, 3, 3)), ("flat", (16,)), ("kp", (8, 2)))
SPEC = TransitionSpec(encoders=ENCODERS, proprio_dim=4, action_joints=("a", "b"), low=(-1.0, -1.0), high=(1.0, 1.0))
FIELDS = [n for n, _ in ENCODERS] + ["proprio"]
#: float16 keeps 11 significant bits: |x - fp16(x)| <= 2^-11 |x| for normal numbers (|x| >= 6.1e-5)
FP16_REL = 2.0 ** -11


def episodes(rng, lengths, chained=True) -> list[dict]:
    """Flat records of consecutive episodes: within an episode (``chained``) each row's observation
    is the previous row's next one, as the learner's store and the demo import write them."""
    out = []
    for n in lengths:
        obs = {n_: rng.normal(size=(n + 1, *s)).astype(np.float32) for n_, s in ENCODERS}
        obs["proprio"] = rng.normal(size=(n + 1, 4)).astype(np.float32)
        rec = {}
        for f in FIELDS:
            rec[f"obs.{f}"] = obs[f][:-1]
            rec[f"next.{f}"] = obs[f][1:] if chained else rng.normal(size=obs[f][1:].shape).astype(np.float32)
        rec["action"] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
        rec["reward"] = rng.normal(size=n).astype(np.float32)
        rec["terminated"] = np.zeros(n, bool)
        rec["truncated"] = np.zeros(n, bool)
        rec["truncated"][-1] = True
        rec["intervention"] = rng.uniform(size=n) < 0.3
        out.append(rec)
    return out


def concat(recs: list[dict]) -> dict:
    return {k: np.concatenate([r[k] for r in recs]) for k in recs[0]}


def reference_rows(recs: list[dict], rows: np.ndarray) -> dict:
    """Today's layout: the flat float32 records themselves, indexed by transition."""
    flat = concat(recs)
    return {k: v[rows] for k, v in flat.items()}


def check_batch(batch, ref: dict, lossless: bool) -> None:
    for f in FIELDS:
        for side, got in (("obs", batch.obs[f]), ("next", batch.next_obs[f])):
            want = torch.from_numpy(ref[f"{side}.{f}"])
            assert got.dtype == torch.float32 and got.shape == want.shape, (side, f)
            if lossless or f == "proprio":
                assert torch.equal(got, want), (side, f)
            else:
                err = (got - want).abs()
                assert (err <= FP16_REL * want.abs() + 6e-8).all(), (side, f, float(err.max()))
    assert torch.equal(batch.action, torch.from_numpy(ref["action"]))
    assert torch.equal(batch.reward, torch.from_numpy(ref["reward"]))
    for k in ("terminated", "truncated", "intervention"):
        assert torch.equal(getattr(batch, k), torch.from_numpy(ref[k])), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chained", [True, False])
def test_compact_buffer_returns_the_transitions_that_went_in(dtype, chained):
    rng = np.random.default_rng(1)
    recs = episodes(rng, [7, 1, 12, 5], chained)
    buf = Buffer(SPEC, 100, dtype)
    buf.add(recs[0])
    for r in recs[1:]:  # row by row, then in blocks: the links across add() calls must hold too
        for i in range(len(r["reward"])):
            buf.add({k: v[i:i + 1] for k, v in r.items()})
    n = sum(len(r["reward"]) for r in recs)
    assert len(buf) == n
    # each chained episode stores its first observation and then one per step; unchained: two per step
    assert buf.linked == (n - len(recs) if chained else 0)
    rows = torch.arange(n)
    check_batch(buf.take(rows, False), reference_rows(recs, rows.numpy()), dtype == torch.float32)


def test_a_full_ring_keeps_exactly_the_newest_transitions():
    rng = np.random.default_rng(2)
    recs = episodes(rng, [30] * 7)  # 210 transitions through a ring of 64
    buf = Buffer(SPEC, 64, torch.float32)
    for r in recs:
        for s in range(0, 30, 11):
            buf.add({k: v[s:s + 11] for k, v in r.items()})
    assert len(buf) == 64
    # ring slot i holds transition t with t = i (mod 64), t among the newest 64
    newest = np.arange(210 - 64, 210)
    slots = torch.from_numpy(newest % 64)
    check_batch(buf.take(slots, False), reference_rows(recs, newest), lossless=True)
    # a block larger than the ring keeps its newest 64 rows, written from the next slot on (210 % 64)
    big = episodes(rng, [100])
    buf.add(big[0])
    assert len(buf) == 64
    check_batch(buf.take(torch.from_numpy((210 + np.arange(64)) % 64), False),
                reference_rows(big, np.arange(36, 100)), lossless=True)


def test_storage_per_transition_is_one_observation_in_float16():
    rng = np.random.default_rng(3)
    buf = Buffer(SPEC, 1000)
    for r in episodes(rng, [100] * 5):
        buf.add(r)
    obs_values = 4 * 3 * 3 + 16 + 16
    assert buf.slot_bytes() == obs_values * 2 + 4 * 4  # embeddings float16, proprio float32
    old = 2 * (obs_values + 4) * 4 + (2 + 4) * 4  # obs + next in float32, action, reward, flags
    per = buf.bytes_per_transition()
    # 500 next observations + the first observation of each of the 5 episodes
    assert per == pytest.approx(buf.slot_bytes() * 505 / 500 + (2 + 4) * 4 + 16)
    assert per < old / 3


def _learner(seed: int) -> SACLearner:
    torch.manual_seed(seed)
    head = make_head_config("wsa", [{"name": n, "output_shape": list(s), "role": "both" if n == "flat" else "feature"}
                                    for n, s in ENCODERS], 2, 4, d=16, actor_hidden=[32, 32], critic_hidden=[32, 32],
                            critic_norm=True)
    return SACLearner(FusionPolicy.from_config(head), SACConfig(batch_size=32, demo_bc_weight=1.0))


def test_the_same_batch_gives_the_same_losses_as_the_float32_layout():
    """Losses of one SAC update on rows sampled from the compact store and on the same rows of the
    old layout: equal where the store is lossless; with float16 embeddings within 1e-3 relative
    (measured here: ~1e-5; the embeddings' own rounding is 2^-11 relative)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    recs = episodes(rng, [40, 40, 40])
    for r in recs:
        r["terminated"][-1] = True  # bootstrapping cut on some rows
    old = reference_rows(recs, np.arange(120))
    base = _learner(0)
    for dtype, tol in ((torch.float32, 0.0), (torch.float16, 1e-3)):
        rp = Replay(SPEC, 200, holdout_every=0, dtype=dtype)
        for r in recs:
            rp.add(r, demo=False)
            rp.add({k: v[:10] for k, v in r.items()}, demo=True)
        gen = torch.Generator().manual_seed(7)
        rows = rp.online.sample_rows(32, gen)
        compact = rp.online.take(rows, False)
        ref = {k: v[rows.numpy()] for k, v in old.items()}
        check_batch(compact, ref, dtype == torch.float32)
        ref_batch = copy.copy(compact)
        ref_batch.obs = {f: torch.from_numpy(ref[f"obs.{f}"]) for f in FIELDS}
        ref_batch.next_obs = {f: torch.from_numpy(ref[f"next.{f}"]) for f in FIELDS}
        ref_batch.demo = torch.arange(32) < 8  # a few demonstration rows: the BC terms run too
        compact.demo = ref_batch.demo
        a, b = copy.deepcopy(base), copy.deepcopy(base)
        for _ in range(3):  # the updates after the first see the weights the first one moved
            torch.manual_seed(11)
            ma = a.update(compact)
            torch.manual_seed(11)
            mb = b.update(ref_batch)
            for k in ("loss_critic", "loss_actor", "demo_bc", "q", "target_q"):
                assert ma[k] == pytest.approx(mb[k], rel=tol, abs=1e-7 if tol else 0.0), (dtype, k, ma[k], mb[k])


def nstep_reference(recs: list[dict], rows, n: int, gamma: float, held) -> dict:
    """n-step transitions from the flat records, by the definition: from row t sum gamma^k r[t+k]
    while the episode goes on (row t+k-1 neither terminated nor truncated, and row t+k's
    observation is row t+k-1's next one) and row t+k is held."""
    flat = concat(recs)
    done = flat["terminated"] | flat["truncated"]
    same = lambda u: all(np.array_equal(flat[f"obs.{f}"][u], flat[f"next.{f}"][u - 1]) for f in FIELDS)  # noqa: E731
    out = {k: [] for k in (*flat, "discount")}
    for t in rows:
        ret, m, last = 0.0, 0, t
        for k in range(n):
            u = t + k
            if k and (done[u - 1] or u not in held or not same(u)):
                break
            ret += gamma ** k * float(flat["reward"][u])
            m, last = m + 1, u
        for key, v in flat.items():
            src = last if key.startswith("next.") or key in ("terminated", "truncated") else t
            out[key].append(v[src])
        out["reward"][-1] = ret
        out["discount"].append(gamma ** m)
    return {k: np.asarray(v, np.float32 if k in ("reward", "discount") else None) for k, v in out.items()}


@pytest.mark.parametrize("chained", [True, False])
def test_n_step_returns_follow_each_episode_and_stop_where_it_ends(chained):
    """``take(n_step=3)`` against the definition: sums stop at an episode's end (terminated or
    truncated), bootstrap from the last step summed with discount ** steps, and never run past the
    newest row into the ring's oldest; unchained rows (a next observation that is not the next
    row's) are one-step transitions."""
    rng = np.random.default_rng(5)
    recs = episodes(rng, [7, 1, 12, 5, 30, 9], chained)
    recs[2]["terminated"][4] = True  # an episode that ends early, inside a block
    recs[2]["truncated"][-1] = False  # and one whose end is not flagged: the next row is not linked
    gamma = 0.9
    buf = Buffer(SPEC, 48, torch.float32)
    buf.add(recs[0])
    for r in recs[1:]:
        for s in range(0, len(r["reward"]), 4):  # blocks, so the links across add() calls count too
            buf.add({k: v[s:s + 4] for k, v in r.items()})
    total = sum(len(r["reward"]) for r in recs)
    newest = np.arange(total - 48, total)  # the ring holds these; slot = t % 48
    for n in (1, 3, 5):
        got = buf.take(torch.from_numpy(newest % 48), False, n_step=n, discount=gamma)
        want = nstep_reference(recs, newest, n if chained else 1, gamma, set(newest.tolist()))
        for f in FIELDS:
            assert torch.equal(got.obs[f], torch.from_numpy(want[f"obs.{f}"])), (n, f)
            assert torch.equal(got.next_obs[f], torch.from_numpy(want[f"next.{f}"])), (n, f)
        assert torch.allclose(got.reward, torch.from_numpy(want["reward"]), rtol=1e-6, atol=1e-6), n
        for k in ("terminated", "truncated"):
            assert torch.equal(getattr(got, k), torch.from_numpy(want[k].astype(bool))), (n, k)
        if n == 1:
            assert got.discount is None
        else:
            assert torch.allclose(got.discount, torch.from_numpy(want["discount"])), n
    if chained:  # the sums do run over several steps (the test is not passing on one-step rows)
        assert (buf.take(torch.from_numpy(newest % 48), False, 3, gamma).discount < gamma ** 2 + 1e-6).sum() > 20


def test_n_step_targets_reach_the_learner():
    """With n_step 3, SACLearner.sample returns the replay's n-step batch (RLPD's demo share kept),
    and the update bootstraps with the batch's per-row discount: a batch whose discount is
    cfg.discount everywhere gives the one-step target exactly, another discount a different one."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(6)
    rp = Replay(SPEC, 200, holdout_every=0, dtype=torch.float32)
    for r in episodes(rng, [40, 40]):
        rp.add(r)
        rp.add({k: v[:10] for k, v in r.items()}, demo=True)
    base = _learner(0)
    base.cfg = SACConfig(batch_size=32, demo_bc_weight=1.0, n_step=3, discount=0.8)
    b = base.sample(rp)
    assert len(b.reward) == 32 and int(b.demo.sum()) == 16
    d = b.discount.numpy()
    assert (np.abs(d[:, None] - np.array([0.8, 0.64, 0.512])).min(axis=1) < 1e-6).all() and (d < 0.6).sum() > 16

    def target(disc):
        batch = copy.copy(b)
        batch.discount = disc
        torch.manual_seed(3)
        return copy.deepcopy(base).update(batch)["target_q"]

    assert target(None) == target(torch.full((32,), 0.8))
    assert target(b.discount) != target(None)
