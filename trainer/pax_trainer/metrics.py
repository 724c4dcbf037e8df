"""Pax's WeightedScalars (value, weight) and clu.metrics collections built from them.

A WeightedScalar is a weighted mean: merging gives Σ(w·v)/Σw. Inside a jitted step over a global batch the
sums already span every host and device; across batches they accumulate in a clu ``Average`` (total, count)
whose count is the weight, so the final value is Σ(w·v)/Σw over batches and hosts alike.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics


class WeightedScalar(NamedTuple):
    """A mean `value` over `weight` examples/tokens."""

    value: jax.Array | float
    weight: jax.Array | float


WeightedScalars = dict[str, WeightedScalar]


def weighted_mean(values: jax.Array, weights: jax.Array) -> WeightedScalar:
    """Weighted mean of `values` with `weights` (same shape), as a WeightedScalar."""
    w = jnp.sum(weights)
    return WeightedScalar(jnp.sum(values * weights) / jnp.maximum(w, 1e-9), w)


def merge(a: WeightedScalar, b: WeightedScalar) -> WeightedScalar:
    """Σ(w·v)/Σw of two weighted scalars."""
    w = a.weight + b.weight
    return WeightedScalar((a.value * a.weight + b.value * b.weight) / np.maximum(w, 1e-9), w)


def to_host(tree: object) -> object:
    """Fetch a pytree of (replicated) jax.Arrays to numpy, also when they span several processes."""

    def fetch(x: object) -> object:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)
        return np.asarray(x)

    return jax.tree.map(fetch, tree)


class Accumulator:
    """clu.metrics Averages keyed by name, fed WeightedScalars batch after batch."""

    def __init__(self) -> None:
        self._metrics: dict[str, clu_metrics.Average] = {}

    def add(self, scalars: WeightedScalars) -> None:
        """Merge one batch of WeightedScalars (device or host values)."""
        for name, (value, weight) in to_host(dict(scalars)).items():
            w = np.float32(weight)
            metric = clu_metrics.Average(total=np.float32(value) * w, count=w)
            self._metrics[name] = self._metrics[name].merge(metric) if name in self._metrics else metric

    def compute(self) -> dict[str, float]:
        """Name -> Σ(w·v)/Σw over everything added."""
        return {name: float(m.compute()) for name, m in sorted(self._metrics.items())}
