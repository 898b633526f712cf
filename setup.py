"""ament_python package wsa_ros (also pip-installable for the ROS-free core)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "wsa_ros"


def tree(src):
    """data_files entries installing every file below `src` under share/wsa_ros/src."""
    out = []
    for folder, _dirs, files in os.walk(src):
        if files:
            out.append((os.path.join("share", PACKAGE, folder), [os.path.join(folder, f) for f in files]))
    return out


setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/config/robots", glob("config/robots/*.yaml")),
        *tree("models"),
    ],
    # onnxruntime is not listed: robots install onnxruntime-gpu (or NVIDIA's Jetson build) instead
    install_requires=["setuptools", "numpy", "pyyaml"],
    zip_safe=False,
    maintainer="wsa_ros developers",
    maintainer_email="wsa-ros@example.com",
    description="Weight Sharing Attention policies on ROS 2 arms: ONNX Runtime agent and online fine-tuning.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "agent_node = wsa_ros.ros.agent_node:main",
            "finetune_node = wsa_ros.ros.finetune_node:main",
            "sim_arm_node = wsa_ros.ros.sim_arm_node:main",
            "replay = wsa_ros.ros.replay_node:main",
            "wsa = wsa_ros.tools.cli:main",
        ],
    },
)
