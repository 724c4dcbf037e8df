"""Which exceptions are storage failures (exit 3), not crashes (exit 1)."""

from __future__ import annotations

import subprocess
import sys

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


LATE_COMPLETION = """
import asyncio, sys, time
import tensorstore as ts
from pax_trainer import storage

if sys.argv[1] == "quiet":
    storage.quiet_late_completions()
promise, future = ts.Promise.new()
loop = asyncio.new_event_loop()
task = loop.create_task(asyncio.wait_for(future, 60))
loop.run_until_complete(asyncio.sleep(0.01))  # the task now waits on the tensorstore future
loop.close()  # as Orbax does when another read of the same restore failed
promise.set_result(1)  # the read completes late: tensorstore calls call_soon_threadsafe on a closed loop
time.sleep(0.1)
print("still here", file=sys.stderr)
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_a_read_completing_after_its_restore_gave_up_prints_no_traceback(mode: str) -> None:
    """A failed restore printed dozens of 'Event loop is closed' tracebacks, which split its error line."""
    run = subprocess.run(
        [sys.executable, "-c", LATE_COMPLETION, mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0 and "still here" in run.stderr, run.stderr
    printed = "RuntimeError: Event loop is closed" in run.stderr
    assert printed == (mode == "default"), run.stderr  # the default shows the case is reproduced


ABANDONED_READ = """
import gc, sys
from pax_trainer import storage

if sys.argv[1] == "quiet":
    storage.quiet_late_completions()


class Pending:
    def __await__(self):
        yield


async def read_array_index():
    try:
        await Pending()
    except BaseException as e:  # as Orbax's _read_array_index_and_device_put does
        raise Exception("Encountered error while reading array index") from e


async def unrelated():
    try:
        await Pending()
    finally:
        raise OSError("a bug of our own, not a close")


for make in (read_array_index, unrelated):
    coro = make()
    coro.send(None)  # suspended in its read, as when the restore's event loop closed under it
    del coro
    gc.collect()
print("still here", file=sys.stderr)
"""


@pytest.mark.parametrize("mode", ["quiet", "default"])
def test_a_read_coroutine_closed_with_its_restore_prints_no_traceback(mode: str) -> None:
    """Orbax's abandoned reads turn their close() into 'Exception ignored in: <coroutine ...>' tracebacks;
    any other unraisable error (here one a coroutine raises of its own) is still printed."""
    run = subprocess.run(
        [sys.executable, "-c", ABANDONED_READ, mode], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 0 and "still here" in run.stderr, run.stderr
    printed = "Encountered error while reading array index" in run.stderr
    assert printed == (mode == "default"), run.stderr  # the default shows the case is reproduced
    assert "OSError: a bug of our own, not a close" in run.stderr, run.stderr
