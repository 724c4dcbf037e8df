"""Must show 1: lm_tiny and the synthetic task learn; eval and decode outputs exist (all three modes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pax_contract import ExitReason
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.trainer.conftest import run_trainer

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def scalars(run_dir: Path, tag: str) -> list[float]:
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return [e.value for e in acc.Scalars(tag)]


def test_reverse_digits_learns_and_decodes_the_right_answer(tmp_path: Path, trainers) -> None:
    job = tmp_path / "reverse"
    run = run_trainer(["--exp", "reverse_digits", "--set", "decode_interval_steps=200"], job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result and run.result.exit_reason == ExitReason.COMPLETED
    assert run.result.final_step == 200 and run.result.last_checkpoint_step == 200
    assert run.result.metrics["eval_test/accuracy"] >= 0.99
    assert run.result.metrics["decode/exact_match"] >= 0.95
    records = [
        json.loads(line) for line in (job / "decoder_out/decode_00000200.jsonl").read_text().splitlines()
    ]
    assert len(records) == 32
    assert sum(r["output"] == r["input"][::-1] for r in records) >= 0.95 * len(records)
    assert scalars(job / "summaries/eval_test", "accuracy")[-1] >= 0.99
    assert scalars(job / "summaries/train", "loss")[-1] < 0.05


def test_lm_tiny_learns_then_eval_and_decode_modes(tmp_path: Path) -> None:
    job = tmp_path / "lm"
    run = run_trainer(["--exp", "lm_tiny", "--set", "eval_interval_steps=150"], job, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.result and run.result.final_step == 300
    # Uniform over 256 bytes is ln 256 = 5.55; a byte model of Python source reaches well below 2.7.
    loss = run.result.metrics["eval_test/loss"]
    assert loss < 2.7, loss
    assert run.result.metrics["eval_test/perplexity"] < 15
    train_loss = scalars(job / "summaries/train", "loss")
    assert train_loss[-1] < train_loss[0] - 1.0  # first point is step 10
    assert "step 300/300 loss" in run.stderr and "steps/s" in run.stderr and "ETA" in run.stderr

    # --mode eval: evaluates each new checkpoint (here: the final one) and stops at num_train_steps.
    ev = run_trainer(["--exp", "lm_tiny", "--mode", "eval"], job, tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert ev.result and ev.result.final_step == 300
    assert ev.result.metrics["eval_test/loss"] == pytest.approx(loss, abs=1e-6)
    assert scalars(job / "summaries/eval_test", "loss")[-1] == pytest.approx(loss, abs=1e-6)

    # --mode decode: sampled generations from the newest checkpoint as JSON lines.
    dec = run_trainer(
        ["--exp", "lm_tiny", "--mode", "decode", "--set", "decode_num_batches=1"], job, tmp_path
    )
    assert dec.returncode == 0, dec.stderr[-3000:]
    lines = (job / "decoder_out/decode_00000300.jsonl").read_text().splitlines()
    assert len(lines) == 16
    assert all(set(json.loads(line)) == {"prompt", "output"} for line in lines)
    assert any(json.loads(line)["output"].strip() for line in lines)
