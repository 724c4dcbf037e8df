"""Errors that map to the contract's exit codes, and the exit path of threads that cannot raise."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from pax_contract import ExitCode, ExitReason


class TrainerError(Exception):
    """Base class: an error with a one-line message and an exit reason."""

    reason: ExitReason = ExitReason.CRASHED
    exit_code: ExitCode = ExitCode.CRASHED


class ConfigError(TrainerError):
    """Unknown experiment, malformed/unknown override, bad flag, checkpoint of another model (exit 2)."""

    reason = ExitReason.CONFIG_ERROR
    exit_code = ExitCode.CONFIG_ERROR


class StorageError(TrainerError):
    """job_log_dir unreachable, not writable, or a storage call failed or missed its deadline (exit 3)."""

    reason = ExitReason.STORAGE_ERROR
    exit_code = ExitCode.STORAGE_ERROR


class Preempted(TrainerError):
    """SIGTERM seen and a checkpoint saved at an agreed step, or nothing new since the last (exit 42)."""

    reason = ExitReason.PREEMPTED
    exit_code = ExitCode.PREEMPTED

    def __init__(self, step: int | None, saved: bool = True, grace_s: int | None = None) -> None:
        last = "no checkpoint yet" if step is None else f"the last checkpoint is step {step}"
        if grace_s is not None:  # the grace period ran out first: a save in flight is left uncommitted
            last = "no committed checkpoint known" if step is None else last
            message = (
                f"preempted: the pod's grace period ({grace_s} s) ends before a checkpoint save could commit:"
                f" exiting without it ({last})"
            )
        elif saved:
            message = f"preempted: checkpoint saved at step {step}"
        else:
            message = f"preempted with nothing new to save ({last})"
        super().__init__(message)
        self.step = step


FatalHandler = Callable[[TrainerError], None]


def _print_error(err: TrainerError) -> None:
    print(f"pax_trainer: error: {err}", file=sys.stderr, flush=True)


_fatal_handler: FatalHandler = _print_error


def set_fatal_handler(handler: FatalHandler) -> None:
    """How exit_from_thread reports an error (main: one stderr line and the result file)."""
    global _fatal_handler
    _fatal_handler = handler


def exit_from_thread(err: TrainerError) -> NoReturn:
    """Report `err` and end the process now with its exit code.

    For watchdog threads (a storage call past its deadline, a lost job_log_dir): the main thread may be
    blocked in a call that cannot be interrupted, so raising there is not possible.
    """
    try:
        _fatal_handler(err)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(int(err.exit_code))
