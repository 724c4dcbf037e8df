"""Which exceptions are storage failures (exit 3), not crashes (exit 1)."""

from __future__ import annotations

import pytest
from pax_trainer import storage
from pax_trainer.errors import StorageError

FULL_DISK = (
    'RESOURCE_EXHAUSTED: Error writing "opt_state.0.count/0" in OCDBT database at local file "/j/checkpoints/'
    'checkpoint_00000010.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed to write'
    " 36884 bytes to file 14: No space left on device [os_error_code='28']"
)


def test_a_full_disk_from_tensorstore_is_a_storage_error() -> None:
    """tensorstore reports ENOSPC as RESOURCE_EXHAUSTED (a ValueError): the run crashed with exit 1."""
    assert storage.is_storage_exception(ValueError(FULL_DISK))
    assert storage.is_storage_exception(ValueError(FULL_DISK.replace("'28'", "'122'")))  # EDQUOT


def test_out_of_memory_stays_a_crash() -> None:
    assert not storage.is_storage_exception(ValueError("RESOURCE_EXHAUSTED: Out of memory allocating 1 GiB"))
    assert not storage.is_storage_exception(ValueError("DATA_LOSS: checksum mismatch"))
    assert storage.is_storage_exception(OSError(28, "No space left on device"))


def test_a_full_disk_says_so_before_the_cut_message() -> None:
    """The one-line message is cut at 300 characters: 'No space left on device' came after the cut."""
    with (
        pytest.raises(
            StorageError, match=r"^committing checkpoints: storage full \(ENOSPC/EDQUOT\): ValueError"
        ),
        storage.call("committing checkpoints", bulk=True),
    ):
        raise ValueError(FULL_DISK)
