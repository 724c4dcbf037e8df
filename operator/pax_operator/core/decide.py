"""The reconcile decision: observed PaxJob + pods (+ scraped progress) → a plan. Pure: no I/O, no clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pax_contract import Outcome

from pax_operator.core.observe import HostOutcome, PodView, classify_host, gang_cause, trainer_result
from pax_operator.core.render import JobRef, render_gang, render_service
from pax_operator.spec import (
    Condition,
    ConditionType,
    LastRestart,
    PaxJobSpec,
    PaxJobStatus,
    Phase,
)

RUNNING_REQUEUE_SECONDS = 10.0  # default progress scrape / hang check cadence while running
SETTLE_REQUEUE_SECONDS = 1.0  # while waiting for pods to go away or appear
STARTUP_GRACE_SECONDS = 300.0  # hang clock before a gang's first step: start-up and compilation are slow
STUCK_DELETION_SECONDS = 10.0  # an unscheduled pod still there this long after its deletion deadline


@dataclass(frozen=True)
class Scrape:
    """Host 0's Prometheus gauges (contract metric names)."""

    step: int | None = None
    last_checkpoint_step: int | None = None
    loss: float | None = None
    steps_per_second: float | None = None
    num_train_steps: int | None = None


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass
class Plan:
    """What to change, in apply order: service, deletions, creations, status, events, job deletion."""

    service: dict[str, Any] | None = None
    delete_pods: list[tuple[str, str]] = field(default_factory=list)  # (name, uid)
    force_delete_pods: list[tuple[str, str]] = field(default_factory=list)  # grace period 0
    create_pods: list[dict[str, Any]] = field(default_factory=list)
    status: PaxJobStatus | None = None  # None: unchanged
    events: list[Event] = field(default_factory=list)
    delete_job: bool = False
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def set_condition(
    status: PaxJobStatus, kind: ConditionType, value: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert a condition; lastTransitionTime moves only when the status flips."""
    wanted = "True" if value else "False"
    for index, condition in enumerate(status.conditions):
        if condition.type is kind:
            changed = condition.status != wanted
            status.conditions[index] = Condition(
                type=kind,
                status=wanted,
                reason=reason,
                message=message,
                last_transition_time=format_time(now) if changed else condition.last_transition_time,
            )
            return
    if value:  # absent conditions read as False; no need to write them
        status.conditions.append(
            Condition(
                type=kind,
                status=wanted,
                reason=reason,
                message=message,
                last_transition_time=format_time(now),
            )
        )


def _clear(
    status: PaxJobStatus, kinds: tuple[ConditionType, ...], reason: str, message: str, now: datetime
) -> None:
    for kind in kinds:
        if any(c.type is kind and c.status == "True" for c in status.conditions):
            set_condition(status, kind, False, reason, message, now)


@dataclass(frozen=True)
class Observed:
    """Everything the decision looks at."""

    job: JobRef
    spec: PaxJobSpec
    status: PaxJobStatus
    pods: list[PodView]
    now: datetime
    scrape: Scrape | None = None
    running_requeue_seconds: float = RUNNING_REQUEUE_SECONDS
    generation: int | None = None  # metadata.generation of the spec decided on
    # Host 0 of the current gang has answered a scrape: a stalled step is then a hang, while silence alone
    # (metrics unreachable from the operator, e.g. a NetworkPolicy) never restarts a gang.
    metrics_answered: bool = False


def decide(observed: Observed) -> Plan:
    """Compute the next step of a PaxJob's state machine."""
    status = observed.status.model_copy(deep=True)
    plan = Plan()
    _decide(observed, status, plan)
    if status != observed.status:
        plan.status = status
    return plan


def _force_stuck(observed: Observed, pods: list[PodView], plan: Plan) -> None:
    """Unscheduled pods have no kubelet to confirm their deletion: remove them outright once overdue."""
    for pod in pods:
        deadline = parse_time(pod.deletion_deadline)
        overdue = deadline is not None and (observed.now - deadline).total_seconds() > STUCK_DELETION_SECONDS
        if (
            pod.deleting
            and not pod.node_name
            and overdue
            and (pod.name, pod.uid) not in plan.force_delete_pods
        ):
            plan.force_delete_pods.append((pod.name, pod.uid))


def _delete_alive(pods: list[PodView], plan: Plan, *, finished_too: bool = False) -> None:
    for pod in pods:
        doomed = (pod.name, pod.uid)
        if not pod.deleting and (finished_too or not pod.terminated) and doomed not in plan.delete_pods:
            plan.delete_pods.append(doomed)


def _finish(
    observed: Observed, status: PaxJobStatus, plan: Plan, phase: Phase, reason: str, message: str
) -> None:
    now = observed.now
    status.phase = phase
    status.completion_time = format_time(now)
    status.restart_after = None
    kind = ConditionType.SUCCEEDED if phase is Phase.SUCCEEDED else ConditionType.FAILED
    _clear(
        status,
        (ConditionType.RUNNING, ConditionType.RESTARTING, ConditionType.SUSPENDED),
        reason,
        message,
        now,
    )
    set_condition(status, kind, True, reason, message, now)
    plan.events.append(Event("Normal" if phase is Phase.SUCCEEDED else "Warning", reason, message))
    _delete_alive(observed.pods, plan)
    _requeue_ttl(observed, status, plan)


def _requeue_ttl(observed: Observed, status: PaxJobStatus, plan: Plan) -> None:
    ttl = observed.spec.ttl_seconds_after_finished
    finished = parse_time(status.completion_time)
    if ttl is None or finished is None:
        return
    remaining = (finished + timedelta(seconds=ttl) - observed.now).total_seconds()
    if remaining <= 0:  # pods go now, not whenever the garbage collector gets to them
        _delete_alive(observed.pods, plan, finished_too=True)
        plan.delete_job = True
        plan.events.append(Event("Normal", "TTLExpired", f"deleting the finished job after {ttl}s"))
    else:
        plan.requeue(remaining)


def _read_result(observed: Observed, status: PaxJobStatus, pod0: PodView | None) -> None:
    result = trainer_result(pod0)
    if result is None:
        return
    progress = status.progress
    if result.final_step is not None:
        progress.step = result.final_step
    if result.last_checkpoint_step is not None:
        progress.last_checkpoint_step = result.last_checkpoint_step
    if result.metrics:
        progress.metrics = dict(result.metrics)
    if result.message:
        progress.message = result.message


def _apply_scrape(observed: Observed, status: PaxJobStatus) -> None:
    scrape = observed.scrape
    if scrape is None:
        return
    progress = status.progress
    if progress.step_at_restart is not None and scrape.last_checkpoint_step is not None:
        progress.steps_lost += max(0, progress.step_at_restart - max(scrape.last_checkpoint_step, 0))
        progress.step_at_restart = None
    if scrape.step is not None and (progress.step is None or scrape.step > progress.step):
        progress.last_progress_time = format_time(observed.now)
    if scrape.step is not None:
        progress.step = scrape.step
    if scrape.last_checkpoint_step is not None and scrape.last_checkpoint_step >= 0:
        progress.last_checkpoint_step = scrape.last_checkpoint_step
    if scrape.steps_per_second is not None:
        progress.steps_per_second = round(scrape.steps_per_second, 4)
    if scrape.num_train_steps is not None:
        progress.num_train_steps = scrape.num_train_steps
    if scrape.loss is not None:
        progress.metrics = progress.metrics | {"train/loss": scrape.loss}


def _restart_or_fail(observed: Observed, status: PaxJobStatus, plan: Plan, cause: HostOutcome) -> None:
    """Gang restart within budget, else Failed. Counters move once: the status leaves Pending/Running here."""
    now, policy = observed.now, observed.spec.restart_policy
    status.last_restart = LastRestart(
        outcome=str(cause.outcome),
        reason=cause.reason,
        message=cause.message,
        host=cause.host,
        exit_code=cause.exit_code,
    )
    if cause.outcome is Outcome.PERMANENT:
        _finish(
            observed, status, plan, Phase.FAILED, cause.reason, f"{cause.message}: permanent, not restarted"
        )
        return
    if cause.outcome is Outcome.PREEMPTED:
        status.preemptions += 1
        exhausted = status.preemptions > policy.max_preemptions
        budget = f"preemption {status.preemptions}/{policy.max_preemptions}"
    else:
        status.failures += 1
        exhausted = status.failures > policy.max_failures
        budget = f"failure {status.failures}/{policy.max_failures}"
    if exhausted:
        reason = "PreemptionLimitExceeded" if cause.outcome is Outcome.PREEMPTED else "FailureLimitExceeded"
        _finish(observed, status, plan, Phase.FAILED, reason, f"{cause.message}; {budget} exceeds the budget")
        return
    progress = status.progress
    # stepsLost is settled at the new gang's first scrape (where it really resumed): during its grace
    # period the old gang may still checkpoint past what was last scraped.
    if progress.step is not None:
        progress.step_at_restart = max(progress.step_at_restart or 0, progress.step)
    status.restarts += 1
    status.restart_attempt += 1
    status.gang_created = False
    status.phase = Phase.RESTARTING
    status.restart_after = format_time(now + timedelta(seconds=policy.backoff_seconds))
    resume = progress.last_checkpoint_step
    message = (
        f"{cause.message} ({cause.reason}, {budget}); restarting the gang as attempt {status.restart_attempt}"
        + (f" from checkpoint step {resume}" if resume is not None and resume >= 0 else "")
    )
    set_condition(status, ConditionType.RUNNING, False, cause.reason, message, now)
    set_condition(status, ConditionType.RESTARTING, True, cause.reason, message, now)
    plan.events.append(Event("Warning", cause.reason, message))
    _delete_alive(observed.pods, plan, finished_too=True)
    plan.requeue(SETTLE_REQUEUE_SECONDS)


def _decide(observed: Observed, status: PaxJobStatus, plan: Plan) -> None:
    spec, now = observed.spec, observed.now
    hosts = spec.topology.hosts
    status.hosts = hosts
    status.observed_generation = observed.generation
    if status.phase is None:
        status.phase = Phase.PENDING

    if status.phase.is_terminal:  # terminal states stick: only cleanup and TTL
        _delete_alive(observed.pods, plan)
        _requeue_ttl(observed, status, plan)
        return

    started = parse_time(status.start_time)
    if spec.active_deadline_seconds is not None and started is not None and not spec.suspend:
        remaining = (started + timedelta(seconds=spec.active_deadline_seconds) - now).total_seconds()
        if remaining <= 0:
            message = f"ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}"
            _finish(observed, status, plan, Phase.FAILED, "DeadlineExceeded", message)
            return
        plan.requeue(remaining)

    if spec.suspend:
        if status.phase is not Phase.SUSPENDED:
            message = "spec.suspend is true: pods deleted, status kept"
            status.phase = Phase.SUSPENDED
            status.gang_created = False
            status.restart_after = None
            status.start_time = None
            _clear(status, (ConditionType.RUNNING, ConditionType.RESTARTING), "Suspended", message, now)
            set_condition(status, ConditionType.SUSPENDED, True, "Suspended", message, now)
            plan.events.append(Event("Normal", "Suspended", message))
        _delete_alive(observed.pods, plan, finished_too=True)
        return
    if status.phase is Phase.SUSPENDED:
        message = "spec.suspend is false: recreating the gang"
        status.phase = Phase.PENDING
        if any(c.type is ConditionType.CREATED for c in status.conditions):  # a gang existed before
            status.restart_attempt += 1
        set_condition(status, ConditionType.SUSPENDED, False, "Resumed", message, now)
        plan.events.append(Event("Normal", "Resumed", message))

    attempt = status.restart_attempt
    current = {p.host: p for p in observed.pods if p.attempt == attempt and 0 <= p.host < hosts}
    stale = [p for p in observed.pods if not (p.attempt == attempt and 0 <= p.host < hosts)]

    if status.phase is Phase.RESTARTING or not status.gang_created:
        if status.phase is Phase.RESTARTING:
            # Host 0 of the old gang may still report where it checkpointed (exit 42 after a preemption).
            old_host0 = next((p for p in stale if p.host == 0 and p.attempt == attempt - 1), None)
            _read_result(observed, status, old_host0)
            progress = status.progress
            if progress.step_at_restart is not None and progress.step is not None:
                progress.step_at_restart = max(progress.step_at_restart, progress.step)
        # Pods are named by host: the old gang must be gone before the new one exists. Pods of the current
        # attempt are kept: an operator (this one before a crash, or a concurrent one) already made them.
        if stale:
            _delete_alive(stale, plan, finished_too=True)
            _force_stuck(observed, stale, plan)
            plan.requeue(SETTLE_REQUEUE_SECONDS)
            return
        restart_after = parse_time(status.restart_after)
        if restart_after is not None and now < restart_after:
            plan.requeue((restart_after - now).total_seconds())
            return
        _create_gang(observed, status, plan, current)
        return

    if stale:
        _delete_alive(stale, plan, finished_too=True)

    outcomes = {host: classify_host(host, current.get(host)) for host in range(hosts)}
    _read_result(observed, status, current.get(0))
    stopped = [o for o in outcomes.values() if o is not None]
    cause = gang_cause(stopped)
    if cause is not None:
        _restart_or_fail(observed, status, plan, cause)
        return
    if stopped and len(stopped) == hosts:
        message = status.progress.message or f"all {hosts} hosts completed"
        _finish(observed, status, plan, Phase.SUCCEEDED, "Completed", message)
        return

    _apply_scrape(observed, status)
    all_up = all(outcomes[h] is not None or current[h].phase == "Running" for h in range(hosts))
    if all_up and status.phase is not Phase.RUNNING:
        message = f"all {hosts} hosts running (attempt {attempt})"
        status.phase = Phase.RUNNING
        status.progress.last_progress_time = format_time(now)
        _clear(status, (ConditionType.RESTARTING,), "Running", message, now)
        set_condition(status, ConditionType.RUNNING, True, "AllHostsRunning", message, now)
        plan.events.append(Event("Normal", "Running", message))

    if status.phase is Phase.RUNNING:
        last = parse_time(status.progress.last_progress_time) or now
        stalled = (now - last).total_seconds()
        running_since = next(
            (
                parse_time(c.last_transition_time)
                for c in status.conditions
                if c.type is ConditionType.RUNNING
            ),
            None,
        )
        # Before a gang's first step (start-up, compilation, restore) allow at least STARTUP_GRACE_SECONDS.
        starting = running_since is not None and last <= running_since
        timeout = (
            max(spec.hang_timeout_seconds, STARTUP_GRACE_SECONDS) if starting else spec.hang_timeout_seconds
        )
        if observed.metrics_answered and stalled >= timeout:
            hang = HostOutcome(
                0,
                Outcome.FAILED,
                "Hang",
                f"no step progress for {int(stalled)}s (hangTimeoutSeconds={spec.hang_timeout_seconds})",
            )
            _restart_or_fail(observed, status, plan, hang)
            return
        plan.requeue(min(observed.running_requeue_seconds, timeout - stalled))


def _create_gang(observed: Observed, status: PaxJobStatus, plan: Plan, existing: dict[int, PodView]) -> None:
    spec, now, job = observed.spec, observed.now, observed.job
    attempt = status.restart_attempt
    plan.service = render_service(job, spec)
    plan.create_pods = [
        pod for host, pod in enumerate(render_gang(job, spec, attempt)) if host not in existing
    ]
    message = f"created {spec.topology.hosts} pods (attempt {attempt})"
    status.gang_created = True
    status.phase = Phase.PENDING
    status.restart_after = None
    status.start_time = status.start_time or format_time(now)
    status.progress.last_progress_time = format_time(now)
    set_condition(status, ConditionType.CREATED, True, "GangCreated", message, now)
    plan.events.append(Event("Normal", "GangCreated", message))
    plan.requeue(SETTLE_REQUEUE_SECONDS)


def creation_refused(observed: Observed, message: str) -> PaxJobStatus:
    """Status after the apiserver refused the gang's pods (admission, quota): Pending, Created=False."""
    status = observed.status.model_copy(deep=True)
    status.phase = status.phase or Phase.PENDING
    status.hosts = observed.spec.topology.hosts
    if any(c.type is ConditionType.CREATED for c in status.conditions):
        set_condition(status, ConditionType.CREATED, False, "FailedCreatePod", message, observed.now)
    else:
        status.conditions.append(
            Condition(
                type=ConditionType.CREATED,
                status="False",
                reason="FailedCreatePod",
                message=message,
                last_transition_time=format_time(observed.now),
            )
        )
    return status
