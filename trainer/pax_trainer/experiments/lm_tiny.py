"""lm_tiny: a byte-level Transformer LM on the Python standard library's own source (ships with Python)."""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pax_trainer.base_experiment import Batch
from pax_trainer.experiments.transformer import generate
from pax_trainer.experiments.transformer_lm import TransformerLmExperiment
from pax_trainer.metrics import WeightedScalar, WeightedScalars
from pax_trainer.registry import register


@cache
def corpus(max_bytes: int) -> dict[str, bytes]:
    """Train/test text: the stdlib's top-level *.py files, sorted; 1 file in 10 (by name hash) held out."""
    lib = Path(os.__file__).parent
    texts: dict[str, list[bytes]] = {"train": [], "test": []}
    sizes = {"train": 0, "test": 0}
    for path in sorted(lib.glob("*.py")):
        split = "test" if hashlib.sha256(path.name.encode()).digest()[0] % 10 == 0 else "train"
        budget = max_bytes if split == "train" else max_bytes // 10
        if sizes[split] >= budget:
            continue
        data = path.read_bytes()[: budget - sizes[split]]
        texts[split].append(data)
        sizes[split] += len(data)
    return {split: b"\n".join(parts) for split, parts in texts.items()}


def _chunks(text: bytes, length: int) -> np.ndarray:
    arr = np.frombuffer(text, dtype=np.uint8).astype(np.int32)
    n = len(arr) // length
    return arr[: n * length].reshape(n, length)


def _lm_example(row: np.ndarray) -> dict[str, np.ndarray]:
    return {"tokens": row, "weights": np.ones_like(row, dtype=np.float32)}


@register("lm_tiny")
class LmTiny(TransformerLmExperiment):
    """Decoder-only byte LM; eval loss/perplexity on held-out stdlib files; sampled decodes."""

    description = "byte-level Transformer LM on the Python stdlib source"

    num_train_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 3e-3
    save_interval_steps: int = 100
    eval_interval_steps: int = 100
    eval_num_batches: int = 4
    seq_len: int = 64
    corpus_max_bytes: int = 1_000_000
    decode_prompt_len: int = 24
    decode_temperature: float = 0.7

    def vocabulary_size(self) -> int:
        return 256  # bytes

    def max_sequence_length(self) -> int:
        return self.seq_len

    def _split(self, split: str) -> grain.MapDataset:
        rows = _chunks(corpus(self.corpus_max_bytes)[split], self.seq_len + 1)
        return grain.MapDataset.source(rows).map(_lm_example)

    def train_dataset(self) -> grain.MapDataset:
        return self._split("train")

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        return {"test": self._split("test")}

    def decode_dataset(self) -> grain.MapDataset | None:
        return self._split("test")

    def decode(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        tokens = batch["tokens"][:, :-1]
        prompt_len = jnp.full((tokens.shape[0],), self.decode_prompt_len)
        return {"tokens": generate(model, tokens, prompt_len, rng, self.decode_temperature)}

    def decode_records(
        self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], WeightedScalars]:
        p = self.decode_prompt_len
        records = [
            {
                "prompt": bytes(row[:p].astype(np.uint8)).decode("utf-8", "replace"),
                "output": bytes(out[p:].astype(np.uint8)).decode("utf-8", "replace"),
            }
            for row, out in zip(batch["tokens"], outputs["tokens"], strict=True)
        ]
        return records, {"num_decodes": WeightedScalar(float(len(records)), 1.0)}
