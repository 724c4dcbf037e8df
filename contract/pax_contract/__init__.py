"""The contract between the PaxJob operator and the Pax trainer: one place, imported by both sides.

- `invocation`: the command line (`TrainerInvocation`, the override-name rule, `Mode`)
- `env`: the container's environment and ports (`TrainerEnv`, reserved names and ports)
- `exit_codes`: one table of exit codes (`ExitCode`) from which reasons and outcomes derive
- `result`: the result JSON written as the termination message (`TrainerResult`)
- `layout`: Prometheus gauge names and the layout under job_log_dir

Human-readable version: docs/contract.md (kept in sync by tests/unit/test_contract.py).
This package must stay dependency-free: both the operator image and the trainer image import it.
"""

from __future__ import annotations

from pax_contract.env import (
    COORDINATOR_PORT,
    DEFAULT_RESULT_FILE,
    ENV_COORDINATOR_ADDRESS,
    ENV_JOB_NAME,
    ENV_MEGASCALE_COORDINATOR,
    ENV_MEGASCALE_PORT,
    ENV_METRICS_PORT,
    ENV_NUM_PROCESSES,
    ENV_NUM_SLICES,
    ENV_POD_IP,
    ENV_PROCESS_ID,
    ENV_RESTART_ATTEMPT,
    ENV_RESULT_FILE,
    ENV_SLICE_ID,
    MEGASCALE_PORT,
    METRICS_PORT,
    POD_ENV,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    RESERVED_PORTS,
    TRAINER_ENV,
    EnvError,
    Megascale,
    TrainerEnv,
    is_reserved_env,
    parse_int_env,
)
from pax_contract.exit_codes import (
    EXIT_CODE_FOR_REASON,
    ExitCode,
    ExitReason,
    Outcome,
    classify_exit_code,
    event_reason,
)
from pax_contract.invocation import (
    ENTRYPOINT,
    OVERRIDE_NAME_MAX_LENGTH,
    OVERRIDE_NAME_PATTERN,
    InvocationError,
    Mode,
    TrainerInvocation,
    build_parser,
    is_override_name,
    split_override,
)
from pax_contract.layout import (
    CHECKPOINT_PREFIX,
    CHECKPOINT_STEP_DIGITS,
    CHECKPOINTS_DIR,
    COMMIT_MARKER,
    DECODER_OUT_DIR,
    METRIC_CHECKPOINT_STEP,
    METRIC_LOSS,
    METRIC_STEP,
    METRIC_STEPS_PER_SEC,
    METRIC_TOTAL_STEPS,
    SUMMARIES_DIR,
    checkpoint_dir_name,
)
from pax_contract.result import TERMINATION_MESSAGE_MAX_BYTES, TrainerResult

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_PREFIX",
    "CHECKPOINT_STEP_DIGITS",
    "COMMIT_MARKER",
    "COORDINATOR_PORT",
    "DECODER_OUT_DIR",
    "DEFAULT_RESULT_FILE",
    "ENTRYPOINT",
    "ENV_COORDINATOR_ADDRESS",
    "ENV_JOB_NAME",
    "ENV_MEGASCALE_COORDINATOR",
    "ENV_MEGASCALE_PORT",
    "ENV_METRICS_PORT",
    "ENV_NUM_PROCESSES",
    "ENV_NUM_SLICES",
    "ENV_POD_IP",
    "ENV_PROCESS_ID",
    "ENV_RESTART_ATTEMPT",
    "ENV_RESULT_FILE",
    "ENV_SLICE_ID",
    "EXIT_CODE_FOR_REASON",
    "MEGASCALE_PORT",
    "METRICS_PORT",
    "METRIC_CHECKPOINT_STEP",
    "METRIC_LOSS",
    "METRIC_STEP",
    "METRIC_STEPS_PER_SEC",
    "METRIC_TOTAL_STEPS",
    "OVERRIDE_NAME_MAX_LENGTH",
    "OVERRIDE_NAME_PATTERN",
    "POD_ENV",
    "RESERVED_ENV_NAMES",
    "RESERVED_ENV_PREFIXES",
    "RESERVED_PORTS",
    "SUMMARIES_DIR",
    "TERMINATION_MESSAGE_MAX_BYTES",
    "TRAINER_ENV",
    "EnvError",
    "ExitCode",
    "ExitReason",
    "InvocationError",
    "Megascale",
    "Mode",
    "Outcome",
    "TrainerEnv",
    "TrainerInvocation",
    "TrainerResult",
    "build_parser",
    "checkpoint_dir_name",
    "classify_exit_code",
    "event_reason",
    "is_override_name",
    "is_reserved_env",
    "parse_int_env",
    "split_override",
]
