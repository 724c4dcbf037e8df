"""Model FLOPs and MFU arithmetic (pax_trainer.flops), checked against hand-computed numbers."""

from __future__ import annotations

import pytest
from pax_trainer.flops import LmShape, mfu, peak_bf16_flops

LM_1B = LmShape(num_layers=20, dim=2048, mlp_dim=8192, vocab_size=32768, seq_len=2048)


def test_matmul_params_count_projections_mlp_and_output_embedding() -> None:
    # per layer q,k,v,o = 4·2048² and the MLP 2·2048·8192; plus the (tied) output projection 2048·32768
    assert LM_1B.matmul_params() == 20 * (4 * 2048**2 + 2 * 2048 * 8192) + 2048 * 32768 == 1_073_741_824


def test_train_flops_per_token_is_6n_plus_causal_attention() -> None:
    n = 1_073_741_824
    attention = 6 * 20 * 2048 * 2048  # 12·L·S·D halved by the causal mask
    assert LM_1B.train_flops_per_token() == 6 * n + attention == 6_945_767_424
    assert LM_1B.train_flops_per_token(causal=False) == 6 * n + 2 * attention


def test_train_flops_per_step_scales_with_batch_tokens() -> None:
    assert LM_1B.train_flops_per_step(8) == LM_1B.train_flops_per_token() * 8 * 2048


def test_mfu_is_model_flops_rate_over_peak() -> None:
    # 1e15 model FLOPs in 2 s on 2 devices of 1e15 peak: 0.25
    assert mfu(1e15, 2.0, 1e15, num_devices=2) == pytest.approx(0.25)
    step = LM_1B.train_flops_per_step(8)
    assert mfu(step, step / 989e12, 989e12) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [(1e12, 0.0, 1e12, 1), (1e12, 1.0, 0.0, 1), (1e12, 1.0, 1e12, 0)])
def test_mfu_rejects_non_positive_inputs(bad: tuple[float, float, float, int]) -> None:
    with pytest.raises(ValueError):
        mfu(*bad)


@pytest.mark.parametrize(
    ("kind", "peak"),
    [("NVIDIA H200", 989e12), ("NVIDIA H100 80GB HBM3", 989e12), ("TPU v5 lite", 197e12), ("cpu", None)],
)
def test_peak_by_device_kind(kind: str, peak: float | None) -> None:
    assert peak_bf16_flops(kind) == peak
