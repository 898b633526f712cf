"""The demo's ROS-free parts: its verdict on learning (wsa_ros.tools.demo.summarize: a rise must be
clear of chance and come with a new policy; the same policy's success wandering is not
learning) and what a fresh start prepares before any process starts."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wsa_ros.tools.demo import summarize
from wsa_ros.ros.monitor import Episode


def episodes(successes, versions) -> list[Episode]:
    return [Episode(index=i, end="truncated", steps=100, ret=-1.0, success=bool(s), reached=bool(s),
                    final_distance=0.01, commanded_steps=100, start_ns=i, end_ns=i + 1, wall_s=float(i),
                    versions=[v], actions=100, latency_ms=1.0, counted=True)
            for i, (s, v) in enumerate(zip(successes, versions))]


def test_rising_needs_two_standard_errors_and_a_new_policy():
    rng = np.random.default_rng(0)
    n = 120
    low_high = np.r_[rng.random(n // 2) < 0.05, rng.random(n // 2) < 0.6]
    # a clear rise while new policies act: rising
    s = summarize(episodes(low_high, ["1"] * 40 + ["1+ft1"] * 80), [], [], 20)
    assert s["rising"] and s["success_change"] > 2 * s["success_change_stderr"]
    assert set(s["by_policy_version"]) == {"1", "1+ft1"}
    # the same numbers with one policy throughout: chance, not learning
    assert not summarize(episodes(low_high, ["1"] * n), [], [], 20)["rising"]
    # a new policy, but a change within two standard errors (0.10 -> 0.17 over 30 episodes each)
    small = np.r_[[1] * 3 + [0] * 27, [0] * 60, [1] * 5 + [0] * 25]
    s = summarize(episodes(small, ["1"] * 60 + ["1+ft1"] * 60), [], [], 20)
    assert 0 < s["success_change"] < 2 * s["success_change_stderr"] and not s["rising"]


def test_fresh_start_records_a_demonstration_bag_imports_it_and_exports_an_untrained_head(tmp_path, tiny_bundle):
    """``wsa demo --start fresh`` prepares, ROS-free: a rosbag of the scripted expert (episode ends
    and success included, byte-identical for the same seed), imported by ``wsa import-demos``
    into a demonstration store, and ``start/``: the same frozen encoders with a new head, version 0."""
    import torch

    from wsa_ros.runtime.bags import iter_messages, summary
    from wsa_ros.runtime.bundle import load_bundle
    from wsa_ros.tools.demo import prepare_fresh_start
    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.model.export import load_policy_module
    from wsa_ros.sim.expert_bag import EPISODE_END_TOPIC, SUCCESS_TOPIC, record_expert_bag

    base = load_bundle(tiny_bundle)
    lines: list[str] = []
    info = prepare_fresh_start(base, tmp_path / "demo", seed=3, episodes=2, steps=5, image_size=48, say=lines.append)
    bag = Path(info["bag"]["path"])
    topics = summary(bag).topics
    assert {EPISODE_END_TOPIC, SUCCESS_TOPIC} <= set(topics)
    ends = [m for m in iter_messages(bag, [EPISODE_END_TOPIC])]
    assert len(ends) == 2 and "2 expert episodes" in lines[0]
    again = record_expert_bag(tmp_path / "again" / bag.name, 2, 5, info["bag"]["seed"], 48, noise=0.6,
                              episode_topics=True)
    assert (Path(again["path"]) / f"{bag.name}.mcap").read_bytes() == (bag / f"{bag.name}.mcap").read_bytes()

    spec = TransitionSpec.from_bundle(base)
    store = ReplayStore(info["store"], spec.schema(), spec.fingerprint(), readonly=True)
    arr = store.read()
    assert len(arr["reward"]) == 10 and arr["intervention"].all()  # 2 episodes x 5 steps, all demonstrations
    assert arr["truncated"].sum() == 2

    start = load_bundle(info["start_bundle"])
    assert start.version == "0" and start.name == base.name
    assert [e.sha256 for e in start.encoders] == [e.sha256 for e in base.encoders]
    new, old = load_policy_module(start).state_dict(), load_policy_module(base).state_dict()
    assert new.keys() == old.keys() and any(not torch.equal(new[k], old[k]) for k in new)
