"""Errors that map to the contract's exit codes."""

from __future__ import annotations

from pax_contract import ExitReason


class TrainerError(Exception):
    """Base class: an error with a one-line message and an exit reason."""

    reason: ExitReason = ExitReason.CRASHED


class ConfigError(TrainerError):
    """Unknown experiment, malformed/unknown override, bad flag (exit 2, no restart)."""

    reason = ExitReason.CONFIG_ERROR


class StorageError(TrainerError):
    """job_log_dir unreachable or not writable (exit 3)."""

    reason = ExitReason.STORAGE_ERROR


class Preempted(TrainerError):
    """SIGTERM seen and a checkpoint saved at an agreed step (exit 42)."""

    reason = ExitReason.PREEMPTED

    def __init__(self, step: int) -> None:
        super().__init__(f"preempted: checkpoint saved at step {step}")
        self.step = step
