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
    info = prepare_fresh_start(base, tmp_path / "demo", seed=3, episodes=2, steps=5, image_size=48, bc_steps=20,
                               say=lines.append)
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

    # the baseline: the same start head, behaviour-cloned on those demonstrations by `wsa import-demos --bc-steps`
    bc = load_bundle(info["bc_bundle"])
    assert bc.version == "0+bc20" and [e.sha256 for e in bc.encoders] == [e.sha256 for e in base.encoders]
    bcw = load_policy_module(bc).state_dict()
    actor = [k for k in bcw if k.startswith("actor")]
    assert actor and any(not torch.equal(bcw[k], new[k]) for k in actor)
    critic = [k for k in bcw if k.startswith(("q1", "q2"))]
    assert critic and all(torch.equal(bcw[k], new[k]) for k in critic)  # BC leaves the critic alone


def test_paired_difference_and_its_interval():
    """final - bc over the same episodes: the mean of the per-episode differences and its 95 %
    interval (1.96 standard errors); unequal episode lists are refused."""
    import math

    import pytest

    from wsa_ros.tools.demo import offline_lines, paired_difference

    final = [1] * 45 + [0] * 5
    bc = [1] * 20 + [0] * 30
    d = paired_difference(final, bc)
    diffs = [f - b for f, b in zip(final, bc)]
    m = sum(diffs) / 50
    sd = math.sqrt(sum((x - m) ** 2 for x in diffs) / 49)
    assert d["mean"] == pytest.approx(0.5) and d["episodes"] == 50
    assert d["ci95"] == pytest.approx([m - 1.96 * sd / math.sqrt(50), m + 1.96 * sd / math.sqrt(50)])
    assert d["above_zero"] and d["wins"] == 25 and d["losses"] == 0
    same = paired_difference(bc, bc)
    assert same["mean"] == 0 and not same["above_zero"]
    with pytest.raises(ValueError, match="same episodes"):
        paired_difference(final, bc[:-1])
    oc = {"start": {"version": "0", "episodes": 50, "success_final": 0.0},
          "bc": {"version": "0+bc20", "success_final": 0.4}, "final": {"version": "0+ft3", "success_final": 0.9},
          "final_minus_bc": d, "final_minus_start": paired_difference(final, [0] * 50)}
    text = "\n".join(offline_lines(oc))
    assert "behaviour cloning on the same demonstrations (v0+bc20) 0.40" in text and "final policy v0+ft3 0.90" in text
    assert "final minus behaviour cloning: +0.50" in text and "better, beyond the interval" in text
    # both at the ceiling of success: the paired return still says whether the final policy is better
    start_ret, final_ret = [-3.0 - 0.01 * i for i in range(50)], [-2.5 - 0.01 * i for i in range(50)]
    ceiling = {"start": {"version": "1", "episodes": 50, "success_final": 1.0, "return": -3.245},
               "final": {"version": "1+ft9", "success_final": 1.0, "return": -2.745},
               "final_minus_start": paired_difference([1] * 50, [1] * 50),
               "final_minus_start_return": paired_difference(final_ret, start_ret)}
    text = "\n".join(offline_lines(ceiling))
    assert "final minus the starting policy: +0.00" in text and "NOT clearly better" in text
    assert "episode return, final minus the starting policy: +0.500" in text and "-3.245 -> -2.745" in text
    assert "higher, beyond the interval" in text
