"""Hyperparameter overrides: --set NAME=VALUE, --overrides_json, PyGlove hyper values fixed by DNA JSON."""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import pyglove as pg
from pax_contract import TERMINATION_MESSAGE_MAX_BYTES, InvocationError, split_override

from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.errors import ConfigError

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_set_flags(items: list[str]) -> dict[str, str]:
    """['a=1', 'b=x'] -> {'a': '1', 'b': 'x'}; ConfigError on a malformed item (the contract's one
    override-name rule, pax_contract.split_override)."""
    try:
        return dict(split_override(item) for item in items)
    except InvocationError as err:
        raise ConfigError(str(err)) from None


def _base_types(typ: Any) -> tuple[type, ...]:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        return tuple(t for t in typing.get_args(typ) if isinstance(t, type))
    return (typ,) if isinstance(typ, type) else (str,)


_EXPECTED = {int: "int in int64", float: "finite float"}


def coerce(name: str, value: Any, typ: Any, *, from_text: bool) -> Any:
    """Convert `value` (CLI text or a JSON value) to the hyperparameter's annotated type."""
    allowed = _base_types(typ)
    if from_text and type(None) in allowed and value.strip().lower() == "none":
        return None
    if not from_text and value is None and type(None) in allowed:
        return None
    for t in allowed:
        if t is type(None):
            continue
        try:
            return _convert(value, t, from_text)
        except (ValueError, TypeError):
            continue
        except RecursionError:  # JSON nested deeper than the parser's recursion limit
            raise ConfigError(f"invalid value for hyperparameter {name}: nested too deeply") from None
    names = "|".join(_EXPECTED.get(t, t.__name__) for t in allowed)
    raise ConfigError(f"invalid value {_short_repr(value)} for hyperparameter {name} (expected {names})")


def _short_repr(value: Any, limit: int = 200) -> str:
    """repr(value), cut to `limit` characters (a value nested hundreds deep is a line thousands long)."""
    try:
        text = repr(value)
    except RecursionError:
        return "(a value nested too deeply to show)"
    return text if len(text) <= limit else f"{text[:limit]}..."


def _convert(value: Any, t: type, from_text: bool) -> Any:
    if t is bool:
        if isinstance(value, bool):
            return value
        if from_text and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if t is int:  # int64: numpy, jax and the RNG seeds take no more
        if isinstance(value, bool) or (not from_text and not isinstance(value, int)):
            raise ValueError
        if not -(2**63) <= (number := int(value)) < 2**63:
            raise ValueError
        return number
    if t is float:  # finite: a NaN rate or timeout is never meant (NaN also passes every `>= 0` check)
        if isinstance(value, bool) or (not from_text and not isinstance(value, int | float)):
            raise ValueError
        if not math.isfinite(number := float(value)):
            raise ValueError
        return number
    if t is str:
        if not from_text and not isinstance(value, str):
            raise ValueError
        return str(value)
    parsed = json.loads(value) if from_text else value
    if t in (tuple, list) and isinstance(parsed, list):
        return t(parsed)
    if isinstance(parsed, t):
        return parsed
    raise ValueError


def hyper_space(exp: BaseExperiment) -> pg.Dict:
    """The experiment's search space: pg.Dict of its PyGlove hyper attributes in sorted-name order."""
    return pg.Dict(
        {
            name: getattr(exp, name)
            for name in sorted(exp.hyperparameters())
            if isinstance(getattr(exp, name), pg.hyper.HyperPrimitive)
        }
    )


def _describe_point(name: str, hyper: Any) -> dict[str, Any]:
    """One decision point in the PaxSweep parameter form (float with scale, or discrete choices)."""
    if isinstance(hyper, pg.hyper.Float):
        scale = hyper.scale or "linear"
        if scale not in ("linear", "log"):
            raise ConfigError(
                f"hyperparameter {name}: pg.floatv scale {scale!r} cannot be swept (linear, log)"
            )
        return {"name": name, "type": "float", "min": hyper.min_value, "max": hyper.max_value, "scale": scale}
    if isinstance(hyper, pg.hyper.OneOf):
        candidates = list(hyper.candidates)
        if not all(isinstance(c, bool | int | float | str) for c in candidates):
            raise ConfigError(f"hyperparameter {name}: pg.oneof candidates must be bool, int, float or str")
        return {"name": name, "type": "discrete", "values": [str(c) for c in candidates]}
    raise ConfigError(f"hyperparameter {name}: {type(hyper).__name__} cannot be swept (pg.floatv, pg.oneof)")


def describe_search_space(exp: BaseExperiment) -> str:
    """The experiment's search space as compact JSON `{"parameters": [...]}` (PaxSweep's parameter form),
    at most a termination message long; ConfigError when the experiment declares none."""
    space = hyper_space(exp)
    if not space:
        raise ConfigError(
            f"experiment {type(exp).__name__} declares no search space"
            " (no pg.floatv / pg.oneof hyperparameters)"
        )
    pg.dna_spec(space)  # PyGlove's own check that the space is well-formed
    doc = {"parameters": [_describe_point(name, hyper) for name, hyper in space.items()]}
    text = json.dumps(doc, separators=(",", ":"))
    size = len(text.encode())
    if size > TERMINATION_MESSAGE_MAX_BYTES:
        raise ConfigError(
            f"the search space description is {size} bytes, more than the {TERMINATION_MESSAGE_MAX_BYTES} a"
            " termination message holds: declare the sweep's parameters in the PaxSweep instead"
        )
    return text


def apply_overrides[E: BaseExperiment](
    exp: E,
    set_flags: list[str] | Mapping[str, str] | None = None,
    overrides_json: str | None = None,
    dna_json: str | None = None,
) -> E:
    """Fix hyper values from DNA, then apply JSON overrides, then --set (a parsed mapping or NAME=VALUE
    items; last wins); validate everything."""
    known = exp.hyperparameters()
    if dna_json:
        space = hyper_space(exp)
        try:
            dna = pg.from_json_str(dna_json)
            if not isinstance(dna, pg.DNA):
                raise TypeError(f"expected a pg.DNA, got {type(dna).__name__}")
            values = pg.materialize(space, dna)
        except Exception as err:
            raise ConfigError(f"malformed --dna_json for this experiment's search space: {err}") from None
        for name, value in values.items():
            setattr(exp, name, value)
    if overrides_json:
        try:
            doc = json.loads(overrides_json)
        except json.JSONDecodeError as err:
            raise ConfigError(f"malformed --overrides_json: {err}") from None
        except RecursionError:
            raise ConfigError("malformed --overrides_json: nested too deeply") from None
        if not isinstance(doc, dict):
            raise ConfigError("malformed --overrides_json: expected a JSON object {name: value}")
        for name, value in doc.items():
            _check_known(name, known)
            setattr(exp, name, coerce(name, value, known[name], from_text=False))
    sets = set_flags if isinstance(set_flags, Mapping) else parse_set_flags(set_flags or [])
    for name, text in sets.items():
        _check_known(name, known)
        setattr(exp, name, coerce(name, text, known[name], from_text=True))
    unresolved = [n for n in sorted(known) if isinstance(getattr(exp, n), pg.hyper.HyperPrimitive)]
    if unresolved:
        raise ConfigError(
            f"hyperparameters {', '.join(unresolved)} are search spaces: fix them with --dna_json or --set"
        )
    validate(exp)
    return exp


def _check_known(name: str, known: dict[str, Any]) -> None:
    if name not in known:
        raise ConfigError(f"unknown hyperparameter {name!r}")


def validate(exp: BaseExperiment) -> None:
    """The experiment's own checks (`BaseExperiment.validate`, extended by each experiment)."""
    exp.validate()
