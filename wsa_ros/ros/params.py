"""ROS parameters from a config dataclass (``wsa_ros.config``): one typed, described,
range-checked parameter per field, read back into the dataclass.

    cfg = declare_config(node, AgentConfig, dynamic={"bundle", "max_rate"})

* nested sections (``FinetuneConfig.learner``) become dotted names (``learner.batch_size``),
  the names a nested mapping in a ROS parameter file gets.
* type: bool / int / float / str and lists of them map to the ROS parameter types; the
  descriptor carries the field's help text, its range (``FloatingPointRange`` /
  ``IntegerRange``) and, for strings with choices, the choices in
  ``additional_constraints``. Fields not in ``dynamic`` are ``read_only`` (they need a
  restart).
* overrides (``--params-file config/agent.yaml``, ``-p name:=value``, launch
  ``parameters=[...]``) apply as usual. Two ROS pitfalls are removed: an integer given
  for a float parameter (``control_rate_hz: 30``) is accepted as a float, and a
  misspelt parameter in the file is an error naming it, instead of being silently
  ignored.
* every value is finally checked by ``config.from_dict`` (types, ranges, choices), so
  the node and the command-line tools accept exactly the same files.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, get_args, get_origin

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.exceptions import ParameterUninitializedException
from rclpy.parameter import Parameter

from wsa_ros import config as C

# parameters every rclpy node may legitimately receive besides its own
_ROS_BUILTIN_PREFIXES = ("use_sim_time", "qos_overrides.", "start_type_description_service")

_SCALAR = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER, float: Parameter.Type.DOUBLE,
           str: Parameter.Type.STRING}
_ARRAY = {bool: Parameter.Type.BOOL_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
          float: Parameter.Type.DOUBLE_ARRAY, str: Parameter.Type.STRING_ARRAY}


def ros_type(typ) -> Parameter.Type:
    """Python field type -> ROS parameter type."""
    if get_origin(typ) is list:
        (inner,) = get_args(typ)
        return _ARRAY[inner]
    return _SCALAR[typ]


def descriptor(name: str, typ, meta: dict, read_only: bool) -> ParameterDescriptor:
    d = ParameterDescriptor(name=name, type=ros_type(typ).value, description=meta.get("help", ""),
                            read_only=read_only)
    lo, hi = meta.get("lo"), meta.get("hi")
    base = get_args(typ)[0] if get_origin(typ) is list else typ
    if lo is not None and hi is not None and get_origin(typ) is not list:
        if base is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        elif base is int:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    constraints = []
    if meta.get("choices"):
        constraints.append("one of: " + ", ".join(meta["choices"]))
    if lo is not None or hi is not None:
        constraints.append(f"range [{lo}, {hi}]")
    d.additional_constraints = "; ".join(constraints)
    return d


def _coerce(value, typ):
    """int -> float for float fields (scalars and lists); everything else unchanged."""
    base = get_args(typ)[0] if get_origin(typ) is list else typ
    if base is float:
        if get_origin(typ) is list and isinstance(value, (list, tuple)):
            return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
    return value


def _is_builtin(name: str) -> bool:
    return any(name == p or name.startswith(p) for p in _ROS_BUILTIN_PREFIXES)


def declare_config(node, cls, dynamic: Iterable[str] = (), strict: bool = True):
    """Declare one parameter per field of ``cls`` on ``node`` and return the instance
    built from their values. Raises ``config.ConfigError`` naming the parameter for an
    unknown override (``strict``), a wrong type or an out-of-range value."""
    dynamic = set(dynamic)
    fields = C.flat_schema(cls)
    known = {name for name, *_ in fields}
    overrides: dict[str, Parameter] = getattr(node, "_parameter_overrides", {})
    where = f"node '{node.get_fully_qualified_name()}'"
    if strict:
        unknown = sorted(n for n in overrides if n not in known and not _is_builtin(n))
        if unknown:
            raise C.ConfigError(
                f"{where}: unknown parameter(s) {unknown} in the parameter file / overrides; "
                f"known: {sorted(known)} (misspelt?)")
    for name, typ, default, meta in fields:
        if name in overrides:  # int given for a float parameter: accept it as a float
            ov = overrides[name]
            v = _coerce(ov.value, typ)
            if v is not ov.value:
                overrides[name] = Parameter(name, value=v)
        desc = descriptor(name, typ, meta, read_only=name not in dynamic)
        value: Any = default
        if isinstance(default, list) and not default:
            value = ros_type(typ)  # an empty list cannot carry its element type
        try:
            node.declare_parameter(name, value, desc)
        except Exception as exc:  # rclpy raises several types; all mean a bad value
            ov = overrides.get(name)
            got = f" (got {ov.value!r})" if ov is not None else ""
            raise C.ConfigError(f"{where}: parameter '{name}'{got}: {exc}; {meta.get('help', '')}") from exc
    cfg = read_config(node, cls)
    if dynamic:
        node.add_pre_set_parameters_callback(lambda params: coerce_parameters(cls, params))
    return cfg


def read_config(node, cls):
    """The current parameter values as an instance of ``cls`` (fully validated)."""
    values = {}
    for name, typ, default, _meta in C.flat_schema(cls):
        try:
            p = node.get_parameter(name)
        except ParameterUninitializedException:
            # an empty-list default (e.g. sim_arm_node camera_topics: []) can only be declared by
            # its type, and rclpy raises on reading it until it is set: it holds the default
            values[name] = default
            continue
        v = p.value
        if p.type_ == Parameter.Type.NOT_SET or v is None:
            v = default
        if get_origin(typ) is list:
            v = list(v)
        values[name] = _coerce(v, typ)
    return C.from_dict(cls, values, where=f"node '{node.get_fully_qualified_name()}'")


def coerce_parameters(cls, params: list) -> list:
    """A pre-set callback: an integer set on a float parameter becomes a float (so
    ``ros2 param set /agent_node max_rate 2`` works)."""
    types = {name: typ for name, typ, _d, _m in C.flat_schema(cls)}
    out = []
    for p in params:
        typ = types.get(p.name)
        if typ is not None and p.type_ != Parameter.Type.NOT_SET:
            v = _coerce(p.value, typ)
            if v is not p.value:
                p = Parameter(p.name, value=v)
        out.append(p)
    return out


def check_change(cls, current, params: list) -> tuple[Any, SetParametersResult]:
    """Validate a set of parameter changes against the schema (choices, list element
    checks, NaN: what a ROS descriptor cannot express). Returns (new instance or None,
    SetParametersResult with a reason naming the parameter)."""
    values = C.flatten(dataclasses.asdict(current))
    types = {name: typ for name, typ, _d, _m in C.flat_schema(cls)}
    for p in params:
        if p.name not in types:
            continue
        values[p.name] = _coerce(list(p.value) if isinstance(p.value, (list, tuple)) else p.value,
                                 types[p.name])
    try:
        new = C.from_dict(cls, values, where="parameter change")
    except C.ConfigError as exc:
        return None, SetParametersResult(successful=False, reason=str(exc))
    return new, SetParametersResult(successful=True)


__all__ = ["declare_config", "read_config", "check_change", "coerce_parameters", "descriptor", "ros_type",
           "ParameterType"]
