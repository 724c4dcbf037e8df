"""The decision's inputs and outputs: what was observed, and the Plan of changes. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pax_operator.core.observe import PodView
from pax_operator.core.render import JobRef
from pax_operator.settings import STARTUP_DEADLINE_SECONDS
from pax_operator.spec import (
    DEFAULT_TERMINATION_GRACE_SECONDS,
    Condition,
    ConditionBase,
    ConditionType,
    PaxJobSpec,
    PaxJobStatus,
    Phase,
)

SETTLE_REQUEUE_SECONDS = 1.0  # while waiting for pods to go away or appear
STARTUP_GRACE_SECONDS = 300.0  # hang clock before a gang's first step: start-up and compilation are slow
STUCK_DELETION_SECONDS = 10.0  # an unscheduled pod still there this long after its deletion deadline
# A host failed while a scheduled peer still reads as running: wait at most this long after the first failure
# for that peer to end or for its node's loss to show. The node controller marks a silent node's pods not
# ready after its 40-50 s grace period, and peers of a lost host usually abort later (jax.distributed's
# heartbeat timeout, 100 s), so the evidence is there already; this covers peers a little quicker. Short: a
# real crash's peers may block in a collective until the heartbeat timeout, and the restart waits for this.
NODE_LOSS_SETTLE_SECONDS = 15.0
# The grace period of a gang stopped because its attempt failed (a host crashed, a hang, a permanent error),
# when the pods' own is longer: such a gang cannot save (a multi-host save needs every host), so its hosts
# would only sit out their grace period while the next gang waits. Kubernetes' default, what every gang had
# before spec.terminationGracePeriodSeconds: time for a save already in flight to commit, never forced (0).
FAILED_GANG_GRACE_SECONDS = DEFAULT_TERMINATION_GRACE_SECONDS
STATUS_MESSAGE_MAX_CHARS = 1024  # status.message (kubectl get pj -o wide): one line, this long at most


@dataclass(frozen=True)
class Scrape:
    """Host 0's Prometheus gauges (contract metric names); values that are not usable numbers are dropped
    and named in `ignored`."""

    step: int | None = None
    last_checkpoint_step: int | None = None
    loss: float | None = None
    steps_per_second: float | None = None
    num_train_steps: int | None = None
    ignored: tuple[str, ...] = ()
    eval_step: int | None = None  # step of the latest evaluation (PaxSweep's intermediate objectives)
    eval_metrics: tuple[tuple[str, float], ...] = ()  # ("eval_test/loss", value), ...
    # When the operator last looked at host 0 (answered or not; the content is the latest answer). A hang
    # needs a look at least hangTimeoutSeconds after the last progress: until then no scrape could show it.
    # Not part of what host 0 serves (equality): a scrape wakes its job only when that changed.
    checked_at: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to change, in apply order: owned objects, deletions, creations, status, events, job deletion."""

    service: dict[str, Any] | None = None
    delete_pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    force_delete_pods: list[tuple[str, str]] = field(default_factory=list)  # grace period 0
    # gracePeriodSeconds of a deletion in delete_pods, by pod UID, where shorter than the pod's own
    delete_grace: dict[str, int] = field(default_factory=dict)
    create_pods: list[dict[str, Any]] = field(default_factory=list)
    status: PaxJobStatus | None = None  # None: unchanged
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)

    def delete(self, pods: list[PodView], grace: int | None = None) -> None:
        """Delete these pods (finished ones too) unless already being deleted; `grace`: with this grace
        period rather than the pods' own (the shortest asked for wins)."""
        for pod in pods:
            if pod.deleting:
                continue
            if (pod.name, pod.uid) not in self.delete_pods:
                self.delete_pods.append((pod.name, pod.uid))
            if grace is not None:
                self.delete_grace[pod.uid] = min(grace, self.delete_grace.get(pod.uid, grace))

    def stop(self, pods: list[PodView], grace: int | None = None) -> None:
        """Delete the pods still alive; finished ones stay for their logs."""
        self.delete([pod for pod in pods if pod.alive], grace)


@dataclass(frozen=True)
class Observed:
    """Everything the decision looks at."""

    job: JobRef
    spec: PaxJobSpec
    status: PaxJobStatus
    pods: list[PodView]  # controlled by this PaxJob (owner UID)
    now: datetime
    scrape: Scrape | None = None
    generation: int | None = None  # metadata.generation of the spec decided on
    # Host 0 of the current gang has answered a scrape: a stalled step is then a hang, while silence alone
    # (metrics unreachable from the operator, e.g. a NetworkPolicy) never restarts a gang.
    metrics_answered: bool = False
    # Pods carrying this job's name label but not controlled by it (e.g. a deleted namesake's, terminating).
    foreign_pods: list[PodView] = field(default_factory=list)
    startup_deadline_seconds: float = STARTUP_DEADLINE_SECONDS


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    status: PaxJobStatus, kind: ConditionType, value: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert a PaxJob condition (see `upsert_condition`)."""
    upsert_condition(status.conditions, Condition, kind, value, reason, message, now)


def upsert_condition[C: ConditionBase](
    conditions: list[C], make: type[C], kind: str, value: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert the condition `kind` (built by `make`) in `conditions`; lastTransitionTime moves only when
    the status flips; an absent condition reads as False, so a False one is not added."""
    wanted = "True" if value else "False"
    for index, condition in enumerate(conditions):
        if condition.type == kind:
            moved = condition.status != wanted
            since = format_time(now) if moved else condition.last_transition_time
            conditions[index] = make(
                type=kind, status=wanted, reason=reason, message=message, last_transition_time=since
            )
            return
    if value:
        since = format_time(now)
        conditions.append(
            make(type=kind, status=wanted, reason=reason, message=message, last_transition_time=since)
        )


def condition(status: PaxJobStatus, kind: ConditionType) -> Condition | None:
    return next((c for c in status.conditions if c.type is kind), None)


def is_true(status: PaxJobStatus, kind: ConditionType) -> bool:
    found = condition(status, kind)
    return found is not None and found.status == "True"


def clear(
    status: PaxJobStatus, kinds: tuple[ConditionType, ...], reason: str, message: str, now: datetime
) -> None:
    for kind in kinds:
        if is_true(status, kind):
            set_condition(status, kind, False, reason, message, now)


# The condition that says why a job is in its phase (Pending: blocked start-up, else refused creation).
PHASE_CONDITIONS: dict[Phase, tuple[tuple[ConditionType, str], ...]] = {
    Phase.PENDING: ((ConditionType.STARTUP_BLOCKED, "True"), (ConditionType.CREATED, "False")),
    Phase.RUNNING: ((ConditionType.RUNNING, "True"),),
    Phase.RESTARTING: ((ConditionType.RESTARTING, "True"),),
    Phase.SUSPENDED: ((ConditionType.SUSPENDED, "True"),),
    Phase.SUCCEEDED: ((ConditionType.SUCCEEDED, "True"),),
    Phase.FAILED: ((ConditionType.FAILED, "True"),),
}


def summarize(status: PaxJobStatus) -> None:
    """Set status.reason and status.message (a Pod's fields; `kubectl get pj` shows them) from the
    condition that explains the phase; None when none does (a job whose gang is being created)."""
    explaining = next(
        (
            found
            for kind, value in PHASE_CONDITIONS.get(status.phase or Phase.PENDING, ())
            if (found := condition(status, kind)) is not None and found.status == value
        ),
        None,
    )
    if explaining is None:
        status.reason = status.message = None
        return
    message = " ".join(explaining.message.split())
    if len(message) > STATUS_MESSAGE_MAX_CHARS:
        message = message[: STATUS_MESSAGE_MAX_CHARS - 3] + "..."
    status.reason, status.message = explaining.reason or None, message or None
