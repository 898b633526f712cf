"""Keep the best policy acting, judged on the robot's own episodes (ROS-free).

A fine-tuned policy passes the exporter's validation when its outputs are finite and its
bundle is sound; that says nothing about whether it solves the task better. On the arms we
measured, live success per version rose and then wandered (Reacher) or fell below the
behaviour-cloned start (arm7), so the policy acting at the end was often not the best one
the learner had made. The gate decides, from the episodes each version ran alone, which
version the agents run::

    gate = PolicyGate(episodes=8, margin=0.15)
    gate.start("1", start_path)                  # the policy the agents start with
    gate.offer("1+ft1", path)                    # a validated export: pushed now or held
    for ep in finished:                          # each episode: the versions that acted, success
        push = gate.episode(ep.versions, ep.success)
        if push: send(*push)                     # (version, path) for every agent

Rules: every push (a new candidate or a return to the champion) opens a window of
``episodes`` episodes in which nothing else is pushed, so each version is judged on at least
that many episodes of its own (episodes in which another version acted are not counted for
anyone). At the end of a window: a candidate whose success rate is below the champion's by
more than ``margin`` is replaced by the champion; otherwise the newest held export (if any)
is pushed. The champion is the version with the highest success rate among those judged on
at least ``episodes`` episodes (the earlier one on ties); the start is the first champion.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class VersionStats:
    version: str
    path: str
    episodes: int = 0
    successes: int = 0

    @property
    def rate(self) -> float:
        return self.successes / self.episodes if self.episodes else float("nan")


class PolicyGate:
    def __init__(self, episodes: int = 8, margin: float = 0.15):
        if episodes < 1:
            raise ValueError(f"the gate needs at least 1 episode per version, got {episodes}")
        if not 0.0 <= margin <= 1.0:
            raise ValueError(f"margin must be in [0, 1] (a success-rate difference), got {margin}")
        self.window = int(episodes)
        self.margin = float(margin)
        self.stats: dict[str, VersionStats] = {}
        self.current: str | None = None
        self.held: tuple[str, str] | None = None  # the newest validated export waiting for the window
        self.since_push = 0
        self.rollbacks = 0
        self.pushes = 0
        self.skipped = 0  # held exports replaced by a newer one before their turn

    # ------------------------------------------------------------------ inputs
    def start(self, version: str, path: str) -> None:
        """The policy the agents run at start-up (the first champion once judged)."""
        self.stats.setdefault(version, VersionStats(version, str(path)))
        self.current = version
        self.since_push = 0

    def offer(self, version: str, path: str) -> tuple[str, str] | None:
        """A validated export: returns (version, path) to push now, or None when it is held
        until the current window closes (a newer export replaces a held one)."""
        if self.current is None or self.since_push >= self.window:
            return self._push(version, path)
        if self.held is not None:
            self.skipped += 1
        self.held = (version, str(path))
        return None

    def episode(self, versions, success: int) -> tuple[str, str] | None:
        """A finished episode: ``versions`` acted in it, ``success`` 1 / 0 (-1: unknown, not
        counted). Returns (version, path) to push when the window just closed with a verdict
        that changes the acting policy, else None."""
        vs = set(versions)
        if len(vs) == 1 and success in (0, 1):
            (v,) = vs
            st = self.stats.get(v)
            if st is not None:
                st.episodes += 1
                st.successes += int(success)
        if self.current is None or not (vs == {self.current} and success in (0, 1)):
            return None  # only the acting version's own episodes move its window
        self.since_push += 1
        if self.since_push < self.window:
            return None
        champ = self.champion()
        cur = self.stats[self.current]
        if champ is not None and champ.version != cur.version and cur.rate < champ.rate - self.margin:
            self.rollbacks += 1
            return self._push(champ.version, champ.path)
        if self.held is not None:
            version, path = self.held
            return self._push(version, path)
        return None

    # ------------------------------------------------------------------ state
    def champion(self) -> VersionStats | None:
        judged = [s for s in self.stats.values() if s.episodes >= self.window]
        return max(judged, key=lambda s: s.rate) if judged else None  # max keeps the first of equals

    def _push(self, version: str, path: str) -> tuple[str, str]:
        self.stats.setdefault(version, VersionStats(version, str(path)))
        if self.held is not None and self.held[0] == version:
            self.held = None
        self.current = version
        self.since_push = 0
        self.pushes += 1
        return version, str(path)

    def summary(self) -> dict:
        champ = self.champion()
        return {"current": self.current, "champion": champ.version if champ else None,
                "champion_path": champ.path if champ else None,
                "held": self.held[0] if self.held else None, "window_episodes": self.window, "margin": self.margin,
                "since_push": self.since_push, "rollbacks": self.rollbacks, "pushes": self.pushes,
                "skipped": self.skipped,
                "versions": {v: {"episodes": s.episodes, "success_rate": None if not s.episodes else round(s.rate, 3)}
                             for v, s in self.stats.items()}}
