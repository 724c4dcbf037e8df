"""Hyperparameters a careless user sets far out of range: a config error at start-up (exit 2), not a
trainer that grows until the kernel kills it or that silently evaluates nothing."""

from __future__ import annotations

from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pax_contract import ExitCode
from pax_trainer import data, hparams
from pax_trainer.errors import ConfigError
from pax_trainer.executor import check_state_fits
from pax_trainer.experiments.reverse_digits import ReverseDigits

from tests.trainer.conftest import run_trainer

pytestmark = pytest.mark.timeout(300)


def test_a_global_batch_larger_than_half_the_host_memory_is_refused() -> None:
    split = grain.MapDataset.source([{"tokens": np.zeros(250, np.int32)}] * 3)  # 1000 bytes per example
    data.check_batch_fits(split, 500, "the train split", memory=1_000_000)
    with pytest.raises(ConfigError, match="invalid value 501 for hyperparameter batch_size: a global batch"):
        data.check_batch_fits(split, 501, "the train split", memory=1_000_000)
    assert 0 < data.host_memory_bytes() < 2**50


def test_batch_size_ten_to_the_twelve_exits_2_at_once(tmp_path: Path) -> None:
    """It hung building the first batch, growing until the kernel OOM-killed it (SIGTERM went unanswered)."""
    job = tmp_path / "job"
    run = run_trainer(["--exp", "reverse_digits", "--set", f"batch_size={10**12}"], job, tmp_path)
    assert run.returncode == ExitCode.CONFIG_ERROR, run.stderr[-2000:]
    assert "pax_trainer: error: invalid value 1000000000000 for hyperparameter batch_size" in run.stderr
    assert not job.exists()


@pytest.mark.parametrize(
    "override",
    [
        "eval_num_batches=0",
        "eval_num_batches=-1",
        "decode_num_batches=0",
        "eval_interval_steps=-5",
        "decode_interval_steps=-1",
        "warmup_steps=-1",
        "weight_decay=-0.1",
        "eval_wait_timeout_s=-1",
        f"warmup_steps={10**18}",
        f"num_train_steps={2**31}",
        f"save_interval_steps={2**40}",
    ],
)
def test_counts_and_intervals_out_of_range_are_config_errors(override: str) -> None:
    """eval_num_batches=0 trained to the end with no eval metrics (a sweep trial without its objective)."""
    name = override.split("=")[0]
    with pytest.raises(ConfigError, match=f"invalid value .* for hyperparameter {name}"):
        hparams.apply_overrides(ReverseDigits(), [override])


def test_a_train_state_larger_than_the_host_memory_is_refused() -> None:
    state = {"params": jax.ShapeDtypeStruct((1000, 1000), jnp.float32)}  # 4 MB
    check_state_fits(state, num_processes=1, memory=4_000_000)
    check_state_fits(state, num_processes=2, memory=2_000_000)  # each host holds its half
    with pytest.raises(ConfigError, match=r"the model does not fit: its train state .* is 0.00373 GiB"):
        check_state_fits(state, num_processes=1, memory=3_999_999)


def test_model_dim_65536_exits_2_at_once(tmp_path: Path) -> None:
    """Its 1.2 TB state was created with no output; under a memory limit it hung, SIGTERM unanswered."""
    job = tmp_path / "job"
    run = run_trainer(["--exp", "reverse_digits", "--set", "model_dim=65536"], job, tmp_path)
    assert run.returncode == ExitCode.CONFIG_ERROR, run.stderr[-2000:]
    assert "pax_trainer: error: the model does not fit" in run.stderr
    assert not (job / "checkpoints").exists()


def test_step_counts_up_to_int32_are_accepted() -> None:
    exp = hparams.apply_overrides(
        ReverseDigits(), [f"num_train_steps={2**31 - 1}", f"warmup_steps={2**31 - 1}"]
    )
    assert exp.num_train_steps == exp.warmup_steps == 2**31 - 1
