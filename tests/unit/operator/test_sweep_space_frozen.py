"""experimentSearchSpace: the searched space is fixed by the trials' records, not by the (mutable) template.

A template edit that fixed a searched hyperparameter mid-sweep (template.overrides.learning_rate, or
checkpointIntervalSteps for a searched save_interval_steps) left the cached search proposing it, each
proposal silently overriding the user's value; the next rebuild (operator restart, a trial deleted, a
conflict) dropped it from the space, the records' DNA no longer fitted, and the Running sweep failed
InvalidSearchSpace for good.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi
from pax_operator.spec import PaxJobSpec
from pax_operator.sweep.algorithms import SpaceError
from pax_operator.sweep.decide import trial_view
from pax_operator.sweep.describe import overridden, recorded_names, sweep_parameters
from pax_operator.sweep.reconcile import CONDITION_OVERRIDDEN, SweepReconciler
from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus
from sweep_sim import TEMPLATE, sweep_spec

SPACE = json.dumps(
    {
        "parameters": [
            {"name": "learning_rate", "type": "float", "min": 1e-3, "max": 1e-1, "scale": "log"},
            {"name": "num_layers", "type": "discrete", "values": ["1", "2", "3"]},
            {"name": "save_interval_steps", "type": "int", "min": 10, "max": 100},
        ]
    }
)
ALGORITHMS = [
    {"name": "random", "seed": 3},
    {"name": "regularizedEvolution", "seed": 3, "populationSize": 3, "tournamentSize": 2},
]


def _spec(template: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    raw = sweep_spec(experimentSearchSpace=True, template=template or dict(TEMPLATE), **fields)
    del raw["parameters"]
    return raw


def _sweep(spec: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": "sw", "namespace": "ns", "uid": "uid-1", "resourceVersion": "1", "generation": 1}
    return {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxSweep", "metadata": metadata, "spec": spec} | {
        "status": status
    }


def _api(sweep: dict[str, Any], trials: list[dict[str, Any]]) -> FakeApi:
    api = FakeApi()
    api.answers["GET paxsweeps"] = sweep
    api.answers["LIST paxjobs"] = {"items": trials}
    api.fail["GET pods"] = 404  # the describe pod is gone: the space is in status
    return api


def _posted(api: FakeApi, call: str) -> list[Any]:
    return [body for made, body in zip(api.calls, api.bodies, strict=True) if made == call]


def _stored(body: dict[str, Any], phase: str | None = None, loss: float | None = None) -> dict[str, Any]:
    """A created trial PaxJob as the apiserver returns it; with a phase and loss, as the trainer left it."""
    job = json.loads(json.dumps(body))
    job["metadata"]["uid"] = f"trial-{job['metadata']['name']}"
    if phase is not None:
        progress = {"step": 100, "evalStep": 100, "metrics": {"eval_test/loss": loss}}
        job["status"] = {"phase": phase, "progress": progress}
    return job


def _started(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The sweep's first pass (the space described): its trials, the first one finished, and its status."""
    api = _api(_sweep(raw, {"searchSpace": SPACE, "phase": "Pending"}), [])
    SweepReconciler(api.clients()).reconcile("ns", "sw")
    bodies = _posted(api, "POST paxjobs")
    status = _posted(api, "PUT paxsweeps/status")[-1]["status"]
    assert [b["metadata"]["name"] for b in bodies] == ["sw-0", "sw-1"]
    return [_stored(bodies[0], "Succeeded", 0.5), _stored(bodies[1])], status


def _next_trial(reconciler: SweepReconciler, raw: dict[str, Any], trials: list[Any], status: Any) -> Any:
    """One pass over the sweep as `raw` says now: the trial PaxJob it creates, its status, its events."""
    api = _api(_sweep(raw, status), trials)
    reconciler.clients = api.clients()
    reconciler.reconcile("ns", "sw")
    (created,) = _posted(api, "POST paxjobs")
    (written,) = _posted(api, "PUT paxsweeps/status")
    return created, written["status"], _posted(api, "POST events")


def _searched(body: dict[str, Any]) -> dict[str, str]:
    return json.loads(body["metadata"]["annotations"]["pax.dev/sweep-trial"])["params"]


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a["name"])
@pytest.mark.parametrize(
    ("edit", "named"),
    [
        ({"overrides": {"learning_rate": "0.05"}}, "learning_rate"),
        ({"checkpointIntervalSteps": 40}, "checkpointIntervalSteps (save_interval_steps)"),
        (
            {"overrides": {"learning_rate": "0.05", "num_layers": "2"}, "checkpointIntervalSteps": 40},
            "learning_rate, num_layers, checkpointIntervalSteps (save_interval_steps)",
        ),
    ],
    ids=["override", "checkpoint-interval", "every-parameter"],
)
def test_a_template_edit_after_the_first_trial_keeps_the_space_and_says_so(
    algorithm: dict[str, Any], edit: dict[str, Any], named: str
) -> None:
    """After the edit, the running operator (its cached search) and a restarted one (a rebuild from the
    records) propose the very point the unedited sweep would: no InvalidSearchSpace, the trial runs the
    proposed values (the record says what ran), and the sweep says which template values it does not apply
    (condition TemplateOverridesIgnored, one Warning). Undoing the edit clears the condition."""
    raw = _spec(maxTrials=6, parallelTrials=2, algorithm=algorithm)
    trials, status = _started(raw)
    edited = _spec(template={**TEMPLATE, **edit}, maxTrials=6, parallelTrials=2, algorithm=algorithm)

    expected, _, _ = _next_trial(SweepReconciler(None), raw, trials, status)  # type: ignore[arg-type]
    restarted = SweepReconciler(None)  # type: ignore[arg-type]
    rebuilt, rebuilt_status, events = _next_trial(restarted, edited, trials, status)
    assert restarted.rebuilds == 1  # a rebuild, and it fits
    assert _searched(rebuilt) == _searched(expected)
    assert sorted(_searched(rebuilt)) == ["learning_rate", "num_layers", "save_interval_steps"]
    assert rebuilt_status["phase"] == "Running" and "message" not in rebuilt_status
    overrides = rebuilt["spec"]["overrides"]
    assert overrides == _searched(expected)  # the searched values, not the template's
    assert "checkpointIntervalSteps" not in rebuilt["spec"]  # a PaxJob may set only one of the two
    PaxJobSpec.model_validate(rebuilt["spec"])
    (condition,) = [c for c in rebuilt_status["conditions"] if c["type"] == CONDITION_OVERRIDDEN]
    assert condition["status"] == "True" and f"the template fixes {named}, searched" in condition["message"]
    warnings = [e for e in events if e["type"] == "Warning"]
    assert [e["reason"] for e in warnings] == [CONDITION_OVERRIDDEN]

    # the next trial, still edited: the condition stays, no second Warning
    third = [*trials, _stored(rebuilt, "Succeeded", 0.25)]
    again, again_status, events = _next_trial(restarted, edited, third, rebuilt_status)
    assert again["metadata"]["name"] == "sw-3" and restarted.rebuilds == 1  # the cached search went on
    assert [e["reason"] for e in events if e["type"] == "Warning"] == []
    # the edit undone: the same space still, the condition cleared
    fourth = [*third, _stored(again, "Succeeded", 0.125)]
    undone, undone_status, _ = _next_trial(restarted, raw, fourth, again_status)
    assert undone["metadata"]["name"] == "sw-4" and restarted.rebuilds == 1
    assert set(_searched(undone)) == set(_searched(expected))
    (condition,) = [c for c in undone_status["conditions"] if c["type"] == CONDITION_OVERRIDDEN]
    assert condition["status"] == "False"


@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=lambda a: a["name"])
def test_the_running_operator_proposes_what_a_rebuild_does_after_the_edit(algorithm: dict[str, Any]) -> None:
    """The cached search is not rebuilt by a template edit (its key is the space searched) and agrees with
    a restarted operator's rebuild, point for point."""
    raw = _spec(maxTrials=6, parallelTrials=2, algorithm=algorithm)
    api = _api(_sweep(raw, {"searchSpace": SPACE, "phase": "Pending"}), [])
    running = SweepReconciler(api.clients())
    running.reconcile("ns", "sw")
    bodies = _posted(api, "POST paxjobs")
    trials = [_stored(bodies[0], "Succeeded", 0.5), _stored(bodies[1])]
    status = _posted(api, "PUT paxsweeps/status")[-1]["status"]
    edited = _spec(
        template={**TEMPLATE, "overrides": {"learning_rate": "0.05"}},
        maxTrials=6,
        parallelTrials=2,
        algorithm=algorithm,
    )
    live, _, _ = _next_trial(running, edited, trials, status)
    assert running.rebuilds == 1  # the first pass's build only
    rebuilt, _, _ = _next_trial(SweepReconciler(None), edited, trials, status)  # type: ignore[arg-type]
    assert _searched(live) == _searched(rebuilt) and live["spec"]["overrides"] == _searched(rebuilt)


def test_the_records_fix_the_space_and_the_template_only_before_the_first_trial() -> None:
    spec = PaxSweepSpec.model_validate(_spec(template={**TEMPLATE, "overrides": {"num_layers": "2"}}))
    before = sweep_parameters(spec, SPACE)
    assert before is not None and [p.name for p in before] == ["learning_rate", "save_interval_steps"]
    recorded = frozenset({"learning_rate", "num_layers"})
    after = sweep_parameters(spec, SPACE, recorded)
    assert after is not None and [p.name for p in after] == ["learning_rate", "num_layers"]
    assert overridden(spec.template, recorded) == ["num_layers"]
    # a template fixing every parameter is refused before the first trial, not after
    every = {"learning_rate": "0.01", "num_layers": "2", "save_interval_steps": "50"}
    fixed = PaxSweepSpec.model_validate(_spec(template={**TEMPLATE, "overrides": every}))
    with pytest.raises(SpaceError, match="fixes every hyperparameter"):
        sweep_parameters(fixed, SPACE)
    assert sweep_parameters(fixed, SPACE, recorded) == after


def test_the_searched_names_are_those_most_records_hold() -> None:
    """A hand-edited record does not change the space; a tie goes to the lowest index (the first trial)."""
    good = {"learning_rate": "0.01", "num_layers": "2"}
    assert recorded_names([]) == frozenset()
    assert recorded_names([(3, good), (0, {}), (1, {"learning_rate": "0.01"}), (2, good)]) == set(good)
    assert recorded_names([(5, {"num_layers": "1"}), (4, good)]) == set(good)


def test_gp_bandit_sees_the_recorded_space_after_a_template_edit() -> None:
    """GP-bandit asked Vizier over the template's current space: after an edit every record (which holds
    the dropped name) was left out as not a point, and a template fixing every searched name failed the
    Running sweep InvalidSearchSpace."""

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> None:
            self.calls.append(args)

    every = {"learning_rate": "0.01", "num_layers": "2", "save_interval_steps": "50"}
    raw = _spec(template={**TEMPLATE, "overrides": every}, algorithm={"name": "gpBandit"})
    spec = PaxSweepSpec.model_validate(raw)
    status = PaxSweepStatus.model_validate({"searchSpace": SPACE, "phase": "Running"})
    point = {"learning_rate": "0.01", "num_layers": "3", "save_interval_steps": "20"}
    body = {
        "metadata": {
            "name": "sw-0",
            "labels": {"pax.dev/sweep-name": "sw"},
            "annotations": {"pax.dev/sweep-trial": json.dumps({"dna": "", "params": point, "after": 0})},
        }
    }
    view = trial_view(body)
    assert view is not None
    recording = Recording()
    reconciler = SweepReconciler(clients=None, suggester=recording)  # type: ignore[arg-type]
    assert reconciler._search("uid-1", spec, status, [view]) == (None, None)

    from pax_operator.sweep.decide import SweepPlan

    reconciler._bandit("uid-1", spec, status, [view], SweepPlan(new_trials=1), 1, 0)
    ((parameters, *_, running, _),) = recording.calls
    assert [p["name"] for p in parameters] == ["learning_rate", "num_layers", "save_interval_steps"]
    assert running == [point]
