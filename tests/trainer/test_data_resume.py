"""The train input's position across a resume whose overrides were edited (a suspended PaxJob's overrides
may change): the position is in examples of the shuffled stream, so a new batch_size goes on from the same
example; another seed or split is resumed with a warning naming the change."""

from __future__ import annotations

import logging

import grain
import numpy as np
import pytest
from pax_trainer.data import TrainInput


def split(n: int = 10, offset: int = 0) -> grain.MapDataset:
    return grain.MapDataset.source([{"i": np.int32(i + offset)} for i in range(n)])


def stream(seed: int, count: int, n: int = 10) -> list[int]:
    """The first `count` examples of the shuffled, repeated train stream (one example per batch)."""
    one = TrainInput(split(n), seed, 1)
    return [int(next(one)["i"][0]) for _ in range(count)]


def read(source: TrainInput, batches: int) -> list[int]:
    return [int(i) for _ in range(batches) for i in next(source)["i"]]


def test_a_resume_with_the_same_settings_continues_exactly() -> None:
    first = TrainInput(split(), 0, 4)
    read(first, 3)
    resumed = TrainInput(split(), 0, 4)
    resumed.set_state(first.get_state())
    assert read(resumed, 4) == read(first, 4)


@pytest.mark.parametrize("new_batch", [2, 3, 8])
def test_a_new_batch_size_goes_on_from_the_same_example(new_batch: int) -> None:
    """It resumed at batch 3 of the new size: with batch 2, examples 6..11 were read twice (4 -> 8 skipped
    12..23), silently."""
    first = TrainInput(split(), 0, 4)
    before = read(first, 3)
    resumed = TrainInput(split(), 0, new_batch)
    resumed.set_state(first.get_state())
    after = read(resumed, 3)
    assert before + after == stream(0, 12 + 3 * new_batch)


def test_a_checkpoint_with_grain_s_own_iterator_state_still_resumes() -> None:
    resumed = TrainInput(split(), 0, 4)
    resumed.set_state({"next_index": 3})
    assert read(resumed, 2) == stream(0, 20)[12:]
    assert resumed.get_state()["examples"] == 20


@pytest.mark.parametrize(("seed", "n", "change"), [(1, 10, "seed 0 -> 1"), (0, 12, "num_examples 10 -> 12")])
def test_another_seed_or_split_resumes_with_a_warning(
    seed: int, n: int, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    first = TrainInput(split(), 0, 4)
    read(first, 3)
    resumed = TrainInput(split(n), seed, 4)
    with caplog.at_level(logging.WARNING, logger="pax_trainer.data"):
        resumed.set_state(first.get_state())
    assert f"the train split differs from the checkpoint's ({change})" in caplog.text
    assert read(resumed, 1) == stream(seed, 16, n)[12:]


def test_another_split_of_the_same_length_resumes_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """reverse_digits with another data_seed: same length, other examples."""
    first = TrainInput(split(), 0, 4)
    read(first, 3)
    resumed = TrainInput(split(offset=100), 0, 4)
    with caplog.at_level(logging.WARNING, logger="pax_trainer.data"):
        resumed.set_state(first.get_state())
    assert "the train split differs from the checkpoint's (first_example " in caplog.text
