"""ROS-free simulated arms (MuJoCo through gymnasium), rendered on the CPU."""
from wsa_ros.sim.reacher import (
    ACTION_HIGH,
    ACTION_LOW,
    ARM_STARTS,
    JOINT_NAMES,
    SUCCESS_RADIUS,
    ReacherSim,
    expert_action,
    inverse_kinematics,
)

__all__ = [
    "ACTION_HIGH",
    "ACTION_LOW",
    "ARM_STARTS",
    "JOINT_NAMES",
    "SUCCESS_RADIUS",
    "ReacherSim",
    "expert_action",
    "inverse_kinematics",
]
