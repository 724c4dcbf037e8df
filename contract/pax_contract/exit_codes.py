"""Exit codes: one table, from which the trainer's reasons and the operator's classification derive."""

from __future__ import annotations

import enum
from types import MappingProxyType


class Outcome(enum.StrEnum):
    """How the operator classifies a finished or lost host."""

    SUCCEEDED = "Succeeded"
    PREEMPTED = "Preempted"  # own budget; resumes from the last committed checkpoint
    FAILED = "Failed"  # failure budget
    PERMANENT = "Permanent"  # fail fast, no restart


class ExitReason(enum.StrEnum):
    """`exit_reason` of the trainer's result: the vocabulary only; ExitCode gives each its code."""

    COMPLETED = "completed"
    PREEMPTED = "preempted"
    CONFIG_ERROR = "config_error"
    STORAGE_ERROR = "storage_error"
    CRASHED = "crashed"


class ExitCode(enum.IntEnum):
    """The table: code, the trainer's reason (None: not the trainer's own exit), the operator's event
    reason, the operator's outcome, and what it means (docs/contract.md repeats these rows)."""

    reason: ExitReason | None
    event_reason: str
    outcome: Outcome
    meaning: str

    SUCCESS = 0, ExitReason.COMPLETED, "Completed", Outcome.SUCCEEDED, "completed"
    CRASHED = 1, ExitReason.CRASHED, "Crashed", Outcome.FAILED, "crashed (uncaught error)"
    CONFIG_ERROR = (
        2,
        ExitReason.CONFIG_ERROR,
        "ConfigError",
        Outcome.PERMANENT,
        "config error: unknown experiment, malformed/unknown override, bad flag or environment, checkpoints"
        " of another model, job_log_dir in use by another job",
    )
    STORAGE_ERROR = (
        3,
        ExitReason.STORAGE_ERROR,
        "StorageError",
        Outcome.FAILED,
        "storage error: job_log_dir unreachable or not writable, a storage call failed or missed its"
        " deadline",
    )
    PREEMPTED = (
        42,
        ExitReason.PREEMPTED,
        "Preempted",
        Outcome.PREEMPTED,
        "preempted: SIGTERM seen; the steps since the last checkpoint saved at a step all hosts agreed on,"
        " or none to save",
    )
    KILLED = 128 + 9, None, "Killed", Outcome.PREEMPTED, "killed by SIGKILL from outside"
    TERMINATED = 128 + 15, None, "Terminated", Outcome.PREEMPTED, "killed by SIGTERM from outside"

    def __new__(
        cls, code: int, reason: ExitReason | None, event_reason: str, outcome: Outcome, meaning: str
    ) -> ExitCode:
        member = int.__new__(cls, code)
        member._value_ = code
        member.reason = reason
        member.event_reason = event_reason
        member.outcome = outcome
        member.meaning = meaning
        return member


EXIT_CODE_FOR_REASON: MappingProxyType[ExitReason, ExitCode] = MappingProxyType(
    {code.reason: code for code in ExitCode if code.reason is not None}
)
UNKNOWN_EXIT_REASON = "Error"  # the operator's event reason for a code not in the table


def classify_exit_code(code: int) -> Outcome:
    """Classify a trainer container's exit code (signals appear as 128+N); unknown codes are failures."""
    try:
        return ExitCode(code).outcome
    except ValueError:
        return Outcome.FAILED


def event_reason(code: int) -> str:
    """The operator's one-word reason for a trainer exit code."""
    try:
        return ExitCode(code).event_reason
    except ValueError:
        return UNKNOWN_EXIT_REASON
