"""Typed view of a PaxSweep's spec and status; the CRD (deploy/crds/pax.dev_paxsweeps.yaml) validates them."""

from __future__ import annotations

import enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from pax_operator.spec import GROUP, INT32_MAX, ConditionBase, PaxJobSpec, PhaseBase, StatusModel

SWEEP_PLURAL = "paxsweeps"
SWEEP_KIND = "PaxSweep"

# Labels and annotations on trial PaxJobs: the trial records the sweep is rebuilt from after a restart.
LABEL_SWEEP_NAME = f"{GROUP}/sweep-name"
LABEL_TRIAL_INDEX = f"{GROUP}/trial-index"
ANNOTATION_TRIAL = f"{GROUP}/sweep-trial"  # {"params": {...}, "dna": "...", "after": k}: set at creation
ANNOTATION_RESULT = f"{GROUP}/sweep-result"  # {"state", "objective", "seq", "message"}: set once, at feedback
ANNOTATION_MEASUREMENTS = f"{GROUP}/sweep-measurements"  # bounded intermediate objective values
ANNOTATION_STOP = f"{GROUP}/sweep-stop"  # why the sweep stopped this trial early (with spec.suspend)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class ParameterType(enum.StrEnum):
    FLOAT = "float"
    INT = "int"
    DISCRETE = "discrete"


class Parameter(_Model):
    name: str
    type: ParameterType
    min: float | None = None
    max: float | None = None
    scale: Literal["linear", "log"] = "linear"
    values: list[str] = Field(default_factory=list)


def float_override(value: float, low: float, high: float) -> str:
    """A float hyperparameter's override text: clamped to [low, high] (exp(log(high)) may exceed it by an
    ulp), the shortest text that reads back as the same float (6 digits turned [1000000.2, 1000000.4]
    into 1e+06 = 1000000, below min, for every trial)."""
    return repr(min(max(float(value), low), high))


class AlgorithmName(enum.StrEnum):
    RANDOM = "random"
    GRID = "grid"
    REGULARIZED_EVOLUTION = "regularizedEvolution"
    GP_BANDIT = "gpBandit"


class Algorithm(_Model):
    name: AlgorithmName = AlgorithmName.RANDOM
    seed: int = Field(default=0, ge=0, le=INT32_MAX)
    population_size: int = 20
    tournament_size: int = 10


class Goal(enum.StrEnum):
    MINIMIZE = "minimize"
    MAXIMIZE = "maximize"


class Aggregation(enum.StrEnum):
    LAST = "last"
    BEST = "best"
    MEAN_OF_LAST_N = "meanOfLastN"


class Objective(_Model):
    metric: str
    goal: Goal = Goal.MINIMIZE
    aggregation: Aggregation = Aggregation.LAST
    last_n: int | None = None
    value_for_na_n: float | None = Field(default=None, alias="valueForNaN")
    goal_value: float | None = None

    def better(self, a: float, b: float) -> bool:
        """Whether objective value `a` is strictly better than `b`."""
        return a < b if self.goal is Goal.MINIMIZE else a > b

    def reward(self, value: float) -> float:
        """PyGlove maximizes rewards."""
        return -value if self.goal is Goal.MINIMIZE else value


class EarlyStoppingRule(_Model):
    step: int = Field(ge=1, le=INT32_MAX)
    threshold: float | None = None
    percentile: float | None = None
    min_trials: int = Field(default=3, ge=1, le=10000)


class EarlyStopping(_Model):
    rules: list[EarlyStoppingRule]


class PaxSweepSpec(_Model):
    template: PaxJobSpec
    parameters: list[Parameter] = Field(default_factory=list)
    experiment_search_space: bool = False
    algorithm: Algorithm = Field(default_factory=Algorithm)
    objective: Objective
    max_trials: int = 10
    parallel_trials: int = 1
    max_failed_trials: int = 3
    suspend: bool = False
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0, le=INT32_MAX)
    early_stopping: EarlyStopping | None = None


class SweepPhase(PhaseBase):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class SweepCondition(ConditionBase):
    """A PaxSweep condition (its type is free-form)."""


class TrialCounts(StatusModel):
    created: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    early_stopped: int = 0


class BestTrial(StatusModel):
    name: str
    index: int
    parameters: dict[str, str] = Field(default_factory=dict)
    objective: float


class PaxSweepStatus(StatusModel):
    """A top-level field another version of the operator wrote (a newer one, before a rollback) is kept and
    written back as it was."""

    model_config = ConfigDict(extra="allow")

    phase: SweepPhase | None = None
    trials: TrialCounts = Field(default_factory=TrialCounts)
    best_trial: BestTrial | None = None
    search_space: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None
    conditions: list[SweepCondition] = Field(default_factory=list)
    observed_generation: int | None = None

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
