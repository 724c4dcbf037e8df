"""lm_1b: a ~1B-parameter decoder-only LM on deterministic synthetic tokens (the accelerator benchmark).

20 layers × 2048 wide (16 heads of 128, MLP 8192), sequence 2048, vocabulary 32768: 1.08 B parameters.
bf16 compute with fp32 master weights and optimizer state, flash attention on GPU, the fused chunked
cross-entropy, layers unrolled (scan_layers=True compiles one block, but keeps more activations). The
data needs no download: example i is a function of (data_seed, i) only, a random phrase of 8..128 tokens
repeated to the sequence length, so a model that learns to copy (induction) drives the loss down while
the first phrase of each sequence stays unpredictable.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import numpy as np
from flax import nnx

from pax_trainer.base_experiment import Batch
from pax_trainer.experiments.transformer_lm import TransformerLmExperiment
from pax_trainer.flops import LmShape
from pax_trainer.metrics import WeightedScalars
from pax_trainer.registry import register


class RepeatedPhrases:
    """Random-access source of {'tokens': int32[seq_len + 1], 'weights': float32[seq_len + 1]}."""

    def __init__(self, seed: int, size: int, seq_len: int, vocab_size: int) -> None:
        self.seed, self.size, self.seq_len, self.vocab_size = seed, size, seq_len, vocab_size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        period = int(rng.integers(8, 129))
        phrase = rng.integers(0, self.vocab_size, period, dtype=np.int32)
        tokens = np.resize(phrase, self.seq_len + 1)
        return {"tokens": tokens, "weights": np.ones(self.seq_len + 1, np.float32)}


@register("lm_1b")
class Lm1B(TransformerLmExperiment):
    """~1B-parameter LM for accelerator throughput (MFU); synthetic data, no eval/decode by default."""

    description = "1B-parameter Transformer LM on synthetic tokens (accelerator benchmark)"

    num_train_steps: int = 1000
    batch_size: int = 8
    learning_rate: float = 3e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    save_interval_steps: int = 500
    max_to_keep: int = 1
    eval_interval_steps: int = 0
    eval_num_batches: int = 2
    compute_dtype: str = "bfloat16"
    seq_len: int = 2048
    vocab_size: int = 32768
    model_dim: int = 2048
    num_heads: int = 16
    num_layers: int = 20
    mlp_dim: int = 8192
    attention: str = "auto"
    scan_layers: bool = False  # H200: OOM at batch 8 without remat (measured while the step ran in fp32)
    xent_chunk: int = 4096
    data_seed: int = 11

    def shape(self) -> LmShape:
        """What the FLOPs formula needs."""
        return LmShape(self.num_layers, self.model_dim, self.mlp_dim, self.vocab_size, self.seq_len)

    def vocabulary_size(self) -> int:
        return self.vocab_size

    def max_sequence_length(self) -> int:
        return self.seq_len

    def _source(self, seed: int, size: int) -> grain.MapDataset:
        return grain.MapDataset.source(RepeatedPhrases(seed, size, self.seq_len, self.vocab_size))

    def train_dataset(self) -> grain.MapDataset:
        return self._source(self.data_seed, 1 << 30)

    def eval_datasets(self) -> dict[str, grain.MapDataset]:
        return {"test": self._source(self.data_seed + 1, 1024)}

    def decode(self, model: nnx.Module, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
        raise NotImplementedError("lm_1b has no decode")

    def decode_records(
        self, batch: dict[str, np.ndarray], outputs: dict[str, np.ndarray]
    ) -> tuple[list[dict[str, Any]], WeightedScalars]:
        raise NotImplementedError("lm_1b has no decode")
