"""Must show 4: gs:// job_log_dir against fake-gcs-server: checkpoints, summaries, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from pax_cluster.procs import free_port
from pax_contract import COMMIT_MARKER, ExitCode, ExitReason, checkpoint_dir_name

from tests.trainer.conftest import FailingGcs, gang_env, run_trainer, trainer_args

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_gcs_job_log_dir_checkpoints_summaries_and_resume(tmp_path: Path, gcs) -> None:
    env = gcs.env()
    job = "gs://pax/jobs/reverse"
    args = ["--exp", "reverse_digits", "--set", "save_interval_steps=20", "--set", "eval_interval_steps=20"]
    first = run_trainer([*args, "--set", "num_train_steps=20"], job, tmp_path, env)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_trainer([*args, "--set", "num_train_steps=40"], job, tmp_path, env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from checkpoint at step 20" in second.stderr
    assert second.result and second.result.final_step == 40 and second.result.last_checkpoint_step == 40

    files = ["pax/" + name for name in gcs.list_objects("pax", "jobs/reverse/")]
    for step in (20, 40):
        assert f"pax/jobs/reverse/checkpoints/{checkpoint_dir_name(step)}/{COMMIT_MARKER}" in files
    for run in ("train", "eval_test"):
        assert any(f.startswith(f"pax/jobs/reverse/summaries/{run}/events.out.tfevents") for f in files), (
            files
        )
    assert "metadata server" not in first.stderr + second.stderr


def test_a_failing_source_checkpoint_for_fine_tuning_is_a_storage_error(
    tmp_path: Path, gcs, failing_gcs: FailingGcs
) -> None:
    """503s from the storage holding init_from_checkpoint crashed the run (exit 1, `HttpError`, after the
    client's own retries: a crash, not a storage error, and its metadata read and restore had no deadline).
    The token is never written to the log or the result."""
    source = "gs://pax/jobs/ft-source"
    args = trainer_args("reverse_digits", num_train_steps=10, save_interval_steps=10, eval_interval_steps=0)
    assert run_trainer(args, source, tmp_path, gcs.env()).returncode == 0
    failing_gcs.failing.append("jobs/ft-source")
    token = "ya29.pax-test-token-never-logged"
    env = failing_gcs.env(gcs.env()) | {"GOOGLE_AUTH_TOKEN_FOR_TESTING": token, "PAX_STORAGE_TIMEOUT_S": "10"}
    run = run_trainer([*args, "--set", f"init_from_checkpoint={source}"], "gs://pax/jobs/ft", tmp_path, env)
    assert run.returncode == ExitCode.STORAGE_ERROR, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.STORAGE_ERROR
    assert f"init_from_checkpoint {source}" in run.result.message and failing_gcs.failed > 0
    assert token not in run.stderr + run.stdout + run.result.to_json()


@pytest.mark.parametrize("status", [429, 503])
def test_storage_answering_only_errors_is_named_as_such(tmp_path: Path, gcs, status: int) -> None:
    """A bucket answering only 429 or 503 (throttled, an outage) ended the run with `no answer from storage`,
    sending the user after a network fault; the clients had answers, which they retried until the deadline."""
    proxy = FailingGcs(gcs.url, status)
    try:
        proxy.failing.append("/")
        env = proxy.env(gcs.env()) | {"PAX_STORAGE_TIMEOUT_S": "5"}
        run = run_trainer(["--exp", "reverse_digits"], "gs://pax/jobs/throttled", tmp_path, env)
    finally:
        proxy.close()
    assert run.returncode == ExitCode.STORAGE_ERROR, run.stderr[-3000:]
    assert run.result and "answering only errors its client retries (HTTP 429, 5xx)" in run.result.message
    assert proxy.failed > 0


def test_a_storage_error_on_one_host_of_a_gang_ends_that_host_at_once(tmp_path: Path, gcs, trainers) -> None:
    """Host 0 of 2 (the one that writes checkpoints) is refused its saves (403) mid-run. Its storage error
    returned from main() normally, and jax.distributed's exit barrier then waited up to 300 s for host 1,
    itself waiting in the next step's collectives for host 0: the gang restarted minutes late."""
    proxy = FailingGcs(gcs.url, 403)
    # Refused from the start, reached mid-run: set once step 50 was seen, it raced the trainer's 50 steps
    # to the save (under a second): seen late, save 100 went through and the run trained on.
    proxy.failing.append("checkpoint_00000100")
    port = free_port()
    args = trainer_args("reverse_digits", num_train_steps=3000, save_interval_steps=100)
    try:
        gang = [
            trainers(
                args,
                "gs://pax/jobs/refused-mid-run",
                env=proxy.env(gcs.env()) | gang_env(port, i),
            )
            for i in range(2)
        ]
        gang[0].wait_for(lambda: "step 50/3000" in gang[0].log(), 180, "step 50 on host 0")
        host0 = gang[0].finish_within(120)
    finally:
        proxy.close()
    assert host0.returncode == ExitCode.STORAGE_ERROR, host0.stderr[-3000:]
    assert host0.result and host0.result.exit_reason == ExitReason.STORAGE_ERROR
    assert proxy.failed > 0
