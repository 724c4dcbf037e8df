"""Model FLOPs of a decoder-only LM train step and MFU, counted the way MaxText does.

Per token, a training step (forward + backward = 3 × forward) costs

    6 · N_matmul  +  6 · L · S · D            (causal attention; 12 · L · S · D without the causal mask)

where N_matmul = L · (4·D² + 2·D·F) + D·V is the weights that multiply activations (q, k, v, o projections,
the two MLP matrices, the output projection / tied embedding; embedding look-ups, norms and biases are not
matmuls), L layers, S sequence length, D model width, F MLP width, V vocabulary. The attention term is
QKᵀ and AV: 2 matmuls × 2·S·D FLOPs per token and layer forward, halved by the causal mask, × 3 for
training. Rematerialisation does not count (model FLOPs, not hardware FLOPs).

MFU = model FLOPs per step / (step time × devices × peak FLOP/s per device).
"""

from __future__ import annotations

from dataclasses import dataclass

# Dense bf16 matrix peak per device (vendor datasheets, no sparsity), matched against jax device_kind.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v4": 275e12,
    "TPU v6 lite": 918e12,
}


@dataclass(frozen=True)
class LmShape:
    """The shape facts the FLOPs formula needs."""

    num_layers: int
    dim: int
    mlp_dim: int
    vocab_size: int
    seq_len: int

    def matmul_params(self) -> int:
        """Weights that multiply activations: L·(4D² + 2DF) + DV."""
        d = self.dim
        return self.num_layers * (4 * d * d + 2 * d * self.mlp_dim) + d * self.vocab_size

    def train_flops_per_token(self, causal: bool = True) -> float:
        """6·N_matmul + attention (6·L·S·D causal, 12·L·S·D full)."""
        attention = 12 * self.num_layers * self.seq_len * self.dim
        return 6.0 * self.matmul_params() + (attention / 2 if causal else attention)

    def train_flops_per_step(self, batch_size: int, causal: bool = True) -> float:
        """Model FLOPs of one step over batch_size sequences of seq_len tokens."""
        return self.train_flops_per_token(causal) * batch_size * self.seq_len


def mfu(flops_per_step: float, step_time_s: float, peak_flops: float, num_devices: int = 1) -> float:
    """Model FLOPs utilisation: achieved model FLOP/s over the devices' peak."""
    if step_time_s <= 0 or peak_flops <= 0 or num_devices <= 0:
        raise ValueError("step time, peak and device count must be positive")
    return flops_per_step / step_time_s / (num_devices * peak_flops)


def peak_bf16_flops(device_kind: str) -> float | None:
    """Datasheet dense bf16 peak for a jax device_kind ('NVIDIA H200', 'TPU v5 lite'), None if unknown."""
    kind = device_kind.lower()
    for name in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):  # 'TPU v5 lite' before 'TPU v5'
        if name.lower() in kind:
            return PEAK_BF16_FLOPS[name]
    return None
