"""Host classification against the contract's exit codes and pod-level evidence."""

from __future__ import annotations

import pytest
from pax_contract import Outcome, TrainerResult
from pax_operator.core.observe import (
    TRAINER_MESSAGE_MAX_CHARS,
    HostOutcome,
    classify_host,
    gang_cause,
    pod_view,
    trainer_result,
)
from paxjob_factory import make_pod


def test_pod_view_parses_labels_and_trainer_state() -> None:
    view = pod_view(make_pod(1, 4, phase="Failed", exit_code=3, message="x"))
    assert (view.name, view.host, view.attempt, view.exit_code, view.termination_message) == (
        "lm-1",
        1,
        4,
        3,
        "x",
    )
    assert view.terminated and not view.alive and not view.trainer_running


@pytest.mark.parametrize(
    ("pod", "outcome", "reason"),
    [
        (make_pod(0, phase="Succeeded", exit_code=0), Outcome.SUCCEEDED, "Completed"),
        (make_pod(0, phase="Failed", exit_code=1), Outcome.FAILED, "Crashed"),
        (make_pod(0, phase="Failed", exit_code=2), Outcome.PERMANENT, "ConfigError"),
        (make_pod(0, phase="Failed", exit_code=3), Outcome.FAILED, "StorageError"),
        (make_pod(0, phase="Failed", exit_code=42), Outcome.PREEMPTED, "Preempted"),
        (make_pod(0, phase="Failed", exit_code=137), Outcome.PREEMPTED, "Killed"),
        (make_pod(0, phase="Failed", exit_code=143), Outcome.PREEMPTED, "Terminated"),
        (make_pod(0, phase="Failed", exit_code=139), Outcome.FAILED, "Error"),
        (make_pod(0, disruption="PreemptionByScheduler"), Outcome.PREEMPTED, "PreemptionByScheduler"),
        (make_pod(0, deleting=True), Outcome.PREEMPTED, "PodDeleted"),
        (make_pod(0, phase="Failed", reason="Evicted"), Outcome.PREEMPTED, "Evicted"),
        (make_pod(0, phase="Failed", reason="NodeLost"), Outcome.PREEMPTED, "NodeLost"),
        (make_pod(0, phase="Failed"), Outcome.FAILED, "PodFailed"),
        (None, Outcome.PREEMPTED, "PodDeleted"),
    ],
)
def test_classify_host(pod: dict | None, outcome: Outcome, reason: str) -> None:
    result = classify_host(0, None if pod is None else pod_view(pod))
    assert result is not None and (result.outcome, result.reason) == (outcome, reason)


@pytest.mark.parametrize("pod", [make_pod(0), make_pod(0, phase="Pending")])
def test_alive_hosts_have_no_outcome(pod: dict) -> None:
    assert classify_host(0, pod_view(pod)) is None


def test_gang_cause_priority() -> None:
    crash = HostOutcome(1, Outcome.FAILED, "Crashed", "")
    preempt = HostOutcome(2, Outcome.PREEMPTED, "Killed", "")
    config = HostOutcome(3, Outcome.PERMANENT, "ConfigError", "")
    done = HostOutcome(0, Outcome.SUCCEEDED, "Completed", "")
    assert gang_cause([done, crash, preempt]) is preempt  # the peer crashed because its host went away
    assert gang_cause([crash, preempt, config]) is config
    assert gang_cause([done]) is None


def test_trainer_result_from_termination_message() -> None:
    text = TrainerResult(exit_reason="preempted", final_step=120, last_checkpoint_step=100).to_json()
    result = trainer_result(pod_view(make_pod(0, phase="Failed", exit_code=42, message=text)))
    assert result is not None and result.last_checkpoint_step == 100
    assert trainer_result(pod_view(make_pod(0, phase="Failed", exit_code=1, message="Traceback ..."))) is None


@pytest.mark.parametrize(
    ("ready", "containers_ready", "unreachable"),
    [
        ("False", "True", True),  # only the node controller writes this: the kubelet stopped reporting
        ("False", "False", False),  # the kubelet's own: a container (the TensorBoard sidecar) not ready
        ("True", "True", False),
        (None, None, False),
    ],
)
def test_a_pod_marked_not_ready_by_the_node_controller_reads_as_on_a_lost_node(
    ready: str | None, containers_ready: str | None, unreachable: bool
) -> None:
    pod = make_pod(0)
    pod["status"]["conditions"] = [
        {"type": kind, "status": value}
        for kind, value in (("Ready", ready), ("ContainersReady", containers_ready))
        if value is not None
    ]
    assert pod_view(pod).node_unreachable is unreachable


def test_a_host_that_wrote_no_result_is_explained_by_the_last_line_of_its_log_tail() -> None:
    # Only host 0 writes a result (but for config errors): a peer's crash leaves the kubelet's
    # FallbackToLogsOnError tail in the termination message; its last line is the exception.
    tail = 'Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad shard 3\n\n'
    result = classify_host(1, pod_view(make_pod(1, phase="Failed", exit_code=1, message=tail)))
    assert result is not None
    assert result.message == "pod lm-1: trainer exited 1; last log line: ValueError: bad shard 3"


def test_the_trainer_message_in_a_host_outcome_is_one_bounded_line() -> None:
    said = "XlaRuntimeError: " + "out of memory\n" * 1000
    text = TrainerResult(exit_reason="crashed", message=said).to_json()
    result = classify_host(0, pod_view(make_pod(0, phase="Failed", exit_code=1, message=text)))
    assert result is not None and "\n" not in result.message
    assert result.message.startswith("pod lm-0: trainer exited 1: XlaRuntimeError: out of memory out of")
    assert len(result.message) <= len("pod lm-0: trainer exited 1: ") + TRAINER_MESSAGE_MAX_CHARS
    assert result.message.endswith("...")
    silent = classify_host(0, pod_view(make_pod(0, phase="Failed", exit_code=1, message=" \n")))
    assert silent is not None and silent.message == "pod lm-0: trainer exited 1"
