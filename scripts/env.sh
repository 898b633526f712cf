# Source this to enter the project environment:  source scripts/env.sh
# (ROS 2 from PyPI wheels needs the library path and AMENT_PREFIX_PATH set.)
_WSA_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export WSA_VENV="${WSA_VENV:-$_WSA_ROOT/.venv}"
export VIRTUAL_ENV="$WSA_VENV"
export PATH="$WSA_VENV/bin:$PATH"
export LD_LIBRARY_PATH="$WSA_VENV/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$WSA_VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION="${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}"
# Network rule: DDS discovery stays on loopback.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
