"""``finetune_node``: the ROS wiring of :class:`wsa_ros.learn.online.OnlineLearner`.

Per robot namespace ``ns`` (parameter ``namespaces``) it subscribes to ``ns + <topic>`` of
camera_topics (sensor_msgs/Image, or CompressedImage for topics ending in /compressed),
joint_states_topic, action_record_topic (sensor_msgs/JointState), reward_topic
(std_msgs/Float64), success_topic (std_msgs/Bool), episode_end_topic (std_msgs/String) and
intervention_topic (sensor_msgs/JointState); each callback only queues the message with its
DDS source and reception timestamps. Each validated policy goes to ``ns + agent_node``
through its ``~/set_parameters`` service (``bundle``), asynchronously: a dead or slow agent
is logged, never waited on, and the agent never waits for the learner. With ``push_via: topic``
the bundle itself is published on ``~/policy`` (std_msgs/UInt8MultiArray, reliable, transient
local; ``wsa_ros.runtime.transfer``) for agents whose ``policy_topic`` names it: no path and no
shared filesystem between the machines.

Outputs: ``~/status`` (std_msgs/String, JSON) every status_period_s; CSV and TensorBoard logs
under ``<out_dir>/logs``. Service ``~/export_now`` (std_srvs/Trigger).

A managed node (``wsa_ros.ros.managed``; ``lifecycle_msgs`` services ``~/change_state``, ...):
the learner, its store and every topic above exist from configure to cleanup; it trains,
exports and pushes only while active; ``autostart`` says how far it goes by itself.
"""
from __future__ import annotations

import json
import sys

from rcl_interfaces.msg import Parameter as ParameterMsg
from rcl_interfaces.msg import ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64, String, UInt8MultiArray
from std_srvs.srv import Trigger

from wsa_ros.config import ConfigError, FinetuneConfig, join_ns
from wsa_ros.learn.store import StoreError
from wsa_ros.ros.main import run_node
from wsa_ros.ros.managed import LifecycleError, ManagedNode
from wsa_ros.ros.messages import POLICY_QOS, bundle_msg, publisher_info
from wsa_ros.ros.params import declare_config
from wsa_ros.runtime.bundle import BundleError
from wsa_ros.runtime.engine import EngineError
from wsa_ros.runtime.images import is_compressed_topic


def _dds_times(info) -> tuple[int | None, int | None]:
    try:
        return int(info["source_timestamp"]), int(info["received_timestamp"])
    except (KeyError, TypeError, ValueError):
        return None, None


class FinetuneNode(ManagedNode):
    """A managed node (``wsa_ros.ros.managed``): configure loads the bundle and the learner,
    opens the store and subscribes (from then on every transition is stored); activate trains,
    exports and pushes; deactivate pauses training after the update in progress (transitions are
    still stored, ``~/status`` says ``training: false``); cleanup and shutdown flush the store,
    write the last checkpoint and release everything."""

    def __init__(self):
        super().__init__(FinetuneConfig.NODE)
        self.cfg = declare_config(self, FinetuneConfig)
        self.learner = None
        self._agents: dict = {}
        self._pub_policy = self._pub_status = None
        self.autostart(self.cfg.autostart)

    # ------------------------------------------------------------------ lifecycle (ros.managed)
    def _do_configure(self) -> None:
        cfg, log = self.cfg, self.get_logger()
        # imported here, after ros.main took the signals: torch alone takes seconds to import, and a
        # SIGINT in that time must still end the node cleanly
        from wsa_ros.learn.online import OnlineLearner

        self.learner = OnlineLearner(cfg, push=self._push, log=log.info, error=log.error)
        cams = self.learner.bundle.cameras
        best_effort = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=30, reliability=ReliabilityPolicy.BEST_EFFORT)
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200, reliability=ReliabilityPolicy.RELIABLE)
        for ns, src in zip(cfg.namespaces, self.learner.sources):
            for cam, topic in zip(cams, cfg.camera_topics):
                comp = is_compressed_topic(join_ns(ns, topic))
                self._sub(CompressedImage if comp else Image, join_ns(ns, topic), src, "frame", best_effort,
                          lambda m, cam=cam, comp=comp: (cam, comp, m))
            for kind, typ, topic, qos, payload in (
                    ("joints", JointState, cfg.joint_states_topic, best_effort, lambda m: (m,)),
                    ("record", JointState, cfg.action_record_topic, reliable, lambda m: (m,)),
                    ("reward", Float64, cfg.reward_topic, reliable, lambda m: (float(m.data),)),
                    ("success", Bool, cfg.success_topic, reliable, lambda m: (bool(m.data),)),
                    ("end", String, cfg.episode_end_topic, reliable, lambda m: (str(m.data),)),
                    ("teleop", JointState, cfg.intervention_topic, best_effort, lambda m: (m,))):
                self._sub(typ, join_ns(ns, topic), src, kind, qos, payload)
        for agent in self.learner.agents:
            self._agents[agent] = self.create_client(SetParameters, f"{agent}/set_parameters")
        # publishers: released after the learner (an export finishing during cleanup still pushes)
        self._pub_policy = self.create_publisher(UInt8MultiArray, "~/policy", POLICY_QOS) \
            if cfg.push_via == "topic" else None
        self._pub_status = self.create_publisher(String, "~/status", QoSProfile(depth=10))
        self.own(self.create_service(Trigger, "~/export_now", self._on_export_now))
        self.own(self.create_timer(cfg.status_period_s, self._publish_status))
        self.learner.start(training=False)
        log.info(f"finetune configured: robots {self.learner.sources}, agents {self.learner.agents}, encoders on "
                 f"{self.learner.engine.provider}, learner on {cfg.learner.device}, out_dir "
                 f"{self.learner.trainer.out_dir}; storing transitions, training from activate")

    def _do_activate(self) -> str:
        return self.learner.set_training(True)

    def _do_deactivate(self) -> str:
        return self.learner.set_training(False)

    def _do_release(self) -> None:
        """After the subscriptions, service and timer: the learner (its threads stop, an export
        under way finishes and pushes, the store is flushed, the checkpoint written), then the
        push clients and the publishers."""
        if self.learner is not None:
            self.learner.close()
            self.learner = None
        for client in self._agents.values():
            self.destroy_client(client)
        self._agents = {}
        for pub in (self._pub_policy, self._pub_status):
            if pub is not None:
                self.destroy_publisher(pub)
        self._pub_policy = self._pub_status = None

    def _sub(self, typ, topic: str, source: str, kind: str, qos, payload) -> None:
        def cb(msg, info):
            src, rcv = _dds_times(info)
            learner = self.learner
            if learner is not None:
                learner.put(source, kind, payload(msg), src, rcv, publisher_info(info) if kind == "record" else None)
        self.own(self.create_subscription(typ, topic, cb, qos))

    # ------------------------------------------------------------------ pushes
    def _push(self, version: str, path: str) -> None:
        """Called by the learner's export thread with a validated bundle."""
        if self._pub_policy is not None:  # push_via topic: the bundle itself, to every agent at once
            from wsa_ros.runtime.signing import manifest_sha256
            from wsa_ros.runtime.transfer import pack_bundle

            blob, label = pack_bundle(path)
            digest = manifest_sha256(path)
            for agent in self._agents:
                self.learner.push_sent(agent, version, digest)
            self._pub_policy.publish(bundle_msg(blob, label))
            self.get_logger().info(f"published {version} on {self._pub_policy.topic_name} ({len(blob) / 1e6:.2f} MB)")
            return
        value = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=path)
        for agent, client in self._agents.items():
            rec = self.learner.push_sent(agent, version)
            if not client.service_is_ready():
                self.learner.pushed(rec, False, "agent not available", path)
                continue
            fut = client.call_async(SetParameters.Request(parameters=[ParameterMsg(name="bundle", value=value)]))
            fut.add_done_callback(lambda f, rec=rec: self._answered(f, rec, path))

    def _answered(self, fut, rec: dict, path: str) -> None:
        try:
            res = fut.result().results[0]
            ok, reason = bool(res.successful), res.reason
        except Exception as exc:  # noqa: BLE001 - cancelled / service gone
            ok, reason = False, str(exc)
        learner = self.learner
        if learner is not None:  # None: released by a cleanup meanwhile
            learner.pushed(rec, ok, reason, path)

    # ------------------------------------------------------------------ services, status
    def _on_export_now(self, req, resp):
        learner = self.learner
        resp.success = learner is not None
        resp.message = learner.request_export() if learner is not None else "not configured (lifecycle)"
        return resp

    def _publish_status(self) -> None:
        learner = self.learner
        if learner is None:  # released by a cleanup since the timer fired
            return
        try:
            self._pub_status.publish(String(data=json.dumps(learner.status(), default=str)))
        except Exception as exc:  # noqa: BLE001 - never let a status hiccup take the node down
            self.get_logger().warning(f"status: {exc}", throttle_duration_sec=10.0)


def main(argv=None) -> int:
    """Entry point ``finetune_node`` (``ros2 run wsa_ros finetune_node --ros-args --params-file ...``).
    Every callback only queues or flips a flag (the work runs on the learner's threads), so one
    executor thread serves them: rclpy's multi-threaded executor took about 45 % of this
    process's CPU in the demo (py-spy), and the learner's updates nearly doubled without it."""
    return run_node(FinetuneConfig.NODE, FinetuneNode, (ConfigError, BundleError, EngineError, StoreError, OSError,
                                                         LifecycleError), argv)


if __name__ == "__main__":
    sys.exit(main())
