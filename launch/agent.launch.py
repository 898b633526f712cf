"""Launch the WSA agent node (needs a ROS 2 install with launch and launch_ros).

    ros2 launch wsa_ros agent.launch.py
    ros2 launch wsa_ros agent.launch.py config:=/path/agent.yaml namespace:=arm1 \\
        bundle:=/path/to/bundle use_sim_time:=true
    ros2 launch wsa_ros agent.launch.py robot:=/path/my_arm.yaml bundle:=/path/my_arm_bundle

Arguments:
  config        ROS parameter file for agent_node (default: the installed config/agent.yaml)
  namespace     namespace of the node and its relative topics (default: none)
  bundle        model bundle folder; empty keeps the config file's value
  robot         robot description (config/robots/*.yaml): its camera topics, joint-states topic,
                command topic and interface (output_mode) and control rate override the config
                file's; empty keeps the config file's
  autostart     how far the managed node takes itself: active, inactive (configured, holding
                until a lifecycle activate) or unconfigured; empty keeps the config file's
  use_sim_time  true to run on /clock (simulation, bag replay)
  log_level     agent_node's log level (debug, info, warn, error, fatal)

The node starts disabled unless the config says start_enabled: call
``<namespace>/agent_node/enable`` (std_srvs/SetBool) to let it act. With autostart:=inactive,
activate it first: ``ros2 lifecycle set <namespace>/agent_node activate``.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "wsa_ros"
EXECUTABLE = "agent_node"


def _agent(context, *args, **kwargs):
    config = LaunchConfiguration("config").perform(context)
    bundle = LaunchConfiguration("bundle").perform(context)
    sim_time = LaunchConfiguration("use_sim_time").perform(context).strip().lower() in ("true", "1", "yes")
    robot = LaunchConfiguration("robot").perform(context)
    overrides = {"use_sim_time": sim_time}
    if robot:  # the arm's topics and command interface, checked by the one schema (wsa_ros.config)
        from wsa_ros.config import load_robot, robot_agent_params

        overrides.update(robot_agent_params(load_robot(robot)))
    autostart = LaunchConfiguration("autostart").perform(context)
    if autostart:
        overrides["autostart"] = autostart
    if bundle:
        overrides["bundle"] = bundle  # only when given: otherwise the config file's value holds
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="agent_node",
            namespace=LaunchConfiguration("namespace"),
            parameters=[config, overrides],
            ros_arguments=["--log-level", LaunchConfiguration("log_level")],
            output="screen",
            emulate_tty=True,
            # SIGINT first: the node sends a last stop command to the controller on exit
            sigterm_timeout="5",
        )
    ]


def generate_launch_description():
    default_config = PathJoinSubstitution([FindPackageShare(PACKAGE), "config", "agent.yaml"])
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value=default_config,
                              description="ROS parameter file for agent_node"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="Namespace of the agent node and its relative topics"),
        DeclareLaunchArgument("bundle", default_value="",
                              description="Model bundle folder; empty keeps the config file's value"),
        DeclareLaunchArgument("robot", default_value="",
                              description="Robot description YAML (config/robots/); empty keeps the config file's topics"),
        DeclareLaunchArgument("autostart", default_value="", choices=["", "active", "inactive", "unconfigured"],
                              description="Lifecycle state the agent takes itself to; empty keeps the config file's"),
        DeclareLaunchArgument("use_sim_time", default_value="false", choices=["true", "false"],
                              description="Use /clock (simulation, bag replay)"),
        DeclareLaunchArgument("log_level", default_value="info",
                              choices=["debug", "info", "warn", "error", "fatal"],
                              description="agent_node log level"),
        OpaqueFunction(function=_agent),
    ])
