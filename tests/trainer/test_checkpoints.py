"""Must show 5: a truncated / uncommitted newest checkpoint is moved aside; fine-tuning from another job."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pax_contract import checkpoint_dir_name

from tests.checkpoints import assert_bit_identical, checkpoint_state
from tests.trainer.conftest import (
    RESUME_ARGS,
    RESUME_STEPS,
    drop_commit_marker,
    run_trainer,
    trainer_args,
    truncate_arrays,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


@pytest.mark.parametrize("damage", [truncate_arrays, drop_commit_marker], ids=["truncated", "uncommitted"])
def test_broken_newest_checkpoint_is_skipped(tmp_path: Path, baseline, damage) -> None:
    job = tmp_path / "job"
    shutil.copytree(baseline.job_log_dir, job)
    newest, previous = checkpoint_dir_name(RESUME_STEPS), checkpoint_dir_name(RESUME_STEPS - 50)
    damage(job / "checkpoints" / newest)

    run = run_trainer(RESUME_ARGS, job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"resumed from checkpoint at step {RESUME_STEPS - 50}" in run.stderr
    reason = "corrupt" if damage is truncate_arrays else "uncommitted"
    assert [p.name.split(".")[:2] for p in (job / "checkpoints_set_aside").iterdir()] == [[newest, reason]]
    assert (job / "checkpoints" / previous).exists()
    # The steps were re-trained from the previous checkpoint to the same result.
    assert_bit_identical(
        checkpoint_state(job / "checkpoints" / newest),
        checkpoint_state(Path(baseline.job_log_dir) / "checkpoints" / newest),
    )


def test_fine_tune_from_another_jobs_checkpoint_with_name_rules(tmp_path: Path, baseline) -> None:
    job = tmp_path / "finetune"
    rules = r"(embed\..*)=>\1;layers\.1\.(.*)=>layers.0.\1"
    args = trainer_args(
        "reverse_digits", num_train_steps=0, init_from_checkpoint=baseline.job_log_dir, init_rules=rules
    )
    run = run_trainer(args, job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    source = checkpoint_state(Path(baseline.job_log_dir) / "checkpoints" / checkpoint_dir_name(RESUME_STEPS))
    initial = checkpoint_state(job / "checkpoints" / checkpoint_dir_name(0))
    embed = [k for k in initial if k.startswith("params.embed.")]
    layer1 = [k for k in initial if k.startswith("params.layers.1.")]
    layer0 = [k for k in initial if k.startswith("params.layers.0.")]
    assert embed and layer1 and layer0
    for k in embed:
        np.testing.assert_array_equal(initial[k], source[k])
    for k in layer1:  # renamed: layers.1.* <- layers.0.*
        np.testing.assert_array_equal(initial[k], source[k.replace("layers.1.", "layers.0.")])
    for k in layer0:  # no rule: fresh initialisation
        if k.endswith("kernel"):
            assert not np.array_equal(initial[k], source[k]), k
    assert int(initial["step"]) == 0

    bad = run_trainer([*args[:-2], "--set", r"init_rules=(.*)=>nope.\1"], tmp_path / "bad", tmp_path)
    assert bad.returncode == 2 and "not in" in bad.stderr
