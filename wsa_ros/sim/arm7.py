"""A 7-joint arm with two cameras and joint-position commands, ROS-free, rendered on the CPU.

The model is the PR2-style right arm of gymnasium's ``Pusher-v5``
(``gymnasium/envs/mujoco/assets/pusher_v5.xml``, shipped in the gymnasium wheel: nothing is
downloaded), loaded with ``mujoco`` directly and edited in memory with ``mujoco.MjSpec``:

* the pushed object (and its slide joints) is removed, so ``qpos``/``qvel`` are exactly the 7
  arm joints (``JOINT_NAMES``, the model's names and order);
* Pusher's goal becomes the reach **target**: a flat red disc (radius ``success_radius``,
  1 mm thick) lying on the table, on a mocap body (no joints, no collision: contype 0), so the
  gripper is drawn over it and never hidden by it;
* the table is moved and enlarged so the whole target area and the arm's base stand on it
  (Pusher's plane ended at y = -0.5, under the arm), and coloured so the arm, the table and
  the target differ; the two gripper tips are painted green;
* two cameras: ``scene``, fixed, looking down at the arm and the whole target area from the
  front (the target area fills the lower half of its picture; the disc is 7-8 pixels across,
  22-50 pixels at 84x84), and ``wrist``, on the wrist-roll body, 3 cm in front of the palm
  between the fingers, looking along the gripper (the direction from the wrist to the tips),
  90 degrees field of view, image x across the fingers: with the tips on the success point
  the disc, seen from 12 cm, covers 16-18 % of that picture;
* shadows and anti-aliasing are off before the first render (as for Reacher: several times
  faster on a CPU) and the off-screen buffer is sized for ``image_size``.

Physics is Pusher's: gravity 0, Euler, timestep 0.01 s, motor actuators with gear 1 and
torque limits +-2 N m, joint damping 1 (shoulder) / 0.1 (the rest), armature 0.04. Only the
gripper's palm and finger capsules collide (with the table).

Actions: **joint position targets** in rad for the 7 joints, what a ros2_control
joint_trajectory_controller takes; bounded by ``action_low``/``action_high``, the model's
joint ranges, and clipped to them. One control step (``dt`` = 0.05 s) is ``CONTROL_SUBSTEPS``
= 5 physics steps; at every physics step a joint-space PD loop turns the target into the
motor torques: ``tau = clip(KP * (q_target - q) - KD * qdot, -2, 2)`` N m. ``KP`` = (100, 60,
9, 10, 4, 4, 4) N m/rad and ``KD`` = (18, 11, 1.7, 1.7, 0.7, 0.7, 0.7) N m s/rad put every joint
at a natural frequency of 10-12 rad/s, damping ratio 0.95-1.2 with the joint's own damping,
for the joint-space inertia at the home pose (diagonal, armature included: 0.71, 0.41, 0.09,
0.09, 0.04, 0.04, 0.04 kg m^2); explicit at 0.01 s that is omega * dt <= 0.12, well inside
stability. There is no gravity, so a held target is reached without steady-state error; the
torque limit bounds the shoulder's acceleration (about 3 rad/s^2 at pan), which is what makes
large jumps slow. Measured (``test/unit/test_sim_arm7.py``): a step of the target by 0.05 rad
on every joint is tracked to < 0.005 rad after 0.55 s (0.011 rad after 0.3 s), a step by
0.2 rad to < 0.002 rad after 1.05 s (0.08 rad after 0.3 s); a 0.2 rad, 0.5 Hz sine lags by up
to 0.10 rad (about the PD's 2 zeta / omega = 0.2 s times the velocity). A target that drives
the gripper into the table is not reached (the contact holds it).

Observations: ``images`` (``{camera: uint8 HxWx3 RGB}``, each a copy, in ``camera_names``
order), ``image`` (the scene camera's frame, so one-camera consumers work unchanged),
``joint_names``, ``position`` (rad) and ``velocity`` (rad/s).

Task: bring the fingertip (the midpoint of the two gripper tips ``tip_arml``/``tip_armr``) to
the success point, ``SUCCESS_HEIGHT`` = 0.05 m above the target disc's centre (Pusher's object
centre height: the fingers then clear the table by 3 cm). Targets are uniform on
``TARGET_REGION`` (x in [0.35, 0.60] m, y in [-0.55, 0.00] m, world frame; the arm's base is at
(0, -0.6)), the part of the table the fingertip reaches from the home pose with the gripper
pointing down (measured by inverse kinematics on a 5 cm grid). Success: the fingertip within
``success_radius`` = 0.05 m (3-D) of the success point. Why 0.05 m: the arm is 0.82 m from
shoulder to fingertip and the scene camera sees about 1.1 m across, 1.3 cm per pixel at 84 px,
so 5 cm is 4 pixels: about the localisation error the best self-supervised encoder reached on
Reacher's pictures (17-21 mm at 5.5 mm per pixel: 3-4 pixels), while a 2 cm radius (Reacher's)
would be 1.5 pixels here. The disc is drawn with
that radius, so the picture shows what counts as success.

Reward: ``-distance - 0.01 * ||(a - a_prev) / half_range||^2`` (a: the clipped target, a_prev:
the previous step's, the start pose at a reset; half_range: half the joint range): reaching,
with a small price on jerky commands. Episodes never terminate; they are truncated after
``max_steps`` steps. Each episode draws the target, then the start pose: ``HOME`` + U(-0.1,
0.1) rad per joint (``arm="default"``) or + U(-0.3, 0.3) rad (``arm="random"``), clipped to
the limits, at rest.

Determinism: all randomness comes from one ``numpy`` generator seeded by ``seed`` (a later
``reset(seed=...)`` reseeds), so the same seed gives the same targets, joint states and, with
MuJoCo's software renderer, bit-identical images.
"""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first `import mujoco`

import numpy as np  # noqa: E402

JOINT_NAMES = ("r_shoulder_pan_joint", "r_shoulder_lift_joint", "r_upper_arm_roll_joint", "r_elbow_flex_joint",
               "r_forearm_roll_joint", "r_wrist_flex_joint", "r_wrist_roll_joint")
CAMERA_NAMES = ("scene", "wrist")
CONTROL_SUBSTEPS = 5  # physics steps (0.01 s each) per control step
KP = (100.0, 60.0, 9.0, 10.0, 4.0, 4.0, 4.0)  # N m/rad
KD = (18.0, 11.0, 1.7, 1.7, 0.7, 0.7, 0.7)  # N m s/rad
HOME = (1.4, 0.4, 1.4, -1.5, 1.4, -1.0, 0.3)  # rad: the gripper points down over the target area
TABLE_Z = -0.325  # m, the table's surface (world z)
SUCCESS_HEIGHT = 0.05  # m: the success point above the disc's centre
SUCCESS_RADIUS = 0.05  # m
TARGET_REGION = ((0.35, 0.60), (-0.55, 0.00))  # m: (x range, y range) of the disc's centre
ARM_STARTS = ("default", "random")
_START_SPREAD = {"default": 0.1, "random": 0.3}  # rad, uniform +- around HOME
_MARKER_HALF_HEIGHT = 0.0005  # m
_TARGET_RGBA = (0.9, 0.2, 0.2, 1.0)  # the only red in the scene
_TIP_RGBA = (0.0, 0.8, 0.3, 1.0)
_TABLE_RGBA = (0.55, 0.6, 0.7, 1.0)
_ARM_RGBA = (0.85, 0.85, 0.8, 1.0)
_SCENE_CAMERA = dict(pos=(1.1, -0.25, 0.6), lookat=(0.3, -0.3, -0.17), fovy=55.0)
_WRIST_CAMERA = dict(pos=(0.03, 0.0, 0.01), fovy=90.0)  # in the wrist-roll body, looking along +x


def model_path() -> str:
    """The Pusher-v5 model file inside the installed gymnasium."""
    import gymnasium

    p = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", "pusher_v5.xml")
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{p} not found: Arm7Sim needs gymnasium's MuJoCo assets (pip install 'gymnasium[mujoco]')")
    return p


def _look_quat(pos, lookat, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera quaternion (w, x, y, z) looking from ``pos`` at ``lookat`` (MuJoCo cameras look
    along their -z axis, y up)."""
    import mujoco

    f = np.asarray(lookat, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    x = np.cross(f, up)
    x /= np.linalg.norm(x)
    y = np.cross(x, f)
    mat = np.stack([x, y, -f], axis=1)  # columns: the camera's axes in the parent frame
    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, mat.reshape(-1))
    return q


def build_model(success_radius: float = SUCCESS_RADIUS, image_size: tuple[int, int] = (84, 84)):
    """The edited Pusher model (see the module docstring) -> ``mujoco.MjModel``."""
    import mujoco

    spec = mujoco.MjSpec.from_file(model_path())
    for name in ("object", "goal"):
        b = spec.body(name)
        if b is None:
            raise RuntimeError(f"{model_path()} has no body '{name}': not the Pusher-v5 model this sim expects")
        spec.delete(b)
    table = spec.geom("table")
    table.pos = (0.3, -0.3, TABLE_Z)
    table.size = (0.9, 0.9, 0.1)
    table.rgba = _TABLE_RGBA
    for g in spec.geoms:
        if g.name in ("tip_arml", "tip_armr"):
            g.rgba = _TIP_RGBA
        elif g.name not in ("table", "e1", "e2", "e1p", "e2p"):
            g.rgba = _ARM_RGBA
    target = spec.worldbody.add_body(name="target", mocap=True, pos=(0.45, -0.25, TABLE_Z + _MARKER_HALF_HEIGHT))
    target.add_geom(name="target", type=mujoco.mjtGeom.mjGEOM_CYLINDER, size=(float(success_radius), _MARKER_HALF_HEIGHT, 0),
                    rgba=_TARGET_RGBA, contype=0, conaffinity=0)
    c = _SCENE_CAMERA
    spec.worldbody.add_camera(name="scene", pos=c["pos"], quat=_look_quat(c["pos"], c["lookat"]), fovy=c["fovy"])
    w = _WRIST_CAMERA
    # wrist body frame: +x from the wrist to the tips, y across the fingers, z "up" of the gripper
    wrist_quat = np.zeros(4)
    mujoco.mju_mat2Quat(wrist_quat, np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).reshape(-1))
    spec.body("r_wrist_roll_link").add_camera(name="wrist", pos=w["pos"], quat=wrist_quat, fovy=w["fovy"])
    h, wd = image_size
    spec.visual.global_.offwidth = max(int(wd), 640)
    spec.visual.global_.offheight = max(int(h), 480)
    m = spec.compile()
    m.vis.quality.shadowsize = 0
    m.vis.quality.offsamples = 0
    m.vis.headlight.ambient[:] = 0.35
    m.vis.headlight.diffuse[:] = 0.5
    m.vis.headlight.specular[:] = 0.0
    names = tuple(m.joint(i).name for i in range(m.njnt))
    if names != JOINT_NAMES or m.nu != 7 or m.nq != 7:
        raise RuntimeError(f"unexpected Pusher model: joints {names}, {m.nu} actuators")
    return m


class Arm7Sim:
    """Seeded, deterministic 7-joint reacher with joint-position actions and two cameras.

    ``Arm7Sim(seed, image_size, max_steps, render=True, arm="default", ...)``; ``reset() -> obs``;
    ``step(action) -> (obs, reward, terminated, truncated, info)``; ``close()``. ``info`` holds
    ``distance`` (m), ``success`` (bool), ``target`` (the success point) and ``fingertip``
    (x, y, z in m, world frame).
    """

    joint_names = JOINT_NAMES
    camera_names = CAMERA_NAMES
    action_mode = "position"  # joint position targets (rad); ReacherSim's are velocities
    action_units = "rad"

    def __init__(
        self,
        seed: int = 0,
        image_size: int | tuple[int, int] = 84,
        max_steps: int = 100,
        render: bool = True,
        arm: str = "default",
        success_radius: float = SUCCESS_RADIUS,
        kp=KP,
        kd=KD,
    ):
        import mujoco

        if isinstance(image_size, int):
            h = w = int(image_size)
        else:
            h, w = (int(x) for x in image_size)
        if h < 16 or w < 16:
            raise ValueError(f"image_size {h}x{w} is too small (at least 16x16)")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        if not success_radius > 0:
            raise ValueError(f"success_radius must be > 0 m, got {success_radius}")
        if arm not in ARM_STARTS:
            raise ValueError(f"arm start '{arm}' is not one of {ARM_STARTS}")
        self.seed = int(seed)
        self.image_size = (h, w)
        self.max_steps = int(max_steps)
        self.success_radius = float(success_radius)
        self.render_images = bool(render)
        self.arm = arm
        self.kp = np.asarray(kp, dtype=np.float64).reshape(7)
        self.kd = np.asarray(kd, dtype=np.float64).reshape(7)
        self.model = m = build_model(self.success_radius, (h, w))
        self.data = mujoco.MjData(m)
        self.action_low = m.jnt_range[:, 0].astype(np.float64).copy()
        self.action_high = m.jnt_range[:, 1].astype(np.float64).copy()
        self._half_range = 0.5 * (self.action_high - self.action_low)
        self._ctrl_low = m.actuator_ctrlrange[:, 0].copy()
        self._ctrl_high = m.actuator_ctrlrange[:, 1].copy()
        self._tips = (m.geom("tip_arml").id, m.geom("tip_armr").id)
        self._tip_body = m.body("tips_arm").id
        self._wrist_body = m.body("r_wrist_roll_link").id
        self._target_mocap = int(m.body_mocapid[m.body("target").id])
        self._renderer = mujoco.Renderer(m, h, w) if self.render_images else None
        self._rng = np.random.default_rng(self.seed)
        self._command = np.zeros(7)
        self._steps = 0
        self._needs_reset = True
        self._closed = False

    # ------------------------------------------------------------------ state
    @property
    def dt(self) -> float:
        return float(self.model.opt.timestep) * CONTROL_SUBSTEPS

    @property
    def joint_positions(self) -> np.ndarray:
        return self.data.qpos.astype(np.float64).copy()

    @property
    def joint_velocities(self) -> np.ndarray:
        return self.data.qvel.astype(np.float64).copy()

    @property
    def command(self) -> np.ndarray:
        """The joint position target being tracked (rad, clipped)."""
        return self._command.copy()

    @property
    def target(self) -> np.ndarray:
        """The success point: ``SUCCESS_HEIGHT`` above the disc's centre (x, y, z in m)."""
        p = self.data.mocap_pos[self._target_mocap].astype(np.float64).copy()
        p[2] = TABLE_Z + SUCCESS_HEIGHT
        return p

    @property
    def target_disc(self) -> np.ndarray:
        """The disc's centre on the table (x, y, z in m)."""
        return self.data.mocap_pos[self._target_mocap].astype(np.float64).copy()

    @property
    def fingertip(self) -> np.ndarray:
        """Midpoint of the two gripper tips (x, y, z in m)."""
        a, b = self._tips
        return (0.5 * (self.data.geom_xpos[a] + self.data.geom_xpos[b])).astype(np.float64)

    @property
    def gripper_axis(self) -> np.ndarray:
        """Unit vector from the wrist towards the tips (world frame); z < 0 points down."""
        return self.data.xmat[self._wrist_body].reshape(3, 3)[:, 0].astype(np.float64).copy()

    @property
    def gripper_rotation(self) -> np.ndarray:
        """The wrist-roll body's orientation (3x3, columns: its axes in the world frame): x from
        the wrist towards the tips, y along the line from one finger to the other."""
        return self.data.xmat[self._wrist_body].reshape(3, 3).astype(np.float64).copy()

    def jacobians(self) -> tuple[np.ndarray, np.ndarray]:
        """(Jp, Jr): the fingertip's translational Jacobian (3x7, m/rad) and the gripper's
        rotational one (3x7, rad/rad), by ``mujoco.mj_jac`` at the current state."""
        import mujoco

        jp, jr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        mujoco.mj_jac(self.model, self.data, jp, jr, self.fingertip, self._tip_body)
        return jp, jr

    @property
    def distance(self) -> float:
        return float(np.linalg.norm(self.fingertip - self.target))

    @property
    def steps(self) -> int:
        return self._steps

    def render(self, camera: str = "scene") -> np.ndarray:
        """One camera's current frame, uint8 HxWx3 RGB (a copy)."""
        if not self.render_images:
            raise RuntimeError("Arm7Sim was created with render=False")
        if camera not in CAMERA_NAMES:
            raise ValueError(f"camera '{camera}' is not one of {CAMERA_NAMES}")
        self._check_open()
        self._renderer.update_scene(self.data, camera=camera)
        return np.ascontiguousarray(self._renderer.render()).copy()

    def _obs(self) -> dict:
        obs = {"joint_names": list(JOINT_NAMES), "position": self.joint_positions, "velocity": self.joint_velocities}
        if self.render_images:
            obs["images"] = {c: self.render(c) for c in CAMERA_NAMES}
            obs["image"] = obs["images"]["scene"]
        return obs

    def _info(self) -> dict:
        d = self.distance
        return {"distance": d, "success": bool(d < self.success_radius), "target": self.target,
                "fingertip": self.fingertip}

    def info(self) -> dict:
        return self._info()

    # ------------------------------------------------------------------ episode
    def reset(self, seed: int | None = None, arm: str | None = None) -> dict:
        """Start an episode: a new target, then a start pose near ``HOME`` (``arm``: default
        +-0.1 rad, random +-0.3 rad; default: the constructor's), at rest. ``seed`` reseeds the
        generator; otherwise the stream continues from the constructor's seed."""
        import mujoco

        self._check_open()
        arm = self.arm if arm is None else arm
        if arm not in ARM_STARTS:
            raise ValueError(f"arm start '{arm}' is not one of {ARM_STARTS}")
        if seed is not None:
            self._rng = np.random.default_rng(int(seed))
        (x0, x1), (y0, y1) = TARGET_REGION
        xy = self._rng.uniform((x0, y0), (x1, y1))
        spread = _START_SPREAD[arm]
        q = np.clip(np.asarray(HOME) + self._rng.uniform(-spread, spread, 7), self.action_low, self.action_high)
        d = self.data
        mujoco.mj_resetData(self.model, d)
        d.mocap_pos[self._target_mocap] = (xy[0], xy[1], TABLE_Z + _MARKER_HALF_HEIGHT)
        d.qpos[:] = q
        d.qvel[:] = 0.0
        mujoco.mj_forward(self.model, d)
        self._command = q.copy()
        self._steps = 0
        self._needs_reset = False
        return self._obs()

    def check_action(self, action) -> np.ndarray:
        """``action`` as 7 finite joint positions (rad), clipped to the joint limits; a wrong
        shape or a non-finite value is a ValueError."""
        try:
            a = np.asarray(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"action must be 7 finite joint positions (rad), got {action!r}") from None
        if a.shape != (7,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 7 finite joint positions (rad), got {action!r}")
        return np.clip(a, self.action_low, self.action_high)

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        """Track joint position targets (rad, clipped to the limits) for one ``dt`` = 0.05 s step."""
        import mujoco

        self._check_open()
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        a = self.check_action(action)
        m, d = self.model, self.data
        for _ in range(CONTROL_SUBSTEPS):
            tau = self.kp * (a - d.qpos) - self.kd * d.qvel
            np.clip(tau, self._ctrl_low, self._ctrl_high, out=d.ctrl)
            mujoco.mj_step(m, d)
        mujoco.mj_kinematics(m, d)  # positions of the state after the last step (for info and the cameras)
        change = float(np.sum(((a - self._command) / self._half_range) ** 2))
        self._command = a
        self._steps += 1
        info = self._info()
        reward = -info["distance"] - 0.01 * change
        truncated = self._steps >= self.max_steps
        return self._obs(), float(reward), False, bool(truncated), info

    def _check_open(self):
        if self._closed:
            raise RuntimeError("Arm7Sim is closed")

    def close(self) -> None:
        if not self._closed:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None
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


def expert_action(sim: Arm7Sim, max_reach_step: float = 0.04, max_joint_step: float = 0.1, damping: float = 0.03,
                  down: float = -0.3, down_weight: float = 0.3, level_weight: float = 0.3,
                  posture_gain: float = 0.05) -> np.ndarray:
    """Scripted expert: one damped-least-squares inverse-kinematics step of the fingertip
    towards the success point, returned as joint position targets (rad, within the limits).

    The Cartesian error is bounded to ``max_reach_step`` m per control step (0.8 m/s at 20 Hz),
    solved through the fingertip Jacobian (``mujoco.mj_jac``) with damping ``damping``
    (``dq = J^T (J J^T + damping^2 I)^-1 e``); while the gripper points less steeply down
    than ``down`` (the z of its axis), one more row turns it down (weight ``down_weight``),
    which keeps the palm off the table and the target in the wrist camera's view, and one row
    keeps the line through the two fingers level (weight ``level_weight``: a tilted gripper
    put one finger 10 cm below the fingertip point, on the table, in early tries). The
    remaining freedom pulls towards ``HOME`` (``posture_gain``, null space), so the arm stays
    in the configuration family the target area was measured for. The step is bounded to
    ``max_joint_step`` rad per joint and added to the measured joint positions."""
    q = sim.joint_positions
    e = sim.target - sim.fingertip
    n = float(np.linalg.norm(e))
    if n > max_reach_step:
        e = e * (max_reach_step / n)
    jp, jr = sim.jacobians()
    rows, err = [jp], [e]
    rot = sim.gripper_rotation
    axis, across = rot[:, 0], rot[:, 1]
    # d(v_z)/dq for a body-fixed vector v: joint i turns it by jr[:, i] x v
    rows.append(level_weight * np.cross(jr.T, across)[None, :, 2])
    err.append([level_weight * -across[2]])
    if axis[2] > down:
        rows.append(down_weight * np.cross(jr.T, axis)[None, :, 2])
        err.append([down_weight * (down - axis[2])])
    J, e = np.vstack(rows), np.concatenate(err)
    Jpinv = J.T @ np.linalg.inv(J @ J.T + damping ** 2 * np.eye(len(e)))
    dq = Jpinv @ e + (np.eye(7) - Jpinv @ J) @ (posture_gain * (np.asarray(HOME) - q))
    dq = np.clip(dq, -max_joint_step, max_joint_step)
    return np.clip(q + dq, sim.action_low, sim.action_high)
