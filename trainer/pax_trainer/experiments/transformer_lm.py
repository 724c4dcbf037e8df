"""TransformerLmExperiment: what every decoder-only LM experiment shares: sizes, model, loss."""

from __future__ import annotations

import jax
from flax import nnx

from pax_trainer.base_experiment import BaseExperiment, Batch, require
from pax_trainer.experiments.transformer import (
    ATTENTION_IMPLS,
    REMAT_POLICIES,
    ModelOptions,
    TransformerLM,
    lm_loss,
)
from pax_trainer.metrics import WeightedScalars


class TransformerLmExperiment(BaseExperiment):
    """A TransformerLM trained on next-token loss over batch['tokens'] weighted by batch['weights'].
    Subclasses give the data, `vocabulary_size()` and `max_sequence_length()`, and override the sizes."""

    model_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_dim: int = 0  # 0: 4 x model_dim
    attention: str = "nnx"  # nnx | xla | cudnn | auto (cudnn on GPU for bf16)
    remat: str = "none"  # none | full | dots | dots_no_batch
    scan_layers: bool = False  # one compiled block for all layers (keeps ~2x the activations without remat)
    xent_chunk: int = 0  # tokens per fused cross-entropy chunk; 0 = plain [B, T, V] logits

    def vocabulary_size(self) -> int:
        raise NotImplementedError

    def max_sequence_length(self) -> int:
        raise NotImplementedError

    def validate(self) -> None:
        super().validate()
        for name in ("model_dim", "num_layers"):
            require(self, name, getattr(self, name) > 0, "must be positive")
        require(
            self,
            "num_heads",
            self.num_heads > 0 and self.model_dim % self.num_heads == 0,
            f"model_dim {self.model_dim} must be a multiple of it",
        )
        require(self, "mlp_dim", self.mlp_dim >= 0, "0 (4 x model_dim) or positive")
        require(self, "xent_chunk", self.xent_chunk >= 0, "0 (no chunking) or positive")
        require(self, "attention", self.attention in ATTENTION_IMPLS, f"one of {', '.join(ATTENTION_IMPLS)}")
        require(self, "remat", self.remat in REMAT_POLICIES, f"one of {', '.join(REMAT_POLICIES)}")

    def model(self, rngs: nnx.Rngs) -> nnx.Module:
        return TransformerLM(
            self.vocabulary_size(),
            self.max_sequence_length(),
            self.model_dim,
            self.num_heads,
            self.num_layers,
            rngs,
            mlp_dim=self.mlp_dim or None,
            options=ModelOptions(self.attention, self.remat, self.scan_layers),
        )

    def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, WeightedScalars]:
        return lm_loss(model, batch, self.xent_chunk)  # type: ignore[arg-type]
