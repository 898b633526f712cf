"""Weight Sharing Attention (WSA) head and its baselines, in PyTorch (no ROS).

The frozen encoders are *not* part of this module: it receives their embeddings
(``embs[name]``, shape ``[B, *output_shape]``) and holds only the trainable parts of the
method (see ``shared/reference/wsa-method.md``):

- one adapter per feature encoder: spatial maps ``[C,H,W]`` go through ``S_i`` (1x1 conv that
  reduces channels, a strided conv that reduces the spatial size, ReLU) and then ``A_i``
  (Linear -> LayerNorm -> ReLU to ``d``); flat embeddings only through ``A_i``. Option
  ``spatial_adapter: keypoints`` replaces ``S_i`` by a 1x1 conv + spatial soft-argmax (not in
  the paper; it reads positions out in a way that generalises to unseen positions);
- the context adapter ``A_0`` (Linear -> LayerNorm -> ReLU on the flattened context embedding);
- ONE shared scorer ``f_theta([C; E_i])`` (Linear(2d -> 1), optional hidden layer), normalised
  over the encoders with softmax, or ``ReLU(s_i) / max(sum_j ReLU(s_j), 1e-8)``;
  ``R = sum_i alpha_i E_i``;
- optional proprioception (already normalised) concatenated to ``R``;
- a tanh-squashed Gaussian actor and a twin-Q critic (SAC) on ``[R; proprio]``.

Baselines share the same class and interface: ``concat`` (adapters, concatenation, Linear to
``d``), ``mean`` (uniform alpha), ``single`` (one encoder), ``e2e`` (the "encoder" outputs the
preprocessed image ``[3,H,W]`` and its adapter is a trainable Nature CNN). Their ``alpha`` is
uniform (mean, concat) or one-hot (single, e2e).

Deviation, documented: with ``relu`` normalisation, when every score is <= 0 the weights fall
back to uniform instead of all zeros, so alpha is always a distribution. The scorer starts
with small weights and a zero bias (softmax) or a bias of 1 (relu) so alpha starts ~uniform.
"""
from __future__ import annotations

import copy
import math
import re
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

FUSIONS = ("wsa", "concat", "mean", "single", "e2e")
NORMALIZATIONS = ("softmax", "relu")
ROLES = ("feature", "context", "both")
HEAD_FORMAT = "wsa_head/1"
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")

#: Defaults of every hyper-parameter stored in a bundle's ``head`` mapping.
HEAD_DEFAULTS: dict[str, Any] = {
    "d": 64,
    "actor_hidden": [256, 256],
    "critic_hidden": [256, 256],
    "critic_norm": False,  # True: Linear -> LayerNorm -> ReLU in the twin critics' hidden layers (RLPD)
    "scorer_hidden": 0,  # 0: Linear(2d -> 1); n > 0: Linear(2d -> n) -> ReLU -> Linear(n -> 1)
    "adapter_channels": 16,  # channels after the 1x1 conv of a spatial adapter
    "spatial_adapter": "conv",  # conv: S_i as in the paper; keypoints: 1x1 conv -> spatial soft-argmax
    "adapter_keypoints": 16,  # maps of the keypoints spatial adapter
    "context_adapter": "flat",  # flat: A_0(flat(emb)) as in the paper; spatial: the spatial adapter first
    "log_std": "state",  # state: predicted by the actor; learned: one free parameter per joint
    "log_std_init": -0.5,
    "log_std_min": -5.0,
    "log_std_max": 2.0,
    "single": None,  # fusion single/e2e: the feature encoder used (default: the first)
}


# --------------------------------------------------------------------------- config
def make_head_config(
    fusion: str,
    encoders: Iterable[Any],
    action_dim: int,
    proprio_dim: int = 0,
    normalization: str = "softmax",
    **overrides: Any,
) -> dict:
    """Build a validated ``head`` mapping.

    ``encoders``: dicts ``{name, output_shape, role}`` or objects with those attributes
    (e.g. ``wsa_ros.runtime.bundle.EncoderSpec``), in bundle order."""
    encs = []
    for e in encoders:
        if isinstance(e, Mapping):
            encs.append({"name": e["name"], "output_shape": list(e["output_shape"]), "role": e.get("role", "feature")})
        else:
            encs.append({"name": e.name, "output_shape": list(e.output_shape), "role": getattr(e, "role", "feature")})
    unknown = set(overrides) - set(HEAD_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown head option(s) {sorted(unknown)}; known: {sorted(HEAD_DEFAULTS)}")
    cfg = {
        "format": HEAD_FORMAT,
        "fusion": fusion,
        "normalization": normalization,
        "encoders": encs,
        "proprio_dim": int(proprio_dim),
        "action_dim": int(action_dim),
        **copy.deepcopy(HEAD_DEFAULTS),
        **copy.deepcopy(overrides),
    }
    return validate_head_config(cfg)


def validate_head_config(cfg: Mapping[str, Any]) -> dict:
    """Check a ``head`` mapping and return a normalised copy (defaults filled in).
    Raises ValueError naming the bad key."""
    if not isinstance(cfg, Mapping):
        raise ValueError(f"head config must be a mapping, got {type(cfg).__name__}")
    c = {**copy.deepcopy(HEAD_DEFAULTS), **copy.deepcopy(dict(cfg))}
    c.setdefault("format", HEAD_FORMAT)
    if c["format"] != HEAD_FORMAT:
        raise ValueError(f"head.format '{c['format']}' is not '{HEAD_FORMAT}'")
    for key in ("fusion", "encoders", "action_dim"):
        if key not in c:
            raise ValueError(f"head config: missing required key '{key}'")
    c.setdefault("normalization", "softmax")
    c.setdefault("proprio_dim", 0)
    if c["fusion"] not in FUSIONS:
        raise ValueError(f"head.fusion '{c['fusion']}' is not one of {FUSIONS}")
    if c["normalization"] not in NORMALIZATIONS:
        raise ValueError(f"head.normalization '{c['normalization']}' is not one of {NORMALIZATIONS}")
    encs = c["encoders"]
    if not isinstance(encs, list) or not encs:
        raise ValueError("head.encoders must be a non-empty list")
    names = []
    for i, e in enumerate(encs):
        if not isinstance(e, Mapping) or "name" not in e or "output_shape" not in e:
            raise ValueError(f"head.encoders[{i}] needs 'name' and 'output_shape', got {e!r}")
        name = e["name"]
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ValueError(f"head.encoders[{i}]: name {name!r} must match {_NAME_RE.pattern} (used in ONNX input names)")
        shape = e["output_shape"]
        if not isinstance(shape, (list, tuple)) or not shape or not all(isinstance(s, int) and s > 0 for s in shape):
            raise ValueError(f"encoder '{name}': output_shape must be a list of positive ints, got {shape!r}")
        role = e.get("role", "feature")
        if role not in ROLES:
            raise ValueError(f"encoder '{name}': role '{role}' is not one of {ROLES}")
        encs[i] = {"name": name, "output_shape": [int(s) for s in shape], "role": role}
        names.append(name)
    if len(set(names)) != len(names):
        raise ValueError(f"head.encoders: duplicate names {names}")
    feats = [e["name"] for e in encs if e["role"] in ("feature", "both")]
    ctxs = [e["name"] for e in encs if e["role"] in ("context", "both")]
    if not feats:
        raise ValueError("head.encoders: no encoder has role feature/both")
    if len(ctxs) > 1:
        raise ValueError(f"head.encoders: more than one context encoder {ctxs}")
    if c["fusion"] == "wsa" and not ctxs:
        raise ValueError("fusion 'wsa' needs a context encoder (role context or both)")
    if c["fusion"] in ("single", "e2e"):
        if c["single"] is None:
            c["single"] = feats[0]
        if c["single"] not in feats:
            raise ValueError(f"head.single '{c['single']}' is not a feature encoder {feats}")
    else:
        c["single"] = None
    if c["fusion"] == "e2e":
        for e in encs:
            if e["name"] == c["single"]:
                s = e["output_shape"]
                if len(s) != 3 or s[0] not in (1, 3) or s[1] < 36 or s[2] < 36:
                    raise ValueError(
                        f"fusion 'e2e': encoder '{e['name']}' must output a preprocessed image "
                        f"[1|3, H>=36, W>=36] for the Nature CNN, got {s}"
                    )
    for key in ("d", "action_dim"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ValueError(f"head.{key} must be a positive int, got {c[key]!r}")
    for key in ("proprio_dim", "scorer_hidden", "adapter_channels"):
        if not isinstance(c[key], int) or c[key] < 0:
            raise ValueError(f"head.{key} must be a non-negative int, got {c[key]!r}")
    if c["adapter_channels"] < 1:
        raise ValueError("head.adapter_channels must be >= 1")
    for key in ("actor_hidden", "critic_hidden"):
        v = c[key]
        if not isinstance(v, (list, tuple)) or not all(isinstance(x, int) and x > 0 for x in v):
            raise ValueError(f"head.{key} must be a list of positive ints, got {v!r}")
        c[key] = [int(x) for x in v]
    if not isinstance(c["critic_norm"], bool):
        raise ValueError(f"head.critic_norm must be true or false, got {c['critic_norm']!r}")
    if c["log_std"] not in ("state", "learned"):
        raise ValueError(f"head.log_std '{c['log_std']}' is not 'state' or 'learned'")
    if c["spatial_adapter"] not in ("conv", "keypoints"):
        raise ValueError(f"head.spatial_adapter '{c['spatial_adapter']}' is not 'conv' or 'keypoints'")
    if not isinstance(c["adapter_keypoints"], int) or c["adapter_keypoints"] < 1:
        raise ValueError(f"head.adapter_keypoints must be a positive int, got {c['adapter_keypoints']!r}")
    if c["context_adapter"] not in ("flat", "spatial"):
        raise ValueError(f"head.context_adapter '{c['context_adapter']}' is not 'flat' or 'spatial'")
    for key in ("log_std_init", "log_std_min", "log_std_max"):
        c[key] = float(c[key])
    if not c["log_std_min"] < c["log_std_max"]:
        raise ValueError("head.log_std_min must be below head.log_std_max")
    first = ("format", "fusion", "normalization", "encoders", "proprio_dim", "action_dim")
    return {**{k: c[k] for k in first}, **{k: v for k, v in c.items() if k not in first}}


# --------------------------------------------------------------------------- blocks
def mlp(in_dim: int, hidden: list[int], out_dim: int, norm: bool = False) -> nn.Sequential:
    """Linear (-> LayerNorm if ``norm``) -> ReLU per hidden layer, then Linear to ``out_dim``."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers += [nn.Linear(d, h), *([nn.LayerNorm(h)] if norm else []), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, out_dim))
    return nn.Sequential(*layers)


class FlatAdapter(nn.Module):
    """A_i: flatten -> Linear -> LayerNorm -> ReLU."""

    def __init__(self, shape: list[int], d: int):
        super().__init__()
        self.linear = nn.Linear(math.prod(shape), d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.linear(x.flatten(1))))


class SpatialAdapter(nn.Module):
    """S_i then A_i for a [C,H,W] feature map: 1x1 conv (C -> channels), strided 3x3 conv
    (stride 2 when the map is at least 4x4), ReLU, flatten, Linear -> LayerNorm -> ReLU."""

    def __init__(self, shape: list[int], d: int, channels: int):
        super().__init__()
        c, h, w = shape
        ch = min(channels, c)
        k = 3 if min(h, w) >= 3 else 1
        s = 2 if min(h, w) >= 4 else 1
        self.reduce = nn.Conv2d(c, ch, 1)
        self.down = nn.Conv2d(ch, ch, k, stride=s)
        with torch.no_grad():
            n = self.down(self.reduce(torch.zeros(1, c, h, w))).numel()
        self.linear = nn.Linear(n, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.down(self.reduce(x)))
        return F.relu(self.norm(self.linear(y.flatten(1))))


class KeypointAdapter(nn.Module):
    """Alternative spatial adapter for [C,H,W] maps: 1x1 conv to K maps, spatial soft-argmax
    (learned temperature) -> K (x, y) in [-1, 1], then Linear -> LayerNorm -> ReLU. Position
    read-out that generalises to positions not seen in training (targets, objects)."""

    def __init__(self, shape: list[int], d: int, keypoints: int, temperature: float = 0.1):
        super().__init__()
        c, h, w = shape
        self.maps = nn.Conv2d(c, keypoints, 1)
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1), persistent=False)
        # a low start temperature makes the maps peaky early (measured: BC val MSE 0.056 -> 0.037)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        self.linear = nn.Linear(2 * keypoints, d)
        self.norm = nn.LayerNorm(d)

    def keypoints(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, K, 2] expected (x, y) of each map, in [-1, 1]."""
        m = self.maps(x).flatten(2)  # B, K, HW
        p = torch.softmax(m / self.log_temperature.exp(), dim=-1)
        return p @ self.grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.linear(self.keypoints(x).flatten(1))))


class NatureCNNAdapter(nn.Module):
    """End-to-end baseline: Nature CNN (Conv32 8x8 s4, Conv64 4x4 s2, Conv64 3x3 s1) on the
    preprocessed image, then Linear -> ReLU to d."""

    def __init__(self, shape: list[int], d: int):
        super().__init__()
        c, h, w = shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1), nn.ReLU(),
        )  # fmt: skip
        with torch.no_grad():
            n = self.convs(torch.zeros(1, c, h, w)).numel()
        self.linear = nn.Linear(n, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.linear(self.convs(x).flatten(1)))


def make_adapter(shape: list[int], d: int, channels: int, kind: str = "auto", keypoints: int = 16) -> nn.Module:
    """``auto``/``keypoints``: a spatial adapter (conv S_i, or the keypoint read-out) for 3-D
    [C,H,W] shapes, the flat adapter otherwise; ``flat``; ``nature`` (e2e baseline)."""
    if kind == "nature":
        return NatureCNNAdapter(shape, d)
    if kind == "flat" or len(shape) != 3:
        return FlatAdapter(shape, d)
    if kind == "keypoints":
        return KeypointAdapter(shape, d, keypoints)
    return SpatialAdapter(shape, d, channels)


class Scorer(nn.Module):
    """Shared scorer f_theta([C; E_i]) -> s_i (small final weights so alpha starts uniform)."""

    def __init__(self, d: int, hidden: int, bias_init: float):
        super().__init__()
        self.net = mlp(2 * d, [hidden] if hidden > 0 else [], 1)
        last = self.net[-1]
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.constant_(last.bias, bias_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def normalize_scores(s: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, k] scores -> [B, k] weights summing to 1 (see module docstring for relu)."""
    if kind == "softmax":
        return torch.softmax(s, dim=-1)
    r = F.relu(s)
    tot = r.sum(dim=-1, keepdim=True)
    uniform = torch.ones_like(r) / r.shape[-1]
    return torch.where(tot > 1e-8, r / tot.clamp_min(1e-8), uniform)


# --------------------------------------------------------------------------- the module
class FusionPolicy(nn.Module):
    """WSA (or baseline) fusion + SAC actor/critic. Build with ``from_config(head)``;
    ``config`` gives that mapping back (it goes into the bundle manifest)."""

    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        c = validate_head_config(config)
        self._config = c
        d = c["d"]
        self.fusion: str = c["fusion"]
        self.normalization: str = c["normalization"]
        self.encoder_names: list[str] = [e["name"] for e in c["encoders"]]
        self.shapes: dict[str, list[int]] = {e["name"]: e["output_shape"] for e in c["encoders"]}
        self.feature_names: list[str] = [e["name"] for e in c["encoders"] if e["role"] in ("feature", "both")]
        ctx = [e["name"] for e in c["encoders"] if e["role"] in ("context", "both")]
        self.context_name: str | None = ctx[0] if ctx else None
        self.proprio_dim: int = c["proprio_dim"]
        self.action_dim: int = c["action_dim"]
        self.d = d
        k = len(self.feature_names)

        # adapters: which feature encoders actually feed R
        if self.fusion in ("single", "e2e"):
            used = [c["single"]]
        else:
            used = list(self.feature_names)
        self.used_names = used
        if self.fusion == "e2e":
            kind = "nature"
        else:
            kind = "keypoints" if c["spatial_adapter"] == "keypoints" else "auto"
        self.adapters = nn.ModuleDict(
            {n: make_adapter(self.shapes[n], d, c["adapter_channels"], kind, c["adapter_keypoints"]) for n in used}
        )
        self.context_adapter: nn.Module | None = None
        self.scorer: Scorer | None = None
        self.fuse: nn.Linear | None = None
        if self.fusion == "wsa":
            if c["context_adapter"] == "flat":
                ckind = "flat"
            else:
                ckind = "keypoints" if c["spatial_adapter"] == "keypoints" else "auto"
            self.context_adapter = make_adapter(
                self.shapes[self.context_name], d, c["adapter_channels"], ckind, c["adapter_keypoints"]
            )
            self.scorer = Scorer(d, c["scorer_hidden"], 0.0 if self.normalization == "softmax" else 1.0)
        elif self.fusion == "concat":
            self.fuse = nn.Linear(k * d, d)

        if self.fusion in ("single", "e2e"):
            fixed = torch.zeros(1, k)
            fixed[0, self.feature_names.index(c["single"])] = 1.0
        else:
            fixed = torch.full((1, k), 1.0 / k)
        self.register_buffer("fixed_alpha", fixed, persistent=False)

        self.state_dim = d + self.proprio_dim
        a = self.action_dim
        self.learned_log_std = c["log_std"] == "learned"
        self.actor_net = mlp(self.state_dim, c["actor_hidden"], a if self.learned_log_std else 2 * a)
        if self.learned_log_std:
            self.log_std_param = nn.Parameter(torch.full((a,), c["log_std_init"]))
        else:
            last = self.actor_net[-1]
            with torch.no_grad():
                last.weight[a:].mul_(0.01)
                last.bias[a:].fill_(c["log_std_init"])
        self.q1 = mlp(self.state_dim + a, c["critic_hidden"], 1, c["critic_norm"])
        self.q2 = mlp(self.state_dim + a, c["critic_hidden"], 1, c["critic_norm"])

    # -- construction
    @classmethod
    def from_config(cls, head: Mapping[str, Any]) -> "FusionPolicy":
        return cls(head)

    @property
    def config(self) -> dict:
        """The ``head`` mapping (plain YAML-safe types) that rebuilds this module."""
        return copy.deepcopy(self._config)

    def fusion_parameters(self) -> list[nn.Parameter]:
        """Adapters, context adapter, scorer / fuse layer (everything before the heads)."""
        mods = [self.adapters, self.context_adapter, self.scorer, self.fuse]
        return [p for m in mods if m is not None for p in m.parameters()]

    def actor_parameters(self) -> list[nn.Parameter]:
        ps = list(self.actor_net.parameters())
        if self.learned_log_std:
            ps.append(self.log_std_param)
        return ps

    def critic_parameters(self) -> list[nn.Parameter]:
        return list(self.q1.parameters()) + list(self.q2.parameters())

    # -- forward parts
    def _check_inputs(self, embs: Mapping[str, torch.Tensor], proprio: torch.Tensor | None) -> int:
        need = list(self.used_names) + ([self.context_name] if self.fusion == "wsa" else [])
        batch = None
        for n in need:
            if n not in embs:
                raise KeyError(f"embedding for encoder '{n}' missing (got {sorted(embs)})")
            x = embs[n]
            if list(x.shape[1:]) != self.shapes[n]:
                raise ValueError(f"embedding '{n}' has shape {list(x.shape)}, expected [B, {self.shapes[n]}]")
            batch = x.shape[0] if batch is None else batch
        if self.proprio_dim:
            if proprio is None:
                raise ValueError(f"proprio [B, {self.proprio_dim}] required")
            if proprio.shape[-1] != self.proprio_dim:
                raise ValueError(f"proprio has shape {list(proprio.shape)}, expected [B, {self.proprio_dim}]")
        return int(batch)

    def features(
        self, embs: Mapping[str, torch.Tensor], proprio: torch.Tensor | None = None, check: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (state [B, d + proprio_dim], alpha [B, k feature encoders]). ``check=False``: the
        caller vouches for the shapes (the learner, whose replay was built from this head's spec)."""
        if check and not torch.jit.is_tracing():
            self._check_inputs(embs, proprio)
        E = [self.adapters[n](embs[n]) for n in self.used_names]
        if self.fusion == "wsa":
            assert self.context_adapter is not None and self.scorer is not None
            C = self.context_adapter(embs[self.context_name])
            Es = torch.stack(E, dim=1)  # B, k, d
            Cs = C.unsqueeze(1).expand_as(Es)
            s = self.scorer(torch.cat([Cs, Es], dim=-1))  # B, k
            alpha = normalize_scores(s, self.normalization)
            R = (alpha.unsqueeze(-1) * Es).sum(dim=1)
        else:
            if self.fusion == "concat":
                assert self.fuse is not None
                R = self.fuse(torch.cat(E, dim=-1))
            elif self.fusion == "mean":
                R = torch.stack(E, dim=1).mean(dim=1)
            else:  # single, e2e
                R = E[0]
            alpha = self.fixed_alpha.expand(R.shape[0], -1)
        if self.proprio_dim:
            R = torch.cat([R, proprio.to(R.dtype)], dim=-1)
        return R, alpha

    def actor_from_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (mean, log_std) of the pre-tanh Gaussian, log_std clamped."""
        out = self.actor_net(state)
        a = self.action_dim
        if self.learned_log_std:
            mean, log_std = out, self.log_std_param.expand_as(out)
        else:
            mean, log_std = out[..., :a], out[..., a:]
        c = self._config
        return mean, log_std.clamp(c["log_std_min"], c["log_std_max"])

    def critic_from_state(self, state: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Twin Q values [B] for a squashed action in [-1, 1]. The two critics run as one batched
        matrix product per layer (their weights stacked): the same numbers as ``q1(x), q2(x)``
        with half the operator calls (``test_model``)."""
        x = torch.cat([state, action], dim=-1).unsqueeze(0).expand(2, -1, -1)
        layers = [m for m in self.q1 if isinstance(m, nn.Linear)]
        twins = [m for m in self.q2 if isinstance(m, nn.Linear)]
        norms = [m for m in self.q1 if isinstance(m, nn.LayerNorm)]
        norm_twins = [m for m in self.q2 if isinstance(m, nn.LayerNorm)]
        for i, (a, b) in enumerate(zip(layers, twins)):
            w = torch.stack([a.weight, b.weight]).transpose(1, 2)  # [2, in, out]
            x = torch.baddbmm(torch.stack([a.bias, b.bias]).unsqueeze(1), x, w)
            if i < len(layers) - 1:
                if norms:
                    n1, n2 = norms[i], norm_twins[i]
                    x = torch.addcmul(torch.stack([n1.bias, n2.bias]).unsqueeze(1),
                                      F.layer_norm(x, n1.normalized_shape, eps=n1.eps),
                                      torch.stack([n1.weight, n2.weight]).unsqueeze(1))
                x = F.relu(x)
        return x[0].squeeze(-1), x[1].squeeze(-1)

    def actor(self, embs, proprio=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (mean, log_std, alpha)."""
        state, alpha = self.features(embs, proprio)
        mean, log_std = self.actor_from_state(state)
        return mean, log_std, alpha

    def deterministic_action(self, embs, proprio=None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (tanh(mean) in [-1, 1], alpha): what policy.onnx computes."""
        mean, _, alpha = self.actor(embs, proprio)
        return torch.tanh(mean), alpha

    def critic(self, embs, proprio, action) -> tuple[torch.Tensor, torch.Tensor]:
        state, _ = self.features(embs, proprio)
        return self.critic_from_state(state, action)

    @staticmethod
    def squash(mean: torch.Tensor, log_std: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-Gaussian sample -> (action in [-1,1], log_prob [B])."""
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean) if sample else mean
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - (2 * (math.log(2.0) - u - F.softplus(-2 * u))).sum(-1)
        return torch.tanh(u), logp

    def sample(self, embs, proprio=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAC policy sample -> (action, log_prob, alpha)."""
        mean, log_std, alpha = self.actor(embs, proprio)
        a, logp = self.squash(mean, log_std)
        return a, logp, alpha

    def forward(self, embs, proprio=None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.deterministic_action(embs, proprio)

    # -- changing the encoder set
    def _rebuilt(self, cfg: dict) -> "FusionPolicy":
        new = FusionPolicy(cfg).to(next(self.parameters()).device)
        old_sd = self.state_dict()
        new_sd = new.state_dict()
        keep = {k: v.detach().clone() for k, v in old_sd.items() if k in new_sd and new_sd[k].shape == v.shape}
        new_sd.update(keep)
        new.load_state_dict(new_sd)
        new.fresh_keys = sorted(set(new_sd) - set(keep))  # type: ignore[attr-defined]
        return new

    def add_encoder(self, name: str, output_shape: list[int], role: str = "feature") -> "FusionPolicy":
        """A new module with one more encoder; the shared scorer, the other adapters and the
        heads are copied (only the new adapter is fresh; for ``concat`` the fuse layer too,
        since its input grows). ``new.fresh_keys`` lists the re-initialised tensors."""
        if name in self.encoder_names:
            raise ValueError(f"encoder '{name}' is already in the head {self.encoder_names}")
        if role in ("context", "both") and self.context_name is not None:
            raise ValueError(f"the head already has a context encoder '{self.context_name}'")
        cfg = self.config
        cfg["encoders"].append({"name": name, "output_shape": [int(s) for s in output_shape], "role": role})
        return self._rebuilt(cfg)

    def remove_encoder(self, name: str) -> "FusionPolicy":
        """A new module without ``name``; everything else keeps its trained weights."""
        if name not in self.encoder_names:
            raise ValueError(f"encoder '{name}' is not in the head {self.encoder_names}")
        if self.fusion == "wsa" and name == self.context_name:
            raise ValueError(f"cannot remove '{name}': it is the context encoder WSA needs")
        if self.fusion in ("single", "e2e") and name == self._config["single"]:
            raise ValueError(f"cannot remove '{name}': fusion '{self.fusion}' uses it")
        cfg = self.config
        cfg["encoders"] = [e for e in cfg["encoders"] if e["name"] != name]
        return self._rebuilt(cfg)


class PolicyExport(nn.Module):
    """Positional wrapper for ONNX export: (emb_<name> for every encoder in order, [proprio])
    -> (action = tanh(mean), alpha, log_std of the pre-tanh Gaussian): the agent acts on the
    mean and, exploring for the fine-tuner, samples tanh(mean + exp(log_std) * eps) as SAC does."""

    def __init__(self, policy: FusionPolicy):
        super().__init__()
        self.policy = policy

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        names = self.policy.encoder_names
        embs = dict(zip(names, inputs[: len(names)]))
        proprio = inputs[len(names)] if self.policy.proprio_dim else None
        mean, log_std, alpha = self.policy.actor(embs, proprio)
        return torch.tanh(mean), alpha, log_std
