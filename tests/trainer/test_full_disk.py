"""A job_log_dir whose disk fills up mid-run: exit 3 saying so, the committed checkpoints untouched, and
the next attempt (disk grown) resumes from the last committed one. Needs a tmpfs mount (root); skipped
where mounting is not permitted."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pax_contract import ExitCode

from tests.trainer.conftest import committed, run_trainer, trainer_args

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "disk"
    mount.mkdir()
    # reverse_digits' step-0 checkpoint fits in 600 KiB (its optimizer moments are zero), step 10's does not.
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, timeout=30)


def test_a_full_disk_is_a_storage_error_and_the_next_attempt_resumes(
    small_disk: Path, tmp_path: Path
) -> None:
    """ENOSPC came from tensorstore as RESOURCE_EXHAUSTED: exit 1 (crashed), the cause cut off."""
    job = small_disk / "job"
    args = trainer_args("reverse_digits", num_train_steps=20, save_interval_steps=10, eval_interval_steps=0)
    run = run_trainer(args, job, tmp_path)
    assert run.returncode == ExitCode.STORAGE_ERROR, run.stderr[-3000:]
    assert "storage full (ENOSPC/EDQUOT)" in run.stderr
    assert run.result is not None and run.result.last_checkpoint_step == 0
    before = committed(job)
    assert "checkpoint_00000000" in before

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True, timeout=30)
    run = run_trainer(args, job, tmp_path)
    assert run.returncode == ExitCode.SUCCESS, run.stderr[-3000:]
    assert "resumed from checkpoint at step 0" in run.stderr
    after = committed(job)
    assert after["checkpoint_00000000"] == before["checkpoint_00000000"]
    assert "checkpoint_00000020" in after
    assert any(".uncommitted." in p.name for p in (job / "checkpoints_set_aside").iterdir())
