"""The learner's ingest (wsa_ros.learn.ingest), ROS-free, with synthetic publish times: the
reorder buffer puts messages back in publish order whatever order they arrived in, sequence
gaps in the agent's action records break the chain instead of mis-pairing, several robots stay
apart. What the finetune node's end-to-end test relies on, checked without DDS or timing."""
from __future__ import annotations

import numpy as np
import pytest

from wsa_ros.learn.ingest import Ingest, RecordSequence, Reorderer
from wsa_ros.learn.transitions import AssemblerConfig, TransitionSpec
from wsa_ros.runtime import bags

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
JOINTS = ["joint0", "joint1"]
SPEC = TransitionSpec(encoders=(("e", (2,)),), proprio_dim=0, action_joints=tuple(JOINTS), low=(-3.0, -3.0),
                      high=(3.0, 3.0))
WINDOW = 100 * MS


def test_reorderer_releases_in_publish_order_after_the_hold():
    r = Reorderer(window_ns=10)
    for t, arrived, item in ((5, 100, "b"), (3, 101, "a"), (9, 102, "c")):  # "a" published first, came second
        r.push(t, arrived, item)
    assert r.release(109) == []  # nothing held 10 ns yet
    assert r.release(111) == [(3, "a"), (5, "b")]  # "a" leaves first; "c" is still held
    assert r.release(200) == [(9, "c")] and len(r) == 0
    assert r.order_time(src_ns=50, recv_ns=60, now_ns=0) == 50  # the publish time
    assert r.order_time(src_ns=50, recv_ns=5_000_000_000, now_ns=0) == 5_000_000_000 and r.skewed == 1
    assert r.order_time(None, None, now_ns=7) == 7


def test_record_sequence_reports_the_records_that_never_came():
    s = RecordSequence()
    assert [s.lost("/", "g1", q) for q in (1, 2, 5)] == [0, 0, 2]
    assert s.lost("/", "g2", 9) == 0 and s.lost("/r2", "g1", 3) == 0  # per robot and publisher
    assert s.lost("/", "g1", None) == 0


class Env:
    """One or two robots as the finetune node sees them: per step a frame (the embedding is
    the step index), then the agent's record on it, then the step's reward; every message
    with its publish time, delivered in whatever order ``deliver`` chooses."""

    def __init__(self, sources=("/",)):
        self.ingest = Ingest(SPEC, ["front"], self.encode, None, AssemblerConfig(), list(sources), WINDOW)
        self.msgs = []  # (publish ns, source, kind, payload, pub)

    @staticmethod
    def encode(images):
        return {"e": np.array([float(images["front"][0, 0, 0]), 0.0], np.float32)}

    def step(self, k: int, source: str = "/", seq: int | None = None, record: bool = True, reward: float = -1.0,
             policy: str = "1"):
        t = T0 + k * 20 * MS
        self.msgs.append((t, source, "frame", ("front", False, bags.make_image(t, np.full((2, 2, 3), k, np.uint8))),
                          None))
        if record:
            m = bags.make_joint_state(t, JOINTS, [0.3 * (k % 10), 0.0], [0.1 * (k % 10), 0.0])
            m.header.frame_id = policy
            self.msgs.append((t + 2 * MS, source, "record", (m,), ("gid", seq if seq is not None else k)))
        self.msgs.append((t + 15 * MS, source, "reward", (reward,), None))

    def run(self, order) -> list[dict]:
        """Deliver the messages in ``order`` (indices), each arriving at most 30 ms late, then drain."""
        arrive = T0
        for i in order:
            t, source, kind, payload, pub = self.msgs[i]
            arrive = max(arrive, t) + MS
            assert self.ingest.put(source, kind, payload, src_ns=t, recv_ns=arrive, now_ns=arrive, pub=pub)
        out = []
        for now in range(arrive, arrive + 3 * WINDOW + 2_000 * MS, 10 * MS):
            out += self.ingest.step(now)[0]
        return out


def _summary(recs):
    return [(int(r["obs.e"][0]), int(r["next.e"][0]), float(r["reward"]), r["source"]) for r in recs]


def test_transitions_do_not_depend_on_the_arrival_order():
    env = Env()
    for k in range(12):
        env.step(k)
    n = len(env.msgs)
    want = _summary(env.run(range(n)))
    assert [(a, b) for a, b, _r, _s in want] == [(k, k + 1) for k in range(11)]
    assert all(r == -1.0 for _a, _b, r, _s in want)
    rng = np.random.default_rng(0)
    for _ in range(5):  # shuffled within the reorder window (arrivals at most 30 ms apart)
        order = sorted(range(n), key=lambda i: env.msgs[i][0] + int(rng.integers(0, 30)) * MS)
        again = Env()
        again.msgs = env.msgs
        assert _summary(again.run(order)) == want


def test_a_lost_record_breaks_the_chain_instead_of_pairing_the_wrong_observation():
    env = Env()
    for k in range(8):
        env.step(k, record=k != 4, seq=k)  # the record of step 4 never arrives: a sequence gap
    got = _summary(env.run(range(len(env.msgs))))
    pairs = [(a, b) for a, b, _r, _s in got]
    assert (3, 5) not in pairs and (3, 4) not in pairs  # step 3's next observation is unknown: dropped
    assert pairs == [(0, 1), (1, 2), (2, 3), (5, 6), (6, 7)]
    s = env.ingest.summary()
    assert s["rejected"]["record_lost"] == 1 and s["rejected"]["broken_chain"] == 1


def test_two_robots_feed_one_ingest_and_stay_apart():
    env = Env(sources=("/", "/r2"))
    digest = "5e" * 32
    for k in range(6):
        env.step(k, "/", reward=-1.0)  # a record as older agents and bags carry it: the version alone
        env.step(k + 50, "/r2", reward=-2.0, policy=f"1+ft3@{digest}")  # version@manifest sha256
    raw = env.run(sorted(range(len(env.msgs)), key=lambda i: env.msgs[i][0]))
    got = _summary(raw)
    mine = [(a, b, r) for a, b, r, s in got if s == "/"]
    other = [(a, b, r) for a, b, r, s in got if s == "/r2"]
    assert mine == [(k, k + 1, -1.0) for k in range(5)] and other == [(k + 50, k + 51, -2.0) for k in range(5)]
    assert {t["source"]: str(t["version"]) for t in raw} == {"/": "1", "/r2": "1+ft3"}
    robots = env.ingest.robots(T0)
    assert (robots["/"]["acting"], robots["/"]["acting_sha256"]) == ("1", "")
    assert (robots["/r2"]["acting"], robots["/r2"]["acting_sha256"]) == ("1+ft3", digest)


def test_a_full_inbox_counts_what_it_drops_and_a_bad_kind_is_counted_not_fatal():
    small = Ingest(SPEC, ["front"], Env.encode, None, AssemblerConfig(), ["/"], WINDOW, inbox=1)
    assert small.put("/", "reward", (1.0,), T0, T0, T0)
    assert not small.put("/", "reward", (1.0,), T0, T0, T0)
    assert small.summary()["counts"]["dropped_inbox_reward"] == 1
    errors = []
    ing = Ingest(SPEC, ["front"], Env.encode, None, AssemblerConfig(), ["/"], 0)
    ing.put("/", "gadget", (1,), T0, T0, T0)
    ing.step(T0 + 1, on_error=errors.append)
    assert ing.summary()["counts"]["malformed_message"] == 1 and "unknown message kind" in errors[0]


@pytest.mark.parametrize("window_ms", [0, 50])
def test_the_assemblers_clock_is_the_watermark(window_ms):
    """A record waits for its frame up to pairing_timeout_s of the watermark's clock, not of the
    wall clock: a learner that falls behind never rejects steps just for being late itself."""
    ing = Ingest(SPEC, ["front"], Env.encode, None, AssemblerConfig(pairing_timeout_s=0.05), ["/"], window_ms * MS)
    m = bags.make_joint_state(T0, JOINTS, [0.0, 0.0], [0.0, 0.0])
    m.header.frame_id = "1"
    ing.put("/", "record", (m,), T0, T0, T0, pub=("g", 1))
    ing.step(T0 + window_ms * MS + 10 * MS)  # released; its frame not there yet; not timed out either
    assert ing.summary()["pairing"] == 1 and not ing.summary()["rejected"]
