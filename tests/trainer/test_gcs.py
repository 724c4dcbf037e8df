"""Must show 4: gs:// job_log_dir against fake-gcs-server: checkpoints, summaries, resume."""

from __future__ import annotations

from pathlib import Path

import pytest
from pax_contract import COMMIT_MARKER, checkpoint_dir_name

from tests.trainer.conftest import run_trainer

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
