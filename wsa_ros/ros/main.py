"""The one ``main()`` of every node: start-up errors, signals, spinning, shutdown.

    sys.exit(run_node("agent_node", AgentNode, (ConfigError, BundleError, ...)))

* rclpy runs without its own signal handlers; SIGINT and SIGTERM (Ctrl-C, ``ros2 launch``,
  systemd) only set a flag that the loop checks between bounded ``spin_once`` waits, so a
  signal never lands inside a callback, and a node on sim time whose ``/clock`` stopped
  still notices it.
* A start-up error the user can cause (a bad parameter, a missing bundle) is one FATAL
  log line ``cannot start: <cause and fix>`` and exit code 1; no traceback.
* On the way out the node's ``close()`` runs first (the agent sends its last stop command,
  the learner flushes its store), then the executor and the context are shut down.
  Exit code 0.

A node may provide ``make_executor()`` (default: one ``SingleThreadedExecutor``) and a
``finished`` flag (a lifecycle node shut down through its ``change_state`` service sets it,
and the process ends, exit code 0).
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

SPIN_SLICE_S = 0.1


def run_node(name: str, make: Callable[[], object], start_errors: tuple = (), argv=None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    starting = [True]

    def on_signal(*_):
        stop.set()
        if starting[0]:  # asked to stop while still starting (a learner loading for 20 s): stop starting
            raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):  # SIGINT too when started with it ignored (nohup, `cmd &`)
        signal.signal(sig, on_signal)
    node = executor = None
    try:
        try:
            node = make()
        except start_errors as exc:
            rclpy.logging.get_logger(name).fatal(f"cannot start: {exc}")
            return 1
        finally:
            starting[0] = False
        executor = node.make_executor() if hasattr(node, "make_executor") else SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.is_set() and not getattr(node, "finished", False):
            executor.spin_once(timeout_sec=SPIN_SLICE_S)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None and hasattr(node, "close"):
            node.close()
        if executor is not None:
            executor.shutdown(timeout_sec=1.0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
