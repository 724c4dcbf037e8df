"""Grain input pipelines: deterministic by seed, host-count independent, iterator state checkpointable.

Every host builds the same global-batch pipeline and keeps its own rows, so the global batch at each step
(and the iterator state) does not depend on how many hosts share the work.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grain
import jax
import numpy as np
from jax.sharding import NamedSharding

from pax_trainer.errors import ConfigError

HostBatch = dict[str, np.ndarray]
log = logging.getLogger(__name__)


class TrainInput:
    """Shuffled, repeated, batched training examples with get_state/set_state.

    The position is kept in examples of the shuffled stream (which depends on the seed and the split, not on
    the batch size), with what made the stream (seed, split length, a digest of the first example): a run
    resumed with another batch_size goes on from the same example (it re-read or skipped examples); another
    seed or split gives another stream, resumed at the same count, with a warning naming what changed.
    """

    def __init__(self, dataset: grain.MapDataset, seed: int, global_batch: int) -> None:
        require_train_examples(dataset)
        self._dataset, self._seed, self._batch = dataset, seed, global_batch
        self._first_example = _digest(dataset[0])  # another data_seed, seq_len...: other examples
        self._start(0)

    def _start(self, examples: int) -> None:
        stream = self._dataset.seed(self._seed).shuffle().repeat()
        if examples:
            stream = stream[examples:]
        pipeline = stream.batch(self._batch, drop_remainder=True)
        self._iter = iter(pipeline.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)))
        self._examples = examples

    def __next__(self) -> HostBatch:
        batch = next(self._iter)
        self._examples += self._batch
        return batch

    def get_state(self) -> dict[str, Any]:
        """JSON-able position: examples read, and the stream they were read from."""
        return {
            "examples": self._examples,
            "seed": self._seed,
            "num_examples": len(self._dataset),
            "batch_size": self._batch,
            "first_example": self._first_example,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Resume exactly where get_state() was taken (or, for a checkpoint written before positions were
        kept in examples, at its grain iterator state)."""
        if "examples" not in state:  # grain's own iterator state: same batch size assumed
            self._start(0)
            self._iter.set_state(state)
            self._examples = int(state.get("next_index", 0)) * self._batch
            return
        changed = [
            f"{name} {state[name]} -> {now}"
            for name, now in (
                ("seed", self._seed),
                ("num_examples", len(self._dataset)),
                ("first_example", self._first_example),
            )
            if state.get(name) != now
        ]
        if changed:
            log.warning(
                "the train split differs from the checkpoint's (%s): resuming after %d examples of another"
                " shuffled order, not the checkpoint's",
                ", ".join(changed),
                state["examples"],
            )
        if state.get("batch_size") != self._batch:
            log.info(
                "batch_size %s -> %d: resuming at example %d",
                state.get("batch_size"),
                self._batch,
                state["examples"],
            )
        self._start(int(state["examples"]))


def _digest(example: Any) -> str:
    """A short sha256 of an example's arrays (names and bytes, in name order)."""
    digest = hashlib.sha256()
    items = sorted(example.items()) if isinstance(example, dict) else [("", example)]
    for name, value in items:
        array = np.asarray(value)
        digest.update(f"{name}:{array.dtype}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class FixedBatch(NamedTuple):
    """One eval/decode global batch: `rows` (fixed shape) whose first `num_real` rows are real examples; the
    rest are zero-weight padding (copies of the batch's first example with every 'weights' array zeroed)."""

    rows: HostBatch
    num_real: int


def fixed_batches(dataset: grain.MapDataset, global_batch: int, num_batches: int) -> Iterator[FixedBatch]:
    """The first `num_batches` batches in order (eval/decode: same examples every time), each example at
    most once: a split shorter than that gives ceil(len / global_batch) batches, the last padded with
    zero-weight examples (Pax's padding), never the split repeated (which weighed some examples twice).
    The count depends only on len(dataset), so every host runs the same number of batches."""
    _require_examples(dataset, "an eval or decode split")
    batched = dataset.batch(global_batch, drop_remainder=False)
    for i in range(min(num_batches, len(batched))):
        rows = batched[i]
        num_real = _num_rows(rows)
        yield FixedBatch(_pad(rows, global_batch) if num_real < global_batch else rows, num_real)


def _num_rows(batch: HostBatch) -> int:
    return int(next(iter(batch.values())).shape[0])


def _pad(batch: HostBatch, size: int) -> HostBatch:
    """`batch` filled up to `size` rows with copies of its first row whose 'weights' are zero."""
    if "weights" not in batch:
        raise ConfigError(
            f"an eval or decode split's last batch has {_num_rows(batch)} of {size} examples and they"
            " have no 'weights' to pad the last batch with zero-weight examples"
        )
    missing = size - _num_rows(batch)
    padded = {}
    for name, value in batch.items():
        fill = np.repeat(value[:1], missing, axis=0)
        if name == "weights":
            fill = np.zeros_like(fill)
        padded[name] = np.concatenate([value, fill])
    return padded


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


def require_train_examples(dataset: grain.MapDataset) -> None:
    """ConfigError if the train split is empty (it would never yield a batch)."""
    _require_examples(dataset, "the train split")


def check_fixed_split(dataset: grain.MapDataset, what: str, global_batch: int, num_batches: int) -> None:
    """At start-up, what `fixed_batches` would refuse at the first eval / decode: no examples, or a last
    batch to pad and no 'weights' to pad it with (reads at most one example)."""
    _require_examples(dataset, what)
    if len(dataset) < global_batch * num_batches and len(dataset) % global_batch:
        first = dataset[0]
        if not isinstance(first, dict) or "weights" not in first:
            raise ConfigError(
                f"{what} has {len(dataset)} examples, not a multiple of batch_size {global_batch}, and they"
                " have no 'weights' to pad the last batch with zero-weight examples"
            )


_CGROUP_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int:
    """This host's memory for the trainer: the physical memory, or the container's cgroup limit if lower."""
    limit = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for path in _CGROUP_MEMORY_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            limit = min(limit, int(text))
    return limit


def check_batch_fits(dataset: grain.MapDataset, global_batch: int, what: str, memory: int) -> None:
    """ConfigError if one global batch of `dataset` (every host assembles the whole global batch, then
    keeps its rows) would take more than half of `memory` bytes: such a batch_size would grow the trainer
    until the kernel kills it (exit 137, retried), never answering SIGTERM. Reads one example."""
    example = dataset[0]
    leaves = example.values() if isinstance(example, dict) else [example]
    example_bytes = sum(np.asarray(leaf).nbytes for leaf in leaves)
    if global_batch * example_bytes > memory // 2:
        raise ConfigError(
            f"invalid value {global_batch} for hyperparameter batch_size: a global batch of {what} takes"
            f" {global_batch * example_bytes / 2**30:.3g} GiB ({example_bytes} bytes per example) and every"
            f" host holds it whole; this host has {memory / 2**30:.3g} GiB"
        )


def _require_examples(dataset: grain.MapDataset, what: str) -> None:
    if len(dataset) == 0:  # repeat() and shuffle() of nothing never yield a batch
        raise ConfigError(f"{what} has no examples (check the experiment's data hyperparameters)")
