"""Typed view of a PaxJob's spec and status.

The CRD (deploy/crds/pax.dev_paxjobs.yaml) is the schema's single source of truth: the apiserver validates and
defaults every PaxJob with it. These models parse what the apiserver stored; their field names, defaults and
bounds are checked against the CRD by tests/unit/operator/test_operator_crd_schema.py. The bounds are repeated
here as a second line of defence: a spec stored under an older CRD never makes the operator allocate without
limit or compute a date past year 9999.
"""

from __future__ import annotations

import enum
import math
from typing import Any, ClassVar, Literal

from pax_contract import OVERRIDE_SAVE_INTERVAL, Mode, is_override_name, is_reserved_env
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "pax.dev"
VERSION = "v1alpha1"
PLURAL = "paxjobs"
KIND = "PaxJob"
API_VERSION = f"{GROUP}/{VERSION}"

MAX_HOSTS = 4096  # pods per PaxJob, all slices: bounds what one job can make the operator allocate
MAX_NAME_LENGTH = 52  # pods are <name>-<host>: 52 + 1 + len("4095") stays a 63-character DNS label
INT32_MAX = 2**31 - 1  # seconds, steps and budgets (as batch/v1 Job): 68 years of seconds fit a datetime
TPU_TOPOLOGY_PATTERN = r"^[1-9][0-9]{0,2}(x[1-9][0-9]{0,2}){1,2}$"  # each dimension at most 999 chips
# Every gang pod's terminationGracePeriodSeconds when spec.terminationGracePeriodSeconds is unset (Kubernetes'
# default, written out). Not a CRD default: the apiserver would then add the field to every stored PaxJob,
# and an operator rolled back to a version without it could parse none of them.
DEFAULT_TERMINATION_GRACE_SECONDS = 30
# At least 1: 0 is an immediate SIGKILL (no result, the preemption read as a crash). At most an hour: every
# gang replacement (restart, suspend, resume, a deleted PaxJob's namesake) waits for the old pods to be gone,
# up to this long; an hour covers two of the trainer's bulk storage deadlines (1800 s) for a save in flight
# and then the stop's own save, and a careless value cannot hold a gang's names and accelerators for a day.
MAX_TERMINATION_GRACE_SECONDS = 3600


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class CpuTopology(_Model):
    hosts: int = Field(ge=1, le=MAX_HOSTS)


class GpuTopology(_Model):
    hosts: int = Field(ge=1, le=MAX_HOSTS)
    gpus_per_host: int = Field(ge=1, le=16)


class TpuAccelerator(enum.StrEnum):
    V4 = "v4"
    V5P = "v5p"
    V5LITEPOD = "v5litepod"
    V6E = "v6e"


# GKE node label value (cloud.google.com/gke-tpu-accelerator) per generation.
GKE_TPU_ACCELERATOR: dict[TpuAccelerator, str] = {
    TpuAccelerator.V4: "tpu-v4-podslice",
    TpuAccelerator.V5P: "tpu-v5p-slice",
    TpuAccelerator.V5LITEPOD: "tpu-v5-lite-podslice",
    TpuAccelerator.V6E: "tpu-v6e-slice",
}
CHIPS_PER_HOST = 4  # multi-host slices of every supported generation
MAX_SINGLE_HOST_CHIPS = {TpuAccelerator.V5LITEPOD: 8, TpuAccelerator.V6E: 8}  # 2x4 fits one 8-chip VM


class TpuTopology(_Model):
    accelerator_type: TpuAccelerator
    topology: str = Field(max_length=11, pattern=TPU_TOPOLOGY_PATTERN)
    slices: int = Field(default=1, ge=1, le=64)

    @property
    def chips_per_slice(self) -> int:
        return math.prod(int(dim) for dim in self.topology.split("x"))

    @property
    def chips_per_host(self) -> int:
        """google.com/tpu limit of each pod."""
        single_host_max = MAX_SINGLE_HOST_CHIPS.get(self.accelerator_type, CHIPS_PER_HOST)
        return self.chips_per_slice if self.chips_per_slice <= single_host_max else CHIPS_PER_HOST

    @property
    def hosts_per_slice(self) -> int:
        return max(1, self.chips_per_slice // self.chips_per_host)


class Topology(_Model):
    cpu: CpuTopology | None = None
    gpu: GpuTopology | None = None
    tpu: TpuTopology | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Topology:
        if sum(t is not None for t in (self.cpu, self.gpu, self.tpu)) != 1:
            raise ValueError("set exactly one of topology.cpu, topology.gpu or topology.tpu")
        if self.hosts > MAX_HOSTS:
            raise ValueError(f"{self.hosts} hosts is more than {MAX_HOSTS}")
        return self

    @property
    def hosts(self) -> int:
        """All hosts of all slices: one pod each."""
        if self.tpu is not None:
            return self.tpu.hosts_per_slice * self.tpu.slices
        if self.gpu is not None:
            return self.gpu.hosts
        assert self.cpu is not None, "the CRD requires exactly one of cpu, gpu, tpu"
        return self.cpu.hosts


class Toleration(_Model):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0, le=INT32_MAX)


class EnvVar(_Model):
    name: str
    value: str | None = None
    value_from: dict[str, Any] | None = None


class VolumeMount(_Model):
    name: str
    mount_path: str
    sub_path: str | None = None
    read_only: bool | None = None


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class PodTemplate(_Model):
    service_account_name: str | None = None
    automount_service_account_token: bool = False
    priority_class_name: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)
    volumes: list[dict[str, Any]] = Field(default_factory=list)
    volume_mounts: list[VolumeMount] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)

    @field_validator("env")
    @classmethod
    def _unreserved_env(cls, env: list[EnvVar]) -> list[EnvVar]:
        """The contract's reserved names (the CRD's CEL rule refuses them too): a user entry rendered after
        the contract's would win, e.g. another JAX_PROCESS_ID."""
        reserved = sorted({var.name for var in env if is_reserved_env(var.name)})
        if reserved:
            raise ValueError(f"reserved by the operator ↔ trainer contract: {', '.join(reserved)}")
        return env


class TensorBoard(_Model):
    enabled: bool = False
    image: str | None = None
    port: int = 6006


class RestartPolicy(_Model):
    max_preemptions: int = Field(default=100, ge=0, le=INT32_MAX)
    max_failures: int = Field(default=3, ge=0, le=INT32_MAX)
    backoff_seconds: int = Field(default=10, ge=0, le=3600)


class PaxJobSpec(_Model):
    experiment: str
    mode: Mode = Mode.TRAIN
    overrides: dict[str, str] = Field(default_factory=dict)
    image: str
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    job_log_dir: str
    topology: Topology
    pod_template: PodTemplate = Field(default_factory=PodTemplate)
    tensorboard: TensorBoard = Field(default_factory=TensorBoard)
    checkpoint_interval_steps: int | None = Field(default=None, ge=1, le=INT32_MAX)
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    suspend: bool = False
    active_deadline_seconds: int | None = Field(default=None, ge=1, le=INT32_MAX)
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT32_MAX)
    hang_timeout_seconds: int = Field(default=1800, ge=10, le=INT32_MAX)
    termination_grace_period_seconds: int = Field(
        default=DEFAULT_TERMINATION_GRACE_SECONDS, ge=1, le=MAX_TERMINATION_GRACE_SECONDS
    )

    @field_validator("overrides")
    @classmethod
    def _override_names(cls, overrides: dict[str, str]) -> dict[str, str]:
        """The contract's one rule for override names (the CRD's CEL rule uses the same pattern)."""
        bad = sorted(name for name in overrides if not is_override_name(name))
        if bad:
            raise ValueError(f"override names must be Python identifiers: {', '.join(map(repr, bad))}")
        return overrides

    @property
    def effective_overrides(self) -> dict[str, str]:
        """Overrides plus the save interval (save_interval_steps) from checkpointIntervalSteps."""
        merged = dict(self.overrides)
        if self.checkpoint_interval_steps is not None:
            merged[OVERRIDE_SAVE_INTERVAL] = str(self.checkpoint_interval_steps)
        return merged


class PhaseBase(enum.StrEnum):
    """Base of the phases of PaxJob and PaxSweep: "Succeeded" and "Failed" are their terminal phases."""

    @property
    def is_terminal(self) -> bool:
        return self.value in ("Succeeded", "Failed")


class Phase(PhaseBase):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class ConditionType(enum.StrEnum):
    CREATED = "Created"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STARTUP_BLOCKED = "StartupBlocked"  # a pod of the gang cannot start by itself (image, config, scheduling)


class StatusModel(BaseModel):
    """Base of the status documents of PaxJob and PaxSweep: camelCase keys, unknown keys ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ConditionBase(StatusModel):
    """A status condition of a pax.dev object; its `type` is free-form here (PaxSweep's)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class Condition(ConditionBase):
    type: ConditionType


class LastRestart(StatusModel):
    outcome: str
    reason: str
    message: str = ""
    host: int | None = None
    exit_code: int | None = None


NON_FINITE_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def non_finite_name(value: float) -> str:
    """How JSON-minded tools spell a non-finite number: NaN, Infinity or -Infinity."""
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


class Progress(StatusModel):
    """`metrics` may hold NaN and ±Inf (a diverged loss is a result; PaxSweep's valueForNaN reads it). JSON
    has no such numbers: the apiserver gets them by name in `nonFiniteMetrics`; reading merges them back."""

    step: int | None = None
    num_train_steps: int | None = None
    last_checkpoint_step: int | None = None
    steps_lost: int = 0
    step_at_restart: int | None = None
    steps_per_second: float | None = None
    last_progress_time: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    eval_step: int | None = None
    message: str | None = None

    NON_FINITE_KEY: ClassVar[str] = "nonFiniteMetrics"  # in the stored document only, not a field

    @model_validator(mode="before")
    @classmethod
    def _merge_non_finite(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get(cls.NON_FINITE_KEY), dict):
            return data
        named = {
            str(k): NON_FINITE_NAMES[v] for k, v in data[cls.NON_FINITE_KEY].items() if v in NON_FINITE_NAMES
        }
        return {**data, "metrics": {**(data.get("metrics") or {}), **named}}

    @model_serializer(mode="wrap")
    def _split_non_finite(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        doc: dict[str, Any] = handler(self)
        if info.mode != "json" or all(math.isfinite(v) for v in self.metrics.values()):
            return doc
        doc["metrics"] = {k: v for k, v in self.metrics.items() if math.isfinite(v)}
        doc[self.NON_FINITE_KEY] = {
            k: non_finite_name(v) for k, v in self.metrics.items() if not math.isfinite(v)
        }
        return doc

    def __eq__(self, other: object) -> bool:
        """Equal when the stored documents are (with NaN != NaN, every pass would rewrite a diverged job)."""
        if not isinstance(other, Progress):
            return NotImplemented
        return self.model_dump(mode="json") == other.model_dump(mode="json")


class PaxJobStatus(StatusModel):
    """Also as another version of the operator wrote it (before a rollback, after an upgrade): a condition
    type or a top-level field this one does not know is kept and written back as it was, not refused (every
    reconcile of the job failed) nor dropped (a newer operator's counters lost on the way back)."""

    model_config = ConfigDict(extra="allow")
    _other_conditions: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    phase: Phase | None = None
    hosts: int | None = None
    restart_attempt: int = 0
    gang_created: bool = False
    restart_after: str | None = None
    restarts: int = 0
    preemptions: int = 0
    failures: int = 0
    start_time: str | None = None
    completion_time: str | None = None
    tensorboard_url: str | None = Field(default=None, alias="tensorboardURL")
    last_restart: LastRestart | None = None
    progress: Progress = Field(default_factory=Progress)
    conditions: list[Condition] = Field(default_factory=list)
    observed_generation: int | None = None
    reason: str | None = None  # why the job is in its phase: the explaining condition's (core.plan.summarize)
    message: str | None = None

    @model_validator(mode="wrap")
    @classmethod
    def _set_aside_other_conditions(cls, data: Any, handler: ModelWrapValidatorHandler[PaxJobStatus]) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("conditions"), list):
            return handler(data)
        known = {str(kind) for kind in ConditionType}
        other = [c for c in data["conditions"] if isinstance(c, dict) and c.get("type") not in known]
        status = handler({**data, "conditions": [c for c in data["conditions"] if c not in other]})
        status._other_conditions = other
        return status

    def to_api(self) -> dict[str, Any]:
        """The status document as the apiserver stores it (camelCase, no nulls)."""
        doc = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        if not doc.get("progress", {}).get("metrics"):
            doc.get("progress", {}).pop("metrics", None)
        if self._other_conditions:
            doc["conditions"] = [*doc.get("conditions", []), *self._other_conditions]
        return doc
