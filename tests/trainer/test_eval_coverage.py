"""Eval and decode cover each example of a split exactly once: a short split is padded with zero-weight
examples and stops when exhausted (a split repeated to fill the batches weighed some examples twice)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from pax_contract import ExitCode, ExitReason, TrainerResult
from pax_trainer import data, partitioning
from pax_trainer.base_experiment import BaseExperiment, Batch
from pax_trainer.errors import ConfigError
from pax_trainer.executor import Executor, check_splits
from pax_trainer.experiments.reverse_digits import ReverseDigits
from pax_trainer.metrics import WeightedScalars, weighted_mean
from pax_trainer.preemption import PreemptionWatcher
from pax_trainer.programs import DecodeProgram, EvalProgram, TrainProgram

from tests.trainer.conftest import run_trainer

VALUES = [1.0, 2.0, 4.0, 8.0, 16.0]  # 5 examples: batch 2 needs a padded third batch


def split(values: list[float] = VALUES) -> grain.MapDataset:
    rows = [
        {"index": np.int32(i), "value": np.float32(v), "weights": np.float32(1.0)}
        for i, v in enumerate(values)
    ]
    return grain.MapDataset.source(rows)


class MeanOfValues(BaseExperiment):
    """Its eval metric is the weighted mean of batch['value']; decode echoes batch['index']."""

    batch_size: int = 2

    def model(self, rngs: nnx.Rngs) -> nnx.Module:
        return nnx.Linear(1, 1, rngs=rngs)

    def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, WeightedScalars]:
        scale = model.kernel[...][0, 0] * 0.0 + 1.0  # uses the params, value 1
        mean = weighted_mean(batch["value"] * scale, batch["weights"])
        return mean.value, {"mean": mean}

    def decode(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        return {"index": jnp.asarray(batch["index"])}

    def decode_records(
        self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], WeightedScalars]:
        records = [{"index": int(i)} for i in outputs["index"]]
        return records, {"count": (float(len(records)), 1.0)}  # type: ignore[dict-item]


@pytest.mark.parametrize("num_batches", [3, 4, 10])
def test_a_short_split_is_padded_with_zero_weights_and_never_repeated(num_batches: int) -> None:
    batches = list(data.fixed_batches(split(), global_batch=2, num_batches=num_batches))
    assert len(batches) == 3  # ceil(5 / 2): stops when the split is exhausted
    assert all(b.rows["value"].shape == (2,) for b in batches)  # fixed shapes: one compiled eval step
    seen = [int(i) for b in batches for i, w in zip(b.rows["index"], b.rows["weights"], strict=True) if w > 0]
    assert seen == [0, 1, 2, 3, 4]
    assert [b.num_real for b in batches] == [2, 2, 1]
    assert float(batches[-1].rows["weights"][1]) == 0.0


def test_a_long_split_gives_the_first_num_batches() -> None:
    batches = list(data.fixed_batches(split(), global_batch=2, num_batches=2))
    assert [int(i) for b in batches for i in b.rows["index"]] == [0, 1, 2, 3]
    assert all(float(w) == 1.0 for b in batches for w in b.rows["weights"])


def test_padding_needs_weights() -> None:
    unweighted = split().map(lambda row: {"value": row["value"]})
    assert len(list(data.fixed_batches(unweighted, global_batch=5, num_batches=2))) == 1  # nothing to pad
    with pytest.raises(ConfigError, match="no 'weights' to pad the last batch"):
        list(data.fixed_batches(unweighted, global_batch=2, num_batches=3))


def test_eval_metrics_are_the_exact_mean_over_the_real_examples() -> None:
    exp = MeanOfValues()
    program = TrainProgram(exp, partitioning.make_mesh(-1, 1))
    params = program.init_state()["params"]
    metrics = EvalProgram(program).run(params, data.fixed_batches(split(), exp.batch_size, 4))
    assert metrics["mean"] == pytest.approx(np.mean(VALUES))  # 6.2; repeated to 8 examples: 4.125


def test_decode_records_each_example_once() -> None:
    exp = MeanOfValues()
    program = TrainProgram(exp, partitioning.make_mesh(-1, 1))
    params = program.init_state()["params"]
    records, _ = DecodeProgram(program).run(params, data.fixed_batches(split(), exp.batch_size, 4), 0)
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]


class EmptyEvalDigits(ReverseDigits):
    """reverse_digits whose eval split is empty (e.g. a data hyperparameter filtering everything out)."""

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        return {"test": grain.MapDataset.source([])}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_an_empty_eval_split_is_a_config_error_at_start_up(tmp_path: Path, mode: str) -> None:
    """It was found at the first eval: exit 2 mid-run, after the step-0 checkpoint was written."""
    job = tmp_path / "job"
    args = ["--exp", "tests.trainer.test_eval_coverage.EmptyEvalDigits", "--mode", mode]
    run = run_trainer([*args, "--set", "eval_interval_steps=2", "--set", "num_train_steps=4"], job, tmp_path)
    assert run.returncode == ExitCode.CONFIG_ERROR, run.stderr[-2000:]
    assert "pax_trainer: error: eval split 'test' has no examples" in run.stderr
    assert run.result is not None and "eval split 'test' has no examples" in run.result.message
    assert not job.exists()  # nothing written: refused before the gang formed


def test_a_short_split_without_weights_is_refused_at_start_up() -> None:
    unweighted = split().map(lambda row: {"value": row["value"]})
    data.check_fixed_split(unweighted, "eval split 'x'", global_batch=5, num_batches=2)  # no padding needed
    data.check_fixed_split(unweighted, "eval split 'x'", global_batch=2, num_batches=2)  # first 2 batches
    with pytest.raises(ConfigError, match="eval split 'x' has 5 examples, not a multiple of batch_size 2"):
        data.check_fixed_split(unweighted, "eval split 'x'", global_batch=2, num_batches=3)


BUILT: Counter[str] = Counter()


class CountingDigits(ReverseDigits):
    """reverse_digits counting how often each of its datasets is built."""

    def train_dataset(self) -> grain.MapDataset:
        BUILT["train"] += 1
        return super().train_dataset()

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        BUILT["eval"] += 1
        return super().eval_datasets()

    def decode_dataset(self) -> grain.MapDataset | None:
        BUILT["decode"] += 1
        return super().decode_dataset()


def test_each_split_is_built_once_per_run(tmp_path: Path) -> None:
    """The start-up check built every split, and each eval and decode built its split again (an experiment
    reading an index or listing files paid that at every interval): a run now builds each once."""
    BUILT.clear()
    exp = CountingDigits()
    exp.num_train_steps, exp.eval_interval_steps, exp.decode_interval_steps = 6, 2, 3
    exp.eval_num_batches = exp.decode_num_batches = 1
    splits = check_splits(exp, "train")
    at_start_up = dict(BUILT)
    assert at_start_up["train"] == at_start_up["decode"] == 1  # (decode_dataset builds eval_datasets too)
    status = TrainerResult(exit_reason=ExitReason.COMPLETED)
    Executor(exp, str(tmp_path / "job"), status, PreemptionWatcher(), splits).train()
    assert status.final_step == 6 and "eval_test/loss" in status.metrics  # it trained, evaluated, decoded
    assert any(name.startswith("decode/") for name in status.metrics)
    assert dict(BUILT) == at_start_up  # 3 evals and 2 decodes built nothing more
