"""The demo's verdict on learning (wsa_ros.demo.summarize), ROS-free: a rise must be clear of
chance and come with a new policy; the same policy's success wandering is not learning."""
from __future__ import annotations

import numpy as np

from wsa_ros.demo import summarize
from wsa_ros.nodes.monitor import Episode


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
