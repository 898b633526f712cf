"""The agent's control thread: one bare rcl wait set instead of an rclpy executor.

rclpy's executors rebuild their wait set in Python on every wake-up and run each callback
through a task/coroutine wrapper; on the 2-core development machine that costs 0.3-0.8 ms
between a camera frame's DDS reception and its callback (``benchmarks/bench_agent.py``,
the echo "transport floor" with and without this loop). The control path needs none of
what an executor adds (callback groups, futures, services): it is a few subscriptions
and one timer, all served on one thread in a fixed order. So this loop keeps one wait set
and, after each wake-up, takes one message from every ready subscription in creation
order (so a joint state created before the cameras is stored before a frame's tick),
then runs the timer if it is due.

It serves every subscription and timer of the node it is given, including the ``/clock``
subscription rclpy adds for ``use_sim_time`` (timers on sim time work as under an
executor: rcl wakes the wait set when the clock jumps). Not served: guard conditions,
services, clients and waitables (QoS event callbacks) of that node - the agent's control
node has none of the first three, and the last only logs QoS incompatibilities, which
its main node reports too.

The wait set is rclpy's own (``rclpy.impl.implementation_singleton``), the object
``rclpy.wait_for_message`` uses. ``control_executor: rclpy`` in the agent config falls
back to rclpy's ``SingleThreadedExecutor`` should a future rclpy change it.
"""
from __future__ import annotations

import os
import signal
import threading
from typing import Callable

from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.guard_condition import GuardCondition
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.subscription import Subscription

WAKE_NS = 100_000_000  # the loop wakes at least this often (ns) even with nothing to do


class ControlLoop:
    """Serve ``node``'s subscriptions and timers from :meth:`spin` until :meth:`shutdown`."""

    def __init__(self, node, on_error: Callable[[str, BaseException], None] | None = None):
        self.node = node
        self.context = node.context
        self._on_error = on_error
        self._stop = threading.Event()
        self._wake = GuardCondition(None, None, context=self.context)
        self.context.on_shutdown(self._on_context_shutdown)

    def _on_context_shutdown(self) -> None:
        self._stop.set()
        try:
            self._wake.trigger()
        except Exception:  # noqa: BLE001 - the context may already be gone
            pass

    def spin(self) -> None:
        subs = list(self.node.subscriptions)
        timers = list(self.node.timers)
        message_only = [s._callback_type is Subscription.CallbackType.MessageOnly for s in subs]
        ws = _rclpy.WaitSet(len(subs), 1, len(timers), 0, 0, 0, self.context.handle)
        while not self._stop.is_set() and self.context.ok():
            ws.clear_entities()
            for s in subs:
                ws.add_subscription(s.handle)
            for t in timers:
                ws.add_timer(t.handle)
            ws.add_guard_condition(self._wake.handle)
            ws.wait(WAKE_NS)  # bounded: a signal handler on this thread still runs
            if self._stop.is_set() or not self.context.ok():
                break
            ready = ws.get_ready_entities("subscription")
            if ready:
                for s, only in zip(subs, message_only):
                    if s.handle.pointer in ready:
                        taken = s.handle.take_message(s.msg_type, s.raw)
                        if taken is not None:
                            self._call(s.callback, (taken[0],) if only else taken)
            ready = ws.get_ready_entities("timer")
            if ready:
                for t in timers:
                    if t.handle.pointer in ready and t.handle.is_timer_ready():
                        t.handle.call_timer()
                        self._call(t.callback, ())

    def _call(self, fn, args) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - the agent's callbacks guard themselves; this is a backstop
            if self._on_error is None:
                raise
            self._on_error(getattr(fn, "__name__", repr(fn)), exc)

    def shutdown(self, timeout_sec: float | None = None) -> None:
        """Stop :meth:`spin` (from any thread); it returns after the callback in progress."""
        self._on_context_shutdown()


class ControlThread:
    """``node`` served on a thread of its own from construction to :meth:`stop`: by a
    :class:`ControlLoop` (``kind`` waitset) or rclpy's ``SingleThreadedExecutor`` (rclpy). Should
    the loop itself fail (callbacks guard themselves), the process is taken down rather than
    left running without control."""

    def __init__(self, node, kind: str, on_error: Callable[[str, BaseException], None], log):
        if kind == "waitset":
            self.loop = ControlLoop(node, on_error=on_error)
        else:
            self.loop = SingleThreadedExecutor(context=node.context)
            self.loop.add_node(node)
        self.log = log
        self.thread = threading.Thread(target=self._spin, name="wsa-control", daemon=True)
        self.thread.start()

    def _spin(self) -> None:
        try:
            self.loop.spin()
        except ExternalShutdownException:
            pass
        except Exception as exc:  # noqa: BLE001 - callbacks are guarded; this is the loop itself
            self.log.fatal(f"control executor stopped: {type(exc).__name__}: {exc}")
            os.kill(os.getpid(), signal.SIGTERM)

    def stop(self) -> None:
        self.loop.shutdown(timeout_sec=1.0)
        self.thread.join(timeout=2.0)
