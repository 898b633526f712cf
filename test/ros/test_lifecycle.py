"""agent_node as a managed (lifecycle) node, over real rclpy and DDS, across processes.

The agent starts with ``autostart: unconfigured``; this process drives it through the
standard ``lifecycle_msgs`` services (what ``ros2 lifecycle set`` and a launch file's
lifecycle events call) while it streams camera frames and joint states, and checks the
commands on the wire after each transition: nothing before configure, nothing while
inactive, actions once active (``start_enabled``), the stop command at deactivate and only
stop commands while inactive, ``~/enable`` refused while inactive, nothing after cleanup,
a configure with a missing bundle refused with its cause (the node stays unconfigured),
and shutdown ending the process with exit code 0. Then finetune_node the same way, next to a
real agent and the environment of test_finetune_node: configure opens the store and stores
transitions without training, activate trains, deactivate pauses training while transitions
are still stored, cleanup flushes the store and ends ~/status. ROS_DOMAIN_ID 151-153.
"""
from __future__ import annotations

import time

import numpy as np
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from ros_peer import AgentProcess, Peer, Streamer, wait_for

CAM, JS = "/cam/image_raw", "/js"
NODE = "/agent_node"


def _params(bundle, **kw):
    p = dict(bundle=str(bundle), providers=["cpu"], camera_topics=[CAM], joint_states_topic=JS, control_rate_hz=30.0,
             max_obs_age_s=0.25, blend_in_s=0.0, max_rate=0.0, diagnostics_period_s=0.2, autostart="unconfigured",
             start_enabled=True)
    p.update(kw)
    return p


def _state(peer: Peer, node: str = NODE) -> str:
    return peer.call(GetState, f"{node}/get_state", GetState.Request()).current_state.label


def _change(peer: Peer, transition: int, node: str = NODE) -> bool:
    return peer.call(ChangeState, f"{node}/change_state",
                     ChangeState.Request(transition=Transition(id=transition)), timeout=60).success


def _zeros(cmd) -> bool:
    return bool(np.all(np.asarray(cmd.data) == 0.0))


def _since(peer: Peer, which: str, t: float) -> list:
    return [m for tm, m in peer.snapshot(which) if tm > t]


def test_lifecycle_drives_the_agent_from_unconfigured_to_active_and_back(tiny_bundle, tmp_path):
    with AgentProcess(151, _params(tiny_bundle), log_dir=str(tmp_path)) as agent, Peer(151) as peer:
        peer.publisher(CAM, "image")
        st = Streamer(peer, [CAM], JS, 30.0).start()
        try:
            # ---------------------------------------------------------------- unconfigured
            wait_for(lambda: _state(peer) == "unconfigured", 60, "the agent's lifecycle services")
            time.sleep(1.0)
            assert peer.snapshot("commands") == [] and peer.snapshot("records") == []
            assert peer.publisher(CAM, "image").get_subscription_count() == 0  # no policy, no topics yet
            # ---------------------------------------------------------------- configure -> inactive
            assert _change(peer, Transition.TRANSITION_CONFIGURE), agent.output()
            assert _state(peer) == "inactive"
            peer.wait_subscribed(CAM, 20)
            d = peer.wait_diag(lambda d: d.get("lifecycle") == "inactive", 20, "diagnostics (inactive)")
            assert d["state"] == "disabled" and "inactive" in d["reason"] and d["policy_version"] == "1"
            r = peer.enable(True)
            assert not r.success and "inactive" in r.message and "activate" in r.message
            time.sleep(1.0)
            assert peer.snapshot("commands") == [], "an inactive agent that never acted sent a command"
            # ---------------------------------------------------------------- activate -> acting
            t_act = time.monotonic()
            assert _change(peer, Transition.TRANSITION_ACTIVATE), agent.output()
            assert _state(peer) == "active"
            wait_for(lambda: len(_since(peer, "records", t_act)) >= 20, 30, "20 action records after activate")
            acting = _since(peer, "commands", t_act)
            assert acting and not any(_zeros(c) for c in acting), "start_enabled: the policy's actions, not stops"
            peer.wait_diag(lambda d: d.get("lifecycle") == "active" and d.get("state") == "active", 20,
                           "diagnostics (active, acting)")
            # ---------------------------------------------------------------- deactivate -> stop, hold
            t_deact = time.monotonic()
            assert _change(peer, Transition.TRANSITION_DEACTIVATE), agent.output()
            t_done_ns = time.time_ns()  # the reply is in: the agent has finished deactivating
            assert _state(peer) == "inactive"
            n_records = len(peer.snapshot("records"))
            time.sleep(1.0)
            with peer.lock:
                cmds, src = list(peer.commands), list(peer.command_src)
            after = [(s, m) for (t, m), s in zip(cmds, src) if t > t_deact]
            # the stop command before the reply, then stop commands (the hold) at the control rate: no
            # action. Timed by the agent's own DDS source stamps, not by when this process sent the
            # request (ticks the agent sent before it took the request are legitimate actions).
            assert any(_zeros(c) for _, c in after), "no stop command after deactivate"
            first_stop = next(i for i, (_, c) in enumerate(after) if _zeros(c))
            assert all(_zeros(c) for _, c in after[first_stop:]), "an action went out while inactive"
            assert after[first_stop][0] <= t_done_ns, "the stop command went out after deactivate returned"
            assert len(peer.snapshot("records")) <= n_records + 1
            r = peer.enable(True)
            assert not r.success and "inactive" in r.message
            # ---------------------------------------------------------------- activate again
            t_act2 = time.monotonic()
            assert _change(peer, Transition.TRANSITION_ACTIVATE), agent.output()
            wait_for(lambda: len(_since(peer, "records", t_act2)) >= 10, 30, "action records after re-activate")
            assert not any(_zeros(c) for c in _since(peer, "commands", t_act2)[-5:])
            # ---------------------------------------------------------------- deactivate + cleanup
            assert _change(peer, Transition.TRANSITION_DEACTIVATE)
            assert _change(peer, Transition.TRANSITION_CLEANUP), agent.output()
            assert _state(peer) == "unconfigured"
            wait_for(lambda: peer.publisher(CAM, "image").get_subscription_count() == 0, 20,
                     "the agent's camera subscription to go with cleanup")
            time.sleep(0.3)
            t_clean = time.monotonic()
            time.sleep(1.0)
            assert _since(peer, "commands", t_clean) == [], "commands after cleanup"
            # ---------------------------------------------------------------- configure refused: bad bundle
            res = peer.set_params({"bundle": str(tmp_path / "no_such_bundle")})
            assert res[0].successful, res[0].reason  # unconfigured: stored for the next configure
            assert not _change(peer, Transition.TRANSITION_CONFIGURE)
            assert _state(peer) == "unconfigured"
            wait_for(lambda: "configure failed" in agent.output() and "no_such_bundle" in agent.output(), 10,
                     "the refused configure's cause in the log")
            assert peer.set_params({"bundle": str(tiny_bundle)})[0].successful
            assert _change(peer, Transition.TRANSITION_CONFIGURE), agent.output()
            assert _state(peer) == "inactive"
            # ---------------------------------------------------------------- shutdown ends the process
            assert _change(peer, Transition.TRANSITION_INACTIVE_SHUTDOWN), agent.output()
            assert agent.wait_exit(20) == 0, agent.output()
        finally:
            st.stop()
    out = agent.output()
    assert "Traceback" not in out, out
    assert "lifecycle deactivate: inactive; stop command sent" in out, out


def test_autostart_inactive_holds_until_activate(tiny_bundle, tmp_path):
    """What the launch file's autostart:=inactive gives: configured (subscribed, checked bundle) but
    not acting, even with start_enabled, until a lifecycle activate."""
    with AgentProcess(152, _params(tiny_bundle, autostart="inactive"), log_dir=str(tmp_path)) as agent, \
            Peer(152) as peer:
        peer.publisher(CAM, "image")
        st = Streamer(peer, [CAM], JS, 30.0).start()
        try:
            peer.wait_subscribed(CAM, 60)
            assert _state(peer) == "inactive"
            time.sleep(1.0)
            assert peer.snapshot("commands") == []
            t = time.monotonic()
            assert _change(peer, Transition.TRANSITION_ACTIVATE), agent.output()
            wait_for(lambda: len(_since(peer, "records", t)) >= 5, 30, "action records after activate")
        finally:
            st.stop()
        assert agent.stop() == 0, agent.output()


def test_finetune_node_lifecycle_stores_then_trains_then_pauses(tiny_bundle, tmp_path):
    from test_finetune_node import CAM as FT_CAM
    from test_finetune_node import JS as FT_JS
    from test_finetune_node import Environment, FinetuneProcess, _status_sub

    from wsa_ros.learn.store import ReplayStore
    from wsa_ros.learn.transitions import TransitionSpec
    from wsa_ros.runtime.bundle import load_bundle

    domain, ft = 153, "/finetune_node"
    store_dir = tmp_path / "store"
    agent_params = dict(bundle=str(tiny_bundle), providers=["cpu"], camera_topics=[FT_CAM], joint_states_topic=FT_JS,
                        control_rate_hz=30.0, max_obs_age_s=0.5, blend_in_s=0.0, max_rate=0.0, trigger="camera",
                        start_enabled=True)
    ft_params = dict(bundle=str(tiny_bundle), store_dir=str(store_dir), out_dir=str(tmp_path / "out"),
                     camera_topics=[FT_CAM], joint_states_topic=FT_JS, providers=["cpu"], push=False,
                     export_every_updates=10**6, status_period_s=0.2, autostart="unconfigured",
                     learner=dict(warmup_transitions=10, batch_size=16, utd=1))
    agent = AgentProcess(domain, agent_params, log_dir=str(tmp_path))
    learner = FinetuneProcess(ft_params, tmp_path, "lifecycle", domain=domain)
    peer = Peer(domain)
    env = None
    try:
        status = _status_sub(peer)
        env = Environment(peer)
        wait_for(lambda: _state(peer, ft) == "unconfigured", 90, "the learner's lifecycle services")
        assert status() is None and not store_dir.exists()  # unconfigured: no store, no status
        assert _change(peer, Transition.TRANSITION_CONFIGURE, ft), learner.output()
        assert _state(peer, ft) == "inactive"
        peer.wait_subscribed(FT_CAM, 60, count=2)  # the agent and the learner
        peer.wait_outputs_matched(60)
        env.start()
        # ---------------------------------------------------------------- inactive: stored, not trained
        s = wait_for(lambda: (lambda s: s if s and s["accepted"] >= 30 else None)(status()), 60,
                     "30 transitions stored while inactive")
        assert s["training"] is False and s["updates"] == 0, s
        # ---------------------------------------------------------------- active: training
        assert _change(peer, Transition.TRANSITION_ACTIVATE, ft), learner.output()
        s = wait_for(lambda: (lambda s: s if s and s["training"] and s["updates"] >= 20 else None)(status()), 60,
                     "20 updates after activate")
        # ---------------------------------------------------------------- deactivate: paused, still storing
        assert _change(peer, Transition.TRANSITION_DEACTIVATE, ft), learner.output()
        time.sleep(0.6)
        s1 = status()
        time.sleep(1.5)
        s2 = status()
        assert s1["training"] is False and s2["updates"] == s1["updates"], (s1["updates"], s2["updates"])
        assert s2["accepted"] > s1["accepted"], "transitions stopped being stored while inactive"
        # ---------------------------------------------------------------- cleanup: flushed, released
        assert _change(peer, Transition.TRANSITION_CLEANUP, ft), learner.output()
        assert _state(peer, ft) == "unconfigured"
        last = status()
        time.sleep(0.6)
        assert status() is last, "~/status still published after cleanup"
        spec = TransitionSpec.from_bundle(load_bundle(tiny_bundle))
        on_disk = ReplayStore(store_dir, spec.schema(), spec.fingerprint(), readonly=True).count
        assert on_disk >= last["accepted"], (on_disk, last["accepted"])
        assert "shut down in" in learner.output()  # the learner's own close: threads, store, logs
        assert _change(peer, Transition.TRANSITION_UNCONFIGURED_SHUTDOWN, ft), learner.output()
        assert learner.proc.wait(timeout=30) == 0, learner.output()
    finally:
        if env is not None:
            env.stop()
        learner.stop()
        agent.stop()
        peer.close()
    assert "Traceback" not in learner.output(), learner.output()
