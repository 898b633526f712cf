#!/usr/bin/env python3
"""Learner benchmark: updates per second, transitions ingested per second, and the time from
an export to the new policy acting in a running agent.

    python benchmarks/bench_learner.py [--bundle B] [--batch 256] [--seconds 10] [--threads 1 2]
                                       [--no-latency] [--domain 118]

* **updates/s**, side by side in one run, batch ``--batch`` drawn 50/50 from the online and
  demonstration buffers, for each ``--threads`` value: :class:`wsa_ros.learn.sac.SACLearner` on
  the previous default layout (before issue 13: the autoencoder's 64x16x16 map read by two
  keypoint adapters, float32 obs and next obs rows in torchrl's ``TensorDictReplayBuffer``) and
  on the bundle's own head (the shipped ``models/default`` unless ``--bundle``) with the learner's
  replay (``wsa_ros.learn.replay``: each observation once, float16), their ratio, the share of
  an update spent sampling, the memory per stored transition (RAM and the disk store), and two
  plain peers written CleanRL-style (one function, plain PyTorch): SAC on the trunk's output
  with the same actor / critic MLPs, and the same networks (trunk included) updated plainly.
* **ingest/s**: the learner's ingest path without ROS: Assembler pairing + Engine.embed of an
  84x84 frame + record checks + ReplayStore.append/flush (and without the encoders).
* **export -> acting**: a real ``agent_node`` child process on ``--domain`` acting at 30 Hz on
  frames this script publishes; per round: export the policy (``validate.export_policy``),
  validate it (``validate.validate_bundle``), set the agent's ``bundle`` parameter, and wait
  for the first ``~/action_record`` carrying the new version. Reported: export, validation,
  and export-done -> acting (what the target "<= 1 s" is about), per round.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fake_records(spec, n: int, seed: int = 0, demo: bool = False, episode: int = 100) -> dict:
    """``n`` transitions in episodes of ``episode`` steps: within an episode each next
    observation is the following transition's observation (as the learner's store holds them)."""
    rng = np.random.default_rng(seed)
    rec = {}
    obs_fields = [k[4:] for k in spec.schema() if k.startswith("obs.")]
    for f in obs_fields:
        d, shape = spec.schema()[f"obs.{f}"]
        seq = rng.normal(size=(n + n // episode + 1, *shape)).astype(d)
        starts = np.arange(n) + np.arange(n) // episode  # one extra (final) observation per episode
        rec[f"obs.{f}"], rec[f"next.{f}"] = seq[starts], seq[starts + 1]
    for k, (d, shape) in spec.schema().items():
        if k.startswith(("obs.", "next.")):
            continue
        if d.startswith("<U"):
            rec[k] = np.array(["x"] * n)
        elif d == "bool":
            rec[k] = np.full(n, demo) if k == "intervention" else np.zeros(n, bool)
        elif k in ("action", "policy_action"):
            rec[k] = rng.uniform(-1, 1, (n, *shape)).astype(np.float32)
        else:
            rec[k] = rng.normal(size=(n, *shape)).astype(d)
    rec["truncated"] = (np.arange(n) % episode) == episode - 1
    return rec


#: the default layout before issue 13 (encoder outputs and head), the "before" of the ratio
PREVIOUS = {"ae": ([64, 16, 16], "both"), "idm": ([64], "feature"), "kp": ([8, 2], "feature")}
PREVIOUS_HEAD = dict(d=64, actor_hidden=[128, 128], critic_hidden=[128, 128], spatial_adapter="keypoints",
                     context_adapter="spatial")


def default_head_bundle(tmp: Path, shapes: dict, name: str, **head_opts):
    """A bundle with encoders of ``shapes`` ({name: (output_shape, role)}) and a head with the
    default hyper-parameters or ``head_opts`` (proprio 4; 2 actions)."""
    import torch

    from wsa_ros.model.export import EncoderSource, export_bundle
    from wsa_ros.model.wsa import FusionPolicy, make_head_config
    from wsa_ros.runtime.bundle import ActionSpec, InputSpec, ProprioSpec

    class Enc(torch.nn.Module):
        def __init__(self, shape):
            super().__init__()
            self.shape = shape
            self.lin = torch.nn.Linear(3, int(np.prod(shape)))

        def forward(self, x):
            return self.lin(x.mean(dim=(2, 3))).reshape(x.shape[0], *self.shape)

    srcs = [EncoderSource(n, "front", InputSpec(84, 84), role, module=Enc(s)) for n, (s, role) in shapes.items()]
    head = make_head_config("wsa", [{"name": n, "output_shape": s, "role": r} for n, (s, r) in shapes.items()], 2, 4,
                            **head_opts)
    joints = ["joint0", "joint1"]
    out = tmp / name.replace(" ", "_").replace(",", "")
    return export_bundle(out, FusionPolicy.from_config(head), srcs,
                         ActionSpec("velocity", joints, [-3.0, -3.0], [3.0, 3.0], "rad/s"),
                         ProprioSpec(joints, ["position", "velocity"], [0.0] * 4, [1.0] * 4),
                         name=name, version="1")


# =============================================================================== replays
class TorchRLReplay:
    """The learner's replay before issue 13: obs and next obs float32 rows in two torchrl
    ``TensorDictReplayBuffer`` s (online, demonstrations); a sample ends as a Batch (its
    conversion counted in the sampling time)."""

    def __init__(self, spec, capacity: int):
        from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer

        self.spec = spec
        self.online = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity))
        self.demos = TensorDictReplayBuffer(storage=LazyTensorStorage(capacity))

    def add(self, rec: dict, demo: bool = False) -> None:
        import torch
        from tensordict import TensorDict

        fields = [k[4:] for k in rec if k.startswith("obs.")]
        f32 = lambda k: torch.as_tensor(np.asarray(rec[k], np.float32))  # noqa: E731
        td = TensorDict({"obs": {f: f32(f"obs.{f}") for f in fields}, "next": {f: f32(f"next.{f}") for f in fields},
                         "action": f32("action"), "reward": f32("reward"),
                         "terminated": torch.as_tensor(rec["terminated"]), "truncated": torch.as_tensor(rec["truncated"]),
                         "intervention": torch.as_tensor(rec["intervention"])}, batch_size=[len(rec["reward"])])
        (self.demos if demo else self.online).extend(td)

    def sample(self, batch: int, demo_ratio: float):
        import torch

        from wsa_ros.learn.replay import Batch, cat_batches

        parts = []
        for buf, n, is_demo in ((self.online, batch - int(batch * demo_ratio), False),
                                (self.demos, int(batch * demo_ratio), True)):
            td = buf.sample(n)
            parts.append(Batch(dict(td["obs"].items()), dict(td["next"].items()), td["action"], td["reward"],
                               td["terminated"], td["truncated"], td["intervention"], torch.full((n,), is_demo)))
        return cat_batches(parts)

    def bytes_per_transition(self) -> float:
        td = self.online[:1]
        return float(sum(v.numel() * v.element_size() for v in td.values(include_nested=True, leaves_only=True)))


def disk_bytes_per_transition(spec) -> int:
    """What the durable store (wsa_ros.learn.store) writes per transition, before compression."""
    return int(sum(np.dtype(d).itemsize * int(np.prod(shape)) for d, shape in spec.schema().values()))


# =============================================================================== updates/s
def bench_updates(bundle, batch: int, seconds: float, threads: int, replay_kind: str = "compact") -> dict:
    import torch

    from wsa_ros.config import SACConfig
    from wsa_ros.learn.replay import Replay
    from wsa_ros.learn.sac import SACLearner
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.model.export import load_policy_module

    torch.set_num_threads(threads)
    spec = TransitionSpec.from_bundle(bundle)
    replay = Replay(spec, 20_000, holdout_every=0) if replay_kind == "compact" else TorchRLReplay(spec, 20_000)
    replay.add(fake_records(spec, 5000, 1))
    replay.add(fake_records(spec, 5000, 2, demo=True), demo=True)
    learner = SACLearner(load_policy_module(bundle), SACConfig(batch_size=batch),
                         bundle.proprio.mean if bundle.proprio else None, bundle.proprio.std if bundle.proprio else None)
    for _ in range(10):
        learner.update(replay.sample(batch, 0.5), metrics=False)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        learner.update(replay.sample(batch, 0.5), metrics=False)
    n, t_sample = 0, 0.0
    w0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        ts = time.perf_counter()
        b = replay.sample(batch, 0.5)
        t_sample += time.perf_counter() - ts
        learner.update(b, metrics=False)  # as the trainer runs it between its log rows
        n += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    ram = replay.online.bytes_per_transition() if replay_kind == "compact" else replay.bytes_per_transition()
    return {"threads": threads, "updates": n, "per_s_wall": n / wall,
            "per_s_cpu": n / cpu * min(threads, os.cpu_count() or 1) if cpu else float("nan"),
            "sample_ms": 1e3 * t_sample / n, "update_ms": 1e3 * (wall - t_sample) / n,
            "sample_share": t_sample / wall, "gflop": fc.get_total_flops() / 1e9, "ram_bytes": ram,
            "disk_bytes": disk_bytes_per_transition(spec)}


# =============================================================================== plain peers
def _mlp(i: int, hidden: list[int], o: int, norm: bool = False):
    """Linear -> [LayerNorm ->] ReLU per hidden layer (``norm``: RLPD's layer-normed critics)."""
    import torch.nn as nn

    layers, d = [], i
    for h in hidden:
        layers += [nn.Linear(d, h), *([nn.LayerNorm(h)] if norm else []), nn.ReLU()]
        d = h
    return nn.Sequential(*layers, nn.Linear(d, o))


class PlainSAC:
    """SAC as a CleanRL-style script writes it (plain PyTorch; two Q networks with target copies,
    a tanh-Gaussian actor, automatic temperature, Polyak by a loop over parameters). ``trunk``:
    an optional module (obs dict -> state), trained with the critics, a target copy for the
    next state, as the WSA head's fusion is; without it the observation is the state vector."""

    def __init__(self, state_dim: int, act_dim: int, actor_hidden, critic_hidden, trunk=None, lr=3e-4, gamma=0.97,
                 tau=0.005, grad_clip: float = 10.0, critic_norm: bool = False):
        import copy

        import torch

        self.trunk = trunk
        self.trunk_t = copy.deepcopy(trunk) if trunk is not None else None
        self.actor = _mlp(state_dim, actor_hidden, 2 * act_dim)
        self.qf1 = _mlp(state_dim + act_dim, critic_hidden, 1, critic_norm)
        self.qf2 = _mlp(state_dim + act_dim, critic_hidden, 1, critic_norm)
        self.qf1_t, self.qf2_t = copy.deepcopy(self.qf1), copy.deepcopy(self.qf2)
        critic = list(self.qf1.parameters()) + list(self.qf2.parameters()) + (
            list(trunk.parameters()) if trunk is not None else [])
        self.critic_params = critic
        self.q_opt = torch.optim.Adam(critic, lr=lr)
        self.a_opt = torch.optim.Adam(self.actor.parameters(), lr=lr)
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.al_opt = torch.optim.Adam([self.log_alpha], lr=lr)
        self.target_entropy, self.gamma, self.tau, self.clip = -act_dim / 2, gamma, tau, grad_clip

    def state(self, obs, target: bool = False):
        if self.trunk is None:
            return obs
        return (self.trunk_t if target else self.trunk)(obs)

    def pi(self, s):
        import math

        import torch

        mean, log_std = self.actor(s).chunk(2, -1)
        log_std = log_std.clamp(-5, 2)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1) \
            - torch.log(1 - a.pow(2) + 1e-6).sum(-1)
        return a, logp

    def update(self, obs, act, rew, nobs, done) -> None:
        import torch
        import torch.nn.functional as F

        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            ns = self.state(nobs, target=True)
            na, nlp = self.pi(ns)
            x = torch.cat([ns, na], -1)
            y = rew + self.gamma * (1 - done) * (torch.min(self.qf1_t(x), self.qf2_t(x)).view(-1) - alpha * nlp)
        s = self.state(obs)
        x = torch.cat([s, act], -1)
        q_loss = F.mse_loss(self.qf1(x).view(-1), y) + F.mse_loss(self.qf2(x).view(-1), y)
        self.q_opt.zero_grad()
        q_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.critic_params, self.clip)
        self.q_opt.step()
        s = s.detach()
        a, lp = self.pi(s)
        x = torch.cat([s, a], -1)
        a_loss = (alpha * lp - torch.min(self.qf1(x), self.qf2(x)).view(-1)).mean()
        self.a_opt.zero_grad()
        a_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), self.clip)
        self.a_opt.step()
        al_loss = (-self.log_alpha.exp() * (lp.detach() + self.target_entropy)).mean()
        self.al_opt.zero_grad()
        al_loss.backward()
        self.al_opt.step()
        with torch.no_grad():
            pairs = [(self.qf1, self.qf1_t), (self.qf2, self.qf2_t)] + (
                [(self.trunk, self.trunk_t)] if self.trunk is not None else [])
            for net, tgt in pairs:
                for p, pt in zip(net.parameters(), tgt.parameters()):
                    pt.data.copy_(self.tau * p.data + (1 - self.tau) * pt.data)


def bench_peers(bundle, batch: int, seconds: float, threads: int) -> dict:
    """Updates/s of the two plain peers on the bundle head's sizes, beside the project's learner
    on the same head and the same batches (sampled once, outside the timing, for all three)."""
    import torch

    from wsa_ros.config import SACConfig
    from wsa_ros.learn.replay import Replay
    from wsa_ros.learn.sac import SACLearner, _embs
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.model.export import load_policy_module

    torch.set_num_threads(threads)
    spec = TransitionSpec.from_bundle(bundle)
    replay = Replay(spec, 4096, holdout_every=0)
    replay.add(fake_records(spec, 2048, 1))
    replay.add(fake_records(spec, 2048, 2, demo=True), demo=True)
    batches = [replay.sample(batch, 0.5) for _ in range(16)]
    policy = load_policy_module(bundle)
    head = policy.config
    mean = torch.as_tensor(bundle.proprio.mean, dtype=torch.float32)
    std = torch.as_tensor(bundle.proprio.std, dtype=torch.float32)

    class Trunk(torch.nn.Module):  # the WSA fusion of this head, as a plain module: obs dict -> state
        def __init__(self, p):
            super().__init__()
            self.p = p

        def forward(self, obs):
            return self.p.features(_embs(obs), (obs["proprio"] - mean) / std, check=False)[0]

    fused = [(b, policy.features(_embs(b.obs), (b.obs["proprio"] - mean) / std)[0].detach(),
              policy.features(_embs(b.next_obs), (b.next_obs["proprio"] - mean) / std)[0].detach()) for b in batches]

    def timed(step) -> float:
        for i in range(5):
            step(i)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step(n)
            n += 1
        return n / (time.perf_counter() - t0)

    out = {"threads": threads}
    sizes = (policy.state_dim, policy.action_dim, head["actor_hidden"], head["critic_hidden"])
    norm = {"critic_norm": bool(head.get("critic_norm", False))}  # the same critics: layer-normed when the head's are
    mlp_only = PlainSAC(*sizes, **norm)
    out["peer_mlp"] = timed(lambda i: (lambda b, s, ns: mlp_only.update(s, b.action, b.reward, ns,
                                                                        b.terminated.float()))(*fused[i % 16]))
    same = PlainSAC(*sizes, trunk=Trunk(load_policy_module(bundle)), **norm)
    out["peer_same"] = timed(lambda i: (lambda b: same.update(b.obs, b.action, b.reward, b.next_obs,
                                                              b.terminated.float()))(batches[i % 16]))
    ours = SACLearner(load_policy_module(bundle), SACConfig(batch_size=batch), bundle.proprio.mean, bundle.proprio.std)
    out["ours"] = timed(lambda i: ours.update(batches[i % 16], metrics=False))
    return out


# =============================================================================== ingest/s
def bench_ingest(bundle, seconds: float, encode: bool) -> dict:
    from wsa_ros.runtime.engine import Engine
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import Assembler, TransitionSpec, check_record
    from wsa_ros.runtime.observation import FrameSample, JointSample

    spec = TransitionSpec.from_bundle(bundle)
    eng = Engine(bundle, providers=["cpu"], threads=1)
    fixed = eng.embed({c: np.full((84, 84, 3), 100, np.uint8) for c in bundle.cameras})
    enc = eng.embed if encode else (lambda images: fixed)
    with tempfile.TemporaryDirectory() as td:
        store = ReplayStore(Path(td) / "s", spec.schema(), spec.fingerprint()).start()
        asm = Assembler(spec, bundle.cameras, enc, bundle.proprio)
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (84, 84, 3), dtype=np.uint8) for _ in range(16)]
        joints = list(bundle.action.joint_names)
        pj = bundle.proprio.joint_names if bundle.proprio else joints
        k, n = 0, 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            k += 1
            stamp = 1_700_000_000_000_000_000 + k * 33_000_000
            for c in bundle.cameras:
                asm.add_frame(c, FrameSample.from_array(frames[k % 16], stamp, stamp))
            asm.add_joints(JointSample(stamp, stamp, list(pj), np.zeros(len(pj)), np.zeros(len(pj)), np.zeros(len(pj))))
            asm.add_record(stamp, stamp, "1", joints, [0.5] * len(joints), [0.1] * len(joints))
            asm.add_reward(stamp, -1.0)
            for tr in asm.poll(stamp):
                rec = tr.to_record()
                if check_record(spec, rec) is None:
                    store.append(rec)
                    n += 1
        dt = time.perf_counter() - t0
        store.close()
        return {"encode": encode, "transitions": n, "per_s": n / dt, "stored": store.count}


# =============================================================================== export -> acting
def bench_latency(bundle_path: Path, rounds: int, domain: int) -> list[dict]:
    import rclpy
    import yaml
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rcl_interfaces.msg import ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image, JointState

    from wsa_ros.runtime.bundle import load_bundle, split_policy_id
    from wsa_ros.runtime.images import array_to_image_fields
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.learn.validate import export_policy, validate_bundle
    from wsa_ros.model.export import load_policy_module

    base = load_bundle(bundle_path)
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    td = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    params = {"agent_node": {"ros__parameters": {
        "bundle": str(bundle_path), "providers": ["cpu"], "camera_topics": ["/camera/image_raw"],
        "joint_states_topic": "/joint_states", "control_rate_hz": 30.0, "start_enabled": True, "blend_in_s": 0.0,
        "max_obs_age_s": 0.5}}}
    (td / "agent.yaml").write_text(yaml.safe_dump(params))
    log = open(td / "agent.log", "w")
    agent = subprocess.Popen([sys.executable, "-m", "wsa_ros.ros.agent_node", "--ros-args", "--params-file",
                              str(td / "agent.yaml")], cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node("bench_learner", context=ctx)
    seen: dict[str, float] = {}
    node.create_subscription(JointState, "/agent_node/action_record",
                             lambda m: seen.setdefault(split_policy_id(m.header.frame_id)[0], time.perf_counter()),
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
    pub_img = node.create_publisher(Image, "/camera/image_raw", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    pub_js = node.create_publisher(JointState, "/joint_states", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    client = node.create_client(SetParameters, "/agent_node/set_parameters")
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ex.spin_once(timeout_sec=0.05)

    threading.Thread(target=spin, daemon=True).start()
    f = array_to_image_fields(np.full((84, 84, 3), 90, np.uint8))

    def stream():
        while not stop.is_set():
            st = node.get_clock().now().to_msg()
            js = JointState(name=list(base.action.joint_names), position=[0.0] * base.action.dim,
                            velocity=[0.0] * base.action.dim)
            js.header.stamp = st
            pub_js.publish(js)
            img = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"])
            img.data = f["data"]
            img.header.stamp = st
            pub_img.publish(img)
            time.sleep(1 / 30)

    threading.Thread(target=stream, daemon=True).start()
    out = []
    try:
        t_end = time.monotonic() + 120
        while base.version not in seen and time.monotonic() < t_end:
            time.sleep(0.1)
        if base.version not in seen:
            raise RuntimeError(f"the agent never acted; its log: {(td / 'agent.log').read_text()[-2000:]}")
        policy = load_policy_module(base)
        holdout = fake_records(TransitionSpec.from_bundle(base), 64)
        holdout = {k[4:]: v for k, v in holdout.items() if k.startswith("obs.")}
        for i in range(rounds):
            version = f"{base.version}+bench{i}"
            t0 = time.perf_counter()
            export_policy(policy, base, td / version, version)
            t1 = time.perf_counter()
            rep = validate_bundle(td / version, base, holdout, policy=policy)
            t2 = time.perf_counter()
            if not rep.ok:
                raise RuntimeError(rep.summary())
            req = SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=ParameterValue(
                type=ParameterType.PARAMETER_STRING, string_value=str(td / version)))])
            fut = client.call_async(req)
            while not fut.done():
                time.sleep(0.001)
            t3 = time.perf_counter()
            ok = fut.result().results[0].successful
            while version not in seen and time.perf_counter() - t3 < 30:
                time.sleep(0.001)
            t4 = seen.get(version, float("nan"))
            out.append({"round": i, "ok": ok, "export_s": t1 - t0, "validate_s": t2 - t1, "push_answer_s": t3 - t2,
                        "first_action_after_answer_s": t4 - t3, "export_done_to_acting_s": t4 - t1})
    finally:
        stop.set()
        agent.send_signal(2)
        try:
            agent.wait(timeout=20)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
        node.destroy_node()
        rclpy.shutdown(context=ctx)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default=None, help="bundle (default: models/default, else a default-like head)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--domain", type=int, default=118)
    args = ap.parse_args(argv)

    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.config import default_bundle

    cmd = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    tmp = Path(tempfile.mkdtemp(prefix="bench_learner_"))
    if args.bundle:
        bpath = Path(args.bundle)
    else:
        bpath = default_bundle()
    b = load_bundle(bpath)
    print(f"command: {cmd}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.2f} at start")
    print(f"bundle: {bpath} (head d={b.head.get('d')}, actor {b.head.get('actor_hidden')}, critic "
          f"{b.head.get('critic_hidden')}, encoders {[(e.name, e.output_shape) for e in b.encoders]})\n")

    prev = default_head_bundle(tmp, PREVIOUS, "previous-default", **PREVIOUS_HEAD)
    print(f"{'learner updates, batch ' + str(args.batch):52s} {'wall /s':>8s} {'CPU /s':>7s} {'sample ms':>10s} "
          f"{'update ms':>10s} {'sampling':>9s} {'GFLOP':>6s} {'RAM/tr':>9s} {'disk/tr':>9s}")
    rows = {}
    for threads in args.threads:
        for key, bundle, kind, label in (("previous", prev, "torchrl", "previous layout, torchrl float32 obs+next"),
                                         ("default", b, "compact", "this bundle, compact replay")):
            r = bench_updates(bundle, args.batch, args.seconds, threads, kind)
            rows[(key, threads)] = r
            print(f"{f'  {threads} thread(s): {label}':52s} {r['per_s_wall']:8.1f} {r['per_s_cpu']:7.1f} "
                  f"{r['sample_ms']:10.2f} {r['update_ms']:10.2f} {r['sample_share'] * 100:8.0f}% {r['gflop']:6.3f} "
                  f"{r['ram_bytes'] / 1024:7.1f} KB {r['disk_bytes'] / 1024:7.1f} KB")
    for threads in args.threads:
        p, d = rows[("previous", threads)], rows[("default", threads)]
        print(f"  ratio this bundle / previous layout, {threads} thread(s): {d['per_s_wall'] / p['per_s_wall']:.2f}x "
              f"updates/s; memory per transition {p['ram_bytes'] / d['ram_bytes']:.1f}x less in RAM, "
              f"{p['disk_bytes'] / d['disk_bytes']:.1f}x less on disk")
    print("  targets: >= 5x updates/s on 1 and 2 threads; sampling <= 15 % of an update; <= 1/4 of the memory\n")

    print(f"{'plain peers (CleanRL-style), same sizes, same batches':52s} {'updates/s':>10s} {'ours/peer':>10s}")
    for threads in args.threads:
        r = bench_peers(b, args.batch, args.seconds, threads)
        print(f"{f'  {threads} thread(s): this learner (fusion + actor + twin Q)':52s} {r['ours']:10.1f}")
        print(f"{f'  {threads} thread(s): plain peer, the same networks':52s} {r['peer_same']:10.1f} "
              f"{r['ours'] / r['peer_same']:9.2f}x")
        print(f"{f'  {threads} thread(s): plain peer, actor + twin Q MLPs only':52s} {r['peer_mlp']:10.1f} "
              f"{r['ours'] / r['peer_mlp']:9.2f}x")
    print("  target: this learner at least as fast as the plain peer on the same networks (>= 1.0x)\n")

    print(f"{'ingest (assembler + checks + store)':44s} {'transitions/s':>14s}")
    for encode in (True, False):
        r = bench_ingest(b, min(args.seconds, 5.0), encode)
        label = "  with encoders (84x84 frame)" if encode else "  embeddings given (no encoders)"
        print(f"{label:44s} {r['per_s']:14.1f}")
    print()
    if not args.no_latency:
        print(f"{'export -> acting (real agent_node, 30 Hz)':44s} {'export s':>9s} {'validate s':>11s} "
              f"{'push s':>7s} {'done->acting s':>15s}")
        for r in bench_latency(Path(bpath), args.rounds, args.domain):
            print(f"  round {r['round']} ({'swapped' if r['ok'] else 'REFUSED'}){'':27s} {r['export_s']:9.2f} "
                  f"{r['validate_s']:11.2f} {r['push_answer_s']:7.2f} {r['export_done_to_acting_s']:15.2f}")
        print("  target: new policy acting <= 1 s after export")
    print(f"\nload average at end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
