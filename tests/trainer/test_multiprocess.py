"""Must show 3: two processes (jax.distributed, 1 device each) == one process with 2 devices, bit for bit."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from pax_cluster.procs import free_port
from pax_contract import ExitCode, checkpoint_dir_name

from tests.checkpoints import assert_bit_identical, checkpoint_state
from tests.trainer.conftest import gang_env, read_result, trainer_args

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

STEPS = 60
ARGS = trainer_args("reverse_digits", num_train_steps=STEPS, save_interval_steps=30, eval_interval_steps=30)


def test_two_processes_match_one_process_with_two_devices(tmp_path: Path, trainers) -> None:
    two_dev = trainers(
        ARGS, tmp_path / "one_proc", env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    )
    port = free_port()
    gang = [
        trainers(
            ARGS,
            tmp_path / "two_proc",
            env=gang_env(port, i) | {"POD_IP": "127.0.0.1"},
        )
        for i in range(2)
    ]
    runs = [t.finish() for t in (two_dev, *gang)]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    assert "on 2 devices" in runs[0].stderr and "on 2 devices" in runs[1].stderr
    assert "process 1 of 2" in runs[2].stderr
    # Only process 0 writes the result file.
    assert gang[0].result_file.exists() and not gang[1].result_file.exists()
    result = read_result(gang[0].result_file)
    assert result["final_step"] == STEPS and result["exit_reason"] == "completed"
    one = checkpoint_state(tmp_path / "one_proc/checkpoints" / checkpoint_dir_name(STEPS))
    two = checkpoint_state(tmp_path / "two_proc/checkpoints" / checkpoint_dir_name(STEPS))
    assert_bit_identical(one, two)
    # Eval metrics are Σwv/Σw over both hosts' rows: the same numbers either way.
    assert result["metrics"]["eval_test/loss"] == runs[0].result.metrics["eval_test/loss"]


def test_sigterm_to_one_host_stops_the_gang_at_one_agreed_step(tmp_path: Path, trainers) -> None:
    port = free_port()
    args = [
        *ARGS[:2],
        "--set",
        "num_train_steps=3000",
        "--set",
        "save_interval_steps=1000",
        "--set",
        "eval_interval_steps=0",
    ]
    gang = [
        trainers(
            args,
            tmp_path / "job",
            env=gang_env(port, i),
        )
        for i in range(2)
    ]
    gang[1].wait_for(lambda: "step 50/3000" in gang[1].log(), 120, "step 50 on host 1")
    gang[1].signal(signal.SIGTERM)  # only host 1 is told
    runs = [t.finish_within(120) for t in gang]
    assert [r.returncode for r in runs] == [ExitCode.PREEMPTED] * 2, (
        runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    )
    result = read_result(gang[0].result_file)
    step = result["final_step"]
    assert result["exit_reason"] == "preempted" and result["last_checkpoint_step"] == step
    assert step % 10 == 0, "hosts agree at a sync step"
    assert (tmp_path / "job/checkpoints" / checkpoint_dir_name(step) / "commit_success.txt").exists()


def test_an_eval_job_of_two_hosts_stops_waiting_together(tmp_path: Path, trainers) -> None:
    """Process 0 decides when the wait for a new checkpoint is over, for both hosts: each host's own clock
    (process 0 writes summaries, so it starts waiting later) could leave one host in a collective alone."""
    job = tmp_path / "job"
    half = trainer_args(
        "reverse_digits", num_train_steps=STEPS // 2, save_interval_steps=30, eval_interval_steps=0
    )
    assert trainers(half, job).finish().returncode == 0
    port = free_port()
    eval_args = [*ARGS, "--mode", "eval", "--set", "eval_wait_timeout_s=3"]
    env = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "POD_IP": "127.0.0.1"}
    gang = [trainers(eval_args, job, env={**env, "JAX_PROCESS_ID": str(i)}) for i in range(2)]
    runs = [t.finish(timeout=300) for t in gang]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
    result = read_result(gang[0].result_file)
    assert result["final_step"] == STEPS // 2 and "eval_test/loss" in result["metrics"]
