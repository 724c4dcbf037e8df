"""experimentSearchSpace: parsing the describe pod's report, the describe decisions, the describe pod."""

from __future__ import annotations

import json
import math
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pax_contract as contract
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from pax_operator.core import render
from pax_operator.core.decide import format_time
from pax_operator.spec import PaxJobSpec
from pax_operator.sweep.algorithms import SpaceError
from pax_operator.sweep.decide import ObservedSweep, SweepRef, decide_sweep, set_condition
from pax_operator.sweep.describe import (
    DESCRIBE_DEADLINE_SECONDS,
    DESCRIBE_POLL_SECONDS,
    DESCRIBE_TOTAL_SECONDS,
    describe_view,
    parse_search_space,
    render_describe_pod,
    sweep_parameters,
)
from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus, SweepPhase
from sweep_sim import NOW, TEMPLATE, Sim, sweep_spec

REPORT = json.dumps(
    {
        "parameters": [
            {"name": "learning_rate", "type": "float", "min": 1e-3, "max": 1e-1, "scale": "log"},
            {"name": "num_layers", "type": "discrete", "values": ["1", "2", "3"]},
        ]
    }
)


def _raw(**fields: Any) -> dict[str, Any]:
    raw = sweep_spec(experimentSearchSpace=True, **fields)
    del raw["parameters"]
    return raw


def _pod(phase: str | None, message: str = "", age: float = 5.0, code: int | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {}
    if phase in ("Succeeded", "Failed"):
        state = {"terminated": {"exitCode": 0 if code is None else code, "message": message}}
    return {
        "metadata": {"name": "sw-describe", "creationTimestamp": format_time(NOW - timedelta(seconds=age))},
        "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]},
    }


def _decide(spec: PaxSweepSpec, status: PaxSweepStatus, pod: dict[str, Any] | None) -> Any:
    describe = None if pod is None else describe_view(pod)
    return decide_sweep(
        ObservedSweep(SweepRef("sw", "ns", "uid-1"), spec, status, [], NOW, describe=describe)
    )


def test_the_report_parses_into_sweep_parameters() -> None:
    parameters = parse_search_space(REPORT)
    assert [(p.name, p.type, p.scale) for p in parameters] == [
        ("learning_rate", "float", "log"),
        ("num_layers", "discrete", "linear"),
    ]
    assert parameters[0].min == 1e-3 and parameters[1].values == ["1", "2", "3"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "does not parse"),
        ('{"parameters": {}}', "does not parse"),
        ('{"params": []}', "does not parse"),
        ('{"parameters": []}', "has 0 parameters"),
        ('{"parameters": [{"name": "a", "type": "complex"}]}', "does not parse"),
        ('{"parameters": [{"name": "a.b", "type": "discrete", "values": ["1"]}]}', "not a hyperparameter"),
        ('{"parameters": [{"name": "a", "type": "discrete", "values": []}]}', "non-empty and distinct"),
        ('{"parameters": [{"name": "a", "type": "float", "min": 2, "max": 1}]}', "must be below max"),
        ('{"parameters": [{"name": "a", "type": "float", "min": 0, "max": 1, "scale": "log"}]}', "positive"),
        ('{"parameters": [{"name": "a", "type": "int", "min": 1}]}', "finite min and max"),
        (
            '{"parameters": [{"name": "a", "type": "int", "min": 1, "max": 3},'
            ' {"name": "a", "type": "int", "min": 1, "max": 3}]}',
            "twice",
        ),
        (json.dumps({"parameters": [{"name": "a", "type": "discrete", "values": ["x" * 5000]}]}), "longer"),
    ],
)
def test_bad_reports_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(SpaceError, match=message):
        parse_search_space(text)


def test_unknown_space_creates_the_describe_pod_and_proposes_nothing() -> None:
    spec = PaxSweepSpec.model_validate(_raw())
    plan = _decide(spec, PaxSweepStatus(), None)
    assert plan.create_describe and not plan.delete_describe and plan.new_trials == 0
    assert plan.status is not None and plan.status.phase is SweepPhase.PENDING
    assert any(c.type == "Describing" and c.status == "True" for c in plan.status.conditions)
    assert plan.requeue_after == DESCRIBE_POLL_SECONDS
    # while it runs: wait (polling), never a second pod
    plan = _decide(spec, plan.status, _pod("Running"))
    assert not plan.create_describe and not plan.delete_describe and plan.new_trials == 0
    assert plan.requeue_after is not None and plan.requeue_after <= DESCRIBE_POLL_SECONDS


def test_described_space_is_kept_then_trials_get_its_values_as_overrides() -> None:
    raw = _raw(maxTrials=4, parallelTrials=2)
    spec = PaxSweepSpec.model_validate(raw)
    describing = _decide(spec, PaxSweepStatus(), None).status
    assert describing is not None
    plan = _decide(spec, describing, _pod("Succeeded", REPORT))
    assert plan.delete_describe and plan.new_trials == 0
    assert plan.status is not None and plan.status.search_space is not None
    assert [p.name for p in parse_search_space(plan.status.search_space)] == ["learning_rate", "num_layers"]
    (condition,) = [c for c in plan.status.conditions if c.type == "Describing"]
    assert (condition.status, condition.reason) == ("False", "SearchSpaceDescribed")
    # known: no describing again (a pod left from before a restart is deleted), trials are proposed
    known = plan.status
    again = _decide(spec, known, _pod("Succeeded", REPORT))
    assert again.delete_describe and not again.create_describe and again.new_trials == 2

    sim = Sim(raw)
    sim.status = known
    sim.run(lambda name, params: ("Succeeded", abs(math.log10(float(params["learning_rate"])) + 2)))
    assert sim.status.phase is SweepPhase.SUCCEEDED and sim.status.trials.succeeded == 4
    for job in sim.jobs.values():
        overrides = job["spec"]["overrides"]
        assert 1e-3 <= float(overrides["learning_rate"]) <= 1e-1
        assert overrides["num_layers"] in ("1", "2", "3")
    assert sim.status.best_trial is not None and "learning_rate" in sim.status.best_trial.parameters


def test_template_overrides_keep_their_hyperparameters_fixed() -> None:
    template = {**TEMPLATE, "overrides": {"num_layers": "2"}}
    spec = PaxSweepSpec.model_validate(_raw(template=template))
    known = sweep_parameters(spec, json.dumps(json.loads(REPORT)))
    assert known is not None and [p.name for p in known] == ["learning_rate"]
    assert sweep_parameters(spec, None) is None
    all_fixed = {**TEMPLATE, "overrides": {"num_layers": "2", "learning_rate": "0.1"}}
    with pytest.raises(SpaceError, match="fixes every hyperparameter"):
        sweep_parameters(PaxSweepSpec.model_validate(_raw(template=all_fixed)), REPORT)


def test_failed_describe_pod_fails_the_sweep_with_the_trainers_message() -> None:
    spec = PaxSweepSpec.model_validate(_raw())
    result = contract.TrainerResult(
        exit_reason=contract.ExitReason.CONFIG_ERROR,
        message="experiment ReverseDigits declares no search space",
    )
    plan = _decide(spec, PaxSweepStatus(), _pod("Failed", result.to_json(), code=2))
    assert plan.delete_describe
    assert plan.status is not None and plan.status.phase is SweepPhase.FAILED
    assert plan.status.message == (
        "the describe pod sw-describe failed: experiment ReverseDigits declares no search space"
    )
    assert any(c.type == "Failed" and c.reason == "DescribeFailed" for c in plan.status.conditions)
    # a report that does not parse fails it too
    plan = _decide(spec, PaxSweepStatus(), _pod("Succeeded", "garbage"))
    assert plan.status is not None and plan.status.phase is SweepPhase.FAILED
    assert "does not parse" in (plan.status.message or "")


def test_describe_deadline_fails_the_sweep() -> None:
    spec = PaxSweepSpec.model_validate(_raw())
    plan = _decide(spec, PaxSweepStatus(), _pod("Pending", age=DESCRIBE_DEADLINE_SECONDS + 1))
    assert plan.delete_describe
    assert plan.status is not None and plan.status.phase is SweepPhase.FAILED
    assert any(c.reason == "DescribeDeadlineExceeded" for c in plan.status.conditions)


def test_describe_pod_is_a_restricted_trainer_pod_owned_by_the_sweep() -> None:
    template = PaxJobSpec.model_validate(
        {**TEMPLATE, "topology": {"gpu": {"hosts": 2, "gpusPerHost": 8}}, "tensorboard": {"enabled": True}}
    )
    pod = render_describe_pod("sw", "ns", "uid-1", template)
    trainer_pod = render.render_pod(render.JobRef("j", "ns", "u"), template, 0, 0)
    assert pod["metadata"]["name"] == "sw-describe" and pod["metadata"]["namespace"] == "ns"
    assert pod["metadata"]["labels"] == {"pax.dev/sweep-name": "sw", "pax.dev/sweep-describe": "true"}
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("PaxSweep", "uid-1", True)
    assert pod["spec"]["securityContext"] == trainer_pod["spec"]["securityContext"]
    assert pod["spec"]["restartPolicy"] == "Never" and "initContainers" not in pod["spec"]
    (container,) = pod["spec"]["containers"]
    assert container["securityContext"] == trainer_pod["spec"]["containers"][0]["securityContext"]
    assert container["image"] == "pax:dev" and "ports" not in container
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])
    assert container["terminationMessagePath"] == contract.DEFAULT_RESULT_FILE
    invocation = contract.TrainerInvocation.from_argv(container["command"][len(contract.ENTRYPOINT) :])
    assert invocation.describe_search_space and invocation.exp == "reverse_digits"


def _describing_since(seconds: float) -> PaxSweepStatus:
    """A sweep whose condition Describing turned True `seconds` ago (its first describe pod's creation)."""
    status = PaxSweepStatus(phase=SweepPhase.PENDING)
    set_condition(status, "Describing", True, "DescribePodCreated", "", NOW - timedelta(seconds=seconds))
    return status


@pytest.mark.parametrize(
    ("pod", "state"),
    [
        ({**_pod("Running", age=DESCRIBE_DEADLINE_SECONDS + 60), "deletionTimestamp": "x"}, "terminating"),
        (_pod("Pending", age=30.0), "Pending"),  # deleted (evicted) and created again, again and again
        (None, "absent"),
    ],
)
def test_describing_is_bounded_in_all_when_the_pod_never_ends(pod: dict[str, Any] | None, state: str) -> None:
    """The 600 s deadline counted from the describe pod's creation only: a pod stuck terminating (deleted
    while its node is gone: it keeps its deletionTimestamp for ever) was waited for every 2 s for ever, and a
    pod deleted and created again restarted the clock each time; the sweep stayed Describing, polling, with
    no verdict. Describing now ends DescribeDeadlineExceeded DESCRIBE_TOTAL_SECONDS after it began."""
    if pod is not None and "deletionTimestamp" in pod:
        pod["metadata"]["deletionTimestamp"] = pod.pop("deletionTimestamp")
    spec = PaxSweepSpec.model_validate(_raw())
    before = _decide(spec, _describing_since(DESCRIBE_TOTAL_SECONDS - 10), pod)
    assert before.status is None  # still describing: nothing changes, it looks again
    assert before.requeue_after is not None and before.requeue_after <= DESCRIBE_POLL_SECONDS
    plan = _decide(spec, _describing_since(DESCRIBE_TOTAL_SECONDS + 1), pod)
    assert plan.status is not None and plan.status.phase is SweepPhase.FAILED
    assert any(c.reason == "DescribeDeadlineExceeded" for c in plan.status.conditions)
    assert f"now {state}" in (plan.status.message or "") and not plan.create_describe


def test_a_report_that_came_is_read_even_past_the_total_bound() -> None:
    spec = PaxSweepSpec.model_validate(_raw())
    plan = _decide(spec, _describing_since(DESCRIBE_TOTAL_SECONDS + 1), _pod("Succeeded", REPORT, age=30.0))
    assert plan.status is not None and plan.status.search_space and plan.status.phase is not SweepPhase.FAILED


def test_a_suspended_sweep_starts_no_describe_pod_and_one_that_runs_goes_on() -> None:
    """spec.suspend promises no new trials, running ones continue: a sweep created suspended still started
    its describe pod (a trainer pod on the cluster). It now starts none until resumed, and the describing
    deadline counts from the resume; a describe pod already running finishes and its report is kept."""
    suspended = PaxSweepSpec.model_validate(_raw(suspend=True))
    plan = _decide(suspended, PaxSweepStatus(), None)
    assert not plan.create_describe and plan.new_trials == 0
    assert plan.status is not None and plan.status.phase is SweepPhase.SUSPENDED
    assert not any(c.type == "Describing" and c.status == "True" for c in plan.status.conditions)
    resumed = PaxSweepSpec.model_validate(_raw())
    plan = _decide(resumed, plan.status, None)
    assert plan.create_describe and plan.status.phase is SweepPhase.PENDING
    assert [e.reason for e in plan.events] == ["Resumed"]
    running = _decide(suspended, plan.status, _pod("Running"))
    assert not running.create_describe and not running.delete_describe
    assert running.status.phase is SweepPhase.SUSPENDED
    report = json.dumps({"parameters": [{"name": "num_layers", "type": "int", "min": 1, "max": 2}]})
    done = _decide(suspended, running.status, _pod("Succeeded", report))
    assert done.status.search_space and done.delete_describe and done.new_trials == 0
