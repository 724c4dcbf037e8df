"""Restores that must not lose progress: only errors that say the data is bad set a checkpoint aside, a run
whose every checkpoint was set aside does not start afresh, steps of 9+ digits are found, an eval job
follows a checkpoint the trainer deleted, and TensorBoard drops what an interrupted attempt wrote."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import pytest
from pax_contract import ExitReason, TrainerResult, checkpoint_dir_name
from pax_trainer import checkpoints
from pax_trainer.checkpoints import Checkpointer, committed_steps, resolve_init_checkpoint
from pax_trainer.errors import ConfigError, StorageError
from pax_trainer.executor import GONE_RETRIES, Executor, check_splits
from pax_trainer.experiments.reverse_digits import ReverseDigits
from pax_trainer.preemption import PreemptionWatcher
from pax_trainer.summaries import SummaryWriters

from tests.trainer.conftest import committed, tree_digest, truncate_arrays

pytestmark = pytest.mark.timeout(600)


def _state(step: int) -> dict[str, jax.Array]:
    return {"step": jnp.asarray(step, jnp.int32), "params.w": jnp.full((256,), float(step))}


ABSTRACT = {
    name: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding) for name, a in _state(0).items()
}


def _write(job: Path, steps: tuple[int, ...] = (10, 20)) -> None:
    writer = Checkpointer(str(job), max_to_keep=3, async_save=False)
    for step in steps:
        writer.save(step, _state(step), {"position": step})
    writer.close()


def _set_aside(job: Path) -> list[str]:
    root = job / "checkpoints_set_aside"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


# --- what counts as corrupt ------------------------------------------------------------------------------
class _Failing:
    """Orbax's restore failing with `error` every time."""

    def __init__(self, error: Exception) -> None:
        self.error, self.calls = error, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        raise self.error


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("Unable to allocate 1.00 GiB for an array"),
        KeyError("a field of a newer Orbax format"),
        ValueError("FAILED_PRECONDITION: unsupported checkpoint format version 9"),
        TypeError("unexpected keyword argument"),
    ],
    ids=["host-memory", "newer-format", "failed-precondition", "type-error"],
)
def test_a_restore_failure_that_does_not_say_the_data_is_bad_is_raised_and_moves_nothing(
    tmp_path: Path, error: Exception
) -> None:
    """Before: any such error that failed twice while the bytes read back moved the newest checkpoint aside,
    then each older one, and the run trained from step 0 with exit 0."""
    job = tmp_path / "job"
    _write(job)
    before = committed(job)
    reader = Checkpointer(str(job), max_to_keep=3, async_save=False)
    reader.manager.restore = _Failing(error)  # type: ignore[method-assign]
    try:
        with pytest.raises(type(error), match=str(error).strip("'")[:12]):
            reader.restore_latest(ABSTRACT)
    finally:
        reader.close()
    assert committed(job) == before and not _set_aside(job)


def _in_state_d(ckpt: Path, change: Callable[[bytes], bytes]) -> None:
    for f in (ckpt / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(change(f.read_bytes()))


def _garble(data: bytes) -> bytes:
    middle = len(data) // 3
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 32]) + data[middle + 32 :]


def _remove_arrays(ckpt: Path) -> None:
    for f in (ckpt / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.unlink()


DAMAGES: dict[str, Callable[[Path], None]] = {
    "truncated-arrays": truncate_arrays,  # tensorstore OUT_OF_RANGE
    "garbled-arrays": lambda c: _in_state_d(c, _garble),  # zstd: "Data corruption detected"
    "removed-arrays": _remove_arrays,  # NOT_FOUND in a committed checkpoint
    "truncated-manifest": lambda c: (c / "state/manifest.ocdbt").write_bytes(b"OCDBT"),  # DATA_LOSS
    "garbled-metadata": lambda c: (c / "state/_METADATA").write_text("{not json"),  # JSONDecodeError
    "binary-data-state": lambda c: (c / "data/metadata").write_bytes(b"\x94\xff"),  # UnicodeDecodeError
}


@pytest.mark.parametrize("damage", list(DAMAGES.values()), ids=list(DAMAGES))
def test_data_that_does_not_decode_is_corrupt_and_the_previous_checkpoint_is_restored(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    job = tmp_path / "job"
    _write(job)
    newest = job / "checkpoints" / checkpoint_dir_name(20)
    damage(newest)
    damaged = tree_digest(newest)
    reader = Checkpointer(str(job), max_to_keep=3, async_save=False)
    try:
        restored = reader.restore_latest(ABSTRACT)
    finally:
        reader.close()
    assert restored is not None and restored[0] == 10 and restored[2] == {"position": 10}
    (moved,) = _set_aside(job)
    assert moved.startswith(f"{checkpoint_dir_name(20)}.corrupt.")
    assert tree_digest(job / "checkpoints_set_aside" / moved) == damaged


def test_a_job_whose_every_checkpoint_was_corrupt_does_not_start_afresh(tmp_path: Path) -> None:
    """Before: all were moved aside and the run trained from step 0 with exit 0; its next attempt too."""
    job = tmp_path / "job"
    _write(job)
    for step in (10, 20):
        truncate_arrays(job / "checkpoints" / checkpoint_dir_name(step))
    for attempt in range(2):  # this run moves them aside; the next attempt finds none and refuses too
        reader = Checkpointer(str(job), max_to_keep=3, async_save=False)
        try:
            with pytest.raises(ConfigError, match="refusing to train from step 0") as raised:
                reader.restore_latest(ABSTRACT)
        finally:
            reader.close()
        assert str(job / "checkpoints_set_aside") in str(raised.value), attempt
        assert checkpoint_dir_name(10) in str(raised.value) and checkpoint_dir_name(20) in str(raised.value)
    assert [name.split(".")[:2] for name in _set_aside(job)] == [
        [checkpoint_dir_name(10), "corrupt"],
        [checkpoint_dir_name(20), "corrupt"],
    ]
    assert not committed(job)

    # A save cut short (moved aside as uncommitted) is no progress: a job with only that starts afresh.
    fresh = tmp_path / "fresh"
    _write(fresh, (0,))
    (fresh / "checkpoints" / checkpoint_dir_name(0) / "commit_success.txt").unlink()
    reader = Checkpointer(str(fresh), max_to_keep=3, async_save=False)
    try:
        assert reader.restore_latest(ABSTRACT) is None
    finally:
        reader.close()


# --- steps of more than 8 digits -------------------------------------------------------------------------
def test_checkpoints_from_step_10_to_the_8_are_found(tmp_path: Path) -> None:
    """Orbax names step 10**8 checkpoint_100000000: the 8-digit pattern never found it (restore, eval jobs,
    init_from_checkpoint), and left an uncommitted one in place."""
    job = tmp_path / "job"
    big = 10**8
    _write(job, (big - 1, big))
    assert (job / "checkpoints" / "checkpoint_100000000").is_dir()
    assert committed_steps(job / "checkpoints") == [big - 1, big]
    assert str(resolve_init_checkpoint(str(job))) == str(job / "checkpoints/checkpoint_100000000/state")
    shutil.copytree(job / "checkpoints/checkpoint_100000000", job / "checkpoints/checkpoint_100000001")
    (job / "checkpoints/checkpoint_100000001/commit_success.txt").unlink()  # a save cut short
    reader = Checkpointer(str(job), max_to_keep=3, async_save=False)
    try:
        restored = reader.restore_latest(ABSTRACT)
    finally:
        reader.close()
    assert restored is not None and restored[0] == big and restored[2] == {"position": big}
    assert [name.split(".")[:2] for name in _set_aside(job)] == [["checkpoint_100000001", "uncommitted"]]


# --- eval / decode jobs and the trainer's max_to_keep ----------------------------------------------------
def _experiment() -> ReverseDigits:
    exp = ReverseDigits()
    exp.num_train_steps, exp.save_interval_steps, exp.max_to_keep = 4, 2, 3
    exp.eval_interval_steps = exp.decode_interval_steps = 0
    exp.eval_num_batches = exp.decode_num_batches = 1
    exp.eval_wait_timeout_s = 1.0
    return exp


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """reverse_digits trained 4 steps: committed checkpoints at 0, 2, 4."""
    job = tmp_path_factory.mktemp("gone") / "job"
    exp = _experiment()
    status = TrainerResult(exit_reason=ExitReason.COMPLETED)
    Executor(exp, str(job), status, PreemptionWatcher(), check_splits(exp, "train")).train()
    assert committed_steps(job / "checkpoints") == [0, 2, 4]
    (job / "pax_owner.json").unlink(missing_ok=True)
    return job


def _deleting_newest(monkeypatch: pytest.MonkeyPatch, times: int) -> list[int]:
    """Checkpointer.restore_step, the first `times` calls of which find their checkpoint deleted just after
    the listing (the trainer saved step + 2 and its clean-up retired `step`): returns the steps asked."""
    original = Checkpointer.restore_step
    asked: list[int] = []

    def restore_step(self: Checkpointer, step: int, abstract: Any) -> Any:
        asked.append(step)
        if len(asked) <= times:
            source = Path(str(self.directory)) / checkpoint_dir_name(step)
            source.rename(source.with_name(checkpoint_dir_name(step + 2)))
        return original(self, step, abstract)

    monkeypatch.setattr(checkpoints.Checkpointer, "restore_step", restore_step)
    return asked


@pytest.mark.parametrize("mode", ["eval", "decode"])
def test_an_eval_or_decode_job_goes_on_with_the_newest_when_its_checkpoint_is_deleted(
    tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Before: the read of the deleted checkpoint failed the job with exit 3 (storage error)."""
    job = tmp_path / "job"
    shutil.copytree(trained, job)
    asked = _deleting_newest(monkeypatch, times=1)
    exp = _experiment()
    exp.num_train_steps = 6
    status = TrainerResult(exit_reason=ExitReason.COMPLETED)
    executor = Executor(exp, str(job), status, PreemptionWatcher(), check_splits(exp, mode))
    executor.evaluate(poll_s=0.05) if mode == "eval" else executor.decode()
    assert asked == [4, 6]
    assert status.final_step == status.last_checkpoint_step == 6
    assert any(name.startswith(f"{mode}") for name in status.metrics), status.metrics


def test_a_checkpoint_that_keeps_vanishing_fails_the_eval_job_after_a_few_tries(
    tmp_path: Path, trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = tmp_path / "job"
    shutil.copytree(trained, job)
    asked = _deleting_newest(monkeypatch, times=GONE_RETRIES + 1)
    exp = _experiment()
    status = TrainerResult(exit_reason=ExitReason.COMPLETED)
    with pytest.raises(StorageError, match="cannot read checkpoint"):
        Executor(exp, str(job), status, PreemptionWatcher(), check_splits(exp, "eval")).evaluate(poll_s=0.05)
    assert asked == [4 + 2 * i for i in range(GONE_RETRIES + 1)]


# --- TensorBoard after a resume --------------------------------------------------------------------------
def _points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_tensorboard_drops_what_an_interrupted_attempt_wrote_past_the_resumed_checkpoint(
    tmp_path: Path,
) -> None:
    """Before: steps 11..20 of the train loss showed twice after a resume at 10 (the first attempt's and the
    second's), and so did the eval at 10, which a resume runs again."""
    first = SummaryWriters(str(tmp_path), enabled=True)
    for step in range(1, 21):
        first.scalars("train", step, {"loss": 1.0})
    for step in (10, 20):
        first.scalars("eval_test", step, {"loss": 1.0})
    first.close()
    time.sleep(1.1)  # event files are named by the second they are opened in: a restart takes longer

    second = SummaryWriters(str(tmp_path), enabled=True)
    second.resumed_at(10)
    second.text("train", 10, "hparams", "| name | value |")
    second.scalars("eval_test", 10, {"loss": 2.0})
    for step in range(11, 16):
        second.scalars("train", step, {"loss": 2.0})
    second.close()

    root = tmp_path / "summaries"
    resumed = [(step, 1.0) for step in range(1, 11)] + [(step, 2.0) for step in range(11, 16)]
    assert _points(root / "train", "loss") == resumed
    assert _points(root / "eval_test", "loss") == [(10, 2.0)]
