"""A 2-joint planar arm: gymnasium ``Reacher-v5`` (MuJoCo) wrapped ROS-free, rendered on the CPU.

Actions: **joint velocities** in rad/s for ``joint0`` and ``joint1`` (the names in the MuJoCo
model), bounded by ``ACTION_LOW``/``ACTION_HIGH`` (±3 rad/s). This maps one-to-one onto a
ros2_control velocity interface (``action.mode: velocity``). Internally a velocity loop turns
the command into Reacher's motor torques at every physics sub-step
(``ctrl = clip((kv*(v_cmd - qdot) + damping*qdot) / gear, -1, 1)``).

Observations: ``image`` (uint8 HxWx3 RGB from a fixed camera looking straight down at the
arena, x to the right, y up; the target is always in view), ``joint_names``, ``position``
(rad; joint0 is continuous and reported wrapped to [-pi, pi), joint1 is limited to ±3 rad) and
``velocity`` (rad/s).

Success: the fingertip centre lies within ``success_radius`` (default 0.02 m) of the target
centre. The target is drawn as a disc of that radius (``target_marker_radius``), so the picture
shows what counts as success. Reacher's own sphere (0.009 m) is about 3 pixels at 84x84, and the
self-supervised encoders trained on 4 800 such frames barely localised it: a linear probe on
their embeddings put the target within 49 mm (autoencoder map) and 66-77 mm (keypoints) mean
absolute error, for targets spread 100 mm (std); with the 0.02 m disc, 17-21 mm and 34-38 mm after
fewer training steps. The marker is a flat disc on the arena floor, beneath the arm, so the
fingertip stays visible over it (Reacher's sphere enlarged at the arm's height hid the tip
exactly when it was within the radius: the pose encoder then misjudged tip - target by ~3 cm
there). It has no collision geometry (contype 0): the physics is unchanged.
Reward: ``-distance - 0.01 * ||action / high||^2``. Episodes never terminate; they are
truncated after ``max_steps`` steps (0.02 s each).

Determinism: the same seed gives the same targets, joint states and (with MuJoCo's software
EGL/OSMesa renderer) bit-identical images. Shadows and anti-aliasing are turned off before the
first render (3-20x faster on a CPU).
"""
from __future__ import annotations

import math
import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first `import mujoco`

import numpy as np  # noqa: E402

JOINT_NAMES = ("joint0", "joint1")
ACTION_LOW = (-3.0, -3.0)  # rad/s
ACTION_HIGH = (3.0, 3.0)
SUCCESS_RADIUS = 0.02  # m
TARGET_MARKER_RADIUS = 0.02  # m, drawn size of the target (Reacher's own: 0.009)
LINK0 = 0.10  # m, joint0 -> joint1
LINK1 = 0.11  # m, joint1 -> fingertip centre
JOINT1_LIMIT = 3.0  # rad
ARM_STARTS = ("default", "random", "near_target")
_GEAR = 200.0
_MARKER_HALF_HEIGHT = 0.0005  # m: the target disc's thickness / 2, on the floor (z = 0)
_DAMPING = 1.0  # joint damping in reacher.xml (N m s/rad)


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


class ReacherSim:
    """Seeded, deterministic Reacher with velocity actions and rendered observations.

    ``ReacherSim(seed, image_size, max_steps, arm="default")``; ``reset() -> obs``;
    ``step(action) -> (obs, reward, terminated, truncated, info)``; ``close()``.
    ``info`` holds ``distance`` (m), ``success`` (bool), ``target`` and ``fingertip`` (x, y in m).
    """

    joint_names = JOINT_NAMES

    def __init__(
        self,
        seed: int = 0,
        image_size: int | tuple[int, int] = 84,
        max_steps: int = 100,
        success_radius: float = SUCCESS_RADIUS,
        velocity_gain: float = 40.0,
        camera_distance: float = 0.56,
        render: bool = True,
        arm: str = "default",
        target_marker_radius: float = TARGET_MARKER_RADIUS,
    ):
        import gymnasium as gym

        if isinstance(image_size, int):
            h = w = int(image_size)
        else:
            h, w = (int(x) for x in image_size)
        if h < 16 or w < 16:
            raise ValueError(f"image_size {h}x{w} is too small (at least 16x16)")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.seed = int(seed)
        self.image_size = (h, w)
        self.max_steps = int(max_steps)
        self.success_radius = float(success_radius)
        self.velocity_gain = float(velocity_gain)
        self.render_images = bool(render)
        if not target_marker_radius > 0:
            raise ValueError(f"target_marker_radius must be > 0 m, got {target_marker_radius}")
        if arm not in ARM_STARTS:
            raise ValueError(f"arm start '{arm}' is not one of {ARM_STARTS}")
        self.arm = arm
        self.action_low = np.asarray(ACTION_LOW, dtype=np.float64)
        self.action_high = np.asarray(ACTION_HIGH, dtype=np.float64)
        cam = dict(trackbodyid=-1, distance=float(camera_distance), lookat=np.zeros(3), elevation=-90.0, azimuth=90.0)
        # rendered by mujoco.Renderer, not gymnasium's renderer: the frames are bit for bit the same,
        # but gymnasium makes its GL context current only when it is created, so after another sim
        # in this process closed (a held-out evaluation beside training) every frame was black
        # (test_sim). The camera is the one gymnasium's default_camera_config gave.
        self._env = gym.make("Reacher-v5", render_mode=None, max_episode_steps=None)
        self._u = self._env.unwrapped
        m = self._u.model
        m.vis.quality.shadowsize = 0
        m.vis.quality.offsamples = 0
        m.vis.headlight.ambient[:] = 0.35
        m.vis.headlight.diffuse[:] = 0.5
        m.vis.headlight.specular[:] = 0.0
        import mujoco

        g = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "target")
        if m.geom_contype[g] or m.geom_conaffinity[g]:
            raise RuntimeError("Reacher's target geom collides; its marker size would change the physics")
        # a flat disc on the arena floor, beneath the arm (a spot painted on the table): the arm and
        # its fingertip are drawn over it, so the picture shows where the tip is inside the disc.
        # Reacher's own target is a sphere at the arm's height, which a 2 cm sphere would draw over
        # the fingertip: the tip vanished exactly where the policy has to stop.
        m.geom_type[g] = mujoco.mjtGeom.mjGEOM_CYLINDER
        m.geom_size[g][:2] = (float(target_marker_radius), _MARKER_HALF_HEIGHT)
        m.geom_rbound[g] = float(np.hypot(target_marker_radius, _MARKER_HALF_HEIGHT))
        m.geom_pos[g][2] = _MARKER_HALF_HEIGHT - float(self._u.model.body_pos[m.geom_bodyid[g]][2])
        self._renderer = self._cam = None
        if render:  # after the quality settings above: the GL context is made with them
            self._renderer = mujoco.Renderer(m, h, w)
            self._cam = mujoco.MjvCamera()
            self._cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            self._cam.fixedcamid = self._cam.trackbodyid = -1
            self._cam.distance, self._cam.elevation, self._cam.azimuth = cam["distance"], cam["elevation"], cam["azimuth"]
            self._cam.lookat[:] = cam["lookat"]
        self._steps = 0
        self._needs_seed = True
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def dt(self) -> float:
        return float(self._u.dt)

    @property
    def joint_positions(self) -> np.ndarray:
        q = self._u.data.qpos[:2].astype(np.float64).copy()
        q[0] = float(_wrap(q[0]))
        return q

    @property
    def joint_velocities(self) -> np.ndarray:
        return self._u.data.qvel[:2].astype(np.float64).copy()

    @property
    def target(self) -> np.ndarray:
        return np.asarray(self._u.get_body_com("target")[:2], dtype=np.float64).copy()

    @property
    def fingertip(self) -> np.ndarray:
        return np.asarray(self._u.get_body_com("fingertip")[:2], dtype=np.float64).copy()

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.fingertip - self.target))

    @property
    def steps(self) -> int:
        return self._steps

    def render(self) -> np.ndarray:
        """The current camera frame, uint8 HxWx3 RGB (a copy)."""
        if not self.render_images:
            raise RuntimeError("ReacherSim was created with render=False")
        self._renderer.update_scene(self._u.data, camera=self._cam)
        return np.ascontiguousarray(self._renderer.render()).copy()

    def _obs(self) -> dict:
        obs = {
            "joint_names": list(JOINT_NAMES),
            "position": self.joint_positions,
            "velocity": self.joint_velocities,
        }
        if self.render_images:
            obs["image"] = self.render()
        return obs

    def _info(self) -> dict:
        d = self.distance
        return {"distance": d, "success": bool(d < self.success_radius), "target": self.target, "fingertip": self.fingertip}

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, arm: str | None = None) -> dict:
        """Start an episode (new target). The first reset uses the constructor seed; later
        resets continue the same random stream unless ``seed`` is given. ``arm`` (default:
        the constructor's) is the start pose: ``default`` (Reacher's, near zero), ``random``
        (joint0 uniform in [-pi, pi), joint1 in [-2.8, 2.8]) or ``near_target`` (the inverse
        kinematics solution plus N(0, 0.3 rad) noise)."""
        self._check_open()
        arm = self.arm if arm is None else arm
        if arm not in ARM_STARTS:
            raise ValueError(f"arm start '{arm}' is not one of {ARM_STARTS}")
        if seed is not None:
            self._env.reset(seed=int(seed))
        elif self._needs_seed:
            self._env.reset(seed=self.seed)
        else:
            self._env.reset()
        self._needs_seed = False
        if arm != "default":
            u = self._u
            qpos, qvel = u.data.qpos.copy(), u.data.qvel.copy()
            if arm == "random":
                qpos[0] = u.np_random.uniform(-np.pi, np.pi)
                qpos[1] = u.np_random.uniform(-2.8, 2.8)
            else:
                q = inverse_kinematics(self.target) + u.np_random.normal(0.0, 0.3, 2)
                qpos[0], qpos[1] = q[0], np.clip(q[1], -JOINT1_LIMIT, JOINT1_LIMIT)
            qvel[:2] = 0.0
            u.set_state(qpos, qvel)
        self._steps = 0
        return self._obs()

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        """Apply joint velocities (rad/s, clipped to the bounds) for one 0.02 s step."""
        self._check_open()
        if self._needs_seed:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 2 finite joint velocities (rad/s), got {action!r}")
        a = np.clip(a, self.action_low, self.action_high)
        d = self._u.data
        for _ in range(self._u.frame_skip):
            qd = d.qvel[:2]
            ctrl = (self.velocity_gain * (a - qd) + _DAMPING * qd) / _GEAR
            self._u.do_simulation(np.clip(ctrl, -1.0, 1.0), 1)
        self._steps += 1
        info = self._info()
        reward = -info["distance"] - 0.01 * float(np.sum((a / self.action_high) ** 2))
        truncated = self._steps >= self.max_steps
        return self._obs(), float(reward), False, bool(truncated), info

    def info(self) -> dict:
        return self._info()

    def _check_open(self):
        if self._closed:
            raise RuntimeError("ReacherSim is closed")

    def close(self) -> None:
        if not self._closed:
            if self._renderer is not None:
                self._renderer.close()
            self._env.close()
            self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def forward_kinematics(q) -> np.ndarray:
    """Fingertip (x, y) in m for joint angles ``q`` [..., 2] (the arm's two links; the inverse of
    :func:`inverse_kinematics`)."""
    q = np.asarray(q, dtype=np.float64)
    q0, q01 = q[..., 0], q[..., 0] + q[..., 1]
    return np.stack([LINK0 * np.cos(q0) + LINK1 * np.cos(q01), LINK0 * np.sin(q0) + LINK1 * np.sin(q01)], axis=-1)


def inverse_kinematics(target_xy, q_now=None) -> np.ndarray:
    """Joint angles putting the fingertip on ``target_xy`` (clipped to the reachable annulus and
    joint1's limit); of the two elbow solutions the one nearest ``q_now`` wins."""
    x, y = float(target_xy[0]), float(target_xy[1])
    r = min(max(math.hypot(x, y), abs(LINK0 - LINK1) + 1e-6), LINK0 + LINK1 - 1e-6)
    c1 = (r * r - LINK0 * LINK0 - LINK1 * LINK1) / (2 * LINK0 * LINK1)
    c1 = min(1.0, max(-1.0, c1))
    best, best_cost = None, float("inf")
    q_now = np.zeros(2) if q_now is None else np.asarray(q_now, dtype=np.float64)
    for sign in (1.0, -1.0):
        q1 = sign * min(math.acos(c1), JOINT1_LIMIT)  # targets by the base: as close as the limit allows
        q0 = math.atan2(y, x) - math.atan2(LINK1 * math.sin(q1), LINK0 + LINK1 * math.cos(q1))
        q = np.array([q0, q1])
        err = np.array([_wrap(q0 - q_now[0]), q1 - q_now[1]])
        cost = float(np.sum(np.abs(err)))
        if cost < best_cost:
            best, best_cost = q, cost
    return best


def expert_action(sim: ReacherSim, gain: float = 6.0) -> np.ndarray:
    """Scripted expert: analytic inverse kinematics to the target, then a joint-space
    P controller; returns joint velocities (rad/s) within the action bounds."""
    q = sim.joint_positions
    goal = inverse_kinematics(sim.target, q)
    err = np.array([float(_wrap(goal[0] - q[0])), goal[1] - q[1]])
    return np.clip(gain * err, sim.action_low, sim.action_high)
