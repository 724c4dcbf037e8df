"""SIGTERM in every phase of a run: a trainer with nothing new to save exits 42 at once with a result, one
blocked in a long C call (a compile, a device wait) included; committed checkpoints are never touched.

`StallDigits` blocks its Nth loss evaluation in a host callback (XLA's thread, while the main thread waits
in C, as in a long compile or a slow device): Python signal handlers cannot run until it returns.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import pytest
from flax import nnx
from pax_cluster.procs import free_port
from pax_contract import (
    COMMIT_MARKER,
    ENV_RESULT_FILE,
    ENV_TERMINATION_GRACE,
    ExitCode,
    ExitReason,
    TrainerResult,
    checkpoint_dir_name,
)
from pax_trainer.base_experiment import Batch
from pax_trainer.experiments.reverse_digits import ReverseDigits
from pax_trainer.metrics import WeightedScalars

from tests.trainer.conftest import BASE_ENV, FailingGcs, committed, gang_env, run_trainer, trainer_args

pytestmark = [pytest.mark.timeout(300)]

STALL_S = 600  # far beyond any grace period: the old code waited it out (or was SIGKILLed)
EXIT_BOUND_S = 60.0  # from the SIGTERM, generous: the trainers below must exit well before the stall ends
_calls = 0


class StallDigits(ReverseDigits):
    """reverse_digits whose loss evaluations from the `stall_call`-th on (in this process) each block for
    `stall_s` seconds (host callback); the first creates `stall_marker`."""

    stall_call: int = 0
    stall_s: int = 0
    stall_marker: str = ""

    def loss(self, model: nnx.Module, batch: Batch) -> tuple[jax.Array, WeightedScalars]:
        call, seconds, marker = self.stall_call, self.stall_s, self.stall_marker

        def stall() -> None:
            global _calls
            _calls += 1
            if _calls >= call:
                Path(marker).write_text(str(os.getpid()))
                time.sleep(seconds)

        jax.debug.callback(stall)
        return super().loss(model, batch)


STALL_EXP = "tests.trainer.test_sigterm.StallDigits"


def _stalled(trainers, job: Path, tmp_path: Path, stall_call: int, stall_s: int = STALL_S, **hparams: object):
    """A StallDigits trainer, once blocked in its `stall_call`-th loss evaluation."""
    marker = tmp_path / f"stalled-{stall_call}"
    t = trainers(
        trainer_args(STALL_EXP, stall_call=stall_call, stall_s=stall_s, stall_marker=marker, **hparams), job
    )
    t.wait_for(marker.exists, 120, f"loss evaluation {stall_call} stalled")
    return t


def _resumes_with_the_cut_eval_first(job: Path, tmp_path: Path, step: int, **hparams: object) -> None:
    """The next attempt resumes from checkpoint `step` and runs that step's cut eval before training on."""
    resumed = run_trainer(trainer_args("reverse_digits", **hparams), job, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from checkpoint at step {step}" in resumed.stderr
    assert f"eval test at step {step}" in resumed.stderr


def test_sigterm_in_a_long_call_before_the_first_step_exits_42_at_once(tmp_path: Path, trainers) -> None:
    """Resumed at step 10 and blocked in the first step (as in a long compile): the old trainer waited for
    the step to end (the grace period, then SIGKILL) to save step 11; nothing new would have been lost."""
    job = tmp_path / "job"
    first = run_trainer(
        trainer_args("reverse_digits", num_train_steps=10, save_interval_steps=10, eval_interval_steps=0),
        job,
        tmp_path,
    )
    assert first.returncode == 0, first.stderr[-3000:]
    before = committed(job)
    t = _stalled(
        trainers, job, tmp_path, 1, num_train_steps=20, save_interval_steps=10, eval_interval_steps=0
    )
    t.signal(signal.SIGTERM)
    run = t.finish_within(EXIT_BOUND_S)
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.PREEMPTED
    assert (run.result.final_step, run.result.last_checkpoint_step) == (10, 10)
    assert "nothing new to save" in run.result.message
    assert committed(job) == before  # untouched, and no checkpoint 11
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == sorted(before)


def test_sigterm_in_a_long_eval_after_its_save_waits_for_the_commit_and_exits_42(
    tmp_path: Path, trainers
) -> None:
    """The eval of step 10 runs after its (async) save: the trainer waits for that commit and exits, instead
    of finishing the eval and saving step 11 after the grace period."""
    job = tmp_path / "job"
    hparams = {
        "num_train_steps": 30,
        "save_interval_steps": 10,
        "eval_interval_steps": 10,
        "eval_num_batches": 2,
    }
    t = _stalled(trainers, job, tmp_path, 11, **hparams)  # loss evaluations 1-10: train steps; 11: eval
    t.signal(signal.SIGTERM)
    run = t.finish_within(EXIT_BOUND_S)
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and (run.result.final_step, run.result.last_checkpoint_step) == (10, 10)
    assert sorted(committed(job)) == [checkpoint_dir_name(0), checkpoint_dir_name(10)]
    _resumes_with_the_cut_eval_first(job, tmp_path, 10, **hparams)


def test_sigterm_while_jax_distributed_waits_for_peers_exits_42_with_a_result(
    tmp_path: Path, trainers
) -> None:
    """Host 0 of 2 waits in jax.distributed.initialize for a host that never comes (up to 300 s): the old
    trainer died of the signal (143) without a result file."""
    env = {
        "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "JAX_NUM_PROCESSES": "2",
        "JAX_PROCESS_ID": "0",
        "PAX_RESTART_ATTEMPT": "2",
    }
    t = trainers(["--exp", "reverse_digits"], tmp_path / "job", env=env)
    t.wait_for(lambda: "jax.distributed: process 0 of 2" in t.log(), 120, "joining the gang")
    time.sleep(0.5)  # inside initialize
    t.signal(signal.SIGTERM)
    run = t.finish_within(EXIT_BOUND_S)
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.PREEMPTED and run.result.attempt == 2
    assert run.result.last_checkpoint_step is None
    assert not (tmp_path / "job" / "checkpoints").exists()


def test_sigterm_in_a_long_eval_of_an_unsaved_step_cuts_it_and_saves_the_step(
    tmp_path: Path, trainers
) -> None:
    """Step 15 is evaluated (32 batches of 4 s) but not saved: the old trainer finished the eval (about two
    minutes: past the grace period) before saving; the eval is now cut at the next batch and step 15 saved."""
    job = tmp_path / "job"
    hparams = {"num_train_steps": 30, "save_interval_steps": 10, "eval_interval_steps": 15}
    t = _stalled(trainers, job, tmp_path, 16, 4, eval_num_batches=32, **hparams)  # evaluations 16-47: eval
    t.signal(signal.SIGTERM)
    run = t.finish_within(EXIT_BOUND_S)
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and (run.result.final_step, run.result.last_checkpoint_step) == (15, 15)
    assert "checkpoint saved at step 15" in run.result.message
    assert checkpoint_dir_name(15) in committed(job)
    _resumes_with_the_cut_eval_first(job, tmp_path, 15, eval_num_batches=2, **hparams)


def test_a_gang_told_one_host_at_a_time_during_an_eval_after_its_save_keeps_that_checkpoint(
    tmp_path: Path, trainers
) -> None:
    """Two hosts blocked in the eval of step 10 (after its save): SIGTERM to host 1, later to host 0 (the
    operator deleting the gang). Each exits 42 at once; checkpoint 10 is committed, none after it."""
    job, port = tmp_path / "job", free_port()
    hparams = {"num_train_steps": 30, "save_interval_steps": 10, "eval_interval_steps": 10}
    marker = tmp_path / "stalled"  # host 0 runs the callback; host 1 waits for it in the eval's collectives
    args = trainer_args(STALL_EXP, stall_call=11, stall_s=STALL_S, stall_marker=marker, **hparams)
    gang = [trainers(args, job, env=gang_env(port, host)) for host in range(2)]
    gang[0].wait_for(marker.exists, 180, "the eval of step 10 stalled")
    runs = []
    for t in reversed(gang):
        t.signal(signal.SIGTERM)
        runs.append(t.finish_within(EXIT_BOUND_S))
    assert [r.returncode for r in runs] == [ExitCode.PREEMPTED] * 2, (
        runs[0].stderr[-2000:] + runs[1].stderr[-2000:]
    )
    host0 = runs[1].result
    assert host0 and (host0.final_step, host0.last_checkpoint_step) == (10, 10)
    assert sorted(committed(job)) == [checkpoint_dir_name(0), checkpoint_dir_name(10)]


def test_a_save_stalled_at_sigterm_is_abandoned_before_the_grace_period_ends(
    tmp_path: Path, gcs, trainers
) -> None:
    """Storage stops answering the save of step 100; SIGTERM comes while it is in flight. The old trainer
    waited for it up to the bulk storage deadline (1,800 s): the pod's grace period ended in a SIGKILL and no
    result. Told its grace period, it exits 42 with a result before then; step 100 is not committed, and the
    next attempt resumes from step 0 (moving the partial step 100 aside)."""
    job = "gs://pax/jobs/stalled-save"
    proxy = FailingGcs(gcs.url)
    proxy.stalling.append(checkpoint_dir_name(100))
    hparams = {"num_train_steps": 3000, "save_interval_steps": 100, "eval_interval_steps": 0}
    try:
        env = proxy.env(gcs.env()) | {ENV_TERMINATION_GRACE: "12"}
        t = trainers(trainer_args("reverse_digits", **hparams), job, env=env)
        t.wait_for(lambda: proxy.stalled > 0, 180, "the save of step 100 stalled")
        t.signal(signal.SIGTERM)
        run = t.finish_within(EXIT_BOUND_S)
    finally:
        proxy.close()
    assert run.returncode == ExitCode.PREEMPTED, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.PREEMPTED
    assert "grace period (12 s)" in run.result.message and run.result.last_checkpoint_step == 0
    objects = gcs.list_objects("pax", "jobs/stalled-save/checkpoints/")
    assert f"jobs/stalled-save/checkpoints/{checkpoint_dir_name(0)}/{COMMIT_MARKER}" in objects
    assert not any(checkpoint_dir_name(100) in name for name in objects if name.endswith(COMMIT_MARKER))

    resumed = run_trainer(
        trainer_args("reverse_digits", **(hparams | {"num_train_steps": 1})), job, tmp_path, gcs.env()
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint at step 0" in resumed.stderr


# Lines `-X importtime` prints while `python -m pax_trainer` imports the trainer's modules (jax not yet): a
# SIGTERM sent on seeing one lands in the imports, before the trainer's main() has run.
IMPORT_MARKS = ("pax_contract.exit_codes", "unittest", "etils.epath.gpath")


def _sigterm_during_imports(tmp_path: Path, mark: str) -> tuple[int, TrainerResult | None]:
    """Start `python -m pax_trainer`, SIGTERM it as soon as its import of `mark` completes; (exit code,
    result)."""
    result_file = tmp_path / f"result-{mark}.json"
    env = {
        **os.environ,
        **BASE_ENV,
        ENV_RESULT_FILE: str(result_file),
        "PYTHONPROFILEIMPORTTIME": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "pax_trainer",
        "--job_log_dir",
        str(tmp_path / "job"),
        "--exp",
        "reverse_digits",
    ]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    seen = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:  # drained to the end: the child never blocks on a full pipe
            if line.startswith(b"import time:") and line.split(b"|")[-1].strip() == mark.encode():
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert seen.wait(60), f"no import of {mark}"
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=EXIT_BOUND_S)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    reader.join(timeout=10)
    text = result_file.read_text() if result_file.exists() else ""
    return code, TrainerResult.from_json(text) if text else None


@pytest.mark.parametrize("mark", IMPORT_MARKS)
def test_sigterm_while_the_trainer_imports_its_modules_exits_42_with_a_result(
    tmp_path: Path, mark: str
) -> None:
    """The trainer's handler came after its imports (0.1-0.5 s): a SIGTERM then killed it (143, no result;
    a container's PID 1 drops it and runs on until the SIGKILL). SIGTERM is now blocked from `__main__`'s
    first line and handled once main() installs the handler."""
    code, result = _sigterm_during_imports(tmp_path, mark)
    assert code == ExitCode.PREEMPTED
    assert result and result.exit_reason == ExitReason.PREEMPTED and "nothing new to save" in result.message
    assert not (tmp_path / "job").exists()


def test_a_malformed_grace_period_is_a_config_error_at_start(tmp_path: Path) -> None:
    """Read with the rest of the contract's environment at start (not at SIGTERM, when it is too late)."""
    run = run_trainer(["--exp", "reverse_digits"], tmp_path / "job", tmp_path, {ENV_TERMINATION_GRACE: "30s"})
    assert run.returncode == ExitCode.CONFIG_ERROR, run.stderr[-3000:]
    assert run.result and ENV_TERMINATION_GRACE in run.result.message
    assert not (tmp_path / "job").exists()
