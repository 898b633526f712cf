"""The policy gate (wsa_ros/learn/gate.py): which version the agents run, from live episodes."""
import pytest

from wsa_ros.learn.gate import PolicyGate


def _run(gate, version, successes):
    """Episodes of one version; returns every push the gate asked for."""
    return [p for s in successes if (p := gate.episode((version,), s)) is not None]


def test_a_worse_candidate_is_replaced_by_the_champion_and_a_better_one_stays():
    g = PolicyGate(episodes=4, margin=0.2)
    g.start("1", "/start")
    assert g.offer("1+ft1", "/ft1") is None  # the start has not run its window yet: held
    assert _run(g, "1", [1, 1, 0, 1]) == [("1+ft1", "/ft1")]  # window closed: the held export goes
    assert g.current == "1+ft1" and g.champion().version == "1"
    assert g.offer("1+ft2", "/ft2") is None
    # ft1 at 0.25 against the start's 0.75: back to the start, ft2 still waiting
    assert _run(g, "1+ft1", [0, 1, 0, 0]) == [("1", "/start")]
    assert g.rollbacks == 1 and g.current == "1" and g.held == ("1+ft2", "/ft2")
    assert _run(g, "1", [1, 1, 1, 0]) == [("1+ft2", "/ft2")]  # the champion's own window, then the next candidate
    assert _run(g, "1+ft2", [1, 1, 1, 1]) == []  # better: it stays, nothing held
    assert g.champion().version == "1+ft2" and g.current == "1+ft2"
    assert g.offer("1+ft3", "/ft3") == ("1+ft3", "/ft3")  # window over: pushed at once
    s = g.summary()
    assert s["versions"]["1"] == {"episodes": 8, "success_rate": 0.75} and s["rollbacks"] == 1


def test_within_the_margin_the_candidate_is_kept_and_mixed_or_unknown_episodes_do_not_count():
    g = PolicyGate(episodes=3, margin=0.4)
    g.start("1", "/start")
    assert _run(g, "1", [1, 1, 1]) == []
    assert g.offer("1+ft1", "/ft1") == ("1+ft1", "/ft1")
    assert g.episode(("1", "1+ft1"), 1) is None and g.episode(("1+ft1",), -1) is None  # neither counts
    assert g.since_push == 0 and g.stats["1+ft1"].episodes == 0
    assert _run(g, "1+ft1", [1, 0, 1]) == []  # 0.67 against 1.00: within 0.4, kept
    assert g.current == "1+ft1" and g.rollbacks == 0
    assert g.offer("1+ft2", "/ft2") == ("1+ft2", "/ft2")


def test_a_newer_export_replaces_a_held_one():
    g = PolicyGate(episodes=2, margin=0.1)
    g.start("1", "/start")
    assert g.offer("1+ft1", "/ft1") is None and g.offer("1+ft2", "/ft2") is None
    assert g.skipped == 1 and _run(g, "1", [0, 0]) == [("1+ft2", "/ft2")]


@pytest.mark.parametrize("kw", [{"episodes": 0}, {"margin": 1.5}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(ValueError):
        PolicyGate(**kw)
