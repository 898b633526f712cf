"""The learner, ROS-free: a real learning signal on the simulated arm, RLPD batch mixing,
behaviour cloning, checkpoint/resume, and the export-validate gate in front of every push."""
from __future__ import annotations

import math

import copy
import shutil

import numpy as np
import pytest
import torch

from wsa_ros.config import FinetuneConfig, SACConfig
from wsa_ros.learn.bc import behaviour_clone
from wsa_ros.learn.replay import Replay
from wsa_ros.learn.sac import SACLearner
from wsa_ros.learn.trainer import Trainer
from wsa_ros.runtime.bundle import load_bundle
from wsa_ros.learn.transitions import TransitionSpec
from wsa_ros.learn.validate import export_policy, reject_folder, validate_bundle
from wsa_ros.model.export import load_policy_module
from wsa_ros.model.wsa import FusionPolicy, make_head_config

EP_STEPS = 50
EVAL_SEEDS = list(range(1000, 1010))


# =============================================================================== a small task
class StateTask:
    """ReacherSim (MuJoCo, seeded) seen through "encoders" that are fixed functions of the
    state: ``state`` (joint angles as cos/sin, velocities, target, fingertip - target), the
    same vector as WSA context ``ctx``, and ``noise`` (an uninformative encoder: fresh
    Gaussian noise every step). Actions in [-1, 1] scale to the +-3 rad/s joint velocities."""

    ENCODERS = (("ctx", (10,)), ("state", (10,)), ("noise", (10,)))

    def __init__(self, seed: int):
        from wsa_ros.sim.reacher import ReacherSim

        self.sim = ReacherSim(seed=seed, max_steps=EP_STEPS, render=False)
        self.noise = np.random.default_rng(seed + 77)
        self.spec = TransitionSpec(encoders=self.ENCODERS, proprio_dim=0, action_joints=("joint0", "joint1"),
                                   low=(-3.0, -3.0), high=(3.0, 3.0))

    def embed(self) -> dict[str, np.ndarray]:
        s = self.sim
        q, qd, t, f = s.joint_positions, s.joint_velocities, s.target, s.fingertip
        v = np.array([np.cos(q[0]), np.sin(q[0]), np.cos(q[1]), np.sin(q[1]), qd[0] / 10, qd[1] / 10,
                      t[0] * 10, t[1] * 10, (f[0] - t[0]) * 10, (f[1] - t[1]) * 10], np.float32)
        return {"ctx": v, "state": v, "noise": self.noise.normal(size=10).astype(np.float32)}

    def episode(self, act, seed: int, demo: bool = False) -> tuple[float, dict]:
        """One episode through the one episode loop (``sim.rollout``); returns (return, flat records)."""
        from wsa_ros.sim.rollout import run_episode

        obs = self.sim.reset(seed=seed)
        cur = {"e": self.embed(), "a": None}
        recs = []

        def policy(_obs):
            cur["a"] = np.asarray(act(cur["e"]), np.float32)
            return cur["a"] * 3.0

        def on_step(_obs, _a, r, _nobs, _info, _term, trunc):
            e, e2 = cur["e"], self.embed()
            rec = {f"obs.{n}": e[n] for n, _ in self.ENCODERS} | {f"next.{n}": e2[n] for n, _ in self.ENCODERS}
            rec.update(action=cur["a"], policy_action=cur["a"], reward=np.float32(r), terminated=False,
                       truncated=trunc, intervention=demo)
            recs.append(rec)
            cur["e"] = e2

        res = run_episode(self.sim, obs, policy, on_step)
        assert res.steps == EP_STEPS
        return res.ret, {k: np.stack([np.asarray(r[k]) for r in recs]) for k in recs[0]}

    def evaluate(self, act) -> np.ndarray:
        return np.array([self.episode(act, s)[0] for s in EVAL_SEEDS])

    def expert(self, rng=None, noise: float = 0.0):
        from wsa_ros.sim.reacher import expert_action

        def act(_e):
            a = expert_action(self.sim) / 3.0
            if rng is not None:
                a = a + rng.normal(0.0, noise, 2)
            return np.clip(a, -1.0, 1.0)

        return act


def small_policy(seed: int, encoders) -> FusionPolicy:
    torch.manual_seed(seed)
    head = make_head_config("wsa", [{"name": n, "output_shape": list(s), "role": "context" if n == "ctx" else "feature"}
                                    for n, s in encoders], 2, 0, d=32, actor_hidden=[64, 64], critic_hidden=[64, 64])
    return FusionPolicy.from_config(head)


# =============================================================================== learning signal
def test_sac_rlpd_return_rises_on_the_simulated_arm():
    """Seeded end to end: 10 noisy expert demonstrations, then online SAC + RLPD from the policy's
    own exploration. The learned deterministic policy must close at least half of the gap
    between the untrained policy and the scripted expert on 10 fixed evaluation episodes, do
    better on most of them, and the WSA attention must move to the informative encoder."""
    torch.set_num_threads(1)
    seed = 0
    task = StateTask(seed)
    learner = SACLearner(small_policy(seed, task.ENCODERS), SACConfig(batch_size=64))
    replay = Replay(task.spec, 50_000, holdout_every=0)
    policy_act = lambda e: learner.act(e)  # noqa: E731
    before = task.evaluate(policy_act)
    expert = task.evaluate(task.expert()).mean()
    rng = np.random.default_rng(seed)
    for i in range(10):
        replay.add(task.episode(task.expert(rng, 0.1), 500 + i, demo=True)[1], demo=True)
    gen = torch.Generator().manual_seed(seed)
    explore = lambda e: learner.act(e, deterministic=False, generator=gen)  # noqa: E731
    m = {}
    alpha_first = None
    for ep in range(200):
        replay.add(task.episode(explore, ep)[1])
        for _ in range(EP_STEPS):
            if len(replay) >= 4 * EP_STEPS:
                m = learner.update(replay.sample(64, 0.5))
                alpha_first = alpha_first if alpha_first is not None else m["wsa_alpha_state"]
        if learner.updates >= 1500:
            break
    after = task.evaluate(policy_act)
    gap = expert - before.mean()
    print(f"return before {before.mean():.2f}, after {after.mean():.2f}, expert {expert:.2f}; "
          f"WSA alpha(state) {alpha_first:.2f} -> {m['wsa_alpha_state']:.2f}, temperature {m['temperature']:.4f}")
    assert gap > 3.0  # the task is not trivial for the untrained policy
    assert after.mean() >= before.mean() + 0.5 * gap
    assert (after > before).sum() >= 8
    assert m["wsa_alpha_state"] > alpha_first + 0.15


def test_sac_from_demonstrations_beats_behaviour_cloning_on_the_same_demonstrations():
    """Two noisy expert episodes only: behaviour cloning on them (the actor and fusion trained to
    the demonstrated actions) generalises poorly to new targets. SAC from the same
    demonstrations (RLPD batches, demo_bc_weight 1, layer-normed critics: the demo's recipe) plus
    its own exploration ends nearer the target on the same 30 held-out episodes, the paired
    difference of final distances more than three standard errors below zero."""
    torch.set_num_threads(1)
    seed = 2
    task = StateTask(seed)

    def head():
        torch.manual_seed(seed)
        cfg = make_head_config("wsa", [{"name": n, "output_shape": list(s), "role": "context" if n == "ctx" else
                                        "feature"} for n, s in task.ENCODERS], 2, 0, d=32, actor_hidden=[64, 64],
                               critic_hidden=[64, 64], critic_norm=True)
        return FusionPolicy.from_config(cfg)

    def final_distances(act) -> np.ndarray:
        out = []
        for s in range(1000, 1030):
            task.episode(act, s)
            out.append(task.sim.info()["distance"])
        return np.asarray(out)

    rng = np.random.default_rng(seed)
    demos = [task.episode(task.expert(rng, 0.3), 500 + i, demo=True)[1] for i in range(2)]
    bc_policy = head()
    bc_replay = Replay(task.spec, 1000, holdout_every=0)
    for d in demos:
        bc_replay.add(d, demo=True)
    behaviour_clone(bc_policy, bc_replay, 1000, batch_size=128, seed=seed)
    bc = SACLearner(bc_policy, SACConfig())
    d_bc = final_distances(lambda e: bc.act(e))

    learner = SACLearner(head(), SACConfig(batch_size=64, demo_bc_weight=1.0))
    replay = Replay(task.spec, 50_000, holdout_every=0)
    for d in demos:
        replay.add(d, demo=True)
    gen = torch.Generator().manual_seed(seed)
    ep = 0
    while learner.updates < 4000:
        replay.add(task.episode(lambda e: learner.act(e, deterministic=False, generator=gen), ep)[1])
        ep += 1
        for _ in range(EP_STEPS):
            if len(replay) >= 4 * EP_STEPS:
                learner.update(replay.sample(64, 0.5), metrics=False)
    d_sac = final_distances(lambda e: learner.act(e))
    diff = d_sac - d_bc
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    print(f"final distance on 30 held-out episodes: bc {d_bc.mean() * 100:.1f} cm, SAC {d_sac.mean() * 100:.1f} cm; "
          f"SAC - bc {diff.mean() * 100:+.1f} +- {se * 100:.1f} cm (s.e.), SAC nearer in {(diff < 0).sum()}/30")
    assert diff.mean() < -3 * se
    assert (diff < 0).sum() >= 20


def test_behaviour_cloning_imitates_the_demonstrations():
    torch.set_num_threads(1)
    task = StateTask(3)
    policy = small_policy(3, task.ENCODERS)
    replay = Replay(task.spec, 10_000, holdout_every=0)
    with pytest.raises(ValueError, match="demonstrations"):
        behaviour_clone(policy, replay, 10)
    rng = np.random.default_rng(3)
    for i in range(10):
        replay.add(task.episode(task.expert(rng, 0.05), 600 + i, demo=True)[1], demo=True)
    learner = SACLearner(policy, SACConfig())
    before = task.evaluate(lambda e: learner.act(e)).mean()
    r = behaviour_clone(policy, replay, 400, batch_size=128, seed=3)
    after = task.evaluate(lambda e: learner.act(e)).mean()
    expert = task.evaluate(task.expert()).mean()
    print(f"BC loss {r['first_loss']:.3f} -> {r['last_loss']:.3f}; return {before:.2f} -> {after:.2f} (expert {expert:.2f})")
    assert r["last_loss"] < 0.3 * r["first_loss"]
    assert after >= before + 0.5 * (expert - before)


def test_critic_warmup_freezes_trunk_and_actor_and_the_prior_holds_the_actor_near_its_start():
    """Fine-tuning a pre-trained policy: during ``critic_warmup`` only the critic's own layers
    move; afterwards everything trains, and ``prior_weight`` keeps the actor's actions near the
    starting policy's (measured against the same run without the prior)."""
    torch.set_num_threads(1)
    task = StateTask(7)
    replay = Replay(task.spec, 5000, holdout_every=0)
    rng = np.random.default_rng(7)
    for i in range(4):
        replay.add(task.episode(lambda e: rng.uniform(-1, 1, 2), 700 + i)[1])
    probe = replay.sample(256, 0.0).obs

    def run(prior_weight: float):
        torch.manual_seed(7)
        policy = small_policy(7, task.ENCODERS)
        start = copy.deepcopy(policy)
        learner = SACLearner(policy, SACConfig(batch_size=32, critic_warmup=20, prior_weight=prior_weight, lr=3e-3))

        def moved(part: str) -> bool:
            now = getattr(policy, f"{part}_parameters")()
            then = getattr(start, f"{part}_parameters")()
            return any(not torch.equal(a, b) for a, b in zip(now, then))

        for _ in range(20):
            m = learner.update(replay.sample(32, 0.0))
            assert "loss_actor" not in m
        assert moved("critic") and not moved("fusion") and not moved("actor")
        for _ in range(150):
            m = learner.update(replay.sample(32, 0.0))
        assert moved("fusion") and moved("actor") and "loss_actor" in m
        with torch.no_grad():
            e = {k: v for k, v in probe.items()}
            gap = (torch.tanh(policy.actor(e)[0]) - torch.tanh(start.actor(e)[0])).abs().mean().item()
        return gap, m

    gap_free, m_free = run(0.0)
    gap_prior, m_prior = run(100.0)
    print(f"mean |a - a0| after 150 updates: {gap_free:.4f} without prior, {gap_prior:.4f} with prior weight 100")
    assert "prior_gap" in m_prior and "prior_gap" not in m_free
    assert gap_prior < 0.5 * gap_free


def test_demo_bc_weight_teaches_a_fresh_policy_from_the_demonstrations_while_rl_runs():
    """RL with demonstrations (``demo_bc_weight``): the actor loss adds behaviour cloning on each
    batch's demonstration rows, and its gradient also reaches the fusion trunk. A fresh policy
    trained so imitates the demonstrated actions far better than plain SAC + RLPD on the same
    batches, and earns more return on the evaluation episodes than it did untrained."""
    torch.set_num_threads(1)
    task = StateTask(11)
    replay = Replay(task.spec, 10_000, holdout_every=0)
    rng = np.random.default_rng(11)
    for i in range(8):
        replay.add(task.episode(task.expert(rng, 0.05), 800 + i, demo=True)[1], demo=True)
    for i in range(4):
        replay.add(task.episode(lambda e: rng.uniform(-1, 1, 2), 900 + i)[1])
    demo_batch = replay.demos.sample(400)

    def run(weight: float):
        torch.manual_seed(11)
        policy = small_policy(11, task.ENCODERS)
        start = copy.deepcopy(policy)
        learner = SACLearner(policy, SACConfig(batch_size=64, demo_bc_weight=weight, lr=1e-3))
        for _ in range(300):
            m = learner.update(replay.sample(64, 0.5))
        with torch.no_grad():
            a = torch.tanh(policy.actor(demo_batch.obs)[0])
        mse = (a - demo_batch.action).square().sum(-1).mean().item()
        return mse, m, learner, start

    mse_rl, m_rl, _, _ = run(0.0)
    mse_bc, m_bc, learner, start = run(1.0)
    before = task.evaluate(lambda e: SACLearner(start, SACConfig()).act(e)).mean()
    after = task.evaluate(lambda e: learner.act(e)).mean()
    print(f"action error on demonstrations after 300 updates: {mse_rl:.3f} plain RLPD, {mse_bc:.3f} with "
          f"demo_bc_weight 1; return {before:.2f} -> {after:.2f}")
    assert "demo_bc" in m_bc and "demo_bc" not in m_rl
    assert mse_bc < 0.5 * mse_rl
    assert after > before + 3.0


def test_q_filter_keeps_behaviour_cloning_only_where_the_demonstration_is_worth_more():
    """``demo_bc_q_filter``: the actor's BC term counts a demonstration row only where the critic
    values the demonstrated action above the policy's own; averaged over all rows, so it fades
    as the policy overtakes the demonstrations. Without the filter every row counts."""
    from wsa_ros.learn.sac import demo_bc

    a_pi = torch.tensor([[0.0, 0.0], [0.5, 0.5], [1.0, -1.0], [0.2, 0.0]])
    a_demo = torch.tensor([[1.0, 0.0], [0.5, 0.0], [0.0, 0.0], [0.2, 0.0]])  # gaps 1, 0.25, 2, 0
    q_demo = torch.tensor([2.0, -1.0, 0.5, 3.0])
    q_pi = torch.tensor([1.0, 0.0, 0.5, 0.0])  # the demo is worth more in rows 0 and 3 only (row 2: a tie)
    assert demo_bc(a_pi, a_demo).item() == pytest.approx((1 + 0.25 + 2 + 0) / 4)
    assert demo_bc(a_pi, a_demo, q_demo, q_pi).item() == pytest.approx((1 + 0) / 4)
    assert demo_bc(a_pi, a_demo, q_demo - 10, q_pi).item() == 0.0  # the policy beats every demonstration
    a = a_pi.clone().requires_grad_(True)  # and only the kept rows pull the actor
    demo_bc(a, a_demo, q_demo, q_pi).backward()
    assert a.grad[1].abs().sum() == 0 and a.grad[2].abs().sum() == 0 and a.grad[0].abs().sum() > 0
    # in the learner: the option reaches the update (a fresh critic still ranks some demo rows above)
    task = StateTask(3)
    replay = Replay(task.spec, 2_000, holdout_every=0)
    rng = np.random.default_rng(3)
    replay.add(task.episode(task.expert(rng, 0.05), 700, demo=True)[1], demo=True)
    replay.add(task.episode(lambda e: rng.uniform(-1, 1, 2), 701)[1])
    torch.manual_seed(3)
    batch = replay.sample(64, 0.5)
    plain = SACLearner(small_policy(3, task.ENCODERS), SACConfig(batch_size=64, demo_bc_weight=1.0))
    torch.manual_seed(3)
    filt = SACLearner(small_policy(3, task.ENCODERS), SACConfig(batch_size=64, demo_bc_weight=1.0,
                                                                demo_bc_q_filter=True))
    torch.manual_seed(5)
    m_plain = plain.update(batch)
    torch.manual_seed(5)
    m_filt = filt.update(batch)
    assert 0.0 <= m_filt["demo_bc"] < m_plain["demo_bc"]


# =============================================================================== replay
def test_rlpd_batches_are_half_demonstrations_and_interventions_count_as_demos():
    task = StateTask(5)
    replay = Replay(task.spec, 1000, holdout_every=10)
    _, online = task.episode(lambda e: np.zeros(2), 1)
    online["intervention"][:5] = True  # a human took over for five steps
    replay.add(online)
    assert len(replay.holdout["state"]) == 5  # every 10th of 50 held out, not trained on
    assert len(replay.online) == 45 and len(replay.demos) == 4  # one of the five is held out
    b = replay.sample(64, 0.5)
    assert b.intervention.sum() >= 32 and len(b.action) == 64
    _, demos = task.episode(task.expert(), 2, demo=True)
    replay.add(demos, demo=True)
    b = replay.sample(100, 0.5)
    assert b.intervention[50:].all()  # the demo half
    assert b.demo[50:].all() and not b.demo[:50].any()  # rows tagged by the buffer they came from
    assert b.terminated.dtype == torch.bool and b.obs["state"].dtype == torch.float32


# =============================================================================== trainer, export, validation
def _cfg(tmp_path, **learner) -> FinetuneConfig:
    return FinetuneConfig(out_dir=str(tmp_path / "out"), log_every_updates=5, holdout_every=4,
                          learner=SACConfig(batch_size=16, warmup_transitions=10, utd=4, capacity=1000, **learner))


def _fake_records(b, n: int, seed: int = 0) -> dict:
    spec = TransitionSpec.from_bundle(b)
    rng = np.random.default_rng(seed)
    rec = {}
    for k, (d, shape) in spec.schema().items():
        if d.startswith("<U"):
            rec[k] = np.array(["1"] * n)
        elif d == "bool":
            rec[k] = np.zeros(n, bool)
        elif k in ("action", "policy_action"):
            rec[k] = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
        else:
            rec[k] = rng.normal(size=(n, *shape)).astype(d)
    return rec


def test_trainer_checkpoint_resumes_exactly(tmp_path, tiny_bundle):
    torch.set_num_threads(1)
    b = load_bundle(tiny_bundle)
    cfg = _cfg(tmp_path)
    tr = Trainer(b, cfg)
    rec = _fake_records(b, 40)
    tr.add(rec)
    assert tr.ready()
    while tr.ready() and tr.updates < 30:
        tr.step()
    tr.save_checkpoint()
    tr2 = Trainer(b, cfg)
    assert tr2.updates == 30 and tr2.resumed_from == 30
    for (k, v), (k2, v2) in zip(tr.learner.state_dict()["policy"].items(), tr2.learner.state_dict()["policy"].items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(tr.learner.log_temp, tr2.learner.log_temp)
    # the same batch gives the same update in both (optimizer state and targets restored too)
    tr2.add(rec)
    batch = tr.replay.sample(16, 0.0)
    torch.manual_seed(1)
    m1 = tr.learner.update(batch)
    torch.manual_seed(1)  # the update samples actions: same noise for both
    m2 = tr2.learner.update(batch)
    assert m1["loss_critic"] == pytest.approx(m2["loss_critic"], rel=1e-5)
    assert (tmp_path / "out" / "logs" / "train.csv").read_text().count("\n") >= 7
    tr.close()
    tr2.close()
    # the same numbers in TensorBoard
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "out" / "logs" / "tensorboard")).Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss_critic", "train/q", "train/wsa_alpha_entropy"} <= set(tags), tags
    assert any(t.startswith("train/wsa_alpha_") and t != "train/wsa_alpha_entropy" for t in tags)
    assert all(math.isfinite(e.value) for e in acc.Scalars("train/loss_critic"))
    # a damaged checkpoint (e.g. a disk error) is set aside and training starts fresh; never a crash
    ckpt = tmp_path / "out" / "learner" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    logs = []
    tr3 = Trainer(b, cfg, log=logs.append)
    assert tr3.updates == 0 and not ckpt.exists()
    assert list(ckpt.parent.glob("checkpoint.stale-*.pt")) and "not used" in logs[0]
    tr3.close()


def test_trainer_passes_warmup_prior_and_demo_bc_settings_and_a_resumed_prior_is_the_starting_bundle(tmp_path, tiny_bundle):
    torch.set_num_threads(1)
    b = load_bundle(tiny_bundle)
    cfg = _cfg(tmp_path, critic_warmup=5, prior_weight=0.5, demo_bc_weight=2.0)
    tr = Trainer(b, cfg)
    assert tr.learner.cfg is cfg.learner  # the node's learner.* parameters are the learner's settings
    assert tr.learner.cfg.critic_warmup == 5 and tr.learner.cfg.prior_weight == 0.5
    assert tr.learner.cfg.demo_bc_weight == 2.0
    start = load_policy_module(b).state_dict()
    tr.add(_fake_records(b, 40))
    tr.add(_fake_records(b, 10, seed=1), demo=True)
    while tr.ready() and tr.updates < 20:
        tr.step()
    assert tr.updates == 20 and "prior_gap" in tr.last_metrics and "demo_bc" in tr.last_metrics
    tr.save_checkpoint()
    tr.close()
    tr2 = Trainer(b, cfg)  # resumed: the trained weights, and still the bundle's policy as the prior
    assert tr2.updates == 20
    assert all(torch.equal(v, start[k]) for k, v in tr2.learner.prior.state_dict().items())
    assert any(not torch.equal(v, start[k]) for k, v in tr2.learner.policy.state_dict().items())
    tr2.close()


def test_export_validates_and_bad_policies_are_never_accepted(tmp_path, tiny_bundle, make_bundle):
    torch.set_num_threads(1)
    b = load_bundle(tiny_bundle)
    policy = load_policy_module(b)
    holdout = {k[4:]: v for k, v in _fake_records(b, 64).items() if k.startswith("obs.")}
    out = tmp_path / "v2"
    nb = export_policy(policy, b, out, "1+ft1")
    assert [e.sha256 for e in nb.encoders] == [e.sha256 for e in b.encoders]  # encoders reused unchanged
    rep = validate_bundle(out, b, holdout, policy=policy)
    assert rep.ok, rep.summary()
    assert rep.checked == 64 and rep.max_abs_action <= 1.0
    # no held-out observations: not valid (nothing was checked)
    assert not validate_bundle(out, b, {}).ok
    # a diverged policy (NaN weights) is refused: by the exporter's own check or, once written,
    # by the validator (the exporter's ONNX-vs-PyTorch comparison lets NaN through today)
    bad = copy.deepcopy(policy)
    with torch.no_grad():
        bad.actor_net[-1].bias.fill_(float("nan"))
    bad_out = tmp_path / "bad"
    try:
        export_policy(bad, b, bad_out, "1+bad")
    except ValueError:
        from wsa_ros.model.export import EncoderSource, export_bundle

        export_bundle(bad_out, bad, [EncoderSource.from_spec(e, b.root) for e in b.encoders], b.action, b.proprio,
                      name=b.name, version="1+bad", check=False)
    rep = validate_bundle(bad_out, b, holdout, policy=bad)
    assert not rep.ok and "non-finite" in rep.summary(), rep.summary()
    moved = reject_folder(bad_out)
    assert moved.name == "bad.rejected" and not bad_out.exists()
    # a bundle the agent's hot-swap would refuse (other action joints)
    other = make_bundle(action_dim=3)
    rep = validate_bundle(other, b, holdout)
    assert not rep.ok and "hot-swap check" in rep.summary()
    # encoders must be byte-identical to the base bundle's
    swapped = tmp_path / "swapped"
    shutil.copytree(out, swapped)
    other_enc = make_bundle(seed=5)
    shutil.copyfile(other_enc / "encoders" / "ae.onnx", swapped / "encoders" / "ae.onnx")
    from wsa_ros.runtime.bundle import write_manifest

    write_manifest(load_bundle(swapped, verify_hashes=False))
    rep = validate_bundle(swapped, b, holdout)
    assert not rep.ok and "encoders changed" in rep.summary()
    # a tampered file fails the hash check
    (out / "policy.onnx").write_bytes((out / "policy.onnx").read_bytes()[:-10])
    assert "does not load" in validate_bundle(out, b, holdout).summary()
