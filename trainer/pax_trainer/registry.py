"""Experiment registry: `--exp NAME` (registered) or `--exp package.module.Class` (imported on demand).

A leaf: experiments register into it with `@register(name)`; whoever needs the built-ins (`main`) imports
`pax_trainer.experiments` first. The registry itself imports no experiment.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.errors import ConfigError
from pax_trainer.storage import one_line

_REGISTRY: dict[str, type[BaseExperiment]] = {}


def register(name: str) -> Callable[[type[BaseExperiment]], type[BaseExperiment]]:
    """Class decorator registering an experiment under `name`."""

    def wrap(cls: type[BaseExperiment]) -> type[BaseExperiment]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"experiment {name!r} registered twice")
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type[BaseExperiment]]:
    """All experiments registered so far, by name."""
    return dict(sorted(_REGISTRY.items()))


def get(name: str) -> type[BaseExperiment]:
    """Resolve a registered name or a dotted `module.Class`; ConfigError if neither."""
    experiments = registered()
    if name in experiments:
        return experiments[name]
    module_name, _, attr = name.rpartition(".")
    if not module_name:
        raise ConfigError(f"unknown experiment {name!r} (registered: {', '.join(experiments)})")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"unknown experiment {name!r}: cannot import {module_name} ({err})") from None
    except Exception as err:  # a relative name (TypeError), or the module itself raised on import
        raise ConfigError(f"experiment {name!r}: importing {module_name} failed: {one_line(err)}") from None
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseExperiment)):
        raise ConfigError(f"unknown experiment {name!r}: {attr} in {module_name} is not a BaseExperiment")
    return cls
