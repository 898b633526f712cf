"""What stands between the policy and the arm: pure, ROS-free logic.

* :func:`clamp` / :func:`scale` - policy range -> joint units, clamped to the bundle's bounds.
* :class:`RateLimiter` - at most ``max_rate * dt`` change per tick and joint.
* :class:`BlendIn` - after enabling, the command fades in from the stop command over
  ``duration`` seconds (position: from the measured pose; velocity: from zero).
* :func:`stop_command` - position mode holds a pose, velocity mode sends zeros.
* :class:`Watchdog` - every input stream must be younger than ``max_age``.
* :class:`Supervisor` - the enable / e-stop / watchdog state machine that ties the above
  together; the agent node calls it on every tick and on every operator request.

States (:class:`State`)::

    DISABLED --enable--> WAITING --all inputs fresh--> ACTIVE --input stale--> TRIPPED
        ^                   ^                            |                       |
        +------disable------+----------------------------+                       |
        |                   +-------------------enable (clears the latch)--------+
    e-stop (any state) -> ESTOP; releasing the e-stop leaves it latched until enable.

Only ACTIVE lets a policy action through. Once the supervisor has let an action
through ("owns" the controller), every tick outside ACTIVE yields the stop command, so a
forward_command_controller (which holds its last command forever) is always stopped
explicitly. Before the first action nothing is commanded at all.
The position hold target is captured when the stop begins (the last measured position,
else the last command) and kept for the whole stop, so a stopped arm is held where it
was, not chased after.
"""
from __future__ import annotations

import enum
import math
import threading
from dataclasses import dataclass, field

import numpy as np

MODES = ("position", "velocity")


# --------------------------------------------------------------------------- shaping
def scale(action_norm, low, high) -> np.ndarray:
    """Policy output in [-1, 1] -> joint units: ``low + (a + 1) / 2 * (high - low)``
    (the same formula the engine uses)."""
    a = np.asarray(action_norm, dtype=np.float64)
    lo = np.asarray(low, dtype=np.float64)
    hi = np.asarray(high, dtype=np.float64)
    return lo + (a + 1.0) * 0.5 * (hi - lo)


def clamp(action, low, high) -> tuple[np.ndarray, int]:
    """Clamp to ``[low, high]`` per joint; returns (clamped copy, number of joints changed).
    Raises ValueError on NaN/inf, which must be rejected, never clamped into range."""
    a = np.asarray(action, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"action is not finite: {a.tolist()}")
    out = np.minimum(np.maximum(a, low), high)
    return out, int(np.count_nonzero(out != a))


def stop_command(mode: str, hold_position=None, dim: int | None = None) -> np.ndarray | None:
    """The command that stops the arm: position mode -> ``hold_position`` (None when no
    position is known, i.e. nothing safe to send); velocity mode -> zeros."""
    if mode == "velocity":
        n = dim if dim is not None else len(hold_position)
        return np.zeros(int(n), dtype=np.float64)
    if mode == "position":
        if hold_position is None:
            return None
        return np.array(hold_position, dtype=np.float64)
    raise ValueError(f"action mode '{mode}' is not one of {MODES}")


class RateLimiter:
    """Limits the change between consecutive commands to ``max_rate * dt`` per joint
    (``max_rate`` scalar or per joint, in action units per second; 0 or inf disables).
    ``dt`` is the time since the previous command, capped at ``max_dt`` so a gap in
    the stream never buys a bigger jump."""

    def __init__(self, max_rate, max_dt: float):
        r = np.asarray(max_rate, dtype=np.float64)
        if np.any(r < 0) or np.any(np.isnan(r)):
            raise ValueError(f"max_rate must be >= 0, got {max_rate}")
        self.max_rate = r
        self.max_dt = float(max_dt)
        self.prev: np.ndarray | None = None
        self._enabled = bool(np.any((r > 0) & np.isfinite(r)))  # a new limiter for a new rate

    @property
    def enabled(self) -> bool:
        return self._enabled

    def reset(self, value=None) -> None:
        self.prev = None if value is None else np.array(value, dtype=np.float64)

    def __call__(self, target, dt: float) -> np.ndarray:
        t = np.asarray(target, dtype=np.float64)
        if self.prev is None or not self.enabled:
            self.prev = t.copy()
            return t.copy()
        dt = min(max(float(dt), 0.0), self.max_dt)
        rate = np.where((self.max_rate > 0) & np.isfinite(self.max_rate), self.max_rate, np.inf)
        step = rate * dt
        out = self.prev + np.clip(t - self.prev, -step, step)
        self.prev = out
        return out.copy()


class BlendIn:
    """``factor(now)`` ramps linearly 0 -> 1 over ``duration`` seconds from ``start``;
    ``duration`` 0 means 1 at once."""

    def __init__(self, duration: float):
        self.duration = max(0.0, float(duration))
        self.t0: float | None = None

    def start(self, now: float) -> None:
        self.t0 = float(now)

    def factor(self, now: float) -> float:
        if self.duration <= 0 or self.t0 is None:
            return 1.0
        return float(min(1.0, max(0.0, (now - self.t0) / self.duration)))

    def apply(self, target, origin, now: float) -> np.ndarray:
        b = self.factor(now)
        t = np.asarray(target, dtype=np.float64)
        if b >= 1.0:
            return t.copy()
        o = np.asarray(origin, dtype=np.float64)
        return o + b * (t - o)


# --------------------------------------------------------------------------- watchdog
class Watchdog:
    """Freshness of every input stream. ``problems(now, stamps)`` lists, per stream,
    why it cannot be acted on: never received, older than ``max_age`` (the stream
    stopped or lags), or stamped in the future by more than ``max_age`` (clock skew)."""

    def __init__(self, streams, max_age: float):
        self.streams = list(streams)
        self.max_age = float(max_age)

    def age(self, now: float, stamp: float | None) -> float | None:
        return None if stamp is None else float(now) - float(stamp)

    def problems(self, now: float, stamps: dict) -> list[str]:
        out = []
        for s in self.streams:
            st = stamps.get(s)
            if st is None:
                out.append(f"{s}: no data received")
                continue
            age = float(now) - float(st)
            if not math.isfinite(age):
                out.append(f"{s}: stamp is not finite")
            elif age > self.max_age:
                out.append(f"{s}: newest data is {age * 1e3:.0f} ms old (max {self.max_age * 1e3:.0f} ms)")
            elif age < -self.max_age:
                out.append(f"{s}: stamp is {-age * 1e3:.0f} ms in the future (clock skew?)")
        return out


# --------------------------------------------------------------------------- state machine
class State(str, enum.Enum):
    DISABLED = "disabled"
    WAITING = "waiting"  # enabled, waiting for every input to be fresh
    ACTIVE = "active"
    TRIPPED = "tripped"  # watchdog latched
    ESTOP = "estop"  # e-stop latched

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


@dataclass
class Decision:
    """What a tick may do: ``act`` -> run the policy and ``shape`` its action;
    otherwise publish ``stop`` when it is not None (the supervisor owns the controller)."""

    act: bool
    stop: np.ndarray | None
    state: State
    reason: str
    changed: bool = False  # the state changed during this update (log it)
    epoch: int = 0  # activation counter; an action computed in an older epoch is void


@dataclass
class Transition:
    state: State
    reason: str
    stop: np.ndarray | None = None  # stop command to publish right away (if owning)


@dataclass
class SupervisorConfig:
    mode: str  # position | velocity
    low: list[float]
    high: list[float]
    max_age: float
    period: float  # control period (s): rate-limit dt cap
    max_rate: float = 0.0  # action units / s; 0 = off
    blend_in_s: float = 0.0
    start_enabled: bool = False
    streams: list[str] = field(default_factory=list)


class Supervisor:
    """The enable / e-stop / watchdog state machine plus action shaping. Thread-safe:
    operator requests (service, e-stop topic) may come from other threads than the tick.

    Tick protocol::

        d = sup.update(now, stamps, measured)     # watchdog + state
        if d.act:
            cmd = sup.shape(action, now, measured, d.epoch)   # None: state changed meanwhile
        elif d.stop is not None:
            publish(d.stop)
    """

    def __init__(self, cfg: SupervisorConfig):
        if cfg.mode not in MODES:
            raise ValueError(f"action mode '{cfg.mode}' is not one of {MODES}")
        self.cfg = cfg
        self.low = np.asarray(cfg.low, dtype=np.float64)
        self.high = np.asarray(cfg.high, dtype=np.float64)
        if self.low.shape != self.high.shape or np.any(self.low >= self.high):
            raise ValueError("action bounds: low must be below high for every joint")
        self.dim = int(self.low.shape[0])
        self.watchdog = Watchdog(cfg.streams, cfg.max_age)
        self.limiter = RateLimiter(cfg.max_rate, cfg.period)
        self.blend = BlendIn(cfg.blend_in_s)
        self._lock = threading.RLock()
        self.state = State.WAITING if cfg.start_enabled else State.DISABLED
        self.reason = "start_enabled: waiting for fresh inputs" if cfg.start_enabled else \
            "disabled at start; call ~/enable"
        self.estop_engaged = False
        self.owns = False  # has let an action through: from now on stops are published
        self.epoch = 0
        self.trips = 0
        self.clamped = 0
        self._hold: np.ndarray | None = None  # position hold target of the current stop
        self._origin: np.ndarray | None = None  # blend-in origin
        self._last_cmd: np.ndarray | None = None
        self._last_cmd_t: float | None = None

    # ------------------------------------------------------------------ runtime settings
    def set_max_age(self, max_age: float) -> None:
        with self._lock:
            self.cfg.max_age = float(max_age)
            self.watchdog.max_age = float(max_age)

    def set_max_rate(self, max_rate: float) -> None:
        with self._lock:
            self.cfg.max_rate = float(max_rate)
            prev = self.limiter.prev
            self.limiter = RateLimiter(max_rate, self.cfg.period)
            self.limiter.prev = prev

    def set_blend_in(self, seconds: float) -> None:
        with self._lock:
            self.cfg.blend_in_s = float(seconds)
            t0 = self.blend.t0
            self.blend = BlendIn(seconds)
            self.blend.t0 = t0

    # ------------------------------------------------------------------ helpers
    def _stop_cmd(self) -> np.ndarray | None:
        if not self.owns:
            return None
        return stop_command(self.cfg.mode, self._hold, self.dim)

    def _begin_stop(self, measured) -> None:
        """Capture the position hold target when a stop begins."""
        if measured is not None and np.all(np.isfinite(measured)):
            self._hold = np.array(measured, dtype=np.float64)
        elif self._last_cmd is not None:
            self._hold = self._last_cmd.copy()
        self.epoch += 1

    def _goto(self, state: State, reason: str, measured=None) -> None:
        was_active = self.state == State.ACTIVE
        self.state = state
        self.reason = reason
        if was_active and state != State.ACTIVE:
            self._begin_stop(measured)

    # ------------------------------------------------------------------ operator requests
    def enable(self, on: bool, now: float, measured=None, reason: str = "disabled by operator") -> tuple[bool, str]:
        """``~/enable`` (SetBool). Enabling clears the watchdog / e-stop latch and waits for
        fresh inputs; refused while the e-stop is engaged. Returns (success, message);
        ``reason`` is the state's reason after disabling."""
        with self._lock:
            if not on:
                if self.state == State.DISABLED:
                    self.reason = reason
                    return True, "already disabled"
                self._goto(State.DISABLED, reason, measured)
                return True, "disabled"
            if self.estop_engaged:
                return False, "refused: the e-stop is engaged; release it (publish false) first"
            if self.state in (State.ACTIVE, State.WAITING):
                return True, f"already enabled ({self.state.value})"
            cleared = f" (cleared latch: {self.reason})" if self.state in (State.TRIPPED, State.ESTOP) else ""
            self._goto(State.WAITING, "enabled: waiting for fresh inputs")
            return True, "enabled; acting once every input is fresh" + cleared

    def estop(self, engaged: bool, measured=None) -> Transition | None:
        """The e-stop topic. Engaging latches ESTOP at once (and returns the stop command to
        publish immediately); releasing only allows a later enable. Returns the transition,
        or None when nothing changed."""
        with self._lock:
            engaged = bool(engaged)
            if engaged == self.estop_engaged:
                return None
            self.estop_engaged = engaged
            if engaged:
                if self.state != State.ESTOP:
                    self._goto(State.ESTOP, "e-stop engaged", measured)
                return Transition(self.state, self.reason, self._stop_cmd())
            if self.state == State.ESTOP:
                self.reason = "e-stop released; latched until ~/enable"
            return Transition(self.state, self.reason)

    # ------------------------------------------------------------------ the tick
    def update(self, now: float, stamps: dict, measured=None) -> Decision:
        """Run the watchdog and the state machine for one tick."""
        with self._lock:
            changed = False
            if self.state in (State.ACTIVE, State.WAITING):
                problems = self.watchdog.problems(now, stamps)
                if self.state == State.ACTIVE and problems:
                    self.trips += 1
                    self._goto(State.TRIPPED, "watchdog: " + "; ".join(problems), measured)
                    changed = True
                elif self.state == State.WAITING:
                    if problems:
                        self.reason = "enabled, waiting: " + "; ".join(problems)
                    else:
                        self._activate(now, measured)
                        changed = True
            if self.state == State.ACTIVE:
                return Decision(True, None, self.state, self.reason, changed, self.epoch)
            return Decision(False, self._stop_cmd(), self.state, self.reason, changed, self.epoch)

    def _activate(self, now: float, measured) -> None:
        self.state = State.ACTIVE
        self.reason = "acting"
        self.epoch += 1
        if self.cfg.mode == "velocity":
            origin = np.zeros(self.dim)
        elif measured is not None and np.all(np.isfinite(measured)):
            origin = np.array(measured, dtype=np.float64)
        else:
            origin = self._last_cmd.copy() if self._last_cmd is not None else None
        self._origin = origin
        self.limiter.reset(origin)
        self.blend.start(now)
        self._last_cmd_t = None

    def shape(self, action, now: float, epoch: int | None = None) -> np.ndarray | None:
        """Policy action (joint units) -> the command to send: clamp to bounds, blend in
        after enabling, rate-limit against the previous command. Returns None when the
        state left ACTIVE (or a new activation began) since the tick's ``update``, so an
        action computed before an e-stop is never sent. Raises ValueError on NaN/inf."""
        with self._lock:
            if self.state != State.ACTIVE or (epoch is not None and epoch != self.epoch):
                return None
            target, n = clamp(action, self.low, self.high)
            if n:
                self.clamped += 1
            if self._origin is not None:
                target = self.blend.apply(target, self._origin, now)
            dt = self.cfg.period if self._last_cmd_t is None else now - self._last_cmd_t
            cmd = self.limiter(target, dt)
            self._last_cmd = cmd.copy()
            self._last_cmd_t = now
            self.owns = True
            return cmd

    def reject(self, reason: str, measured=None) -> np.ndarray | None:
        """A tick whose action was rejected (non-finite policy output, engine error): the
        stop command for this tick (when owning); the state is unchanged, so the next good
        tick acts again, rate-limited from the stop."""
        with self._lock:
            if self.state != State.ACTIVE or not self.owns:
                return None
            if self.cfg.mode == "velocity":
                cmd = np.zeros(self.dim)
            elif self._last_cmd is not None:
                cmd = self._last_cmd.copy()  # hold the last commanded pose
            elif measured is not None and np.all(np.isfinite(measured)):
                cmd = np.array(measured, dtype=np.float64)
            else:
                return None
            self.limiter.reset(cmd)
            self._last_cmd = cmd.copy()
            self._last_cmd_t = None
            return cmd

    def snapshot(self) -> dict:
        with self._lock:
            return {"state": self.state.value, "reason": self.reason, "estop_engaged": self.estop_engaged,
                    "owns": self.owns, "trips": self.trips, "clamped": self.clamped, "epoch": self.epoch}
