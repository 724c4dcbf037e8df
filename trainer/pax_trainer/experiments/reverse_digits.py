"""reverse_digits: a synthetic task with a known optimum (reverse a digit string; 100% accuracy reachable)."""

from __future__ import annotations

from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pyglove as pg
from flax import nnx

from pax_trainer.base_experiment import Batch, require
from pax_trainer.experiments.transformer import generate
from pax_trainer.experiments.transformer_lm import TransformerLmExperiment
from pax_trainer.metrics import WeightedScalar, WeightedScalars
from pax_trainer.registry import register

SEP = 10
VOCAB = 11


class _Examples:
    """Random-access source: example i is a function of (seed, i) only."""

    def __init__(self, seed: int, size: int, digits: int) -> None:
        self.seed, self.size, self.digits = seed, size, digits

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        x = np.random.default_rng([self.seed, index]).integers(0, 10, self.digits, dtype=np.int32)
        tokens = np.concatenate([x, [SEP], x[::-1]]).astype(np.int32)
        weights = np.zeros(len(tokens), np.float32)
        weights[self.digits + 1 :] = 1.0
        return {"tokens": tokens, "weights": weights}


@register("reverse_digits")
class ReverseDigits(TransformerLmExperiment):
    """Sequence `x SEP reverse(x)`; the loss covers only the reversed part; decode is greedy."""

    description = "synthetic: reverse a digit string (optimum: accuracy 1.0)"

    num_train_steps: int = 200
    batch_size: int = 32
    learning_rate: float = 3e-3
    save_interval_steps: int = 100
    eval_interval_steps: int = 100
    eval_num_batches: int = 2
    num_digits: int = 6
    data_seed: int = 7

    def validate(self) -> None:
        super().validate()
        require(self, "num_digits", self.num_digits > 0)

    def vocabulary_size(self) -> int:
        return VOCAB

    def max_sequence_length(self) -> int:
        return 2 * self.num_digits + 1

    def train_dataset(self) -> grain.MapDataset:
        return grain.MapDataset.source(_Examples(self.data_seed, 1 << 20, self.num_digits))

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        return {"test": grain.MapDataset.source(_Examples(self.data_seed + 1, 1024, self.num_digits))}

    def decode_dataset(self) -> grain.MapDataset | None:
        return self.eval_datasets()["test"]

    def decode(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        tokens = batch["tokens"]
        prompt = jnp.where(jnp.arange(tokens.shape[1]) <= self.num_digits, tokens, 0)
        prompt_len = jnp.full((tokens.shape[0],), self.num_digits + 1)
        return {"tokens": generate(model, prompt, prompt_len, rng, 0.0)}

    def decode_records(
        self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], WeightedScalars]:
        n = self.num_digits
        records = []
        for row, out in zip(batch["tokens"], outputs["tokens"], strict=True):
            digits, expected, got = row[:n], row[n + 1 :], out[n + 1 :]
            records.append(
                {
                    "input": "".join(map(str, digits)),
                    "expected": "".join(map(str, expected)),
                    "output": "".join(str(int(t)) if t < 10 else "?" for t in got),
                    "correct": bool(np.array_equal(expected, got)),
                }
            )
        exact = float(np.mean([r["correct"] for r in records])) if records else 0.0
        return records, {"exact_match": WeightedScalar(exact, float(len(records)))}


@register("reverse_digits_search")
class ReverseDigitsSearch(ReverseDigits):
    """reverse_digits with its learning rate declared as a PyGlove search space (a PaxSweep with
    experimentSearchSpace discovers it with `--describe_search_space`; trials fix it with --set)."""

    description = "synthetic: reverse_digits, learning rate searched log-uniformly in [1e-3, 1e-1]"

    learning_rate: float = pg.floatv(1e-3, 1e-1, scale="log")
