"""The one lifecycle rule of the package's nodes (``agent_node``, ``finetune_node``).

Both are ROS 2 managed nodes (``rclpy.lifecycle.LifecycleNode``): the standard
``lifecycle_msgs`` services under ``<node>/`` (``change_state``, ``get_state``, ...) that
``ros2 lifecycle set``, nav2's lifecycle manager and launch's lifecycle events use drive them.

* **configure** (``_do_configure``): load and check what the node runs (bundle, store), create
  its topics, services and threads; a failure is logged with its cause and the node stays
  unconfigured (FAILURE), holding nothing;
* **activate** / **deactivate** (``_do_activate`` / ``_do_deactivate``): act / stop acting, and
  hold;
* **cleanup** / **shutdown** (``_do_release``, after ``_do_final`` for shutdown): release every
  entity and thread configure made; after shutdown the process ends (``ros.main`` watches
  ``finished``), exit code 0;
* an error inside a transition: ``_do_final`` and ``_do_release``, back to unconfigured.

``autostart`` (the node's parameter: active | inactive | unconfigured) says how far the node
takes itself at start-up; at start-up a configure that fails raises its error, so
``ros.main`` ends the process with ``cannot start: <cause>`` and exit code 1, as a plain node.
A transition callback never raises into rclpy (which would swallow the error): it is logged.
"""
from __future__ import annotations

from rclpy.lifecycle import LifecycleNode, TransitionCallbackReturn
from rclpy.publisher import Publisher
from rclpy.service import Service
from rclpy.subscription import Subscription
from rclpy.timer import Timer

OK, FAILURE, ERROR = TransitionCallbackReturn.SUCCESS, TransitionCallbackReturn.FAILURE, TransitionCallbackReturn.ERROR


class LifecycleError(RuntimeError):
    """A start-up transition (autostart) that failed without a more specific error."""


class ManagedNode(LifecycleNode):
    """Subclasses implement ``_do_configure()`` (raises on failure), ``_do_activate()``,
    ``_do_deactivate()`` (each returns what happened, for the log), ``_do_release()``
    (idempotent) and ``_do_final()`` (the last words before a release at shutdown or exit:
    returns what was done or ""), create what configure makes through :meth:`own`, and call
    :meth:`autostart` at the end of their constructor."""

    def __init__(self, name: str):
        super().__init__(name)
        self._owned: list = []  # this node's entities made by configure, released by cleanup
        self.start_error: BaseException | None = None  # why the last configure failed
        self.finished = False  # shut down through the lifecycle: ros.main ends the process
        self._autostarting = False

    # ------------------------------------------------------------------ start-up
    def autostart(self, target: str) -> None:
        if target == "unconfigured":
            self.get_logger().info(f"unconfigured (autostart: unconfigured): configure and activate with "
                                   f"lifecycle_msgs/srv/ChangeState on {self.get_fully_qualified_name()}/change_state")
            return
        self._autostarting = True
        try:
            if self.trigger_configure() != OK:
                raise self.start_error or LifecycleError("configure failed (see the log above)")
            if target == "active" and self.trigger_activate() != OK:
                raise LifecycleError("activate failed (see the log above)")
        except BaseException:
            self._release_all()
            self.destroy_node()
            raise
        finally:
            self._autostarting = False

    def own(self, entity):
        """An entity of this node made by configure (subscription, publisher, service, timer)."""
        self._owned.append(entity)
        return entity

    # ------------------------------------------------------------------ transitions
    def on_configure(self, state) -> TransitionCallbackReturn:
        self.start_error = None
        try:
            self._do_configure()
            return OK
        except Exception as exc:  # noqa: BLE001 - back to unconfigured, named
            self.start_error = exc
            self._release_all()
            if not self._autostarting:  # at start-up the error ends the process as "cannot start: ..."
                self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            return FAILURE

    def on_activate(self, state) -> TransitionCallbackReturn:
        return self._transition("activate", self._do_activate)

    def on_deactivate(self, state) -> TransitionCallbackReturn:
        return self._transition("deactivate", self._do_deactivate)

    def on_cleanup(self, state) -> TransitionCallbackReturn:
        return self._transition("cleanup", lambda: self._release_all() or "released everything configure made")

    def on_shutdown(self, state) -> TransitionCallbackReturn:
        def shut():
            said = self._do_final()
            self._release_all()
            self.finished = True
            return f"finalized from {state.label}{'; ' + said if said else ''}; exiting"
        return self._transition("shutdown", shut)

    def on_error(self, state) -> TransitionCallbackReturn:
        self.get_logger().error(f"error in a transition from {state.label}: releasing; the node is unconfigured")
        try:
            self._do_final()
        finally:
            self._release_all()
        return OK  # -> unconfigured

    def _transition(self, name: str, fn) -> TransitionCallbackReturn:
        try:
            self.get_logger().info(f"lifecycle {name}: {fn()}")
            return OK
        except Exception as exc:  # noqa: BLE001 - logged here: rclpy would only return ERROR
            self.get_logger().error(f"lifecycle {name} failed: {type(exc).__name__}: {exc}")
            return ERROR

    def _release_all(self) -> None:
        """This node's entities first (no callback starts after this), then the subclass's own."""
        destroy = {Subscription: self.destroy_subscription, Service: self.destroy_service,
                   Publisher: self.destroy_publisher, Timer: self.destroy_timer}
        for ent in reversed(self._owned):
            next(fn for cls, fn in destroy.items() if isinstance(ent, cls))(ent)
        self._owned.clear()
        self._do_release()

    # ------------------------------------------------------------------ the process (ros.main)
    def close(self) -> None:
        """At exit (a signal): the last words, then everything released."""
        said = self._do_final()
        if said:
            self.get_logger().info(f"shutting down: {said}")
        self._release_all()

    # ------------------------------------------------------------------ for subclasses
    def _do_configure(self) -> None:
        raise NotImplementedError

    def _do_activate(self) -> str:
        raise NotImplementedError

    def _do_deactivate(self) -> str:
        raise NotImplementedError

    def _do_release(self) -> None:
        raise NotImplementedError

    def _do_final(self) -> str:
        return ""
