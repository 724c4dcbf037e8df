"""The trainer container's environment and ports: one description, read and written by the functions here.

The operator renders `TrainerEnv.to_env()` (plus POD_IP as a fieldRef and the POD_ENV defaults); the
trainer reads `TrainerEnv.from_env(os.environ)`. A malformed value is an `EnvError` naming the variable,
whoever reads it (the trainer exits 2, a config error).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pax_contract.version import CONTRACT_VERSION, UNVERSIONED, ContractVersion, incompatibility

COORDINATOR_PORT = 8476  # jax.distributed coordinator on host 0
METRICS_PORT = 9431  # Prometheus /metrics on every host
MEGASCALE_PORT = 8080  # TPU multislice coordinator on host 0
RESERVED_PORTS = (COORDINATOR_PORT, METRICS_PORT, MEGASCALE_PORT)  # no other container port may use these
DEFAULT_RESULT_FILE = "/dev/termination-log"

ENV_COORDINATOR_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_RESTART_ATTEMPT = "PAX_RESTART_ATTEMPT"
ENV_RESULT_FILE = "PAX_RESULT_FILE"
ENV_METRICS_PORT = "PAX_METRICS_PORT"
ENV_JOB_NAME = "PAX_JOB_NAME"
ENV_JOB_NAMESPACE = "PAX_JOB_NAMESPACE"
ENV_TERMINATION_GRACE = "PAX_TERMINATION_GRACE_SECONDS"
ENV_POD_IP = "POD_IP"
ENV_CONTRACT_VERSION = "PAX_CONTRACT_VERSION"
ENV_MEGASCALE_COORDINATOR = "MEGASCALE_COORDINATOR_ADDRESS"
ENV_NUM_SLICES = "MEGASCALE_NUM_SLICES"
ENV_SLICE_ID = "MEGASCALE_SLICE_ID"
ENV_MEGASCALE_PORT = "MEGASCALE_PORT"

# name → what it carries (docs/contract.md has one row per name; the order is the rendering order).
TRAINER_ENV: Mapping[str, str] = {
    ENV_POD_IP: "fieldRef status.podIP: the coordinator and metrics server bind here (first, so later "
    "values may use $(POD_IP))",
    ENV_CONTRACT_VERSION: "the operator's contract version, `MAJOR.MINOR` (unset: 1.0, an operator from "
    "before versions); the trainer refuses another major (exit 2 naming both versions)",
    ENV_COORDINATOR_ADDRESS: "`J-0.J.N.svc:8476` (host 0)",
    ENV_NUM_PROCESSES: "`H` (all hosts of all slices)",
    ENV_PROCESS_ID: "`i`, 0..H-1; host 0 is the coordinator and writes the result",
    ENV_RESTART_ATTEMPT: "0 for the first gang, +1 per gang restart (also the pod label "
    "`pax.dev/restart-attempt`)",
    ENV_RESULT_FILE: "the container's `terminationMessagePath`: where the result JSON goes",
    ENV_METRICS_PORT: "9431: Prometheus `/metrics` on every host (unset or 0: no metrics server)",
    ENV_JOB_NAME: "`J`; with the namespace, the job's identity in its job_log_dir's owner record",
    ENV_JOB_NAMESPACE: "`N`, the PaxJob's namespace (same-named jobs in two namespaces are two owners)",
    ENV_TERMINATION_GRACE: "the pod's `terminationGracePeriodSeconds` (whole seconds, 0 or more): after "
    "SIGTERM the trainer waits for a save only until a margin before it ends, then exits 42 with that save "
    "not committed (unset: no bound but the storage deadlines)",
    ENV_MEGASCALE_COORDINATOR: "TPU multislice only: `J-0.J.N.svc:8080`",
    ENV_NUM_SLICES: "TPU multislice only: number of slices",
    ENV_SLICE_ID: "TPU multislice only: this host's slice, `i // hostsPerSlice`",
    ENV_MEGASCALE_PORT: "TPU multislice only: 8080",
}
# Set by the operator on every trainer container besides the contract (the root filesystem is read-only:
# caches and credentials look under $HOME, which is the pod's /tmp emptyDir).
POD_ENV: Mapping[str, str] = {"PYTHONUNBUFFERED": "1", "HOME": "/tmp"}
# Names a PaxJob's podTemplate.env may not set: the contract's, the pod defaults above, and every name
# under the prefixes the operator or the accelerator runtime owns.
RESERVED_ENV_PREFIXES = ("JAX_", "MEGASCALE_", "PAX_", "TPU_")
RESERVED_ENV_NAMES = tuple(
    sorted(name for name in (*TRAINER_ENV, *POD_ENV) if not name.startswith(RESERVED_ENV_PREFIXES))
)


def is_reserved_env(name: str) -> bool:
    return name.startswith(RESERVED_ENV_PREFIXES) or name in RESERVED_ENV_NAMES


_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


class EnvError(ValueError):
    """A contract variable is malformed; the message names it."""


def parse_int_env(environ: Mapping[str, str], name: str, default: int) -> int:
    """The one way to read an integer variable: unset or empty → default, anything but a decimal
    integer → EnvError."""
    text = (environ.get(name) or "").strip()
    if not text:
        return default
    if not _INTEGER.fullmatch(text):
        raise EnvError(f"{name}={environ[name]!r} is not an integer")
    return int(text)


def _optional_int_env(environ: Mapping[str, str], name: str) -> int | None:
    """`parse_int_env` for a variable whose absence means "not told": unset or empty → None."""
    return parse_int_env(environ, name, 0) if (environ.get(name) or "").strip() else None


@dataclass(frozen=True)
class Megascale:
    """TPU multislice: where the slices meet over DCN."""

    coordinator_address: str
    num_slices: int
    slice_id: int
    port: int = MEGASCALE_PORT


@dataclass(frozen=True)
class TrainerEnv:
    """Everything the operator tells one trainer container through its environment."""

    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    restart_attempt: int = 0
    result_file: str | None = None
    metrics_port: int = 0
    job_name: str | None = None
    job_namespace: str | None = None
    pod_ip: str | None = None
    megascale: Megascale | None = None
    termination_grace_s: int | None = None  # the pod's terminationGracePeriodSeconds; None: not told
    contract_version: ContractVersion = CONTRACT_VERSION  # the operator's

    def __post_init__(self) -> None:
        why = incompatibility(self.contract_version)
        if why is not None:
            raise EnvError(f"{ENV_CONTRACT_VERSION}={self.contract_version}: {why}")
        if self.num_processes < 1 or not 0 <= self.process_id < self.num_processes:
            raise EnvError(
                f"{ENV_PROCESS_ID}={self.process_id} is not in [0, {ENV_NUM_PROCESSES}={self.num_processes})"
            )
        if self.num_processes > 1 and not self.coordinator_address:
            raise EnvError(f"{ENV_NUM_PROCESSES}={self.num_processes} needs {ENV_COORDINATOR_ADDRESS}")
        if self.restart_attempt < 0:
            raise EnvError(f"{ENV_RESTART_ATTEMPT}={self.restart_attempt} is negative")
        if not 0 <= self.metrics_port <= 65535:
            raise EnvError(f"{ENV_METRICS_PORT}={self.metrics_port} is not a port")
        if self.termination_grace_s is not None and self.termination_grace_s < 0:
            raise EnvError(f"{ENV_TERMINATION_GRACE}={self.termination_grace_s} is negative")
        slices = self.megascale
        if slices is not None and (slices.num_slices < 1 or not 0 <= slices.slice_id < slices.num_slices):
            raise EnvError(
                f"{ENV_SLICE_ID}={slices.slice_id} is not in [0, {ENV_NUM_SLICES}={slices.num_slices})"
            )

    def to_env(self) -> dict[str, str]:
        """The variables, in TRAINER_ENV's order; unset ones are left out."""
        values: dict[str, str | int | None] = {
            ENV_POD_IP: self.pod_ip,
            ENV_CONTRACT_VERSION: str(self.contract_version),
            ENV_COORDINATOR_ADDRESS: self.coordinator_address,
            ENV_NUM_PROCESSES: self.num_processes,
            ENV_PROCESS_ID: self.process_id,
            ENV_RESTART_ATTEMPT: self.restart_attempt,
            ENV_RESULT_FILE: self.result_file,
            ENV_METRICS_PORT: self.metrics_port or None,
            ENV_JOB_NAME: self.job_name,
            ENV_JOB_NAMESPACE: self.job_namespace,
            ENV_TERMINATION_GRACE: self.termination_grace_s,
        }
        if self.megascale is not None:
            values |= {
                ENV_MEGASCALE_COORDINATOR: self.megascale.coordinator_address,
                ENV_NUM_SLICES: self.megascale.num_slices,
                ENV_SLICE_ID: self.megascale.slice_id,
                ENV_MEGASCALE_PORT: self.megascale.port,
            }
        return {name: str(values[name]) for name in TRAINER_ENV if values.get(name) is not None}

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TrainerEnv:
        """Parse the variables; EnvError (naming the variable) on a malformed or inconsistent value."""
        megascale = None
        if environ.get(ENV_NUM_SLICES):
            megascale = Megascale(
                coordinator_address=environ.get(ENV_MEGASCALE_COORDINATOR) or "",
                num_slices=parse_int_env(environ, ENV_NUM_SLICES, 1),
                slice_id=parse_int_env(environ, ENV_SLICE_ID, 0),
                port=parse_int_env(environ, ENV_MEGASCALE_PORT, MEGASCALE_PORT),
            )
        return cls(
            num_processes=parse_int_env(environ, ENV_NUM_PROCESSES, 1),
            process_id=parse_int_env(environ, ENV_PROCESS_ID, 0),
            coordinator_address=environ.get(ENV_COORDINATOR_ADDRESS) or None,
            restart_attempt=parse_int_env(environ, ENV_RESTART_ATTEMPT, 0),
            result_file=environ.get(ENV_RESULT_FILE) or None,
            metrics_port=parse_int_env(environ, ENV_METRICS_PORT, 0),
            job_name=environ.get(ENV_JOB_NAME) or None,
            job_namespace=environ.get(ENV_JOB_NAMESPACE) or None,
            pod_ip=environ.get(ENV_POD_IP) or None,
            megascale=megascale,
            termination_grace_s=_optional_int_env(environ, ENV_TERMINATION_GRACE),
            contract_version=parse_contract_version(environ),
        )


def parse_contract_version(environ: Mapping[str, str]) -> ContractVersion:
    """The operator's contract version: unset or empty → UNVERSIONED, malformed → EnvError."""
    text = (environ.get(ENV_CONTRACT_VERSION) or "").strip()
    try:
        return ContractVersion.parse(text) if text else UNVERSIONED
    except ValueError as err:
        raise EnvError(f"{ENV_CONTRACT_VERSION}: {err}") from None
