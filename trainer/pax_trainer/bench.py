"""`make bench`: trainer overhead and checkpoint cost, measured in one run on the same model and batch.

1. bare: the trainer's own jitted train step in a tight loop over device-resident batches (one block at end).
2. trainer: the full executor (grain input, host->device, metrics sync every 10 steps, logging, summaries),
   checkpoints only at start and end (outside the timed window).
3. trainer + a checkpoint every 10 steps (async Orbax, local disk).
Ratios: trainer step time / bare step time (goal <= 1.02); throughput with checkpoints / without (>= 0.95).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time

import jax

from pax_trainer import partitioning, setup_jax
from pax_trainer.data import TrainInput
from pax_trainer.executor import Executor, RunStatus
from pax_trainer.experiments.lm_tiny import LmTiny
from pax_trainer.preemption import PreemptionWatcher
from pax_trainer.programs import TrainProgram


def bench_experiment(steps: int, batch_size: int) -> LmTiny:
    """lm_tiny with the bench's batch; no eval/decode; logging at the sync interval."""
    exp = LmTiny()
    exp.num_train_steps = steps
    exp.batch_size = batch_size
    exp.eval_interval_steps = 0
    exp.decode_interval_steps = 0
    exp.save_interval_steps = 10 * steps
    exp.log_interval_steps = 10
    return exp


def bare_step_time(exp: LmTiny, warmup: int, measure: int) -> float:
    """Seconds per step of the jitted step alone."""
    program = TrainProgram(exp, partitioning.make_mesh(exp.mesh_data, exp.mesh_fsdp))
    source = TrainInput(exp.train_dataset(), exp.seed, exp.batch_size)
    batches = [program.global_batch(next(source)) for _ in range(warmup + measure)]
    state = program.init_state()
    for batch in batches[:warmup]:
        state, scalars = program.step_fn(state, batch)
    jax.block_until_ready((state, scalars))
    start = time.perf_counter()
    for batch in batches[warmup:]:
        state, scalars = program.step_fn(state, batch)
    jax.block_until_ready((state, scalars))
    return (time.perf_counter() - start) / measure


def trainer_step_time(exp: LmTiny, warmup: int, save_every: int | None) -> float:
    """Seconds per step of the full train loop between step `warmup` and the last sync before the end."""
    if save_every:
        exp.save_interval_steps = save_every
    with tempfile.TemporaryDirectory(prefix="pax-bench-") as job:
        executor = Executor(exp, job, RunStatus(), PreemptionWatcher())
        executor.train()
    times = dict(executor.sync_times)
    end = max(s for s in times if s < exp.num_train_steps)
    return (times[end] - times[warmup]) / (end - warmup)


def main() -> None:
    """Print the numbers and the two ratios."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=130)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    setup_jax.initialize()
    measure = args.steps - args.warmup - 10
    bare, plain, ckpt = [], [], []
    for _ in range(args.repeats):  # interleaved so drift hits all three alike
        bare.append(bare_step_time(bench_experiment(args.steps, args.batch_size), args.warmup, measure))
        plain.append(trainer_step_time(bench_experiment(args.steps, args.batch_size), args.warmup, None))
        ckpt.append(trainer_step_time(bench_experiment(args.steps, args.batch_size), args.warmup, 10))
    b, p, c = (statistics.median(x) for x in (bare, plain, ckpt))
    print(
        f"model: lm_tiny (seq {LmTiny.seq_len}, dim {LmTiny.model_dim}, {LmTiny.num_layers} layers), "
        f"global batch {args.batch_size}, {jax.device_count()} device(s), {measure} timed steps, "
        f"median of {args.repeats}"
    )
    print(f"bare jitted step loop         : {b * 1e3:8.3f} ms/step  {1 / b:8.2f} steps/s")
    print(f"trainer (no checkpoints)      : {p * 1e3:8.3f} ms/step  {1 / p:8.2f} steps/s")
    print(f"trainer (checkpoint every 10) : {c * 1e3:8.3f} ms/step  {1 / c:8.2f} steps/s")
    print(f"ratio trainer / bare step time           : {p / b:.4f}  (goal <= 1.02)")
    print(f"ratio throughput ckpt-every-10 / without : {p / c:.4f}  (goal >= 0.95)")


if __name__ == "__main__":
    main()
