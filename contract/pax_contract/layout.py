"""What the trainer publishes besides its exit: Prometheus gauges and the job_log_dir layout (paxml's)."""

from __future__ import annotations

# --- Prometheus metric names served on PAX_METRICS_PORT (operator scrapes host 0) ---------------------
METRIC_STEP = "pax_train_step"  # gauge: last completed train step
METRIC_CHECKPOINT_STEP = "pax_last_checkpoint_step"  # gauge: newest committed checkpoint step, -1 if none
METRIC_LOSS = "pax_train_loss"  # gauge: last logged training loss
METRIC_STEPS_PER_SEC = "pax_steps_per_second"  # gauge
METRIC_TOTAL_STEPS = "pax_num_train_steps"  # gauge: target step count
METRIC_EVAL_STEP = "pax_eval_step"  # gauge: train step of the latest evaluation (PaxSweep objectives)
METRIC_EVAL = "pax_eval_metric"  # gauge per label `metric` (e.g. eval_test/loss): the latest eval values
METRIC_EVAL_LABEL = "metric"

# --- Layout under job_log_dir -------------------------------------------------------------------------
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint"  # checkpoints/checkpoint_00000100/
CHECKPOINT_STEP_DIGITS = 8  # at least: zero-padded to 8, longer from step 10**8 on (checkpoint_100000000)
COMMIT_MARKER = "commit_success.txt"  # only checkpoints holding it are restored
SUMMARIES_DIR = "summaries"  # summaries/train, summaries/eval_<split>
DECODER_OUT_DIR = "decoder_out"


def checkpoint_dir_name(step: int) -> str:
    """checkpoint_%08d, as paxml (and Orbax) name them: 8 digits or more."""
    return f"{CHECKPOINT_PREFIX}_{step:0{CHECKPOINT_STEP_DIGITS}d}"
