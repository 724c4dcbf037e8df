"""The PaxSweep decision: observed sweep + trial PaxJobs → a plan. Pure: no I/O, no clock, no algorithm.

The algorithm (stateful, PyGlove) sits outside: the plan says which finished trials to feed back (in index
order) and how many new trials to propose; `render_trial` turns a proposal into a child PaxJob.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from pax_contract import OVERRIDE_SAVE_INTERVAL

from pax_operator.core.decide import format_time, parse_time
from pax_operator.core.plan import Event, upsert_condition
from pax_operator.core.render import JobRef
from pax_operator.spec import API_VERSION, KIND, PaxJobSpec, Progress
from pax_operator.sweep.algorithms import Proposal, SpaceError, encode_record, is_dna
from pax_operator.sweep.describe import (
    DESCRIBE_DEADLINE_SECONDS,
    DESCRIBE_POLL_SECONDS,
    DESCRIBE_TOTAL_SECONDS,
    DescribePod,
    describe_pod_name,
    encode_search_space,
    failure_message,
    parse_search_space,
)
from pax_operator.sweep.spec import (
    ANNOTATION_MEASUREMENTS,
    ANNOTATION_RESULT,
    ANNOTATION_STOP,
    ANNOTATION_TRIAL,
    LABEL_SWEEP_NAME,
    LABEL_TRIAL_INDEX,
    SWEEP_KIND,
    Aggregation,
    BestTrial,
    EarlyStoppingRule,
    Objective,
    PaxSweepSpec,
    PaxSweepStatus,
    SweepCondition,
    SweepPhase,
    TrialCounts,
)

RUNNING_REQUEUE_SECONDS = 30.0  # trial changes arrive as watch events; this is only a safety net
MAX_MESSAGE = 1024
MAX_MEASUREMENTS = 100  # recent measurements kept per trial (meanOfLastN needs at most 100)
MAX_TRIALS = 10000  # the CRD's maximum of spec.maxTrials: no trial index reaches it
# trials created in one pass (parallelTrials may be 1000: a pass creating them all held a sweep worker for
# tens of seconds); the rest in the next pass, queued behind the sweeps waiting for a worker
MAX_NEW_TRIALS_PER_PASS = 50


class TrialState:
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    EARLY_STOPPED = "EarlyStopped"
    ALL = (SUCCEEDED, FAILED, EARLY_STOPPED)


@dataclass(frozen=True)
class SweepRef:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class TrialResult:
    """The record written once on a finished trial (annotation ANNOTATION_RESULT)."""

    state: str
    objective: float | None  # None: infeasible (failed, metric missing, NaN without valueForNaN)
    seq: int | None = None  # feedback order; None until the reconciler assigns it
    message: str = ""
    credited: bool = True  # fed back to the algorithm (not: the trial ran other values than proposed)

    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "state": self.state,
            "objective": self.objective,
            "seq": self.seq,
            "message": self.message,
        }
        if not self.credited:
            doc["credited"] = False
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> TrialResult | None:
        """The recorded result; None when absent or not one the sweep writes (hand-edited: an unknown state,
        a non-finite objective or none for a success, a negative seq), so it is read again from the PaxJob."""
        if not text:
            return None
        try:
            doc = json.loads(text)
            objective = doc.get("objective")
            result = cls(
                state=str(doc["state"]),
                objective=None if objective is None else float(objective),
                seq=None if doc.get("seq") is None else int(doc["seq"]),
                message=str(doc.get("message") or ""),
                credited=doc.get("credited", True),
            )
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            return None
        if (
            result.state not in TrialState.ALL
            or not isinstance(result.credited, bool)
            or (result.objective is not None and not math.isfinite(result.objective))
            or (result.state == TrialState.SUCCEEDED and result.objective is None)
            or (result.seq is not None and result.seq < 0)
        ):
            return None
        return result


@dataclass(frozen=True)
class Measurements:
    """A trial's objective metric over steps: recent values, plus the first value at/after each rule step."""

    recent: tuple[tuple[int, float], ...] = ()
    at: tuple[tuple[int, float], ...] = ()  # (rule step, value measured at the first step >= it)

    def value_at(self, step: int) -> float | None:
        return next((value for rule_step, value in self.at if rule_step == step), None)

    def to_json(self) -> str:
        doc = {"recent": [list(m) for m in self.recent], "at": [list(m) for m in self.at]}
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> Measurements:
        if not text:
            return cls()
        try:
            doc = json.loads(text)
            return cls(
                recent=tuple((int(s), float(v)) for s, v in doc.get("recent", [])),
                at=tuple((int(s), float(v)) for s, v in doc.get("at", [])),
            )
        except (ValueError, TypeError, AttributeError):
            return cls()


@dataclass(frozen=True)
class TrialView:
    """One trial PaxJob, as far as the sweep is concerned."""

    name: str
    uid: str
    index: int
    dna: str = ""
    params: dict[str, str] = field(default_factory=dict)
    after: int = 0
    result: TrialResult | None = None
    phase: str | None = None  # the PaxJob's status.phase
    permanent: bool = False  # failed with a permanent outcome (config error)
    message: str = ""
    step: int | None = None
    eval_step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    measurements: Measurements = field(default_factory=Measurements)
    stop_reason: str | None = None
    deleting: bool = False
    edited: str | None = None  # how the PaxJob's overrides differ from the recorded point (a user's edit)
    suspended: bool = False  # the PaxJob's spec.suspend (the sweep's own stop, or a user's)

    @property
    def finished(self) -> bool:
        return self.result is not None


def _trial_record(text: str | None) -> dict[str, Any]:
    """The trial's creation record (ANNOTATION_TRIAL); a malformed field (hand-edited) reads as absent, a
    DNA too when it is not PyGlove's compact form (a GP-bandit trial's has none: its values are its point)."""
    try:
        doc = json.loads(text or "{}")
    except ValueError:
        doc = {}
    doc = doc if isinstance(doc, dict) else {}
    dna, params, after = doc.get("dna"), doc.get("params"), doc.get("after")
    return {
        "dna": dna if isinstance(dna, str) and is_dna(dna) else "",
        "params": {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {},
        "after": after if isinstance(after, int) and not isinstance(after, bool) and after >= 0 else 0,
    }


def trial_index(name: str, sweep: str) -> int | None:
    """The index in a trial's name `<sweep>-<index>` (set at creation, never edited: the trial-index label
    can be), or None when the name is not one the sweep gives (an index beyond any maxTrials included)."""
    digits = name.removeprefix(f"{sweep}-")
    if not sweep or digits == name or not digits.isascii() or not digits.isdigit() or len(digits) > 5:
        return None
    index = int(digits)
    return index if str(index) == digits and index < MAX_TRIALS else None


def trial_view(job: dict[str, Any]) -> TrialView | None:
    """Parse a trial PaxJob (camelCase dict); None when its name is not `<sweep>-<index>`."""
    metadata = job.get("metadata") or {}
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    index = trial_index(str(metadata.get("name") or ""), str(labels.get(LABEL_SWEEP_NAME) or ""))
    if index is None:
        return None
    record = _trial_record(annotations.get(ANNOTATION_TRIAL))
    status = job.get("status") or {}
    progress = status.get("progress") or {}
    failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed"), None)
    last_restart = status.get("lastRestart") or {}
    metrics = {}
    named = progress.get(Progress.NON_FINITE_KEY) or {}  # "NaN", "Infinity", "-Infinity": float() reads them
    for key, value in ((progress.get("metrics") or {}) | named).items():
        try:
            metrics[str(key)] = float(value)
        except (TypeError, ValueError):
            continue
    return TrialView(
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        index=index,
        dna=record["dna"],
        params=record["params"],
        after=record["after"],
        result=TrialResult.from_json(annotations.get(ANNOTATION_RESULT)),
        phase=status.get("phase"),
        permanent=last_restart.get("outcome") == "Permanent",
        message=str((failed or {}).get("message") or progress.get("message") or ""),
        step=progress.get("step"),
        eval_step=progress.get("evalStep"),
        metrics=metrics,
        measurements=Measurements.from_json(annotations.get(ANNOTATION_MEASUREMENTS)),
        stop_reason=annotations.get(ANNOTATION_STOP),
        deleting=metadata.get("deletionTimestamp") is not None,
        edited=_edited_overrides(record["params"], (job.get("spec") or {}).get("overrides")),
        suspended=(job.get("spec") or {}).get("suspend") is True,
    )


def _edited_overrides(params: dict[str, str], overrides: Any) -> str | None:
    """Which searched values the trial PaxJob no longer runs with (overrides may be edited while it is
    suspended), or None when it runs the recorded point."""
    overrides = overrides if isinstance(overrides, dict) else {}
    changed = [
        f"{name}={overrides.get(name)!r} (proposed {value!r})"
        for name, value in sorted(params.items())
        if overrides.get(name) != value
    ]
    return ", ".join(changed)[:MAX_MESSAGE] if changed else None


@dataclass(frozen=True)
class ObservedSweep:
    sweep: SweepRef
    spec: PaxSweepSpec
    status: PaxSweepStatus
    trials: list[TrialView]
    now: datetime
    generation: int | None = None
    exhausted: bool = False  # the algorithm has no more points (finite space fully proposed)
    space_error: str | None = None  # the space or algorithm cannot be used
    describe: DescribePod | None = None  # the pod describing the experiment's search space, if any


@dataclass
class SweepPlan:
    """What to change, in apply order: the describe pod, measurements, results (fed back in this order),
    stops, new trials, status, events, sweep deletion."""

    measurements: list[tuple[str, Measurements]] = field(default_factory=list)
    results: list[tuple[str, TrialResult]] = field(default_factory=list)
    stops: list[tuple[str, str]] = field(default_factory=list)  # (trial name, reason)
    new_trials: int = 0
    status: PaxSweepStatus | None = None
    events: list[Event] = field(default_factory=list)
    delete_sweep: bool = False
    create_describe: bool = False  # create the describe pod (experimentSearchSpace, space not yet known)
    delete_describe: bool = False  # delete the describe pod (done with it)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)


# the endings that more trials can change: the budget ran out (not the space, the goal, or a failure that
# would repeat); the Completed/NoTrialSucceeded message of an exhausted space starts with EXHAUSTED
EXTENSIBLE_ENDINGS = frozenset({"Completed", "NoTrialSucceeded"})
EXHAUSTED = "search space exhausted"
CONDITION_TRIALS_SUSPENDED = "TrialsSuspended"


def set_condition(
    status: PaxSweepStatus, kind: str, value: bool, reason: str, message: str, now: datetime
) -> None:
    """Upsert a PaxSweep condition (see `upsert_condition`)."""
    upsert_condition(status.conditions, SweepCondition, kind, value, reason, message, now)


# --- objective values ---------------------------------------------------------------------------------


def current_measurement(trial: TrialView, metric: str) -> tuple[int, float] | None:
    """The objective metric's latest value and its step, from the trial PaxJob's status.progress.

    Once the PaxJob succeeded, its metrics and step are the trainer's final result: that step counts (an
    evalStep left from the last scrape may be stale)."""
    if metric not in trial.metrics:
        return None
    scraped = trial.phase != "Succeeded" and metric.startswith(("eval", "decode"))
    step = trial.eval_step if scraped and trial.eval_step is not None else None
    step = step if step is not None else trial.step
    return None if step is None else (int(step), trial.metrics[metric])


def updated_measurements(
    trial: TrialView, objective: Objective, rules: list[EarlyStoppingRule]
) -> Measurements | None:
    """The trial's measurements with the current one added; None when nothing is new.

    A step at or below the last one means the timeline went back (a gang restarted from an older
    checkpoint, or the trainer's final result after a stale scrape): later measurements are dropped, so
    the trainer's own final values always end the series."""
    current = current_measurement(trial, objective.metric)
    if current is None:
        return None
    step, value = current
    old = trial.measurements
    if old.recent and _same_measurement(old.recent[-1], (step, value)):
        return None
    kept = tuple(m for m in old.recent if m[0] < step)
    recent = (*kept, (step, value))[-MAX_MEASUREMENTS:]
    at = dict(old.at)
    for rule in rules:
        if step >= rule.step and rule.step not in at:
            at[rule.step] = value
    return Measurements(recent=recent, at=tuple(sorted(at.items())))


def _same_measurement(a: tuple[int, float], b: tuple[int, float]) -> bool:
    """Equal, also when both values are NaN (with NaN != NaN, every pass would rewrite a diverged trial)."""
    return a[0] == b[0] and (a[1] == b[1] or (math.isnan(a[1]) and math.isnan(b[1])))


def aggregate(measurements: Measurements, objective: Objective) -> float | None:
    """A trial's objective from its measurements (last, best, mean of the last N)."""
    values = [value for _, value in measurements.recent]
    if not values:
        return None
    if objective.aggregation is Aggregation.LAST:
        return values[-1]
    if objective.aggregation is Aggregation.BEST:
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return values[-1]  # NaN (valueForNaN applies) or ±inf
        return min(finite) if objective.goal == "minimize" else max(finite)
    window = values[-(objective.last_n or 3) :]
    return sum(window) / len(window)


def _feasible(value: float | None, objective: Objective) -> float | None:
    """The objective a trial is ranked by; None (infeasible) when it has none, NaN without valueForNaN, or
    ±inf (a diverged run: not a value the status can hold, as JSON has no inf)."""
    if value is None:
        return None
    if math.isnan(value):
        return objective.value_for_na_n
    return value if math.isfinite(value) else None


def _final_result(trial: TrialView, measurements: Measurements, spec: PaxSweepSpec) -> TrialResult | None:
    """The result of a trial whose PaxJob finished, or None while it runs. A trial whose searched overrides
    were edited ran another point than the one proposed: a failed trial (counted), not fed back to the
    algorithm (its objective, or its failure, would be credited to the proposed values)."""
    result = _finished_result(trial, measurements, spec)
    if result is None or trial.edited is None:
        return result
    message = f"its overrides were edited, the result is not the proposed point's: {trial.edited}"
    return TrialResult(TrialState.FAILED, None, message=message[:MAX_MESSAGE], credited=False)


def _finished_result(trial: TrialView, measurements: Measurements, spec: PaxSweepSpec) -> TrialResult | None:
    objective = spec.objective
    # only the stop itself ends a trial Suspended: one that succeeded or failed before its suspension took
    # effect is judged by how it ended (a crash counts toward maxFailedTrials, a finished run may be best)
    if trial.stop_reason is not None and trial.phase == "Suspended":
        value = _feasible(aggregate(measurements, objective), objective)
        return TrialResult(TrialState.EARLY_STOPPED, value, message=trial.stop_reason[:MAX_MESSAGE])
    if trial.phase == "Succeeded":
        value = _feasible(aggregate(measurements, objective), objective)
        if value is None:
            reported = ", ".join(sorted(trial.metrics)) or "none"
            message = f"the trial reported no finite {objective.metric} (metrics: {reported})"
            return TrialResult(TrialState.FAILED, None, message=message[:MAX_MESSAGE])
        return TrialResult(TrialState.SUCCEEDED, value)
    if trial.phase == "Failed":
        return TrialResult(TrialState.FAILED, None, message=trial.message[:MAX_MESSAGE])
    return None


def _never_reported(trial: TrialView, metric: str) -> bool:
    """The trial succeeded and never showed `metric`, not even as NaN: most likely a misspelled objective
    (every other trial would train in full and fail the same way)."""
    return (
        trial.phase == "Succeeded"
        and trial.stop_reason is None
        and metric not in trial.metrics
        and not trial.measurements.recent
    )


# --- early stopping -----------------------------------------------------------------------------------


def _quantile(sorted_values: list[float], fraction: float) -> float:
    """The `fraction` quantile, linearly interpolated. ±inf (a diverged trial) ranks as the extreme it is: a
    position on it is it, and between it and a neighbour is the limit of the interpolation (inf - a would make
    a NaN cutoff that stops nothing); between -inf and +inf, the later (worse) one."""
    position = fraction * (len(sorted_values) - 1)
    low = math.floor(position)
    weight = position - low
    a = sorted_values[low]
    if weight == 0:
        return a
    b = sorted_values[min(low + 1, len(sorted_values) - 1)]
    if math.isinf(b):
        return b
    if math.isinf(a):
        return a
    return a + (b - a) * weight


def stop_reason(
    trial: TrialView, measurements: Measurements, observed: ObservedSweep, reached: Collection[int]
) -> str | None:
    """Why a running trial should stop now, or None.

    A rule judges a trial once, on the pass that records its value at the rule's step (`reached`), against
    the other trials' values known then, as PyGlove's early_stop_by_rank decides once per gate: a trial
    that passed a step is never stopped later by others reaching it after. The measurement is written in
    the stop's own PATCH, so a restart neither judges it again nor loses the stop."""
    early = observed.spec.early_stopping
    if early is None:
        return None
    objective = observed.spec.objective
    for rule in early.rules:
        value = measurements.value_at(rule.step)
        if value is None or rule.step not in reached:
            continue
        if math.isnan(value):
            return f"{objective.metric} is NaN at step {rule.step}"
        if rule.threshold is not None and objective.better(rule.threshold, value):
            return f"{objective.metric}={value:.6g} at step {rule.step} is worse than {rule.threshold:g}"
        if rule.percentile is not None:
            others = [
                v
                for t in observed.trials
                if t.name != trial.name and (v := t.measurements.value_at(rule.step)) is not None
            ]
            others = [v for v in others if not math.isnan(v)]
            if len(others) < rule.min_trials:
                continue
            best_first = sorted(others, reverse=objective.goal == "maximize")
            cutoff = _quantile(best_first, rule.percentile / 100.0)
            if objective.better(cutoff, value):
                return (
                    f"{objective.metric}={value:.6g} at step {rule.step} is worse than the "
                    f"{rule.percentile:g}th percentile {cutoff:.6g} of {len(others)} other trials"
                )
    return None


# --- the decision -------------------------------------------------------------------------------------


def decide_sweep(observed: ObservedSweep) -> SweepPlan:
    status = observed.status.model_copy(deep=True)
    plan = SweepPlan()
    _decide(observed, status, plan)
    if status != observed.status:
        plan.status = status
    return plan


def _finish(
    observed: ObservedSweep,
    status: PaxSweepStatus,
    plan: SweepPlan,
    phase: SweepPhase,
    reason: str,
    message: str,
) -> None:
    now = observed.now
    status.phase = phase
    status.completion_time = format_time(now)
    status.message = message[:MAX_MESSAGE]
    set_condition(status, "Running", False, reason, status.message, now)
    set_condition(status, "Suspended", False, reason, status.message, now)
    set_condition(status, phase.value, True, reason, status.message, now)
    plan.events.append(
        Event("Normal" if phase is SweepPhase.SUCCEEDED else "Warning", reason, status.message)
    )


def _requeue_ttl(observed: ObservedSweep, status: PaxSweepStatus, plan: SweepPlan) -> None:
    ttl = observed.spec.ttl_seconds_after_finished
    finished = parse_time(status.completion_time)
    if ttl is None or finished is None:
        return
    remaining = (finished + timedelta(seconds=ttl) - observed.now).total_seconds()
    if remaining <= 0:
        plan.delete_sweep = True
        plan.events.append(Event("Normal", "TTLExpired", f"deleting the finished sweep after {ttl}s"))
    else:
        plan.requeue(remaining)


def _stop_running(observed: ObservedSweep, plan: SweepPlan, reason: str) -> None:
    for trial in observed.trials:
        if not trial.finished and trial.stop_reason is None and trial.phase not in ("Succeeded", "Failed"):
            plan.stops.append((trial.name, reason))


def _stopped(trial: TrialView) -> bool:
    """The trial's PaxJob no longer runs: it ended, or the sweep's stop took effect."""
    return trial.phase in ("Succeeded", "Failed") or (
        trial.stop_reason is not None and trial.phase == "Suspended"
    )


def _describe(observed: ObservedSweep, status: PaxSweepStatus, plan: SweepPlan) -> None:
    """experimentSearchSpace before the space is known: run the describe pod, bounded by a deadline, and
    keep what it reports in status.searchSpace (a restarted operator does not describe again)."""
    pod, now = observed.describe, observed.now
    name = describe_pod_name(observed.sweep.name)

    def fail(reason: str, message: str) -> None:
        plan.delete_describe = True
        _finish(observed, status, plan, SweepPhase.FAILED, reason, message)
        set_condition(status, "Describing", False, reason, status.message or "", now)

    since = next(
        (c.last_transition_time for c in status.conditions if c.type == "Describing" and c.status == "True"),
        None,
    )
    started = parse_time(since)
    if started is not None and (now - started).total_seconds() > DESCRIBE_TOTAL_SECONDS:
        state = "absent" if pod is None else "terminating" if pod.deleting else (pod.phase or "unknown")
        message = (
            f"the search space was not described within {DESCRIBE_TOTAL_SECONDS:g}s in all (the describe pod"
            f" {name} was deleted and created again, or does not go away; now {state})"
        )
        if pod is None or pod.deleting or pod.phase not in ("Succeeded", "Failed"):  # else read its verdict
            fail("DescribeDeadlineExceeded", message)
            return
    _suspension(status, plan, observed.spec.suspend, now)  # a describe pod that runs goes on
    if pod is None or pod.deleting:  # a deleting one (a former run's) goes first
        if observed.spec.suspend:  # no pod is started while suspended; the deadline restarts on resume
            if any(c.type == "Describing" and c.status == "True" for c in status.conditions):
                message = "spec.suspend: the describe pod is created once the sweep is resumed"
                set_condition(status, "Describing", False, "Suspended", message, now)
            return
        plan.create_describe = pod is None
        if not any(c.type == "Describing" and c.status == "True" for c in status.conditions):
            message = f"pod {name} reads the experiment's search space"
            set_condition(status, "Describing", True, "DescribePodCreated", message, now)
        plan.requeue(DESCRIBE_POLL_SECONDS)
        return
    if pod.phase == "Succeeded":
        plan.delete_describe = True
        try:
            parameters = parse_search_space(pod.message)
        except SpaceError as err:
            fail("InvalidSearchSpace", str(err))
            return
        status.search_space = encode_search_space(parameters)
        message = f"{len(parameters)} parameters: {', '.join(p.name for p in parameters)}"
        set_condition(status, "Describing", False, "SearchSpaceDescribed", message[:MAX_MESSAGE], now)
        plan.events.append(Event("Normal", "SearchSpaceDescribed", message))
        plan.requeue(0.0)
        return
    if pod.phase == "Failed":
        fail("DescribeFailed", f"the describe pod {name} failed: {failure_message(pod)}")
        return
    waited = 0.0 if pod.created is None else (now - pod.created).total_seconds()
    if waited > DESCRIBE_DEADLINE_SECONDS:
        message = f"the describe pod {name} did not finish within {DESCRIBE_DEADLINE_SECONDS:g}s"
        fail("DescribeDeadlineExceeded", f"{message} (phase {pod.phase or 'unknown'})")
        return
    plan.requeue(min(DESCRIBE_POLL_SECONDS, DESCRIBE_DEADLINE_SECONDS - waited + 0.1))


def _decide(observed: ObservedSweep, status: PaxSweepStatus, plan: SweepPlan) -> None:
    spec, now = observed.spec, observed.now
    status.observed_generation = observed.generation
    if status.phase is None:
        status.phase = SweepPhase.PENDING
        status.start_time = format_time(now)
        set_condition(status, "Created", True, "Created", "sweep accepted", now)
    describing = observed.describe is not None and not observed.describe.deleting
    if status.phase.is_terminal and _max_trials_raised(observed, status):
        _run_again(observed, status, plan)
    elif status.phase.is_terminal:
        _stop_running(observed, plan, f"the sweep is {status.phase.value}")
        # no result is recorded once the sweep ended: a trial is running until its PaxJob stops
        status.trials.running = sum(1 for t in observed.trials if not t.finished and not _stopped(t))
        _trials_suspended(observed, status, {t for t, _ in plan.stops})
        plan.delete_describe = describing
        _requeue_ttl(observed, status, plan)
        return
    if observed.space_error is not None:
        _finish(observed, status, plan, SweepPhase.FAILED, "InvalidSearchSpace", observed.space_error)
        plan.delete_describe = describing
        return
    if spec.experiment_search_space and not status.search_space:
        _describe(observed, status, plan)
        return
    plan.delete_describe = describing  # left from before a restart: the space is in status already

    rules = spec.early_stopping.rules if spec.early_stopping else []
    current: list[TrialView] = []  # trials with this pass's measurements (rank rules compare them all)
    reached: dict[str, set[int]] = {}  # rule steps whose value this pass records, by trial
    for trial in sorted(observed.trials, key=lambda t: t.index):
        updated = None if trial.finished else updated_measurements(trial, spec.objective, rules)
        if updated is not None:
            plan.measurements.append((trial.name, updated))
            reached[trial.name] = {step for step, _ in updated.at} - {
                step for step, _ in trial.measurements.at
            }
            trial = replace(trial, measurements=updated)
        current.append(trial)
    now_view = replace(observed, trials=current)
    results: dict[str, TrialResult] = {}
    for trial in current:
        if trial.finished:
            continue
        result = _final_result(trial, trial.measurements, spec)
        if result is not None:
            results[trial.name] = result
            plan.results.append((trial.name, result))
            continue
        if trial.stop_reason is None:
            reason = stop_reason(trial, trial.measurements, now_view, reached.get(trial.name, set()))
            if reason is not None:
                plan.stops.append((trial.name, reason))
    if plan.stops:
        plan.events.append(_stopped_event(plan.stops))
    _trials_suspended(observed, status, set(results) | {t for t, _ in plan.stops})

    counts = TrialCounts(created=issued_trials(observed.trials, observed.status))
    best = status.best_trial
    first_config_error: TrialView | None = None
    metric_missing: TrialView | None = None
    for trial in observed.trials:
        result = trial.result or results.get(trial.name)
        if result is None:
            counts.running += 1
            continue
        if result.state == TrialState.SUCCEEDED:
            counts.succeeded += 1
            assert result.objective is not None
            if (
                best is None
                or spec.objective.better(result.objective, best.objective)
                or (result.objective == best.objective and trial.index < best.index)
            ):
                params = dict(trial.params) if trial.params else {"dna": trial.dna[:MAX_MESSAGE]}
                best = BestTrial(
                    name=trial.name, index=trial.index, parameters=params, objective=result.objective
                )
        elif result.state == TrialState.EARLY_STOPPED:
            counts.early_stopped += 1
        else:
            counts.failed += 1
            if trial.index == 0 and trial.permanent:
                first_config_error = trial
            if metric_missing is None and _never_reported(trial, spec.objective.metric):
                metric_missing = trial
    # a deleted trial (kubectl delete, a TTL) takes its result annotation along: what was counted stays
    recorded = observed.status.trials
    fresh = [r.state for r in results.values()]
    counts.succeeded = max(counts.succeeded, recorded.succeeded + fresh.count(TrialState.SUCCEEDED))
    counts.failed = max(counts.failed, recorded.failed + fresh.count(TrialState.FAILED))
    stopped = recorded.early_stopped + fresh.count(TrialState.EARLY_STOPPED)
    counts.early_stopped = max(counts.early_stopped, stopped)
    if best != status.best_trial and best is not None:
        plan.events.append(
            Event("Normal", "NewBestTrial", f"{best.name}: {spec.objective.metric}={best.objective:.6g}")
        )
    status.best_trial = best

    if first_config_error is not None and counts.succeeded == 0:
        status.trials = counts
        message = f"the first trial failed with a configuration error: {first_config_error.message}"
        _finish(observed, status, plan, SweepPhase.FAILED, "TrialConfigError", message)
        _stop_running(observed, plan, "the sweep failed")
        return
    if metric_missing is not None and counts.succeeded == 0:
        status.trials = counts
        reported = ", ".join(sorted(metric_missing.metrics)[:20]) or "none"
        message = (
            f"{metric_missing.name} succeeded without ever reporting {spec.objective.metric} (it reported:"
            f" {reported}): check spec.objective.metric"
        )
        _finish(observed, status, plan, SweepPhase.FAILED, "ObjectiveMetricMissing", message)
        _stop_running(observed, plan, "the sweep failed")
        return
    # before the failures: a goal reached in the pass that also saw one failure too many is reached
    goal = spec.objective.goal_value
    if goal is not None and best is not None and not spec.objective.better(goal, best.objective):
        status.trials = counts
        message = f"{best.name} reached the goal {spec.objective.metric}={best.objective:.6g} (goal {goal:g})"
        _finish(observed, status, plan, SweepPhase.SUCCEEDED, "GoalReached", message)
        _stop_running(observed, plan, "the sweep reached its goal")
        return
    if counts.failed > spec.max_failed_trials:
        status.trials = counts
        message = f"{counts.failed} trials failed, more than maxFailedTrials={spec.max_failed_trials}"
        _finish(observed, status, plan, SweepPhase.FAILED, "MaxFailedTrialsExceeded", message)
        _stop_running(observed, plan, "the sweep failed")
        return

    running = counts.running
    no_more = counts.created >= spec.max_trials or observed.exhausted
    if no_more and running == 0:
        status.trials = counts
        if counts.succeeded == 0:
            message = f"no trial succeeded ({counts.failed} failed, {counts.early_stopped} stopped early)"
            if counts.created < spec.max_trials:
                message = f"{EXHAUSTED}; {message}"
            _finish(observed, status, plan, SweepPhase.FAILED, "NoTrialSucceeded", message)
        else:
            assert best is not None
            ended = EXHAUSTED if counts.created < spec.max_trials else "all trials finished"
            message = f"{ended}; best {best.name}: {spec.objective.metric}={best.objective:.6g}"
            _finish(observed, status, plan, SweepPhase.SUCCEEDED, "Completed", message)
        return

    _suspension(status, plan, spec.suspend, now)
    if not spec.suspend:
        if not no_more:
            wanted = max(0, min(spec.parallel_trials - running, spec.max_trials - counts.created))
            plan.new_trials = min(wanted, MAX_NEW_TRIALS_PER_PASS)
            if wanted > plan.new_trials:
                plan.requeue(0.0)  # at once, but behind every key already waiting for a worker
        counts.created += plan.new_trials
        counts.running += plan.new_trials
        if counts.running > 0 and status.phase is not SweepPhase.RUNNING:
            status.phase = SweepPhase.RUNNING
            set_condition(status, "Running", True, "TrialsRunning", "trials are running", now)
    status.trials = counts
    plan.requeue(RUNNING_REQUEUE_SECONDS)


def _max_trials_raised(observed: ObservedSweep, status: PaxSweepStatus) -> bool:
    """The sweep ended because its trial budget was used up, and spec.maxTrials now allows more trials
    (Katib's resumePolicy LongRunning). Any other ending stays: the goal is met, the failure would repeat,
    or nothing is left to search."""
    assert status.phase is not None
    ending = next((c for c in status.conditions if c.type == status.phase.value and c.status == "True"), None)
    return (
        ending is not None
        and ending.reason in EXTENSIBLE_ENDINGS
        and not (status.message or "").startswith(EXHAUSTED)
        and not observed.exhausted
        and observed.spec.max_trials > issued_trials(observed.trials, observed.status)
    )


def _run_again(observed: ObservedSweep, status: PaxSweepStatus, plan: SweepPlan) -> None:
    """Reopen a sweep whose maxTrials was raised: the normal path then creates the further trials."""
    now, ended = observed.now, status.phase
    assert ended is not None
    created = issued_trials(observed.trials, observed.status)
    message = f"maxTrials raised: from {created} to {observed.spec.max_trials} trials"
    status.phase = SweepPhase.RUNNING
    status.completion_time = None
    status.message = message
    set_condition(status, ended.value, False, "MaxTrialsRaised", message, now)
    set_condition(status, "Running", True, "MaxTrialsRaised", message, now)
    plan.events.append(Event("Normal", "MaxTrialsRaised", message))


def _trials_suspended(observed: ObservedSweep, status: PaxSweepStatus, done: Collection[str]) -> None:
    """Condition TrialsSuspended while a running trial's PaxJob is suspended by someone other than the sweep
    (it holds a parallel slot, and the sweep cannot end, until resumed); `done`: trials ending this pass."""
    held = [
        t.name
        for t in sorted(observed.trials, key=lambda t: t.index)
        if t.suspended
        and t.stop_reason is None
        and not t.finished
        and not t.deleting
        and t.name not in done
        and t.phase not in ("Succeeded", "Failed")
    ]
    if held:
        named = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
        message = f"suspended by a user, holding a parallel slot until resumed: {named}"
        set_condition(status, CONDITION_TRIALS_SUSPENDED, True, "UserSuspended", message, observed.now)
    else:
        message = "no trial is suspended by a user"
        set_condition(status, CONDITION_TRIALS_SUSPENDED, False, "NoneSuspended", message, observed.now)


def _suspension(status: PaxSweepStatus, plan: SweepPlan, suspend: bool, now: datetime) -> None:
    """spec.suspend's phase, condition and Event on each change (no new trials nor describe pod; running
    ones continue); resumed, the phase is Pending until trials run again."""
    if suspend and status.phase is not SweepPhase.SUSPENDED:
        status.phase = SweepPhase.SUSPENDED
        set_condition(status, "Suspended", True, "Suspended", "spec.suspend: no new trials", now)
        plan.events.append(Event("Normal", "Suspended", "spec.suspend is true: no new trials"))
    elif not suspend and status.phase is SweepPhase.SUSPENDED:
        status.phase = SweepPhase.PENDING
        set_condition(status, "Suspended", False, "Resumed", "spec.suspend is false", now)
        plan.events.append(Event("Normal", "Resumed", "spec.suspend is false: trials continue"))


def _stopped_event(stops: list[tuple[str, str]]) -> Event:
    """One TrialEarlyStopped Event per pass, however many trials it stops (a rank rule may stop hundreds
    at once; each trial's own reason is in its pax.dev/sweep-stop annotation and its result)."""
    listed = "; ".join(f"{name}: {reason}" for name, reason in stops)
    message = listed if len(stops) == 1 else f"{len(stops)} trials: {listed}"
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 4] + " ..."
    return Event("Normal", "TrialEarlyStopped", message)


def issued_trials(trials: list[TrialView], status: PaxSweepStatus) -> int:
    """Trial indices used so far: the next trial's index, and the count against maxTrials. A high-water mark
    (status.trials.created): a deleted trial PaxJob still counts, and its index is never used again."""
    return max(max((t.index for t in trials), default=-1) + 1, len(trials), status.trials.created)


def next_feedback_seq(trials: list[TrialView], status: PaxSweepStatus) -> int:
    """The next result's `seq`: above every recorded one, even when finished trials were deleted."""
    recorded = [t.result.seq for t in trials if t.result is not None and t.result.seq is not None]
    counted = status.trials.succeeded + status.trials.failed + status.trials.early_stopped
    return max(max(recorded, default=-1) + 1, sum(1 for t in trials if t.result is not None), counted)


def trial_refused(
    observed: ObservedSweep, status: PaxSweepStatus, message: str, reason: str = "TrialRefused"
) -> PaxSweepStatus:
    """The sweep fails when the apiserver refuses a trial PaxJob (its template and values do not admit), or
    no trial can be proposed: every retry would fail the same way."""
    refused = status.model_copy(deep=True)
    refused.trials.created = issued_trials(observed.trials, observed.status)
    refused.trials.running = sum(1 for t in observed.trials if not t.finished)
    plan = SweepPlan()
    _finish(observed, refused, plan, SweepPhase.FAILED, reason, message)
    return refused


# --- rendering ----------------------------------------------------------------------------------------


def trial_name(sweep: str, index: int) -> str:
    return f"{sweep}-{index}"


def render_trial(
    sweep: SweepRef, spec: PaxSweepSpec, template: dict[str, Any], index: int, proposal: Proposal, after: int
) -> dict[str, Any]:
    """The child PaxJob of trial `index`: the template, the proposal as overrides (or DNA), its own dir."""
    name = trial_name(sweep.name, index)
    trial_spec = json.loads(json.dumps(template))
    trial_spec["jobLogDir"] = f"{spec.template.job_log_dir.rstrip('/')}/{name}"
    if proposal.params:  # a searched value wins over the template's (the record says what the trial ran)
        trial_spec["overrides"] = {**(trial_spec.get("overrides") or {}), **proposal.params}
        if OVERRIDE_SAVE_INTERVAL in proposal.params:  # a PaxJob sets at most one of the two
            trial_spec.pop("checkpointIntervalSteps", None)
    # the trial PaxJob holds the sweep's record of it: it must not delete itself (the sweep's own TTL
    # deletes the trials), and a suspended trial would never finish (admission refuses both; an object
    # admitted before that rule still gets running trials)
    trial_spec.pop("ttlSecondsAfterFinished", None)
    trial_spec.pop("suspend", None)
    PaxJobSpec.model_validate(trial_spec)  # the template passed admission; a bad proposal must not
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": sweep.namespace,
            "labels": {LABEL_SWEEP_NAME: sweep.name, LABEL_TRIAL_INDEX: str(index)},
            "annotations": {ANNOTATION_TRIAL: encode_record(proposal, after)},
            "ownerReferences": [JobRef(sweep.name, sweep.namespace, sweep.uid, SWEEP_KIND).owner_reference()],
        },
        "spec": trial_spec,
    }
