"""One configuration schema for nodes, launch files and command-line tools.

Each section is a dataclass; every field carries its type, default, help text and (for
numbers) an allowed range or (for strings) a set of choices. The YAML files in ``config/``
are ordinary ROS 2 parameter files::

    agent_node:
      ros__parameters:
        bundle: models/default
        control_rate_hz: 30.0

The launch file hands them to the node, the node declares one typed, range-checked ROS
parameter per field (``wsa_ros.ros.params``), and the command-line tools read the very
same file with :func:`load`. Nothing in a config file is executed: it is parsed with
``yaml.safe_load`` and every value is type- and range-checked here.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names file, key and fix."""


def param(default, help: str, lo: float | None = None, hi: float | None = None,
          choices: tuple[str, ...] | None = None):
    """A schema field. Lists need a factory so instances never share one list."""
    meta = {"help": help, "lo": lo, "hi": hi, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls, help: str):
    """A nested section (a dataclass of params), e.g. ``learner: SACConfig``; its fields are
    ROS parameters ``<name>.<field>`` and a nested mapping in the YAML files."""
    return field(default_factory=cls, metadata={"help": help, "section": cls})


def autostart_param(configure: str, activate: str):
    """The one ``autostart`` setting of the managed nodes (``wsa_ros.ros.managed``)."""
    return param(
        "active",
        f"How far the managed (lifecycle) node takes itself at start-up: active = configure ({configure}) and "
        f"activate ({activate}); inactive = configure only, holding until a lifecycle activate; unconfigured = "
        "nothing until a lifecycle configure (lifecycle_msgs/srv/ChangeState on <node>/change_state, as "
        "`ros2 lifecycle set` and launch use).",
        choices=("active", "inactive", "unconfigured"))


# --------------------------------------------------------------------------- sections
@dataclass
class AgentConfig:
    """Parameters of ``agent_node``."""

    NODE = "agent_node"

    bundle: str = param("", "Model bundle folder; empty = the package's shipped models/default.")
    camera_topics: list[str] = param(
        ["/camera/image_raw"],
        "One topic per camera the bundle reads, in the bundle's camera order. A topic ending in "
        "'/compressed' is subscribed as sensor_msgs/CompressedImage, any other as sensor_msgs/Image.")
    joint_states_topic: str = param("/joint_states", "sensor_msgs/JointState input.")
    control_rate_hz: float = param(30.0, "Control tick rate.", 1.0, 1000.0)
    max_obs_age_s: float = param(
        0.25, "An observation older than this (camera or joints) trips the watchdog.", 0.001, 10.0)
    output_mode: str = param(
        "float64_array",
        "float64_array: std_msgs/Float64MultiArray for forward_command_controller; joint_trajectory: "
        "trajectory_msgs/JointTrajectory with one point at now + period; twist / twist_stamped: "
        "geometry_msgs for servoing (action = [vx, vy, vz, wx, wy, wz] prefix).",
        choices=("float64_array", "joint_trajectory", "twist", "twist_stamped"))
    command_topic: str = param("/forward_command_controller/commands", "Where commands are published.")
    command_frame_id: str = param("base_link", "frame_id for stamped outputs (twist_stamped).")
    max_rate: float = param(
        0.0, "Per-joint rate limit in action units per second (position: rad/s, velocity: rad/s^2); "
        "0 disables.", 0.0, 1e6)
    trigger: str = param(
        "timer",
        "timer: act every 1/control_rate_hz on the newest frame and joint state (fixed cadence); "
        "camera: act as soon as a new frame of the first camera arrives (lowest latency; the timer "
        "then only runs the watchdog).", choices=("timer", "camera"))
    control_executor: str = param(
        "waitset",
        "What serves the control thread (camera / joint subscriptions, control timer): waitset = "
        "one bare rcl wait set (lowest latency; wsa_ros/ros/control_loop.py); rclpy = rclpy's "
        "SingleThreadedExecutor (fallback).", choices=("waitset", "rclpy"))
    sync: str = param(
        "stamp",
        "Which joint state (and other cameras' frames) go with a frame of the first camera. stamp: the one "
        "whose header stamp is nearest the frame's, waiting (at most sync_timeout_s) until a later-stamped one "
        "shows the choice is final: a bag replayed at any rate gives the same pairs as eval-bag; costs up to "
        "one joint-state period of latency when joint states are stamped before their frames. newest: the "
        "newest received when the frame arrives (no wait; pairs depend on delivery order).",
        choices=("stamp", "newest"))
    sync_timeout_s: float = param(
        0.05, "With sync: stamp, the longest a frame waits for its partners; then the nearest received is "
        "used (counted in /diagnostics as sync_timeouts).", 0.0, 10.0)
    blend_in_s: float = param(
        0.5, "After enabling, fade the command in from the stop command (measured pose / zero "
        "velocity) over this many seconds; 0 disables.", 0.0, 60.0)
    start_enabled: bool = param(False, "Start acting immediately instead of waiting for ~/enable.")
    autostart: str = autostart_param("load and check the bundle, open the topics", "act (then start_enabled or "
                                     "~/enable lets it act)")
    trusted_keys: list[str] = param(
        [], "Public keys (PEM files from `wsa keygen`) whose signatures let a bundle act. With any key given, "
        "every bundle (start-up, the bundle parameter, ~/reload, a swap) must carry a valid signature by one "
        "of them, unless unsigned and allow_unsigned.")
    allow_unsigned: bool = param(
        True, "Accept bundles without a signature (the shipped default and the demo). On a robot: false, with "
        "trusted_keys naming the learner's public key; an unsigned, unknown-key or altered bundle is then "
        "refused and the running policy keeps acting.")
    policy_topic: str = param(
        "", "Where validated bundles arrive over ROS (std_msgs/UInt8MultiArray from the fine-tuner's ~/policy, "
        "with push_via: topic; reliable, transient local): each is stored in policy_cache_dir, checked like "
        "any other bundle (hashes, signature, compatibility, warm-up, the live observation) and swapped in "
        "between two ticks. No shared filesystem. Empty = off.")
    policy_cache_dir: str = param(
        "~/.cache/wsa_ros/policies", "This agent's own folder for bundles received on policy_topic (the newest "
        "few and those in use are kept).")
    teleop_topic: str = param(
        "/wsa/teleop", "Teleoperation input (sensor_msgs/JointState: name + position = the command in the "
        "action's joint units). While one arrived within teleop_timeout_s, it is sent instead of the "
        "policy's action (same clamp and rate limit) and recorded as the action taken; the fine-tuner "
        "(intervention_topic) flags those steps as demonstrations. Empty: no teleoperation.")
    teleop_timeout_s: float = param(0.25, "How long one teleoperation command overrides the policy.", 0.0, 10.0)
    exploration_std: float = param(
        0.0, "Gaussian exploration noise (std, in the policy's [-1, 1] action units) added to the policy's "
        "action before the clamp and rate limit, so that the fine-tuner sees actions around the policy's "
        "choice, not only the choice itself (an off-policy critic cannot rank actions it never saw). "
        "The command sent, noise included, is what ~/action_record records and what the learner trains "
        "on. 0 = off: the deterministic policy. Teleoperation is never perturbed.", 0.0, 1.0)
    exploration_sample: bool = param(
        False, "Explore by sampling from the policy's own Gaussian, tanh(atanh(action) + exp(log_std) * N(0, 1)) "
        "with the policy's log_std output, as SAC explores (in the ROS-free recipe runs 0.94 / 0.92 held-out "
        "success at 5k / 10k steps, against 0.72 / 0.68 with exploration_std 0.05); before the same clamp and "
        "rate limit. A bundle without that output falls back to exploration_std (logged).")
    estop_topic: str = param(
        "~/estop", "std_msgs/Bool e-stop input: true engages (latched), false releases; ~/enable "
        "is needed afterwards. Subscribed best-effort so any publisher QoS matches.")
    providers: list[str] = param(
        ["tensorrt", "cuda", "cpu"], "ONNX Runtime execution providers in order of preference.")
    intra_op_threads: int = param(1, "ONNX Runtime intra-op threads per session.", 1, 64)
    trt_cache_dir: str = param("~/.cache/wsa_ros/trt", "TensorRT engine and timing cache folder.")
    diagnostics_period_s: float = param(1.0, "Period of /diagnostics and the status log line.", 0.1, 60.0)
    log_throttle_s: float = param(2.0, "Minimum interval between repeated warnings of one kind.", 0.0, 600.0)


@dataclass
class SimConfig:
    """Parameters of ``sim_arm_node`` (the simulated arm behind real-arm topics)."""

    NODE = "sim_arm_node"

    arm: str = param(
        "reacher", "reacher: 2-joint Reacher (MuJoCo), joint velocity commands, one camera, 0.02 s steps; "
        "arm7: 7-joint arm (gymnasium's Pusher model), joint position commands, cameras scene and wrist, "
        "0.05 s steps.", choices=("reacher", "arm7"))
    seed: int = param(0, "Episode seed (targets, initial joint states).", 0, 2**31 - 1)
    image_size: int = param(84, "Square camera image size in pixels (every camera).", 16, 1024)
    camera_topic: str = param("/camera/image_raw", "sensor_msgs/Image (rgb8) output of the one-camera Reacher "
                                                   "(when camera_topics is empty).")
    camera_topics: list[str] = param(
        [], "One sensor_msgs/Image (rgb8) topic per sim camera, in camera order (arm7: scene, wrist); "
        "empty = camera_topic for Reacher, /<camera>_camera/image_raw for each arm7 camera. A topic ending "
        "in /compressed carries sensor_msgs/CompressedImage (JPEG, as image_transport's compressed plugin).")
    jpeg_quality: int = param(95, "JPEG quality of compressed camera topics (image_transport's default).", 1, 100)
    joint_states_topic: str = param("/joint_states", "sensor_msgs/JointState output.")
    command_topic: str = param("/forward_command_controller/commands",
                               "Commands in, as a ros2_control controller takes them: joint velocities (rad/s) "
                               "for Reacher, joint positions (rad) for arm7.")
    command_type: str = param(
        "float64_array",
        "float64_array: std_msgs/Float64MultiArray in the arm's command units, joint order "
        "(forward_command_controller); joint_trajectory: trajectory_msgs/JointTrajectory, joints by name, "
        "the first point's velocities (Reacher) or positions (arm7).",
        choices=("float64_array", "joint_trajectory"))
    command_timeout_s: float = param(
        0.2, "No command for this long -> Reacher is commanded to stop, arm7 holds its current position.",
        0.001, 10.0)
    real_time_factor: float = param(1.0, "Simulated seconds per wall second.", 0.01, 100.0)
    publish_clock: bool = param(False, "Publish /clock (sim time) for use_sim_time graphs.")
    max_episode_steps: int = param(
        100, "Steps per episode (each 0.02 s of sim time for Reacher, 0.05 s for arm7).", 1, 100000)
    reward_topic: str = param("/wsa/reward", "std_msgs/Float64 reward, one per step.")
    episode_end_topic: str = param("/wsa/episode_end", "std_msgs/String 'terminated' or 'truncated'.")
    success_topic: str = param("/wsa/success", "std_msgs/Bool, per step: is the task solved now.")


@dataclass
class SACConfig:
    """The learner's settings (``wsa_ros.learn.sac``: SAC with RLPD demonstration mixing, on
    the frozen encoders' stored embeddings). The one set: ``finetune_node`` embeds it as its
    ``learner.*`` parameters, the learning benchmark, the demo and the tests build it from
    the same schema."""

    batch_size: int = param(256, "Batch size (demo_ratio of it demonstrations when there are any).", 1, 65536)
    demo_ratio: float = param(0.5, "Fraction of each batch drawn from demonstrations (RLPD).", 0.0, 1.0)
    discount: float = param(0.97, "Discount factor (SERL's real-robot setting).", 0.0, 1.0)
    lr: float = param(3e-4, "Adam learning rate of the critic, actor and temperature.", 1e-7, 1.0)
    tau: float = param(0.005, "Polyak rate of the target critic and target fusion trunk.", 1e-5, 1.0)
    init_temperature: float = param(0.01, "Initial SAC entropy temperature (auto-tuned).", 1e-6, 100.0)
    target_entropy_scale: float = param(
        0.5, "Target entropy = -this x action dimensions (RLPD: 0.5).", 0.0, 10.0)
    actor_every: int = param(1, "Actor and temperature step every N critic updates (SERL: 2).", 1, 100)
    n_step: int = param(1, "Rewards summed per critic target (n-step returns, as DrQ-v2's 3); 1 = one-step TD.",
                        1, 100)
    critic_warmup: int = param(
        0, "The first N updates train the critic's own layers only (fusion trunk and actor frozen), so a "
        "fresh critic learns the starting policy's values before it may move the trunk the actor reads.",
        0, 10**9)
    prior_weight: float = param(
        0.0, "Actor loss + this x ||pi(s) - pi_0(s)||^2, pi_0 = the starting bundle's policy (frozen): "
        "fine-tuning a pre-trained (behaviour-cloned) policy improves it near what it already does "
        "instead of first unlearning it under a young critic. 0 = plain SAC.", 0.0, 1e6)
    demo_bc_weight: float = param(
        0.0, "Behaviour cloning on the demonstrations while RL runs: the actor loss (and the fusion trunk's) "
        "+ this x ||pi(s) - a_demo||^2 over each batch's demonstration rows (RL with demonstrations, Nair et "
        "al. 2018). Teaches a fresh policy from a demonstration bag. 0 = RLPD only.", 0.0, 1e6)
    demo_bc_q_filter: bool = param(
        False, "The actor's demo BC term only on the demonstration rows whose action the critic values above "
        "the policy's own (the Q filter of Nair et al. 2018): the policy may leave a demonstration once it "
        "does better than it.")
    grad_clip: float = param(10.0, "Largest gradient norm per optimizer step; 0 = no clipping.", 0.0, 1e6)
    capacity: int = param(200000, "Online replay buffer size in memory (the disk store keeps everything).",
                          100, 10**8)
    utd: float = param(1.0, "Updates per received transition (update-to-data ratio).", 0.01, 64.0)
    warmup_transitions: int = param(500, "Online transitions before the first update.", 0, 10**9)
    bc_steps: int = param(0, "Behaviour-cloning steps on the demonstrations before online training "
                             "(fresh start only; 0 = none).", 0, 10**7)
    device: str = param("cpu", "Learner device.", choices=("cpu", "cuda"))
    torch_threads: int = param(1, "torch intra-op threads for the learner.", 1, 256)
    seed: int = param(0, "Learner seed.", 0, 2**31 - 1)


@dataclass
class FinetuneConfig:
    """Parameters of ``finetune_node`` (online RL from logged transitions)."""

    NODE = "finetune_node"

    bundle: str = param("", "Bundle to start from; empty = the shipped models/default.")
    store_dir: str = param("~/.local/share/wsa_ros/replay", "Durable replay store folder.")
    demo_dir: str = param("", "Demonstration store (from `wsa import-demos`); empty = none.")
    out_dir: str = param("~/.local/share/wsa_ros/bundles",
                         "Where exported bundles, the learner checkpoint (learner/) and the CSV logs (logs/) go.")
    namespaces: list[str] = param(
        [""], "One entry per robot feeding this learner: its namespace (e.g. /arm1), prefixed to every "
        "topic below and to agent_node. [''] = one robot, topics as given.")
    agent_node: str = param("/agent_node", "Fully qualified name of the agent to push policies to.")
    agent_bundle_root: str = param(
        "", "Where the agents see out_dir (a shared filesystem mounted elsewhere on the robot); "
        "empty = the same path.")
    camera_topics: list[str] = param(["/camera/image_raw"], "Camera topics, in the bundle's camera order.")
    joint_states_topic: str = param("/joint_states", "sensor_msgs/JointState input.")
    action_record_topic: str = param("/agent_node/action_record", "The agent's stamped action record.")
    reward_topic: str = param("/wsa/reward", "std_msgs/Float64 reward.")
    episode_end_topic: str = param("/wsa/episode_end", "std_msgs/String 'terminated' or 'truncated'.")
    success_topic: str = param("/wsa/success", "std_msgs/Bool, per step: is the task solved now.")
    intervention_topic: str = param(
        "/wsa/teleop", "Teleoperation command (sensor_msgs/JointState: name + position in the action's "
        "joint units); while one arrived within intervention_timeout_s the step is a demonstration.")
    intervention_timeout_s: float = param(0.25, "How long a teleoperation command keeps a step flagged.",
                                          0.0, 10.0)
    frame_tolerance_s: float = param(
        0.005, "An action record matches the first camera's frame whose stamp is this close.", 0.0, 1.0)
    pairing_timeout_s: float = param(
        1.0, "How long an action record waits for its frame / joint state before it is rejected.", 0.01, 60.0)
    max_abs_reward: float = param(1e6, "A reward beyond +-this is rejected as out of range.", 0.0, 1e30)
    reorder_window_s: float = param(
        0.5, "Messages are handled in publish-time order (DDS source timestamps; machines' clocks "
        "synchronised to a few ms) after this hold, which must exceed the learner's worst delivery delay.",
        0.0, 10.0)
    providers: list[str] = param(["cuda", "cpu"], "ONNX Runtime providers for re-encoding frames.")
    flush_period_s: float = param(
        0.5, "Replay store flush period (fsync). A kill -9 loses what arrived in the last reorder_window_s "
        "+ one control step + flush_period_s (defaults: about 1 s).", 0.05, 1.0)
    export_every_updates: int = param(2000, "Export, validate and push a bundle every N updates.", 1, 10**9)
    holdout_every: int = param(50, "Every N-th online observation is held out for validating exports.",
                               2, 10**6)
    push: bool = param(True, "Ask the agents to swap in each validated bundle.")
    push_via: str = param(
        "parameter", "parameter: set each agent's bundle parameter to the export's path (the agents see "
        "out_dir: one machine or a shared filesystem, agent_bundle_root); topic: publish the bundle itself on "
        "~/policy (std_msgs/UInt8MultiArray, reliable, transient local) for agents with policy_topic set: no "
        "shared filesystem, an agent that was offline gets the newest when it is back, a restarted learner "
        "publishes its last pushed bundle again. A topic push counts as taken once the agent's action records "
        "carry the version.", choices=("parameter", "topic"))
    push_timeout_s: float = param(10.0, "An agent that has not answered a push by then is logged as failed.",
                                  0.1, 600.0)
    signing_key: str = param(
        "", "Private key file (`wsa keygen`; mode 600) that signs each validated export (manifest.sig) before "
        "it is pushed; empty = exports unsigned.")
    gate_episodes: int = param(
        0, "Keep the best policy acting (wsa_ros/learn/gate.py): each pushed policy runs at least this many "
        "episodes of its own before the next push; one whose live success rate is below the best judged "
        "version's by more than gate_margin is replaced by that version. 0 = push every validated export "
        "at once.", 0, 10**6)
    gate_margin: float = param(0.15, "Success-rate drop that sends the agents back to the best version.", 0.0, 1.0)
    checkpoint_period_s: float = param(30.0, "Learner checkpoint period (also at every export).", 1.0, 86400.0)
    log_every_updates: int = param(100, "A CSV row of losses every N updates.", 1, 10**6)
    status_period_s: float = param(1.0, "Period of ~/status (std_msgs/String, JSON).", 0.1, 60.0)
    autostart: str = autostart_param("load the bundle and the learner, open the store and the topics; "
                                     "transitions are stored from then on", "train, export and push")
    learner: SACConfig = section(SACConfig, "The learner's settings (SACConfig): learner.batch_size, ...")


#: the command interfaces a robot file may name, and the units each accepts (-> the bundle's action mode)
COMMAND_INTERFACES = {
    "joint_trajectory": ("rad", "rad/s"),  # trajectory_msgs/JointTrajectory (joint_trajectory_controller)
    "forward_command": ("rad", "rad/s"),  # std_msgs/Float64MultiArray (forward_command_controller)
    "twist": ("m/s",),  # geometry_msgs/Twist (servoing: [vx, vy, vz, wx, wy, wz] prefix)
}
_AGENT_OUTPUT = {"joint_trajectory": "joint_trajectory", "forward_command": "float64_array", "twist": "twist"}


@dataclass
class RobotConfig:
    """A robot description: the arm a bundle is built for and deployed on, one YAML file
    (``config/robots/<name>.yaml``, ``robot: ros__parameters: ...``). Per-joint and per-camera
    values are parallel lists in the order of ``joint_names`` / ``camera_names``, so the file is
    also a plain ROS 2 parameter file. :func:`check_robot` checks the fields against each other;
    :func:`robot_agent_params` turns it into ``agent_node``'s topics and output mode and
    :func:`robot_action_spec` into the bundle's action spec, so the build, the health report and
    the agent read one description."""

    NODE = "robot"

    name: str = param("", "A name for the arm (written into the bundle).")
    joint_names: list[str] = param([], "The commanded joints, in action order (names as in /joint_states).")
    position_lower: list[float] = param([], "Per joint: lower position limit (rad).")
    position_upper: list[float] = param([], "Per joint: upper position limit (rad).")
    velocity_limits: list[float] = param([], "Per joint: velocity limit (rad/s, > 0).")
    continuous: list[str] = param([], "Joints without position limits (wrap at +-pi); their limits are ignored.")
    command_interface: str = param(
        "joint_trajectory", "joint_trajectory: trajectory_msgs/JointTrajectory (joint_trajectory_controller); "
        "forward_command: std_msgs/Float64MultiArray (forward_command_controller); twist: geometry_msgs/Twist.",
        choices=tuple(COMMAND_INTERFACES))
    command_units: str = param(
        "rad", "What the commands carry: rad (joint positions), rad/s (joint velocities), m/s (twist).",
        choices=("rad", "rad/s", "m/s"))
    command_topic: str = param("/joint_trajectory_controller/joint_trajectory", "Where the commands go.")
    action_low: list[float] = param(
        [], "Action lower bounds in command units; empty = position_lower (rad) or -velocity_limits (rad/s).")
    action_high: list[float] = param(
        [], "Action upper bounds in command units; empty = position_upper (rad) or velocity_limits (rad/s).")
    joint_states_topic: str = param("/joint_states", "sensor_msgs/JointState of the arm.")
    joint_states_rate_hz: float = param(100.0, "Declared /joint_states rate (the health report checks it).",
                                        0.1, 100000.0)
    camera_names: list[str] = param([], "The cameras, by name (the bundle binds encoders to these).")
    camera_topics: list[str] = param(
        [], "Per camera: its topic; one ending in '/compressed' is sensor_msgs/CompressedImage, else sensor_msgs/Image.")
    camera_rates_hz: list[float] = param([], "Per camera: its declared frame rate (the health report checks it).")
    proprio_fields: list[str] = param(
        ["position", "velocity"], "Proprioception per joint, in order: position, velocity, effort, sin_position, "
        "cos_position (continuous joints are best given as sin_position, cos_position).",
        choices=("position", "velocity", "effort", "sin_position", "cos_position"))
    control_rate_hz: float = param(30.0, "The agent's control rate on this arm.", 1.0, 1000.0)
    episode_end_topic: str = param("/wsa/episode_end", "std_msgs/String 'terminated'/'truncated' between episodes.")
    success_topic: str = param("/wsa/success", "std_msgs/Bool: is the task solved now.")
    reward_topic: str = param("/wsa/reward", "std_msgs/Float64 reward, if the site computes one.")


def check_robot(r: RobotConfig, where: str = "robot") -> RobotConfig:
    """Cross-field checks of a robot description; raises ConfigError naming the field and the fix."""
    n = len(r.joint_names)
    if n == 0:
        raise ConfigError(f"{where}: 'joint_names' is empty: list the commanded joints as /joint_states names them")
    if len(set(r.joint_names)) != n:
        dup = sorted({j for j in r.joint_names if r.joint_names.count(j) > 1})
        raise ConfigError(f"{where}: 'joint_names' repeats {dup}: each joint once")
    for key in ("position_lower", "position_upper", "velocity_limits"):
        v = getattr(r, key)
        if len(v) != n:
            raise ConfigError(f"{where}: '{key}' has {len(v)} values for {n} joints {r.joint_names}: one per joint")
    unknown = sorted(set(r.continuous) - set(r.joint_names))
    if unknown:
        raise ConfigError(f"{where}: 'continuous' names {unknown}, not in joint_names {r.joint_names}")
    for j, lo, hi, v in zip(r.joint_names, r.position_lower, r.position_upper, r.velocity_limits):
        if j not in r.continuous and not lo < hi:
            raise ConfigError(f"{where}: joint '{j}' position_lower {lo} >= position_upper {hi}: swap or fix them")
        if not v > 0:
            raise ConfigError(f"{where}: joint '{j}' velocity_limits {v} must be > 0 rad/s")
    units = COMMAND_INTERFACES[r.command_interface]
    if r.command_units not in units:
        raise ConfigError(f"{where}: command_interface '{r.command_interface}' carries {' or '.join(units)}, "
                          f"not command_units '{r.command_units}': set command_units to one of {list(units)}")
    low, high = robot_action_bounds(r, where)
    if any(not lo < hi for lo, hi in zip(low, high)):
        raise ConfigError(f"{where}: action_low {low} must be below action_high {high} for every entry")
    if r.command_units == "rad":
        for j, lo, hi, plo, phi in zip(r.joint_names, low, high, r.position_lower, r.position_upper):
            if j not in r.continuous and (lo < plo - 1e-9 or hi > phi + 1e-9):
                raise ConfigError(f"{where}: joint '{j}' action bounds [{lo}, {hi}] leave its position limits "
                                  f"[{plo}, {phi}]: narrow action_low/action_high")
    if r.command_units == "rad/s":
        for j, lo, hi, v in zip(r.joint_names, low, high, r.velocity_limits):
            if max(abs(lo), abs(hi)) > v + 1e-9:
                raise ConfigError(f"{where}: joint '{j}' action bounds [{lo}, {hi}] rad/s exceed its velocity "
                                  f"limit {v}: narrow action_low/action_high")
    if not r.camera_names:
        raise ConfigError(f"{where}: 'camera_names' is empty: a vision policy needs at least one camera")
    if len(set(r.camera_names)) != len(r.camera_names):
        raise ConfigError(f"{where}: 'camera_names' repeats a name: {r.camera_names}")
    for key in ("camera_topics", "camera_rates_hz"):
        if len(getattr(r, key)) != len(r.camera_names):
            raise ConfigError(f"{where}: '{key}' has {len(getattr(r, key))} values for cameras {r.camera_names}: "
                              "one per camera")
    if any(not hz > 0 for hz in r.camera_rates_hz):
        raise ConfigError(f"{where}: camera_rates_hz {r.camera_rates_hz} must all be > 0")
    topics = list(r.camera_topics) + [r.joint_states_topic, r.command_topic]
    if len(set(topics)) != len(topics):
        raise ConfigError(f"{where}: camera_topics, joint_states_topic and command_topic must all differ: {topics}")
    if len(set(r.proprio_fields)) != len(r.proprio_fields):
        raise ConfigError(f"{where}: 'proprio_fields' repeats a field: {r.proprio_fields}")
    return r


def robot_action_bounds(r: RobotConfig, where: str = "robot") -> tuple[list[float], list[float]]:
    """The action bounds in command units: the file's, or derived from the joint limits."""
    n = 6 if r.command_interface == "twist" else len(r.joint_names)
    if r.action_low or r.action_high:
        if len(r.action_low) != len(r.action_high) or not 0 < len(r.action_low) <= n:
            raise ConfigError(f"{where}: action_low and action_high need the same length, 1..{n} "
                              f"(got {len(r.action_low)} and {len(r.action_high)})")
        if r.command_interface != "twist" and len(r.action_low) != n:
            raise ConfigError(f"{where}: action_low/action_high need one value per joint ({n}), got {len(r.action_low)}")
        return list(r.action_low), list(r.action_high)
    if r.command_interface == "twist":
        raise ConfigError(f"{where}: a twist interface needs action_low and action_high (m/s and rad/s)")
    if r.command_units == "rad":
        bad = [j for j in r.joint_names if j in r.continuous]
        if bad:
            raise ConfigError(f"{where}: continuous joints {bad} have no position limits: give action_low/action_high")
        return list(r.position_lower), list(r.position_upper)
    return [-v for v in r.velocity_limits], list(r.velocity_limits)


def load_robot(path: str | os.PathLike) -> RobotConfig:
    """Read and check a robot description file."""
    return check_robot(load(path, RobotConfig), where=str(path))


def robot_action_spec(r: RobotConfig) -> dict:
    """The bundle's ``action`` section for this robot (mode, joints, bounds, units)."""
    low, high = robot_action_bounds(r)
    mode = "position" if r.command_units == "rad" else "velocity"
    return {"mode": mode, "joint_names": list(r.joint_names), "low": [float(x) for x in low],
            "high": [float(x) for x in high], "units": r.command_units}


def robot_agent_params(r: RobotConfig) -> dict:
    """``agent_node`` parameters that follow from the robot file (topics, output mode, rate)."""
    return {"camera_topics": list(r.camera_topics), "joint_states_topic": r.joint_states_topic,
            "output_mode": _AGENT_OUTPUT[r.command_interface], "command_topic": r.command_topic,
            "control_rate_hz": float(r.control_rate_hz)}


SECTIONS: dict[str, type] = {"agent": AgentConfig, "sim": SimConfig, "finetune": FinetuneConfig, "robot": RobotConfig}


# --------------------------------------------------------------------------- schema access
#: node name -> its section (what its parameter files are checked against)
NODE_CONFIGS = {c.NODE: c for k, c in SECTIONS.items() if k != "robot"}


def schema(cls) -> list[tuple[str, Any, Any, dict]]:
    """(name, python type, default, metadata) per field of a section (a nested section is
    one entry whose metadata holds ``section``)."""
    hints = get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append((f.name, hints[f.name], default, dict(f.metadata)))
    return out


def flat_schema(cls, prefix: str = "") -> list[tuple[str, Any, Any, dict]]:
    """Like :func:`schema` with nested sections flattened into dotted names
    (``learner.batch_size``): one entry per ROS parameter."""
    out = []
    for name, typ, default, meta in schema(cls):
        if meta.get("section"):
            out += flat_schema(meta["section"], f"{prefix}{name}.")
        else:
            out.append((prefix + name, typ, default, meta))
    return out


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> dotted keys (the inverse of :func:`nest`)."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def nest(values: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys (ROS parameter names) -> nested mappings: {'learner.lr': 1} -> {'learner': {'lr': 1}}."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        head, dot, rest = k.partition(".")
        if dot:
            sub = out.setdefault(head, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"'{head}' is a section; give its values as {head}.<name> or a mapping")
            sub.update(nest({rest: v}))
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k].update(v)
        else:
            out[k] = v
    return out


def _check_value(cls, name: str, typ, value, meta: dict, where: str):
    origin = get_origin(typ)
    if origin is list:
        (inner,) = get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: '{name}' must be a list of {inner.__name__}, got {value!r}")
        return [_check_value(cls, name, inner, v, {**meta, "choices": meta.get("choices")}, where) for v in value]
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: '{name}' must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: '{name}' must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: '{name}' must be a number, got {value!r}")
        value = float(value)
        if value != value:
            raise ConfigError(f"{where}: '{name}' is NaN")
    elif typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: '{name}' must be a string, got {value!r}")
        ch = meta.get("choices")
        if ch and value not in ch:
            raise ConfigError(f"{where}: '{name}' = '{value}' is not one of {list(ch)}")
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ConfigError(f"{where}: '{name}' = {value} is outside [{lo}, {hi}]")
    return value


def from_dict(cls, values: dict[str, Any], where: str = "config"):
    """Build a section from a plain dict (nested mappings or dotted keys for nested
    sections), rejecting unknown keys and bad values."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of parameters, got {type(values).__name__}")
    values = nest(values)
    known = {name: (typ, meta) for name, typ, _d, meta in schema(cls)}
    unknown = sorted(set(values) - set(known) - {"use_sim_time"})
    if unknown:
        raise ConfigError(f"{where}: unknown parameter(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for k, v in values.items():
        if k == "use_sim_time":
            continue
        typ, meta = known[k]
        if meta.get("section"):
            if not isinstance(v, dict):
                raise ConfigError(f"{where}: '{k}' is a section: give a mapping of its parameters, got {v!r}")
            kwargs[k] = from_dict(meta["section"], v, where=f"{where} {k}")
        else:
            kwargs[k] = _check_value(cls, k, typ, v, meta, where)
    return cls(**kwargs)


def read_params(path: str | os.PathLike, node_name: str | None) -> dict[str, Any]:
    """The parameters a ROS 2 parameter YAML file gives node ``node_name``, as dotted keys:
    its ``/**`` block, then its ``<node_name>`` / ``/<node_name>`` blocks over it (each
    ``ros__parameters``); a file holding a bare mapping of parameters is accepted too."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except FileNotFoundError as exc:
        raise ConfigError(f"{p}: config file not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from exc
    doc = doc or {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    params: dict[str, Any] = {}
    found = False
    for key in ("/**", node_name, f"/{node_name}" if node_name else None):
        if key and key in doc:
            block = doc[key]
            if not isinstance(block, dict) or "ros__parameters" not in block:
                raise ConfigError(f"{p}: '{key}' has no 'ros__parameters' mapping")
            params.update(flatten(block["ros__parameters"] or {}))
            found = True
    if not found:
        if any(isinstance(v, dict) and "ros__parameters" in v for v in doc.values()):
            raise ConfigError(f"{p}: no parameters for node '{node_name}' (found {sorted(doc)})")
        params = flatten(doc)
    return params


def merge_params(files, overrides: dict[str, Any] | None, node_name: str) -> dict[str, Any]:
    """One node's parameters from several files and explicit values, later ones winning, as
    dotted keys. rcl does not promise that order: with a ``/**`` file before a file with a
    block for the node itself, the block beats a later ``-p name:=value`` (``-p`` joins the
    first ``/**`` block), so the demo once ran the agent with a demo file's exploration noise
    that ``-p`` had turned off.
    Hand a node the merged result as its one parameter file (:func:`dump_params`)."""
    out: dict[str, Any] = {}
    for f in files:
        if f:
            out.update(read_params(f, node_name))
    out.update(flatten(dict(overrides or {})))
    return out


def dump_params(params: dict[str, Any], node_name: str) -> str:
    """Dotted parameters -> ROS 2 parameter YAML for ``node_name``."""
    return yaml.safe_dump({node_name: {"ros__parameters": nest(params)}}, sort_keys=False)


def load(path: str | os.PathLike, cls, node_name: str | None = None):
    """Read one section from a ROS 2 parameter YAML file (:func:`read_params`, for the
    section's NODE unless ``node_name``)."""
    node = node_name or getattr(cls, "NODE", None)
    return from_dict(cls, read_params(path, node), where=f"{path} [{node}]")


def dump(obj, node_name: str | None = None) -> str:
    """A section as ROS 2 parameter YAML (what ``config/*.yaml`` hold)."""
    node = node_name or getattr(type(obj), "NODE", "node")
    return yaml.safe_dump({node: {"ros__parameters": dataclasses.asdict(obj)}}, sort_keys=False)


def package_share() -> Path:
    """The folder holding launch/, config/ and models/: the ament share folder when the
    package is installed by colcon, else the source checkout."""
    try:
        from ament_index_python.packages import get_package_share_directory

        share = Path(get_package_share_directory("wsa_ros"))
        if (share / "models").is_dir():
            return share
    except Exception:  # noqa: BLE001 - not installed through ament: use the checkout
        pass
    return Path(__file__).resolve().parent.parent


def default_bundle() -> Path:
    return package_share() / "models" / "default"


def join_ns(ns: str, name: str) -> str:
    """A robot namespace + a topic or node name, as ``namespaces`` prefixes them:
    ('/arm1', '/joint_states') -> '/arm1/joint_states'; ('', '/x') -> '/x'."""
    ns = ns.rstrip("/")
    return f"{ns}{name}" if ns and name.startswith("/") else (f"{ns}/{name}" if ns else name)


def resolve_bundle(path: str) -> Path:
    """'' -> the shipped default bundle; '~' and relative paths resolved."""
    if not path:
        return default_bundle()
    return Path(os.path.expanduser(path)).resolve()
