"""Must show 7: every wait is bounded, and a hung process (one that ignores SIGTERM) gets SIGKILLed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import Trainer

pytestmark = [pytest.mark.timeout(120)]

HANG = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); "
    "time.sleep(600)"
)


def test_hung_process_is_killed_within_the_bound(tmp_path: Path) -> None:
    # A stand-in for a hung jax process: ignores SIGTERM like jax's preemption notifier does.
    t = Trainer([], str(tmp_path / "job"), tmp_path)
    t.kill()  # the real trainer would fail on missing --exp; replace it with a hanging process
    t.proc = subprocess.Popen([sys.executable, "-c", HANG], start_new_session=True, stdout=subprocess.PIPE)
    assert t.proc.stdout and t.proc.stdout.readline() == b"up\n"
    t.signal(signal.SIGTERM)
    time.sleep(0.5)
    assert t.proc.poll() is None, "the stand-in should ignore SIGTERM"
    begin = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="hung"):
        t.finish_within(1.0)
    assert t.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - begin < 35


# Stands in for a trainer stopping on SIGTERM: it saves (2 s here), then exits 42.
STOPS_IN_2_S = (
    "import os, signal, time; signal.signal(signal.SIGTERM, lambda *_: (time.sleep(2), os._exit(42))); "
    "print('up', flush=True); time.sleep(600)"
)


def test_finish_within_bounds_the_wait_from_now_not_from_the_start(tmp_path: Path) -> None:
    """The SIGTERM tests bounded the exit with `finish(timeout=60)`, which counts from the start: a start-up
    (imports, compiles) over 59 s on a loaded machine left the trainer 1 s to stop, and it was killed."""
    t = Trainer([], str(tmp_path / "job"), tmp_path)
    t.kill()
    t.proc = subprocess.Popen(
        [sys.executable, "-c", STOPS_IN_2_S], start_new_session=True, stdout=subprocess.PIPE
    )
    assert t.proc.stdout and t.proc.stdout.readline() == b"up\n"
    t.started -= 1000  # as if its start-up had taken 1,000 s
    t.signal(signal.SIGTERM)
    assert t.finish_within(60).returncode == 42


def test_wait_for_fails_fast_when_the_process_exits(tmp_path: Path) -> None:
    t = Trainer(["--exp", "no_such_exp"], str(tmp_path / "job"), tmp_path)
    try:
        with pytest.raises(pytest.fail.Exception, match="exited 2"):
            t.wait_for(lambda: False, 60, "never")
    finally:
        t.kill()
