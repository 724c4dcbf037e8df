"""Must show 2: SIGTERM / SIGKILL mid-run, then resume: final params bit-identical to an uninterrupted run."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
from pax_cluster.procs import free_port
from pax_contract import ExitCode, ExitReason, checkpoint_dir_name
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.checkpoints import assert_bit_identical, checkpoint_state
from tests.trainer.conftest import (
    RESUME_ARGS,
    RESUME_STEPS,
    metrics_text,
    run_trainer,
    trainer_args,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def test_sigterm_saves_exits_42_and_resume_is_exact(tmp_path: Path, baseline, trainers) -> None:
    job = tmp_path / "job"
    port = free_port()
    t = trainers(RESUME_ARGS, job, env={"PAX_METRICS_PORT": str(port), "PAX_RESTART_ATTEMPT": "3"})
    # Progress is visible on /metrics (the operator's view); preempt once some steps are done.
    t.wait_for(
        lambda: (_metric(metrics_text(port), "pax_train_step") or 0) >= 60, 120, "step >= 60 on /metrics"
    )
    text = metrics_text(port)
    assert _metric(text, "pax_num_train_steps") == RESUME_STEPS
    assert _metric(text, "pax_train_loss") is not None and _metric(text, "pax_steps_per_second") is not None
    ckpt_step = _metric(text, "pax_last_checkpoint_step")
    assert ckpt_step is not None and ckpt_step >= 0
    t.signal(signal.SIGTERM)
    run = t.finish()
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.PREEMPTED and run.result.attempt == 3
    stopped = run.result.final_step
    assert stopped is not None and 60 <= stopped < RESUME_STEPS
    assert run.result.last_checkpoint_step == stopped
    assert (job / "checkpoints" / checkpoint_dir_name(stopped) / "commit_success.txt").exists()

    resumed = run_trainer(RESUME_ARGS, job, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint at step {stopped}" in resumed.stderr
    final = checkpoint_dir_name(RESUME_STEPS)
    assert_bit_identical(
        checkpoint_state(job / "checkpoints" / final),
        checkpoint_state(Path(baseline.job_log_dir) / "checkpoints" / final),
    )


def test_sigkill_then_resume_is_exact(tmp_path: Path, baseline, trainers) -> None:
    job = tmp_path / "job"
    t = trainers(RESUME_ARGS, job)
    ckpt = job / "checkpoints" / checkpoint_dir_name(100) / "commit_success.txt"
    t.wait_for(ckpt.exists, 120, "checkpoint 100 committed")
    t.signal(signal.SIGKILL)
    run = t.finish()
    assert run.returncode == -signal.SIGKILL
    resumed = run_trainer(RESUME_ARGS, job, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(r"resumed from checkpoint at step (\d+)", resumed.stderr)
    final = checkpoint_dir_name(RESUME_STEPS)
    assert_bit_identical(
        checkpoint_state(job / "checkpoints" / final),
        checkpoint_state(Path(baseline.job_log_dir) / "checkpoints" / final),
    )


def test_a_resumed_run_evaluates_the_step_it_resumes_at(tmp_path: Path) -> None:
    """The eval (and decode) of step s runs after its save: a preemption or crash in between cut it, and the
    resumed run, starting after s, skipped it for good (at the last step: a result without metrics)."""
    job = tmp_path / "job"
    no_eval = trainer_args(
        "reverse_digits", num_train_steps=10, save_interval_steps=10, eval_interval_steps=0
    )
    assert run_trainer(no_eval, job, tmp_path).returncode == 0  # checkpoint 10, its eval never ran
    args = trainer_args("reverse_digits", num_train_steps=20, save_interval_steps=10, eval_interval_steps=10)
    resumed = run_trainer(args, job, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    events = EventAccumulator(str(job / "summaries" / "eval_test"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [10, 20]

    again = run_trainer(args, job, tmp_path)  # resumes at the last step: done, but its result is whole
    assert again.returncode == 0 and again.result is not None, again.stderr[-3000:]
    assert again.result.metrics["eval_test/loss"] == resumed.result.metrics["eval_test/loss"]  # type: ignore[union-attr]
