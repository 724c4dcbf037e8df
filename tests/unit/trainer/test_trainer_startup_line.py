"""The trainer's first log line: job, attempt, host, what runs where, and the hyperparameters changed."""

from __future__ import annotations

from pax_contract import TrainerEnv
from pax_trainer.base_experiment import BaseExperiment
from pax_trainer.summaries import HPARAM_VALUE_MAX_CHARS, changed_hparams, startup_line


class _Exp(BaseExperiment):
    model_dim: int = 64


def test_the_first_line_names_the_job_attempt_host_and_the_changed_hyperparameters() -> None:
    exp = _Exp()
    exp.batch_size = exp.batch_size * 2
    exp.init_rules = "x" * 500  # a long value is cut short
    changed = changed_hparams(exp.hparams_dict(), _Exp().hparams_dict())
    assert set(changed) == {"batch_size", "init_rules"}
    env = TrainerEnv(
        num_processes=2,
        process_id=1,
        coordinator_address="lm-0.lm:8476",
        restart_attempt=3,
        job_name="lm",
        job_namespace="team-a",
    )
    line = startup_line("lm_tiny", "train", "gs://b/lm", env, changed)
    assert line.startswith("paxjob team-a/lm attempt 3, process 1 of 2: train lm_tiny in gs://b/lm; ")
    default = _Exp().batch_size
    assert f"batch_size={default * 2} (default {default})" in line
    assert "x" * HPARAM_VALUE_MAX_CHARS not in line and "xxx..." in line
    assert len(line) < 400


def test_a_run_with_the_defaults_says_so() -> None:
    line = startup_line("lm_tiny", "eval", "/data/lm", TrainerEnv(), changed_hparams({"a": 1}, {"a": 1}))
    assert (
        line
        == "run attempt 0, process 0 of 1: eval lm_tiny in /data/lm; hparams all the experiment's defaults"
    )
