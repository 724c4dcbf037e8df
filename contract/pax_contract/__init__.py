"""The contract between the PaxJob operator and the Pax trainer: one place, imported by both sides.

Human-readable version: docs/contract.md (kept in sync by tests/unit/test_contract.py).
This module must stay dependency-free: both the operator image and the trainer image import it.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Any

# --- Environment variables the operator sets on every trainer container -------------------------------
ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"  # "<host-0 DNS name>:<COORDINATOR_PORT>"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"  # total hosts in the gang (all slices)
ENV_PROCESS_ID = "JAX_PROCESS_ID"  # 0..N-1, host 0 is the coordinator and writes the result
ENV_RESTART_ATTEMPT = "PAX_RESTART_ATTEMPT"  # 0 for the first gang, +1 on every gang restart
ENV_RESULT_FILE = "PAX_RESULT_FILE"  # where process 0 writes the result JSON (= terminationMessagePath)
ENV_METRICS_PORT = "PAX_METRICS_PORT"  # Prometheus /metrics (step, checkpoint step, loss) on every host
ENV_JOB_NAME = "PAX_JOB_NAME"  # the PaxJob's name (labels summaries, logs)
ENV_POD_IP = "POD_IP"  # fieldRef status.podIP: the trainer binds its coordinator and metrics server here
ENV_NUM_SLICES = "MEGASCALE_NUM_SLICES"  # TPU multislice only
ENV_SLICE_ID = "MEGASCALE_SLICE_ID"  # TPU multislice only
ENV_MEGASCALE_COORDINATOR = "MEGASCALE_COORDINATOR_ADDRESS"  # TPU multislice only

COORDINATOR_PORT = 8476
METRICS_PORT = 9431
DEFAULT_RESULT_FILE = "/dev/termination-log"
TERMINATION_MESSAGE_MAX_BYTES = 4096  # kubelet truncates termination messages beyond this

# --- Prometheus metric names served on PAX_METRICS_PORT (operator scrapes host 0) ---------------------
METRIC_STEP = "pax_train_step"  # gauge: last completed train step
METRIC_CHECKPOINT_STEP = "pax_last_checkpoint_step"  # gauge: newest committed checkpoint step, -1 if none
METRIC_LOSS = "pax_train_loss"  # gauge: last logged training loss
METRIC_STEPS_PER_SEC = "pax_steps_per_second"  # gauge
METRIC_TOTAL_STEPS = "pax_num_train_steps"  # gauge: target step count


class ExitCode(enum.IntEnum):
    """Trainer exit codes and how the operator classifies them."""

    SUCCESS = 0  # job finished: operator marks Succeeded
    CRASHED = 1  # uncaught error: a failure (failure budget)
    CONFIG_ERROR = 2  # bad experiment / flag / override / hyperparameter: permanent, no restart
    STORAGE_ERROR = 3  # job_log_dir unreachable or not writable: a failure (failure budget)
    PREEMPTED = 42  # SIGTERM seen, checkpoint saved at an agreed step: a preemption (preemption budget)


class Outcome(enum.StrEnum):
    """How the operator classifies a finished or lost host."""

    SUCCEEDED = "Succeeded"
    PREEMPTED = "Preempted"  # own budget; resumes from the last committed checkpoint
    FAILED = "Failed"  # failure budget
    PERMANENT = "Permanent"  # fail fast, no restart


def classify_exit_code(code: int) -> Outcome:
    """Classify a trainer container's exit code (signals appear as 128+N)."""
    if code == ExitCode.SUCCESS:
        return Outcome.SUCCEEDED
    if code == ExitCode.PREEMPTED:
        return Outcome.PREEMPTED
    if code == ExitCode.CONFIG_ERROR:
        return Outcome.PERMANENT
    if code in (128 + 9, 128 + 15):  # SIGKILL / SIGTERM from outside: the host was taken away
        return Outcome.PREEMPTED
    return Outcome.FAILED


class ExitReason(enum.StrEnum):
    COMPLETED = "completed"
    PREEMPTED = "preempted"
    CONFIG_ERROR = "config_error"
    STORAGE_ERROR = "storage_error"
    CRASHED = "crashed"


EXIT_CODE_FOR_REASON: dict[ExitReason, ExitCode] = {
    ExitReason.COMPLETED: ExitCode.SUCCESS,
    ExitReason.PREEMPTED: ExitCode.PREEMPTED,
    ExitReason.CONFIG_ERROR: ExitCode.CONFIG_ERROR,
    ExitReason.STORAGE_ERROR: ExitCode.STORAGE_ERROR,
    ExitReason.CRASHED: ExitCode.CRASHED,
}


@dataclass
class TrainerResult:
    """What process 0 writes to PAX_RESULT_FILE on exit; the operator reads it as the termination message."""

    exit_reason: ExitReason
    final_step: int | None = None
    last_checkpoint_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""
    attempt: int = 0

    def to_json(self) -> str:
        """Serialise, dropping metrics then truncating the message to fit the termination-message limit."""
        doc: dict[str, Any] = asdict(self)
        doc["exit_reason"] = str(self.exit_reason)
        text = json.dumps(doc, sort_keys=True)
        while len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES and doc["metrics"]:
            doc["metrics"].pop(sorted(doc["metrics"])[-1])
            text = json.dumps(doc, sort_keys=True)
        if len(text.encode()) > TERMINATION_MESSAGE_MAX_BYTES:
            overflow = len(text.encode()) - TERMINATION_MESSAGE_MAX_BYTES + 3
            doc["message"] = doc["message"][: max(0, len(doc["message"]) - overflow)] + "..."
            text = json.dumps(doc, sort_keys=True)
        return text

    @classmethod
    def from_json(cls, text: str) -> TrainerResult:
        """Parse a termination message; raises ValueError on anything that is not a result."""
        try:
            doc = json.loads(text)
            return cls(
                exit_reason=ExitReason(doc["exit_reason"]),
                final_step=doc.get("final_step"),
                last_checkpoint_step=doc.get("last_checkpoint_step"),
                metrics={str(k): float(v) for k, v in (doc.get("metrics") or {}).items()},
                message=str(doc.get("message", "")),
                attempt=int(doc.get("attempt", 0)),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"not a Pax trainer result: {err}") from err


# --- Layout under job_log_dir (paxml's) ---------------------------------------------------------------
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_PREFIX = "checkpoint"  # checkpoints/checkpoint_00000100/
CHECKPOINT_STEP_DIGITS = 8
COMMIT_MARKER = "commit_success.txt"  # only checkpoints holding it are restored
SUMMARIES_DIR = "summaries"  # summaries/train, summaries/eval_<split>
DECODER_OUT_DIR = "decoder_out"


def checkpoint_dir_name(step: int) -> str:
    """checkpoint_%08d, as paxml names them."""
    return f"{CHECKPOINT_PREFIX}_{step:0{CHECKPOINT_STEP_DIGITS}d}"
