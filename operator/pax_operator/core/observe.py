"""What the operator sees: owned pods boiled down to what the decision needs, and their classification."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pax_contract as contract
from pax_contract import Outcome, TrainerResult

from pax_operator.core.render import (
    ANNOTATION_POD_SPEC_HASH,
    LABEL_HOST_INDEX,
    LABEL_JOB_NAME,
    LABEL_RESTART_ATTEMPT,
    TRAINER_CONTAINER,
)

# Pod-level evidence that the host was taken away rather than the program failing.
PREEMPTION_POD_REASONS = frozenset(
    {"Evicted", "NodeLost", "Preempting", "Shutdown", "NodeShutdown", "Terminated"}
)


@dataclass(frozen=True)
class PodView:
    """One owned pod, as far as the decision is concerned."""

    name: str
    uid: str
    host: int
    attempt: int
    phase: str  # Pending, Running, Succeeded, Failed, Unknown
    deleting: bool
    pod_ip: str | None = None
    node_name: str | None = None
    deletion_deadline: str | None = None  # metadata.deletionTimestamp: when graceful deletion should be over
    status_reason: str | None = None
    disruption_reason: str | None = None  # reason of a True DisruptionTarget condition
    trainer_running: bool = False
    exit_code: int | None = None  # the trainer container's, once terminated
    terminated_reason: str | None = None  # the kubelet's reason for it (OOMKilled, Error, Completed)
    termination_message: str | None = None
    controller_uid: str | None = None  # UID of the controller owner reference (this PaxJob's, for ours)
    job_name: str | None = None  # the pax.dev/job-name label
    waiting_reason: str | None = None  # the trainer container's (or an init container's) waiting reason
    waiting_message: str | None = None
    unschedulable: str | None = None  # the scheduler's message while PodScheduled is False (Unschedulable)
    finished_at: str | None = None  # when the trainer container terminated (the kubelet's finishedAt)
    # The node lifecycle controller marked the pod not ready (Ready False while ContainersReady stays True:
    # only it writes that, when the pod's node stopped reporting); the kubelet's own status is then stale.
    node_unreachable: bool = False
    spec_hash: str | None = None  # the pax.dev/pod-spec-hash annotation (None on pods of older operators)

    @property
    def terminated(self) -> bool:
        return self.exit_code is not None or self.phase in ("Succeeded", "Failed")

    @property
    def blocked(self) -> str | None:
        """Why this pod cannot start by itself ("Reason: message"), or None."""
        if self.terminated or self.deleting or self.trainer_running:
            return None
        if self.waiting_reason in BLOCKED_WAITING_REASONS:
            return f"{self.waiting_reason}: {self.waiting_message or 'container cannot start'}"
        if self.unschedulable is not None:
            return f"Unschedulable: {self.unschedulable}"
        return None

    @property
    def alive(self) -> bool:
        """Neither finished nor already being deleted: deleting it is up to us."""
        return not self.deleting and not self.terminated


# Container waiting reasons that no amount of waiting fixes by itself (the kubelet retries, but the image
# name, the pull secret or the referenced ConfigMap/Secret has to change first).
BLOCKED_WAITING_REASONS = frozenset(
    {
        "InvalidImageName",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def _int_label(labels: dict[str, str], key: str) -> int:
    try:
        return int(labels.get(key, "-1"))
    except ValueError:
        return -1


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """An object's controller owner reference ({} when it has none)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), {})


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The UID of an object's controller owner reference, if any."""
    return controller_ref(obj).get("uid")


def pod_view(pod: dict[str, Any]) -> PodView:
    """Parse an API pod (camelCase dict) into a PodView."""
    metadata = pod.get("metadata") or {}
    labels = metadata.get("labels") or {}
    status = pod.get("status") or {}
    disruption = next(
        (
            cond
            for cond in status.get("conditions") or []
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True"
        ),
        None,
    )
    trainer_status = next(
        (cs for cs in status.get("containerStatuses") or [] if cs.get("name") == TRAINER_CONTAINER), {}
    )
    state = trainer_status.get("state") or {}
    terminated = state.get("terminated")
    waiting = next(
        (
            (cs.get("state") or {}).get("waiting") or {}
            for cs in [*(status.get("initContainerStatuses") or []), trainer_status]
            if ((cs.get("state") or {}).get("waiting") or {}).get("reason") in BLOCKED_WAITING_REASONS
        ),
        state.get("waiting") or {},
    )
    conditions = {cond.get("type"): cond for cond in status.get("conditions") or []}
    scheduled = conditions.get("PodScheduled") or {}
    return PodView(
        name=metadata.get("name", ""),
        uid=metadata.get("uid", ""),
        host=_int_label(labels, LABEL_HOST_INDEX),
        attempt=_int_label(labels, LABEL_RESTART_ATTEMPT),
        phase=status.get("phase") or "Pending",
        deleting=metadata.get("deletionTimestamp") is not None,
        node_name=(pod.get("spec") or {}).get("nodeName"),
        deletion_deadline=metadata.get("deletionTimestamp"),
        pod_ip=status.get("podIP"),
        status_reason=status.get("reason"),
        disruption_reason=(disruption.get("reason") or "DisruptionTarget") if disruption else None,
        trainer_running="running" in state,
        exit_code=None if terminated is None else int(terminated.get("exitCode", 1)),
        termination_message=None if terminated is None else terminated.get("message"),
        terminated_reason=None if terminated is None else terminated.get("reason"),
        controller_uid=controller_uid(pod),
        job_name=labels.get(LABEL_JOB_NAME),
        waiting_reason=waiting.get("reason"),
        waiting_message=waiting.get("message"),
        unschedulable=(scheduled.get("message") or "unschedulable")
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
        else None,
        finished_at=None if terminated is None else terminated.get("finishedAt"),
        node_unreachable=(conditions.get("Ready") or {}).get("status") == "False"
        and (conditions.get("ContainersReady") or {}).get("status") == "True",
        spec_hash=(metadata.get("annotations") or {}).get(ANNOTATION_POD_SPEC_HASH),
    )


@dataclass(frozen=True)
class HostOutcome:
    """Why a host of the current gang stopped."""

    host: int
    outcome: Outcome
    reason: str
    message: str
    exit_code: int | None = None


def classify_host(host: int, pod: PodView | None) -> HostOutcome | None:
    """Outcome of one host of the current gang, or None while it is still pending or running."""
    if pod is None:
        return HostOutcome(host, Outcome.PREEMPTED, "PodDeleted", f"pod of host {host} disappeared")
    if pod.disruption_reason is not None:
        return HostOutcome(
            host,
            Outcome.PREEMPTED,
            pod.disruption_reason,
            f"pod {pod.name}: DisruptionTarget ({pod.disruption_reason})",
        )
    if pod.exit_code is not None and pod.terminated_reason == "OOMKilled":  # 137 too, but no preemption:
        return HostOutcome(  # the same step runs out of memory again, so it spends the failure budget
            host,
            Outcome.FAILED,
            "OOMKilled",
            f"pod {pod.name}: trainer killed for exceeding its memory limit (raise "
            "podTemplate.resources.limits.memory, or lower the batch size)",
            pod.exit_code,
        )
    if pod.exit_code is not None:
        outcome = contract.classify_exit_code(pod.exit_code)
        reason = contract.event_reason(pod.exit_code)  # from the contract's one exit-code table
        message = f"pod {pod.name}: trainer exited {pod.exit_code}" + trainer_says(pod)
        return HostOutcome(host, outcome, reason, message, pod.exit_code)
    if pod.deleting:
        return HostOutcome(host, Outcome.PREEMPTED, "PodDeleted", f"pod {pod.name} deleted by someone else")
    if pod.phase == "Failed" and pod.status_reason in PREEMPTION_POD_REASONS:
        return HostOutcome(host, Outcome.PREEMPTED, pod.status_reason, f"pod {pod.name}: {pod.status_reason}")
    if pod.phase == "Failed":
        reason = pod.status_reason or "PodFailed"
        return HostOutcome(host, Outcome.FAILED, reason, f"pod {pod.name} failed ({reason})")
    if pod.phase == "Succeeded":
        return HostOutcome(host, Outcome.SUCCEEDED, "Completed", f"pod {pod.name} succeeded")
    return None


def node_lost(host: int, pod: PodView | None) -> HostOutcome | None:
    """A host that still reads as running but whose node stopped reporting: taken away, not failed."""
    if pod is None or pod.terminated or pod.deleting or not pod.node_unreachable:
        return None
    message = f"pod {pod.name}: its node {pod.node_name or '?'} stopped reporting (marked not ready)"
    return HostOutcome(host, Outcome.PREEMPTED, "NodeLost", message)


# When hosts stop for different reasons, the root cause wins: a config error is final; a preemption makes
# peers crash (lost collectives), so it outranks failures.
OUTCOME_PRIORITY = (Outcome.PERMANENT, Outcome.PREEMPTED, Outcome.FAILED)


def gang_cause(outcomes: list[HostOutcome]) -> HostOutcome | None:
    """The outcome that decides the gang's fate, or None if no host stopped abnormally."""
    for wanted in OUTCOME_PRIORITY:
        for outcome in sorted(outcomes, key=lambda o: o.host):
            if outcome.outcome is wanted:
                return outcome
    return None


# The trainer's words in a status message, condition and Event: one line, this long at most (a result's
# message may fill the 4 KiB termination message; a log tail is up to 80 lines).
TRAINER_MESSAGE_MAX_CHARS = 512


def trainer_says(pod: PodView) -> str:
    """What the ended trainer said, as a message suffix: its result's message (": ..."), else the last line
    of the log tail the kubelet put in the termination message ("; last log line: ..."): a host that wrote
    no result (only host 0 does, but for config errors), or a crash below Python. "" when it said nothing."""
    text = pod.termination_message or ""
    result = trainer_result(pod)
    if result is not None:
        said, prefix = result.message, ": "
    else:
        lines = [line for line in text.splitlines() if line.strip()]
        said, prefix = (lines[-1] if lines else ""), "; last log line: "
    said = " ".join(said.split())
    if len(said) > TRAINER_MESSAGE_MAX_CHARS:
        said = said[: TRAINER_MESSAGE_MAX_CHARS - 3] + "..."
    return prefix + said if said else ""


def trainer_result(pod: PodView | None) -> TrainerResult | None:
    """The result host 0 wrote as its termination message, if it is one."""
    if pod is None or not pod.termination_message:
        return None
    try:
        return TrainerResult.from_json(pod.termination_message)
    except ValueError:
        return None
