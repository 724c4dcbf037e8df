"""Grain input pipelines: deterministic by seed, host-count independent, iterator state checkpointable.

Every host builds the same global-batch pipeline and keeps its own rows, so the global batch at each step
(and the iterator state) does not depend on how many hosts share the work.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from pax_trainer.errors import ConfigError

HostBatch = dict[str, np.ndarray]


class TrainInput:
    """Shuffled, repeated, batched training examples with get_state/set_state."""

    def __init__(self, dataset: grain.MapDataset, seed: int, global_batch: int) -> None:
        _require_examples(dataset, "the train split")
        pipeline = dataset.seed(seed).shuffle().repeat().batch(global_batch, drop_remainder=True)
        self._iter = iter(pipeline.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))

    def __next__(self) -> HostBatch:
        return next(self._iter)

    def get_state(self) -> dict[str, Any]:
        """JSON-able position of the iterator."""
        return json.loads(json.dumps(self._iter.get_state()))

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume exactly where get_state() was taken."""
        self._iter.set_state(state)


def fixed_batches(dataset: grain.MapDataset, global_batch: int, num_batches: int) -> Iterator[HostBatch]:
    """The first `num_batches` batches in order (eval/decode: same examples every time)."""
    _require_examples(dataset, "an eval or decode split")
    ds = dataset
    if len(ds) < global_batch * num_batches:
        ds = ds.repeat(-(-global_batch * num_batches // len(ds)))
    batched = ds.batch(global_batch, drop_remainder=True)
    for i in range(num_batches):
        yield batched[i]


def to_global(batch: HostBatch, sharding: NamedSharding) -> dict[str, jax.Array]:
    """Keep this host's rows of a global batch and assemble the global jax.Array."""
    n, pid = jax.process_count(), jax.process_index()
    out = {}
    for name, value in batch.items():
        rows = value.shape[0] // n
        out[name] = jax.make_array_from_process_local_data(
            sharding, value[pid * rows : (pid + 1) * rows], value.shape
        )
    return out


def _require_examples(dataset: grain.MapDataset, what: str) -> None:
    if len(dataset) == 0:  # repeat() and shuffle() of nothing never yield a batch
        raise ConfigError(f"{what} has no examples (check the experiment's data hyperparameters)")
