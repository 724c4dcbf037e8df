"""`make bench`: trainer overhead and checkpoint cost, measured in one run on the same model and batch.

1. bare: the trainer's own jitted train step in a tight loop over device-resident batches,
   blocking every 10 steps like the trainer (one dispatch latency per 10 steps).
2. trainer: the full executor (grain input, host->device, metrics sync every 10 steps, logging, summaries),
   checkpoints only at start and end (outside the timed window).
3. trainer + a checkpoint every 10 steps (async Orbax, local disk).
Ratios: trainer step time / bare step time (goal <= 1.02); throughput with checkpoints / without (>= 0.95).

`--accelerator`: lm_1b (a tiny lm_1b on CPU) for MFU; see pax_trainer.bench_accelerator and
docs/accelerator.md.
"""

from __future__ import annotations

import os
import sys

if "--accelerator" not in sys.argv:
    # One XLA compute thread: the other core stays free for host work (input, async checkpoint writes), as
    # on an accelerator host; with both cores fighting, timings on a 2-core VM swing by +-20 %.
    os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import logging
import statistics

import jax

from pax_trainer import partitioning, setup_jax
from pax_trainer.bench_accelerator import SEGMENT, step_segments, timed, trainer_segments
from pax_trainer.data import TrainInput
from pax_trainer.experiments.lm_tiny import LmTiny
from pax_trainer.programs import TrainProgram


def bench_experiment(steps: int, batch_size: int) -> LmTiny:
    """lm_tiny with the bench's batch, `timed`."""
    exp = LmTiny()
    exp.batch_size = batch_size
    return timed(exp, steps)


def bare_segments(exp: LmTiny, warmup: int, measure: int) -> list[float]:
    """Seconds per step of the jitted step alone, per 10-step segment (a block ends each segment)."""
    program = TrainProgram(exp, partitioning.make_mesh(exp.mesh_data, exp.mesh_fsdp))
    source = TrainInput(exp.train_dataset(), exp.seed, exp.batch_size)
    batches = [program.global_batch(next(source)) for _ in range(warmup + measure)]
    state = program.init_state()
    for batch in batches[:warmup]:
        state, scalars = program.step_fn(state, batch)
    jax.block_until_ready((state, scalars))
    return step_segments(program.step_fn, state, batches[warmup:], measure)[2]


def main() -> None:
    """Print the numbers and the two ratios (or run the accelerator benchmark)."""
    if "--accelerator" in sys.argv:
        from pax_trainer import bench_accelerator

        bench_accelerator.main([a for a in sys.argv[1:] if a != "--accelerator"])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=130)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup_jax.initialize()
    measure = args.steps - args.warmup - SEGMENT
    bare: list[float] = []
    plain: list[float] = []
    ckpt_ratio: list[float] = []
    ckpt: list[float] = []
    for repeat in range(args.repeats):  # interleaved so that drift hits all three alike
        bare += bare_segments(bench_experiment(args.steps, args.batch_size), args.warmup, measure)
        # The two trainer arms swap order every repeat, so neither always runs right after the other.
        arms = [None, SEGMENT] if repeat % 2 == 0 else [SEGMENT, None]
        runs = {
            save: trainer_segments(bench_experiment(args.steps, args.batch_size), args.warmup, save)
            for save in arms
        }
        no_ckpt, with_ckpt = runs[None], runs[SEGMENT]
        plain += no_ckpt
        ckpt += with_ckpt
        ckpt_ratio.append(statistics.fmean(no_ckpt) / statistics.fmean(with_ckpt))
    # Step time: median 10-step segment (robust to VM noise). Checkpoint cost: whole-window means, since
    # the cost sits in the segments that save; the ratio is the median over interleaved repeats.
    b, p, c = statistics.median(bare), statistics.median(plain), statistics.fmean(ckpt)
    print(
        f"model: lm_tiny (seq {LmTiny.seq_len}, dim {LmTiny.model_dim}, {LmTiny.num_layers} layers), "
        f"global batch {args.batch_size}, {jax.device_count()} device(s), {measure} timed steps, "
        f"median of {args.repeats}"
    )
    print(f"bare jitted step loop         : {b * 1e3:8.3f} ms/step  {1 / b:8.2f} steps/s")
    print(f"trainer (no checkpoints)      : {p * 1e3:8.3f} ms/step  {1 / p:8.2f} steps/s")
    print(f"trainer (checkpoint every 10) : {c * 1e3:8.3f} ms/step  {1 / c:8.2f} steps/s (mean)")
    print(f"ratio trainer / bare step time           : {p / b:.4f}  (goal <= 1.02)")
    print(f"ratio throughput ckpt-every-10 / without : {statistics.median(ckpt_ratio):.4f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
