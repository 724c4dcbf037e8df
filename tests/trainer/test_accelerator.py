"""Issue 12 on CPU: mixed precision, the accelerator knobs, lm_1b, and the accelerator benchmark's CPU run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pax_trainer.experiments  # noqa: F401  (registers the built-ins: the registry is a leaf)
import pytest
from flax import nnx
from pax_trainer import hparams, partitioning, registry
from pax_trainer.bench_accelerator import count_params
from pax_trainer.data import TrainInput
from pax_trainer.experiments.lm_1b import Lm1B
from pax_trainer.experiments.transformer import ModelOptions, TransformerLM, fused_xent, lm_loss
from pax_trainer.programs import TrainProgram
from pax_trainer.step_anatomy import attention_in, leaves, matmul_dtypes, op_class

from tests.trainer.conftest import BASE_ENV, run_trainer

pytestmark = pytest.mark.timeout(600)

# lm_1b's code path at a size 2 CPU cores run in seconds (the real vocabulary; width, depth, length cut).
SMALL = ["seq_len=32", "batch_size=2", "model_dim=128", "num_heads=2", "num_layers=2", "mlp_dim=512"]


def lm_1b(*overrides: str) -> Lm1B:
    return hparams.apply_overrides(Lm1B(), [*SMALL, *overrides])


def test_lm_1b_is_registered_with_about_1b_params_counted_without_allocating() -> None:
    exp = registry.get("lm_1b")()
    n = count_params(exp)  # jax.eval_shape: nothing allocated
    assert 1.0e9 < n < 1.15e9, n
    d, f, layers = exp.model_dim, exp.mlp_dim, exp.num_layers
    # The FLOPs formula's matmul weights plus what is not a matmul: positions, biases, LayerNorms.
    extra = exp.seq_len * d + layers * (4 * d + f + d + 4 * d) + 2 * d
    assert n == exp.shape().matmul_params() + extra


@pytest.mark.parametrize(
    "knobs",
    [
        ["scan_layers=false", "remat=none", "xent_chunk=24"],
        ["scan_layers=true", "remat=full", "xent_chunk=0"],
    ],
)
def test_lm_1b_runs_two_bf16_steps_with_fp32_master_state(knobs: list[str]) -> None:
    exp = lm_1b(*knobs)
    program = TrainProgram(exp, partitioning.make_mesh(-1, 1))
    assert program.dtype == jnp.bfloat16
    source = TrainInput(exp.train_dataset(), exp.seed, exp.batch_size)
    state = program.init_state()
    losses = []
    for _ in range(2):
        state, scalars = program.step_fn(state, program.global_batch(next(source)))
        losses.append(float(scalars["loss"].value))
    assert int(state["step"]) == 2
    assert all(np.isfinite(losses)) and losses[0] > 5.0  # ~ln 32768 = 10.4 at init
    floats = [x for x in jax.tree.leaves((state["params"], state["opt_state"])) if x.dtype != jnp.int32]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


def lowered_step(exp: Lm1B) -> str:
    """The StableHLO of exp's jitted train step (lowered from shapes; nothing compiled or run)."""
    program = TrainProgram(exp, partitioning.make_mesh(-1, 1))
    model = program.merge(program.init_state()["params"])
    tokens = jnp.zeros((2, 8), jnp.int32)
    assert model.embed(tokens).dtype == model.hidden(tokens).dtype == program.dtype
    assert model(tokens).dtype == jnp.float32  # logits accumulated in fp32 either way
    batch = program.global_batch(next(TrainInput(exp.train_dataset(), 0, exp.batch_size)))
    return program.step_fn.lower(program.abstract_with_sharding(), batch).as_text()


def test_compiled_step_does_what_the_knobs_say() -> None:
    """Read from the step's StableHLO: bf16 matmuls (the bf16 policy once ran in fp32 because nnx.Embed
    fixed its output dtype to its fp32 param_dtype), the whole state donated, no [B, T, V] logits,
    remat and scan_layers in effect."""
    bf16_text = lowered_step(lm_1b("attention=nnx", "xent_chunk=16"))
    bf16, fp32 = matmul_dtypes(bf16_text), matmul_dtypes(lowered_step(lm_1b("compute_dtype=float32")))
    assert bf16["bf16xbf16"] >= 6 * 2 * 3 and "f32xf32" not in bf16, bf16  # 6 matmuls/layer, fwd + 2 bwd
    assert set(fp32) == {"f32xf32"}, fp32

    state_leaves = len(jax.tree.leaves(TrainProgram(lm_1b(), partitioning.make_mesh(-1, 1)).abstract_state))
    assert bf16_text.count("tf.aliasing_output") == state_leaves  # every state buffer reused in place
    batch, seq, vocab = 2, 32, 32768
    logits = f"tensor<{batch}x{seq}x{vocab}x"
    assert logits not in bf16_text and logits in lowered_step(lm_1b("xent_chunk=0"))
    # remat: one barrier per rematerialised layer; scan_layers: the layers run in a while loop
    assert bf16_text.count("optimization_barrier") == 0
    assert lowered_step(lm_1b("remat=full")).count("optimization_barrier") == 2
    loops = bf16_text.count("stablehlo.while")  # the fused cross-entropy's scan over chunks
    assert lowered_step(lm_1b("scan_layers=true", "xent_chunk=16")).count("stablehlo.while") > loops


def test_the_gpu_lowering_of_lm_1b_is_bf16_with_cudnn_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The step as a GPU would compile it, lowered here for CUDA: `attention=auto` must pick cuDNN and
    every matmul must be bf16. Only jax's cuDNN presence check is bypassed (no GPU here); if jax moves
    it, this test says so instead of passing."""
    from jax._src.cudnn import fused_attention_stablehlo

    assert hasattr(fused_attention_stablehlo, "check_cudnn_version"), "jax moved its cuDNN check"
    monkeypatch.setattr(fused_attention_stablehlo, "check_cudnn_version", lambda *_, **__: None)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")  # what resolve_attention asks
    program = TrainProgram(lm_1b(), partitioning.make_mesh(-1, 1))
    batch = program.global_batch(next(TrainInput(program.exp.train_dataset(), 0, program.exp.batch_size)))
    lowered = program.step_fn.trace(program.abstract_with_sharding(), batch).lower(
        lowering_platforms=("cuda",)
    )
    text = lowered.as_text()
    assert attention_in(text) == "cudnn"
    assert set(matmul_dtypes(text)) == {"bf16xbf16"}, matmul_dtypes(text)


@dataclass
class Event:
    name: str
    start_ns: float
    duration_ns: float


def test_profile_counts_leaf_ops_once_and_classes_them() -> None:
    # a `while` enclosing two ops, then a sibling op; the enclosing event's time is its children's
    events = [Event("fusion.3", 10, 5), Event("while", 0, 30), Event("dot.1", 2, 6), Event("gemm", 40, 4)]
    assert leaves(events) == [("dot.1", 6), ("fusion.3", 5), ("gemm", 4)]
    names = ["__cudnn$fmhaSoftmax", "sm90_xmma_gemm_bf16bf16", "dot.12", "loop_add_fusion", "copy.3"]
    assert [op_class(n) for n in names] == ["attention", "matmul", "matmul", "fusion", "copy"]
    assert op_class("while") == "other"


def test_bf16_loss_and_grads_match_fp32() -> None:
    exp32, exp16 = lm_1b("compute_dtype=float32", "xent_chunk=16"), lm_1b("xent_chunk=16")
    p32, p16 = (TrainProgram(e, partitioning.make_mesh(-1, 1)) for e in (exp32, exp16))
    params = p32.init_state()["params"]
    batch = p32.global_batch(next(TrainInput(exp32.train_dataset(), 0, exp32.batch_size)))

    def value_and_grad(program: TrainProgram) -> tuple[jax.Array, dict]:
        return jax.jit(jax.value_and_grad(lambda p: program.exp.loss(program.merge(p), batch)[0]))(params)

    (l32, g32), (l16, g16) = value_and_grad(p32), value_and_grad(p16)
    assert abs(float(l16) - float(l32)) / float(l32) < 1e-2
    a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g32, g16))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))  # grads land on the fp32 masters
    assert np.linalg.norm(b - a) / np.linalg.norm(a) < 5e-2
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.995


def test_fused_xent_matches_log_softmax_values_and_grads() -> None:
    keys = jax.random.split(jax.random.key(3), 4)
    h, emb = jax.random.normal(keys[0], (37, 16)), jax.random.normal(keys[1], (50, 16))
    targets = jax.random.randint(keys[2], (37,), 0, 50)
    weights = (jax.random.uniform(keys[3], (37,)) > 0.3).astype(jnp.float32)

    def plain(h: jax.Array, emb: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = h @ emb.T
        xent = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[:, None], -1)[:, 0]
        return jnp.sum(xent * weights), jnp.sum((jnp.argmax(logits, -1) == targets) * weights)

    for chunk in (8, 37, 64):  # padded, exact, larger than the input
        fused = fused_xent(h, emb, targets, weights, chunk)
        np.testing.assert_allclose(np.array(fused), np.array(plain(h, emb)), rtol=1e-5)
        g_plain = jax.grad(lambda a, b: 2 * plain(a, b)[0], argnums=(0, 1))(h, emb)
        g_fused = jax.grad(
            lambda a, b, c=chunk: 2 * fused_xent(a, b, targets, weights, c)[0], argnums=(0, 1)
        )(h, emb)
        for x, y in zip(g_plain, g_fused, strict=True):
            np.testing.assert_allclose(np.array(y), np.array(x), rtol=1e-4, atol=1e-5)


def test_model_options_compute_the_same_function() -> None:
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 11)
    batch = {"tokens": tokens, "weights": jnp.ones_like(tokens, jnp.float32)}
    reference = None
    for options in [
        ModelOptions(),
        ModelOptions("xla"),
        ModelOptions("auto", "dots", False),
        ModelOptions("xla", "full", True),
        ModelOptions("xla", "dots_no_batch", True),
    ]:
        model = TransformerLM(11, 9, 32, 4, 3, nnx.Rngs(0), options=options)
        for chunk in (0, 5):
            loss = float(lm_loss(model, batch, chunk)[0])
            reference = loss if reference is None else reference
            assert loss == pytest.approx(reference, abs=1e-5), (options, chunk)


def test_model_options_reject_unknown_choices() -> None:
    with pytest.raises(ValueError, match="attention="):
        TransformerLM(11, 9, 32, 4, 1, nnx.Rngs(0), options=ModelOptions(attention="flash"))
    with pytest.raises(ValueError, match="remat="):
        TransformerLM(11, 9, 32, 4, 1, nnx.Rngs(0), options=ModelOptions(remat="some"))


MESH_SCRIPT = """
import json, sys
import jax
from pax_trainer import hparams, partitioning
from pax_trainer.data import TrainInput
from pax_trainer.errors import ConfigError
from pax_trainer.experiments.lm_1b import Lm1B
from pax_trainer.programs import TrainProgram
from pax_trainer.step_anatomy import attention_in, leaves, matmul_dtypes, op_class

def run(data, fsdp, tensor):
    exp = hparams.apply_overrides(Lm1B(), sys.argv[1:] + ["batch_size=4", "compute_dtype=float32"])
    program = TrainProgram(exp, partitioning.make_mesh(data, fsdp, tensor))
    source = TrainInput(exp.train_dataset(), exp.seed, exp.batch_size)
    state, losses = program.init_state(), []
    for _ in range(2):
        state, scalars = program.step_fn(state, program.global_batch(next(source)))
        losses.append(float(scalars["loss"].value))
    axes = {a for s in jax.tree.leaves(program.state_sharding) for p in s.spec for a in ([p] if p else [])}
    return {"losses": losses, "axes": sorted(axes)}

out = {f"{d}x{f}x{t}": run(d, f, t) for d, f, t in [(4, 1, 1), (1, 2, 2), (2, 1, 2)]}
try:
    partitioning.make_mesh(-1, 1, 3)
except ConfigError as err:
    out["error"] = str(err)
print(json.dumps(out))
"""


@pytest.mark.slow
def test_data_fsdp_tensor_meshes_train_the_same(tmp_path: Path) -> None:
    env = os.environ | BASE_ENV | {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, *SMALL], env=env, capture_output=True, text=True, timeout=540
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["4x1x1"]["axes"] == [] and out["1x2x2"]["axes"] == ["fsdp", "tensor"]
    assert out["2x1x2"]["axes"] == ["tensor"]
    for mesh in ("1x2x2", "2x1x2"):
        np.testing.assert_allclose(out[mesh]["losses"], out["4x1x1"]["losses"], rtol=1e-5)
    assert "mesh tensor=3 does not divide 4 devices" in out["error"]


@pytest.mark.slow
def test_reverse_digits_in_bf16_reaches_the_fp32_threshold(tmp_path: Path) -> None:
    run = run_trainer(
        ["--exp", "reverse_digits", "--set", "compute_dtype=bfloat16"], tmp_path / "job", tmp_path
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result and run.result.final_step == 200
    assert run.result.metrics["eval_test/accuracy"] >= 0.99  # test_learning's fp32 threshold


def test_bad_compute_dtype_is_a_config_error_naming_the_field(tmp_path: Path) -> None:
    run = run_trainer(
        ["--exp", "reverse_digits", "--set", "compute_dtype=float8"], tmp_path / "job", tmp_path
    )
    assert run.returncode != 0
    assert "compute_dtype" in run.stderr


@pytest.mark.slow
def test_accelerator_bench_runs_on_cpu_with_a_tiny_lm_1b(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        "-m",
        "pax_trainer.bench",
        "--accelerator",
        "--steps",
        "10",
        "--trainer_steps",
        "40",
    ]
    cmd += ["--ckpt_every", "10", "--json", str(out)]
    proc = subprocess.run(
        cmd, env=os.environ | BASE_ENV, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BENCH_JSON "))
    result = json.loads(line.removeprefix("BENCH_JSON "))
    assert result == json.loads(out.read_text())
    assert result["platform"] == "cpu" and not result["skipped"]
    (variant,) = result["variants"]
    assert variant["tokens_per_step"] == 4 * 64 and variant["attention_impl"] == "xla"
    assert variant["matmul_dtypes"]["bf16xbf16"] > 0 and "f32xf32" not in variant["matmul_dtypes"]
    profile = variant["profile"]  # 3 traced steps (default), summarised from the real trace
    assert profile["steps"] == 3 and profile["op_ms_per_step"] > 0 and profile["top"], profile
    assert sum(profile["by_class_ms"].values()) == pytest.approx(profile["op_ms_per_step"], abs=0.01)
    assert variant["mfu_measured_peak"] > 0 and variant["loss_last"] < variant["loss_first"]
    assert result["trainer_over_bare"] > 0 and result["throughput_ckpt_over_plain"] > 0
    assert "MFU spec" in proc.stdout and "trainer loop / bare jitted loop" in proc.stdout
