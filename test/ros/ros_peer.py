"""Cross-process helpers for the agent-node tests and benchmark (real rclpy, real DDS).

* :class:`AgentProcess` runs ``python -m wsa_ros.ros.agent_node`` as a child process on its
  own ROS_DOMAIN_ID (loopback discovery only) with a parameter file written from a dict.
* :class:`Peer` is the other side: an rclpy node in a private context, spun in a
  background thread, that publishes camera frames / joint states / e-stops, records
  every command, action record, alpha and diagnostics message with its arrival time,
  and calls the agent's services and ``~/set_parameters``.

Every wait is bounded and says what it waited for when it gives up.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from wsa_ros.runtime.bundle import split_policy_id

ROOT = Path(__file__).resolve().parents[2]


def version_of(record) -> str:
    """The policy version an action record names (its frame_id is version@manifest sha256)."""
    return split_policy_id(record.header.frame_id)[0]


def ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def stop_child(proc, log, timeout: float) -> int | None:
    """SIGINT a node process, SIGKILL it after ``timeout`` s, close its log; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if not log.closed:
        log.close()
    return proc.returncode


class AgentProcess:
    """``agent_node`` in a child process. ``params`` become a ROS parameter file."""

    def __init__(self, domain_id: int, params: dict, namespace: str = "", name: str = "agent_node",
                 extra_args: tuple = (), log_dir: str | None = None, env: dict | None = None):
        self.domain_id = domain_id
        self.dir = Path(log_dir or tempfile.mkdtemp(prefix="agent_"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.params_file = self.dir / f"{name}{namespace.replace('/', '_')}.yaml"
        with open(self.params_file, "w") as f:
            yaml.safe_dump({"/**": {"ros__parameters": params}}, f)
        self.log_path = self.dir / f"{name}{namespace.replace('/', '_')}.log"
        cmd = [sys.executable, "-m", "wsa_ros.ros.agent_node", "--ros-args", "--params-file", str(self.params_file)]
        if namespace:
            cmd += ["-r", f"__ns:={namespace}"]
        if name != "agent_node":
            cmd += ["-r", f"__node:={name}"]
        cmd += list(extra_args)
        self.cmd = cmd
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env={**ros_env(domain_id), **(env or {})}, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop_child(self.proc, self._log, timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def wait_for(pred, timeout: float, what: str, interval: float = 0.01):
    """Poll ``pred`` until truthy (returned) or raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def rgb_frame(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A distinct, smooth-ish test frame per seed."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w])


class Peer:
    """The test's side of the wire."""

    def __init__(self, domain_id: int, agent: str = "/agent_node", command_topic: str = "/forward_command_controller/commands",
                 command_type: str = "float64_array", name: str = "peer"):
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.rclpy = rclpy
        self.agent = agent.rstrip("/")
        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.ctx)
        self.lock = threading.Lock()
        self.commands: list[tuple[float, object]] = []  # (arrival monotonic, msg)
        self.command_src: list[int] = []  # DDS source timestamp (ns) of each command: when the agent sent it
        self.command_rx: list[int] = []  # DDS reception timestamp (ns, system clock) of each command here
        self.record_rx: list[int] = []  # the same for each action record
        self.records: list[tuple[float, object]] = []
        self.alphas: list[tuple[float, object]] = []
        self.diag: dict[str, str] = {}
        self.diag_level = None
        self.diag_count = 0
        self._pubs: dict[str, object] = {}
        self._make_output_subs(command_topic, command_type)
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ plumbing
    def _spin(self):
        try:
            self.executor.spin()
        except Exception:  # noqa: BLE001 - context shut down at close
            pass

    def close(self):
        try:
            self.executor.shutdown(timeout_sec=1.0)
        finally:
            self.node.destroy_node()
            self.rclpy.shutdown(context=self.ctx)
            self._thread.join(timeout=2.0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _make_output_subs(self, command_topic, command_type):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float32MultiArray, Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        typ = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory, "twist": Twist,
               "twist_stamped": TwistStamped}[command_type]
        rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node

        def rec(lst):
            def cb(msg):
                t = time.monotonic()
                with self.lock:
                    lst.append((t, msg))
            return cb

        def on_cmd(msg, info):
            t = time.monotonic()
            with self.lock:
                self.commands.append((t, msg))
                self.command_src.append(int(info["source_timestamp"]))
                self.command_rx.append(int(info["received_timestamp"]))

        def on_record(msg, info):
            t = time.monotonic()
            with self.lock:
                self.records.append((t, msg))
                self.record_rx.append(int(info["received_timestamp"]))

        self.cmd_sub = n.create_subscription(typ, command_topic, on_cmd, rel)
        self.record_sub = n.create_subscription(JointState, f"{self.agent}/action_record", on_record, rel)
        self.alpha_sub = n.create_subscription(Float32MultiArray, f"{self.agent}/alpha", rec(self.alphas), rel)
        self.diag_sub = n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_diag(self, msg):
        for s in msg.status:
            if s.hardware_id == self.agent:
                with self.lock:
                    self.diag = {kv.key: kv.value for kv in s.values}
                    self.diag_level = s.level
                    self.diag_message = s.message
                    self.diag_count += 1

    # ------------------------------------------------------------------ publishing
    def publisher(self, topic: str, kind: str):
        """kind: image | compressed | joints | estop."""
        if topic in self._pubs:
            return self._pubs[topic]
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image, JointState
        from std_msgs.msg import Bool

        typ = {"image": Image, "compressed": CompressedImage, "joints": JointState, "estop": Bool}[kind]
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT if kind in ("image", "compressed")
                         else ReliabilityPolicy.RELIABLE)
        if kind == "estop":
            qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        p = self.node.create_publisher(typ, topic, qos)
        self._pubs[topic] = p
        return p

    def stamp_now(self):
        return self.node.get_clock().now().to_msg()

    def publish_image(self, topic: str, rgb: np.ndarray | None = None, encoding: str = "rgb8", stamp=None,
                      fields: dict | None = None, pad: int = 0):
        from sensor_msgs.msg import Image

        from wsa_ros.runtime.images import array_to_image_fields

        f = fields if fields is not None else array_to_image_fields(rgb, encoding, pad=pad)
        msg = Image(encoding=f["encoding"], height=f["height"], width=f["width"], step=f["step"],
                    is_bigendian=0)
        msg.data = f["data"]
        msg.header.stamp = stamp if stamp is not None else self.stamp_now()
        msg.header.frame_id = "camera"
        self.publisher(topic, "image").publish(msg)
        return msg.header.stamp

    def publish_compressed(self, topic: str, rgb: np.ndarray | None = None, fmt: str = "png", stamp=None,
                           raw: tuple[str, bytes] | None = None):
        from sensor_msgs.msg import CompressedImage

        from wsa_ros.runtime.images import array_to_compressed

        f, data = raw if raw is not None else array_to_compressed(rgb, fmt)
        msg = CompressedImage(format=f)
        msg.data = data
        msg.header.stamp = stamp if stamp is not None else self.stamp_now()
        self.publisher(topic, "compressed").publish(msg)
        return msg.header.stamp

    def publish_joints(self, topic: str, names, position, velocity=(), effort=(), stamp=None):
        from sensor_msgs.msg import JointState

        msg = JointState(name=list(names), position=[float(x) for x in position],
                         velocity=[float(x) for x in velocity], effort=[float(x) for x in effort])
        msg.header.stamp = stamp if stamp is not None else self.stamp_now()
        self.publisher(topic, "joints").publish(msg)
        return msg.header.stamp

    def publish_estop(self, topic: str, engaged: bool):
        from std_msgs.msg import Bool

        self.publisher(topic, "estop").publish(Bool(data=bool(engaged)))

    def wait_subscribed(self, topic: str, timeout: float = 20.0, count: int = 1):
        p = self._pubs[topic]
        wait_for(lambda: p.get_subscription_count() >= count, timeout,
                 f"{count} subscriber(s) (the agent) on {topic}")

    def wait_outputs_matched(self, timeout: float = 20.0):
        for s, what in ((self.cmd_sub, "command"), (self.record_sub, "action record")):
            wait_for(lambda s=s: s.get_publisher_count() > 0, timeout, f"the agent's {what} publisher")

    # ------------------------------------------------------------------ services
    def call(self, srv_type, name: str, request, timeout: float = 20.0):
        cli = self.node.create_client(srv_type, name)
        try:
            if not cli.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available after {timeout} s")
            fut = cli.call_async(request)
            wait_for(fut.done, timeout, f"a reply from {name}")
            return fut.result()
        finally:
            self.node.destroy_client(cli)

    def enable(self, on: bool = True, timeout: float = 20.0):
        from std_srvs.srv import SetBool

        return self.call(SetBool, f"{self.agent}/enable", SetBool.Request(data=on), timeout)

    def trigger(self, service: str, timeout: float = 20.0):
        from std_srvs.srv import Trigger

        return self.call(Trigger, f"{self.agent}/{service}", Trigger.Request(), timeout)

    def set_params(self, values: dict, timeout: float = 60.0):
        """``~/set_parameters``; returns the list of SetParametersResult."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(SetParameters, f"{self.agent}/set_parameters", req, timeout).results

    def get_params(self, names, timeout: float = 20.0):
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        res = self.call(GetParameters, f"{self.agent}/get_parameters", GetParameters.Request(names=list(names)),
                        timeout)
        return [parameter_value_to_python(v) for v in res.values]

    def describe_params(self, names, timeout: float = 20.0):
        from rcl_interfaces.srv import DescribeParameters

        res = self.call(DescribeParameters, f"{self.agent}/describe_parameters",
                        DescribeParameters.Request(names=list(names)), timeout)
        return {d.name: d for d in res.descriptors}

    # ------------------------------------------------------------------ reading
    def snapshot(self, which: str):
        with self.lock:
            return list(getattr(self, which))

    def diagnostics(self) -> dict:
        with self.lock:
            return dict(self.diag)

    def wait_diag(self, pred, timeout: float, what: str) -> dict:
        return wait_for(lambda: (lambda d: d if d and pred(d) else None)(self.diagnostics()), timeout, what)


def stamp_key(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Streamer:
    """Publishes frames on one or more camera topics (and joint states) at a fixed rate
    from a background thread until stopped; remembers the frames it sent by the header
    stamp (all cameras of one round share a stamp)."""

    def __init__(self, peer: Peer, cameras, joint_topic: str | None, rate_hz: float,
                 joint_names=("joint0", "joint1"), joint_pos=(0.1, -0.2), joint_vel=(0.0, 0.0),
                 frame_fn=None, size=(48, 64)):
        """``cameras``: list of (topic, kind) with kind image | bgr8 | compressed (png)."""
        self.peer, self.joint_topic = peer, joint_topic
        self.cameras_spec = [(c, "image") if isinstance(c, str) else tuple(c) for c in cameras]
        self.period = 1.0 / rate_hz
        self.joint_names, self.joint_pos, self.joint_vel = list(joint_names), list(joint_pos), list(joint_vel)
        self.frame_fn = frame_fn or (lambda i, cam: rgb_frame(i * 7 + cam, *size))
        self.sent: dict[int, tuple[int, float]] = {}  # stamp ns -> (round index, publish monotonic)
        self.frames: dict[int, list[np.ndarray]] = {}  # stamp ns -> frame per camera
        self.cameras = True
        self.joints = True
        self.last_image_pub: float | None = None
        self._stop = threading.Event()
        self._thread = None
        self._lock = threading.Lock()
        self.i = 0

    def start(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        nxt = time.monotonic()
        while not self._stop.is_set():
            self.publish_once()
            nxt += self.period
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    def publish_once(self):
        with self._lock:
            self.i += 1
            if self.joint_topic and self.joints:
                self.peer.publish_joints(self.joint_topic, self.joint_names, self.joint_pos, self.joint_vel)
            if self.cameras:
                imgs = [self.frame_fn(self.i, k) for k in range(len(self.cameras_spec))]
                stamp = self.peer.stamp_now()
                key = stamp_key(stamp)
                self.frames[key] = imgs
                t = time.monotonic()
                for (topic, kind), img in zip(self.cameras_spec, imgs):
                    if kind == "compressed":
                        self.peer.publish_compressed(topic, img, "png", stamp=stamp)
                    else:
                        self.peer.publish_image(topic, img, encoding="bgr8" if kind == "bgr8" else "rgb8",
                                                stamp=stamp)
                self.sent[key] = (self.i, t)
                self.last_image_pub = t

    def pause(self):
        """Hold the publishing thread (returns a context manager)."""
        return self._lock

    def stop(self):
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2.0)
