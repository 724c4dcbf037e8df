"""Runs whose overrides were edited between attempts (a suspended PaxJob's overrides may change), and the
smallest runs: the result still carries the eval metrics a sweep's objective needs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pax_contract import ExitCode

from tests.trainer.conftest import run_trainer, trainer_args, tree_digest

pytestmark = pytest.mark.timeout(400)


def test_num_train_steps_zero_evaluates_the_initial_state(tmp_path: Path) -> None:
    """It saved step 0 and ended with no metrics at all."""
    run = run_trainer(trainer_args("reverse_digits", num_train_steps=0), tmp_path / "job", tmp_path)
    assert run.returncode == ExitCode.SUCCESS, run.stderr[-2000:]
    assert run.result is not None and run.result.final_step == 0
    assert "eval_test/loss" in run.result.metrics


def test_num_train_steps_lowered_below_the_checkpoint_ends_with_an_eval(tmp_path: Path) -> None:
    """Resumed past the new last step, it trained nothing and ended with no metrics; the checkpoints stay."""
    job = tmp_path / "job"
    first = trainer_args("reverse_digits", num_train_steps=4, save_interval_steps=2, eval_interval_steps=0)
    assert run_trainer(first, job, tmp_path).returncode == ExitCode.SUCCESS
    before = tree_digest(job / "checkpoints")
    assert "checkpoint_00000004/commit_success.txt" in before
    lowered = trainer_args("reverse_digits", num_train_steps=2, save_interval_steps=2, eval_interval_steps=3)
    run = run_trainer(lowered, job, tmp_path)
    assert run.returncode == ExitCode.SUCCESS, run.stderr[-2000:]
    assert run.result is not None and run.result.final_step == 4 and run.result.last_checkpoint_step == 4
    assert "eval_test/loss" in run.result.metrics
    assert tree_digest(job / "checkpoints") == before
