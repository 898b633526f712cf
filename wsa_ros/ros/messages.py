"""Message conversion for the nodes: numpy and plain values <-> standard ROS messages.

The only place the agent's outputs become messages and DDS message infos become plain
values; the cores (``wsa_ros.runtime.agent_core``, ``wsa_ros.learn.online``,
``wsa_ros.sim.arm``) never see a message class.
"""
from __future__ import annotations

from typing import Any

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Twist, TwistStamped
from sensor_msgs.msg import JointState
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Float32MultiArray, Float64MultiArray, MultiArrayDimension, UInt8MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from wsa_ros.runtime.stamps import split_ns

#: output_mode -> the command message type (what the controller subscribes to)
COMMAND_TYPES = {"float64_array": Float64MultiArray, "joint_trajectory": JointTrajectory, "twist": Twist,
                 "twist_stamped": TwistStamped}
LEVELS = {0: DiagnosticStatus.OK, 1: DiagnosticStatus.WARN, 2: DiagnosticStatus.ERROR}


def time_msg(ns: int) -> Time:
    sec, nanosec = split_ns(ns)
    return Time(sec=sec, nanosec=nanosec)


def duration_msg(ns: int) -> Duration:
    sec, nanosec = split_ns(ns)
    return Duration(sec=sec, nanosec=nanosec)


def publisher_info(info) -> tuple[str, int | None] | None:
    """rclpy's MessageInfo (a dict) -> (publisher gid, publication sequence number)."""
    try:
        seq = info.get("publication_sequence_number") if info else None
        gid = info.get("publisher_gid") if info else None
    except AttributeError:
        return None
    if seq is None:
        return None
    return str(gid.get("data") if isinstance(gid, dict) else gid), int(seq)


def command_msg(output_mode: str, values, joint_names: list[str], action_mode: str, period_ns: int,
                frame_id: str = "", stamp_ns: int = 0):
    """A command (joint units, bundle order) as the controller of ``output_mode`` takes it.
    joint_trajectory: one point at ``time_from_start = period`` (positions in position mode,
    velocities in velocity mode), header stamp 0 = start on receipt; twist(_stamped): the
    command is the [vx, vy, vz, wx, wy, wz] prefix."""
    v = [float(x) for x in values]
    if output_mode == "float64_array":
        return Float64MultiArray(data=v)
    if output_mode == "joint_trajectory":
        pt = JointTrajectoryPoint(time_from_start=duration_msg(period_ns))
        if action_mode == "position":
            pt.positions = v
        else:
            pt.velocities = v
        return JointTrajectory(joint_names=list(joint_names), points=[pt])
    six = v + [0.0] * (6 - len(v))
    tw = Twist()
    tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z = six
    if output_mode == "twist":
        return tw
    ts = TwistStamped(twist=tw)
    ts.header.stamp, ts.header.frame_id = time_msg(stamp_ns), frame_id
    return ts


def action_record_msg(stamp_ns: int, policy: str, joints: list[str], cmd, action_norm, action) -> JointState:
    """``~/action_record``: stamp = the frame acted on, frame_id = the acting policy's id
    (``<version>@<manifest sha256>``, ``wsa_ros.runtime.bundle.split_policy_id`` reads it), position =
    command sent, velocity = policy output in [-1, 1], effort = the policy's action (joint units)."""
    msg = JointState(name=list(joints), position=[float(x) for x in cmd],
                     velocity=[float(x) for x in action_norm], effort=[float(x) for x in action])
    msg.header.stamp, msg.header.frame_id = time_msg(stamp_ns), str(policy)
    return msg


def alpha_msg(names: list[str], alpha) -> Float32MultiArray:
    """``~/alpha``: one weight per feature encoder; ``layout.dim[0].label`` = the names."""
    msg = Float32MultiArray(data=[float(x) for x in alpha])
    msg.layout.dim = [MultiArrayDimension(label=",".join(names), size=len(msg.data), stride=len(msg.data))]
    return msg


def key_values(values) -> list[KeyValue]:
    items = values.items() if isinstance(values, dict) else values
    return [KeyValue(key=str(k), value=str(v)) for k, v in items]


def diagnostic_status(level: int, name: str, message: str, hardware_id: str, values: Any) -> DiagnosticStatus:
    return DiagnosticStatus(level=LEVELS.get(level, DiagnosticStatus.ERROR), name=name, message=message,
                            hardware_id=hardware_id, values=key_values(values))


def diagnostic_array(statuses: list[DiagnosticStatus], stamp_ns: int) -> DiagnosticArray:
    arr = DiagnosticArray(status=statuses)
    arr.header.stamp = time_msg(stamp_ns)
    return arr


#: ~/policy (the fine-tuner) -> policy_topic (the agents): reliable and transient local, depth 1, so an
#: agent that starts or comes back later still gets the newest validated bundle
POLICY_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: the agents' side: room for one sample from each of a few publishers arriving together (a
#: restarted agent gets every publisher's latched sample at once; with depth 1 a second publisher's,
#: a forged one's included, would displace the learner's before the agent took it)
POLICY_SUB_QOS = QoSProfile(depth=4, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


def bundle_msg(blob: bytes, label: str) -> UInt8MultiArray:
    """A packed bundle (``wsa_ros.runtime.transfer.pack_bundle``) as std_msgs/UInt8MultiArray."""
    m = UInt8MultiArray()
    m.layout.dim = [MultiArrayDimension(label=label, size=len(blob), stride=len(blob))]
    m.data = blob
    return m


def bundle_from_msg(m: UInt8MultiArray) -> tuple[bytes, str]:
    """(blob, label); a message without the one labelled dimension gets label '' (refused by the receiver)."""
    label = m.layout.dim[0].label if len(m.layout.dim) == 1 else ""
    return bytes(m.data), label
