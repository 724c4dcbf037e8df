"""`python -m pax_trainer.bench --accelerator` (`make bench-gpu`): lm_1b throughput and MFU on one device.

In one process, bounded by --time_budget_s (compilation included):
1. matmul peak: a bf16 N×N×N product (N=8192 on an accelerator), median of timed runs: the ceiling.
2. per variant (--variant 'batch_size=16,remat=dots' ...): the jitted train step in a bare loop over
   device-resident batches: compile time, step time (median 10-step segment), tokens/s, MFU against the
   datasheet bf16 peak and against the measured matmul peak, peak device memory.
3. for the first variant: the full trainer (grain input, host->device, metrics sync, summaries) without
   checkpoints, and with a checkpoint every --ckpt_every steps: trainer / bare step time and the
   throughput ratio with checkpoints / without.
Prints a table and one JSON line (`BENCH_JSON {...}`); --json also writes it to a file. On CPU the same
runs with a tiny lm_1b (--tiny is implied) in seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pax_contract import ExitReason, TrainerResult

from pax_trainer import flops, hparams, partitioning, setup_jax, step_anatomy
from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.data import TrainInput
from pax_trainer.executor import Executor, check_splits
from pax_trainer.experiments.lm_1b import Lm1B
from pax_trainer.preemption import PreemptionWatcher
from pax_trainer.programs import TrainProgram

SEGMENT = 10  # steps between blocking syncs, as in the trainer
TINY = {  # lm_1b scaled down for CPU: same code path, seconds per run
    "seq_len": "64",
    "vocab_size": "512",
    "model_dim": "64",
    "num_heads": "4",
    "num_layers": "2",
    "mlp_dim": "256",
    "batch_size": "4",
    "xent_chunk": "64",
}
log = logging.getLogger("pax_trainer.bench")


@dataclasses.dataclass
class VariantResult:
    """One bare-loop measurement."""

    overrides: dict[str, str]
    batch_size: int
    tokens_per_step: int
    compile_s: float
    step_s: float
    tokens_per_s: float
    model_tflops_per_s: float
    mfu_spec: float | None
    mfu_measured_peak: float
    peak_memory_gib: float | None  # process-wide peak so far (monotone over variants)
    attention_impl: str  # read from the lowered step, not from the knob
    matmul_dtypes: dict[str, int]
    loss_first: float
    loss_last: float
    profile: dict[str, Any] | None = None  # step_anatomy.summarize of a traced run (first variant)


def timed[E: BaseExperiment](exp: E, steps: int) -> E:
    """`exp` set up to be timed: `steps` steps, no eval or decode, logging at the sync interval, no
    checkpoint unless an arm asks for one."""
    exp.num_train_steps = steps
    exp.eval_interval_steps = 0
    exp.decode_interval_steps = 0
    exp.log_interval_steps = SEGMENT
    exp.save_interval_steps = 10 * steps
    return exp


def experiment(overrides: dict[str, str], steps: int) -> Lm1B:
    """lm_1b with `overrides` applied through the trainer's own --set path (validated), `timed`."""
    return timed(hparams.apply_overrides(Lm1B(), [f"{k}={v}" for k, v in overrides.items()]), steps)


def matmul_peak(n: int, dtype: Any, iters: int = 20) -> float:
    """Measured FLOP/s of an n×n×n product on random data (two input sets, alternated)."""
    keys = jax.random.split(jax.random.key(0), 4)
    mats = [jax.random.normal(k, (n, n), dtype) for k in keys]
    mm = jax.jit(lambda a, b: a @ b)
    times = []
    for i in range(iters + 3):
        a, b = mats[2 * (i % 2)], mats[2 * (i % 2) + 1]
        jax.block_until_ready((a, b))
        start = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        if i >= 3:
            times.append(time.perf_counter() - start)
    return 2.0 * n**3 / statistics.median(times)


def peak_memory_gib() -> float | None:
    """Peak bytes in use on device 0 so far (None where the backend does not say)."""
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**30 if peak else None


def bare_loop(
    overrides: dict[str, str],
    steps: int,
    peak: float,
    spec: float | None,
    profile_steps: int = 0,
    profile_copy: str = "",
) -> VariantResult:
    """The jitted train step alone over a few device-resident batches (cycled); blocking every 10 steps.
    profile_steps > 0: then that many more steps under the profiler, summarised (trace copied to
    `profile_copy` if given)."""
    exp = experiment(overrides, steps)
    program = TrainProgram(exp, partitioning.make_mesh(exp.mesh_data, exp.mesh_fsdp, exp.mesh_tensor))
    source = TrainInput(exp.train_dataset(), exp.seed, exp.batch_size)
    batches = [program.global_batch(next(source)) for _ in range(4)]
    state = program.init_state()
    start = time.perf_counter()
    lowered = program.step_fn.lower(state, batches[0])
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    stablehlo = lowered.as_text()  # outside the timing: compile_s is lowering + compiling only
    analysis = compiled.memory_analysis()
    temp = getattr(analysis, "temp_size_in_bytes", None)
    log.warning("compiled %s in %.1f s; XLA temp buffers %s GiB", overrides, compile_s, temp and temp / 2**30)
    state, scalars = compiled(state, batches[0])
    loss_first = float(scalars["loss"].value)
    state, scalars = compiled(state, batches[1])  # one more warm-up step
    jax.block_until_ready(scalars)
    state, scalars, segments = step_segments(compiled, state, batches, steps)
    loss_last = float(scalars["loss"].value)
    profile = None
    if profile_steps > 0:

        def run_steps() -> None:
            nonlocal state, scalars
            for i in range(profile_steps):
                state, scalars = compiled(state, batches[i % len(batches)])
            jax.block_until_ready(scalars)

        try:  # a profiler that cannot trace here (no CUPTI) must not lose the measurement
            with tempfile.TemporaryDirectory(prefix="pax-profile-") as directory:
                xplane = step_anatomy.trace(run_steps, Path(directory))
                profile = step_anatomy.summarize(xplane, profile_steps)
                if profile_copy:
                    shutil.copyfile(xplane, profile_copy)
        except Exception as err:
            profile = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
    del state
    step_s = statistics.median(segments)
    tokens = exp.batch_size * exp.seq_len
    model_flops = exp.shape().train_flops_per_step(exp.batch_size)
    n = jax.device_count()
    return VariantResult(
        overrides=overrides,
        batch_size=exp.batch_size,
        tokens_per_step=tokens,
        compile_s=compile_s,
        step_s=step_s,
        tokens_per_s=tokens / step_s,
        model_tflops_per_s=model_flops / step_s / 1e12,
        mfu_spec=flops.mfu(model_flops, step_s, spec, n) if spec else None,
        mfu_measured_peak=flops.mfu(model_flops, step_s, peak, n),
        peak_memory_gib=peak_memory_gib(),
        attention_impl=step_anatomy.attention_in(stablehlo),
        matmul_dtypes=step_anatomy.matmul_dtypes(stablehlo),
        loss_first=loss_first,
        loss_last=loss_last,
        profile=profile,
    )


def trainer_loop(overrides: dict[str, str], steps: int, warmup: int, save_every: int | None) -> list[float]:
    """`trainer_segments` of lm_1b with `overrides`, run for `steps` steps."""
    return trainer_segments(experiment(overrides, steps), warmup, save_every)


def step_segments(
    step: Callable[[Any, Any], tuple[Any, Any]], state: Any, batches: Sequence[Any], steps: int
) -> tuple[Any, Any, list[float]]:
    """`steps` jitted steps over `batches` (cycled), blocking every SEGMENT steps like the trainer: the
    final state and scalars, and the seconds per step of each segment."""
    segments, mark, scalars = [], time.perf_counter(), None
    for i in range(1, steps + 1):
        state, scalars = step(state, batches[i % len(batches)])
        if i % SEGMENT == 0:
            jax.block_until_ready(scalars)
            now = time.perf_counter()
            segments.append((now - mark) / SEGMENT)
            mark = now
    return state, scalars, segments


def trainer_segments(exp: BaseExperiment, warmup: int, save_every: int | None) -> list[float]:
    """Seconds per step of the full train loop per 10-step segment, from `warmup` to the last sync."""
    if save_every:
        exp.save_interval_steps = save_every
    with tempfile.TemporaryDirectory(prefix="pax-bench-") as job:
        splits = check_splits(exp, "train")
        executor = Executor(exp, job, TrainerResult(ExitReason.COMPLETED), PreemptionWatcher(), splits)
        executor.train()
    times = [(s, t) for s, t in executor.sync_times if warmup <= s < exp.num_train_steps]
    return [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in itertools.pairwise(times)]


def parse_variant(text: str) -> dict[str, str]:
    """'batch_size=16,remat=dots' -> {'batch_size': '16', 'remat': 'dots'}."""
    return hparams.parse_set_flags([item for item in text.split(",") if item.strip()])


def main(argv: list[str] | None = None) -> None:
    """Run the measurements within the time budget; print a table and a JSON line."""
    parser = argparse.ArgumentParser(
        prog="pax_trainer.bench --accelerator",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--variant", action="append", default=[], help='lm_1b overrides, comma-separated ("": the defaults)'
    )
    parser.add_argument("--tiny", action="store_true", help="tiny lm_1b (implied on CPU)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per bare-loop variant")
    parser.add_argument("--trainer_steps", type=int, default=50)
    parser.add_argument("--ckpt_every", type=int, default=20)
    parser.add_argument("--matmul_n", type=int, default=0, help="0: 8192 on an accelerator, 512 on CPU")
    parser.add_argument("--time_budget_s", type=float, default=400.0)
    parser.add_argument("--json", default="", help="also write the JSON result here")
    parser.add_argument("--profile_steps", type=int, default=3, help="first variant: steps traced (0: none)")
    parser.add_argument(
        "--profile_copy", default="", help="also copy the first variant's trace (.xplane.pb) here"
    )
    parser.add_argument("--cache_dir", default="", help="persistent compilation cache (default: a temp dir)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    setup_jax.initialize()
    jax.config.update("jax_compilation_cache_dir", args.cache_dir or tempfile.mkdtemp(prefix="pax-jaxcache-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    tiny = dict(TINY) if (args.tiny or on_cpu) else {}
    variants = [tiny | parse_variant(v) for v in args.variant] or [tiny]
    spec = flops.peak_bf16_flops(device.device_kind)
    result: dict[str, Any] = {
        "device": device.device_kind,
        "platform": device.platform,
        "num_devices": jax.device_count(),
        "jax": jax.__version__,
        "peak_bf16_spec_tflops": spec / 1e12 if spec else None,
        "variants": [],
        "skipped": [],
    }

    def left() -> float:
        return args.time_budget_s - (time.perf_counter() - t0)

    def report(line: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {line}", flush=True)

    n = args.matmul_n or (512 if on_cpu else 8192)
    peak = matmul_peak(n, jnp.float32 if on_cpu else jnp.bfloat16)
    result["matmul_peak_tflops"] = peak / 1e12
    report(f"{device.device_kind}: {n}^3 matmul {peak / 1e12:.1f} TFLOP/s (spec {spec})")
    exp0 = experiment(variants[0], 1)
    result["model"] = {
        "params": count_params(exp0),
        "matmul_params": exp0.shape().matmul_params(),
        "flops_per_token": exp0.shape().train_flops_per_token(),
        "seq_len": exp0.seq_len,
    }
    report(f"model: {result['model']}")

    def run_variant(overrides: dict[str, str], profile_steps: int = 0) -> None:
        if left() < 60 and result["variants"]:
            result["skipped"].append(f"variant {overrides}: time budget")
            return
        try:
            r = bare_loop(overrides, args.steps, peak, spec, profile_steps, args.profile_copy)
        except Exception as err:  # an OOM or an unsupported config must not lose the other results
            result["skipped"].append(f"variant {overrides}: {type(err).__name__}: {str(err)[:300]}")
            report(f"variant {overrides} failed: {err!s:.300}")
            return
        result["variants"].append(dataclasses.asdict(r))
        report(f"variant {overrides}: {json.dumps(dataclasses.asdict(r))}")

    run_variant(variants[0], args.profile_steps)
    if not result["variants"] and variants[0].get("attention", "auto") != "xla":
        variants[0] = variants[0] | {"attention": "xla"}  # e.g. cuDNN attention unavailable: still measure
        run_variant(variants[0], args.profile_steps)
    # The trainer arms use the first variant. Step time: the median 10-step segment (as the bare loop);
    # checkpoint cost: whole-window means, since it sits in the segments that save.
    if result["variants"] and left() > 90:
        base = result["variants"][0]
        try:
            plain = trainer_loop(variants[0], max(args.trainer_steps, 4 * SEGMENT), SEGMENT, None)
            result["trainer_step_s"] = statistics.median(plain)
            result["trainer_mean_step_s"] = statistics.fmean(plain)
            result["trainer_over_bare"] = result["trainer_step_s"] / base["step_s"]
            report(f"trainer loop: {result['trainer_step_s'] * 1e3:.1f} ms/step, segments {plain}")
        except Exception as err:
            result["skipped"].append(f"trainer loop: {type(err).__name__}: {str(err)[:300]}")
    elif result["variants"]:
        result["skipped"].append("trainer loop: time budget")
    if "trainer_step_s" in result and left() > 90:
        try:
            ckpt = trainer_loop(variants[0], result_steps(args), SEGMENT, args.ckpt_every)
            result["trainer_ckpt_mean_step_s"] = statistics.fmean(ckpt)
            result["ckpt_every"] = args.ckpt_every
            result["throughput_ckpt_over_plain"] = result["trainer_mean_step_s"] / statistics.fmean(ckpt)
            report(f"trainer + checkpoint every {args.ckpt_every}: segments {ckpt}")
        except Exception as err:
            result["skipped"].append(f"checkpoint arm: {type(err).__name__}: {str(err)[:300]}")
    elif "trainer_step_s" in result:
        result["skipped"].append("checkpoint arm: time budget")
    for overrides in variants[1:]:
        run_variant(overrides)
    result["wall_s"] = time.perf_counter() - t0
    print_table(result)
    line = json.dumps(result, sort_keys=True)
    print(f"BENCH_JSON {line}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            f.write(line + "\n")


def result_steps(args: argparse.Namespace) -> int:
    """Checkpoint arm length: at least two saves inside the timed window."""
    return max(args.trainer_steps, SEGMENT + 2 * args.ckpt_every + SEGMENT)


def count_params(exp: Lm1B) -> int:
    """Parameter count from shapes only (jax.eval_shape: nothing allocated)."""
    from flax import nnx

    model = nnx.eval_shape(lambda: exp.model(nnx.Rngs(0)))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def print_table(result: dict[str, Any]) -> None:
    """Human-readable summary of `result`."""
    spec = result["peak_bf16_spec_tflops"]
    print(
        f"\n{result['device']} x{result['num_devices']} (jax {result['jax']}): matmul peak "
        f"{result['matmul_peak_tflops']:.1f} TFLOP/s, spec {spec or '?'} TFLOP/s; model "
        f"{result['model']['params'] / 1e9:.3f} B params, {result['model']['flops_per_token'] / 1e9:.2f} "
        "GFLOP/token"
    )
    header = (
        f"{'variant':<44} {'batch':>5} {'compile s':>9} {'step ms':>8} {'tokens/s':>9} {'TFLOP/s':>8} "
        f"{'MFU spec':>8} {'MFU meas':>8} {'mem GiB':>7} {'attn':>5}  matmuls by operand dtype"
    )
    print(header)
    for v in result["variants"]:
        name = ",".join(f"{k}={val}" for k, val in v["overrides"].items() if k not in TINY) or "default"
        mfu_spec = f"{v['mfu_spec'] * 100:.1f}%" if v["mfu_spec"] is not None else "-"
        mem = f"{v['peak_memory_gib']:.1f}" if v["peak_memory_gib"] is not None else "-"
        print(
            f"{name[:44]:<44} {v['batch_size']:>5} {v['compile_s']:>9.1f} {v['step_s'] * 1e3:>8.1f} "
            f"{v['tokens_per_s']:>9.0f} {v['model_tflops_per_s']:>8.1f} {mfu_spec:>8} "
            f"{v['mfu_measured_peak'] * 100:>7.1f}% {mem:>7} {v['attention_impl']:>5}  {v['matmul_dtypes']}"
        )
    for v in result["variants"]:
        if (profile := v.get("profile")) and "error" in profile:
            print(f"profile: {profile['error']}")
        elif profile:
            print(
                f"profile of {profile['steps']} steps: device ops {profile['op_ms_per_step']:.1f} ms/step, "
                f"by class (ms) {profile['by_class_ms']}"
            )
            for name, ms, calls in profile["top"][:10]:
                print(f"  {ms:9.2f} ms x{calls:<4} {name[:100]}")
    if "trainer_over_bare" in result:
        print(f"trainer loop / bare jitted loop step time : {result['trainer_over_bare']:.4f}")
    if "throughput_ckpt_over_plain" in result:
        print(
            f"throughput with a checkpoint every {result['ckpt_every']} steps / without : "
            f"{result['throughput_ckpt_over_plain']:.4f}"
        )
    for item in result["skipped"]:
        print(f"skipped: {item}")
    print(f"wall time {result['wall_s']:.0f} s")
