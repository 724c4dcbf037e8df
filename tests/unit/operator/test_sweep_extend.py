"""Raising maxTrials on a finished sweep (Katib's resumePolicy LongRunning), and TrialsSuspended."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from pax_operator.sweep.spec import PaxSweepSpec, SweepCondition
from sweep_sim import Sim, sweep_spec

GRID = [{"name": "layers", "type": "int", "min": 1, "max": 12}]
SPECS: dict[str, dict[str, Any]] = {
    "random": {"algorithm": {"name": "random", "seed": 7}, "parallelTrials": 2},
    "grid": {"algorithm": {"name": "grid"}, "parameters": GRID, "parallelTrials": 2},
}


def _succeed(name: str, params: dict[str, str]) -> tuple[str, float | None]:
    return "Succeeded", 1.0 + int(name.rsplit("-", 1)[1]) / 10


def _fail(name: str, params: dict[str, str]) -> tuple[str, float | None]:
    return "Failed", None


def _raise_to(sim: Sim, max_trials: int) -> None:
    """The admin's `kubectl patch psw --type merge -p '{"spec":{"maxTrials":N}}'`."""
    sim.raw = {**sim.raw, "maxTrials": max_trials}
    sim.spec = PaxSweepSpec.model_validate(sim.raw)


def _condition(sim: Sim, kind: str) -> SweepCondition | None:
    return next((c for c in sim.status.conditions if c.type == kind), None)


@pytest.mark.parametrize("restart", [False, True], ids=["warm", "restart"])
@pytest.mark.parametrize("algorithm", sorted(SPECS))
def test_raised_max_trials_gives_the_same_trials_as_from_the_start(algorithm: str, restart: bool) -> None:
    straight = Sim(sweep_spec(maxTrials=7, **SPECS[algorithm]))
    straight.run(_succeed)
    raised = Sim(sweep_spec(maxTrials=4, **SPECS[algorithm]))
    raised.run(_succeed)
    assert raised.status.phase == "Succeeded" and raised.status.trials.created == 4
    _raise_to(raised, 7)
    if restart:  # the operator restarts right after the raise: the algorithm is rebuilt from the records
        raised.restart()
    raised.run(_succeed)
    assert raised.status.phase == "Succeeded" and raised.status.trials.created == 7
    assert sorted(raised.jobs) == sorted(straight.jobs) == [f"sw-{i}" for i in range(7)]
    assert {n: raised.params(n) for n in raised.jobs} == {n: straight.params(n) for n in straight.jobs}
    assert raised.status.best_trial == straight.status.best_trial


def test_raise_reopens_the_sweep_with_conditions_and_event() -> None:
    sim = Sim(sweep_spec(maxTrials=2, ttlSecondsAfterFinished=0))
    sim.run(_succeed)
    assert sim.status.completion_time is not None
    _raise_to(sim, 3)
    plan = sim.step()
    assert not plan.delete_sweep  # the raise comes before the TTL
    assert sim.status.phase == "Running" and sim.status.completion_time is None
    succeeded, running = _condition(sim, "Succeeded"), _condition(sim, "Running")
    assert succeeded is not None and (succeeded.status, succeeded.reason) == ("False", "MaxTrialsRaised")
    assert running is not None and (running.status, running.reason) == ("True", "MaxTrialsRaised")
    assert [(e.type, e.reason, e.message) for e in plan.events] == [
        ("Normal", "MaxTrialsRaised", "maxTrials raised: from 2 to 3 trials")
    ]
    assert plan.new_trials == 1 and sorted(sim.jobs) == ["sw-0", "sw-1", "sw-2"]
    sim.run(_succeed)
    assert sim.status.phase == "Succeeded" and sim.status.trials.created == 3
    assert _condition(sim, "Succeeded").status == "True"  # type: ignore[union-attr]


def test_no_trial_succeeded_runs_again_when_raised() -> None:
    sim = Sim(sweep_spec(maxTrials=2, maxFailedTrials=10))
    sim.run(_fail)
    assert sim.status.phase == "Failed" and sim.status.conditions[-1].reason == "NoTrialSucceeded"
    _raise_to(sim, 4)
    sim.step()
    assert sim.status.phase == "Running" and _condition(sim, "Failed").reason == "MaxTrialsRaised"  # type: ignore[union-attr]
    sim.run(_succeed)
    assert sim.status.phase == "Succeeded" and sim.status.trials.created == 4
    assert _condition(sim, "Failed").status == "False"  # type: ignore[union-attr]


def _ended(sim: Sim) -> tuple[str | None, str | None]:
    phase = sim.status.phase
    ending = next(c for c in sim.status.conditions if c.type == phase and c.status == "True")  # type: ignore[comparison-overlap]
    return phase, ending.reason


@pytest.mark.parametrize(
    ("fields", "outcome", "reason"),
    [
        ({"objective": {"metric": "eval_test/loss", "goalValue": 5.0}}, _succeed, "GoalReached"),
        ({"maxFailedTrials": 1}, _fail, "MaxFailedTrialsExceeded"),
        (
            {**SPECS["grid"], "parameters": [{"name": "k", "type": "int", "min": 1, "max": 3}]},
            _succeed,
            "Completed",
        ),
        (
            {**SPECS["grid"], "parameters": [{"name": "k", "type": "int", "min": 1, "max": 4}]},
            _succeed,
            "Completed",
        ),
        (
            {
                **SPECS["grid"],
                "parameters": [{"name": "k", "type": "int", "min": 1, "max": 3}],
                "maxFailedTrials": 9,
            },
            _fail,
            "NoTrialSucceeded",
        ),
    ],
    ids=["goal", "failures", "grid-exhausted", "grid-exactly-used", "grid-exhausted-all-failed"],
)
@pytest.mark.parametrize("restart", [False, True], ids=["warm", "restart"])
def test_other_endings_stay_terminal(
    fields: dict[str, Any], outcome: Any, reason: str, restart: bool
) -> None:
    sim = Sim(sweep_spec(**{"maxTrials": 4, **fields}))
    sim.run(outcome)
    ended, created = _ended(sim), sim.status.trials.created
    assert ended[1] == reason
    _raise_to(sim, 8)
    if restart:
        sim.restart()
    plan = sim.step()
    assert plan.new_trials == 0 and not plan.events and _ended(sim) == ended
    assert sim.status.trials.created == created and len(sim.jobs) == created


def test_raise_not_above_created_stays_terminal() -> None:
    sim = Sim(sweep_spec(maxTrials=4))
    sim.run(_succeed)
    _raise_to(sim, 4)
    plan = sim.step()
    assert sim.status.phase == "Succeeded" and plan.new_trials == 0 and not plan.events


def test_lowering_max_trials_on_a_running_sweep_still_ends_it() -> None:
    sim = Sim(sweep_spec(maxTrials=6, parallelTrials=3))
    sim.step()
    assert len(sim.jobs) == 3
    _raise_to(sim, 3)  # lowered to 3: no trial beyond the three created
    sim.run(_succeed)
    assert sim.status.phase == "Succeeded" and sim.status.trials.created == 3 and len(sim.jobs) == 3


def test_user_suspended_trials_are_named_in_a_condition() -> None:
    sim = Sim(sweep_spec(maxTrials=8, parallelTrials=5))
    sim.step()
    assert _condition(sim, "TrialsSuspended") is None  # none ever: not added
    for name in ("sw-0", "sw-1", "sw-2", "sw-3"):
        sim.jobs[name]["spec"]["suspend"] = True
        sim.set_status(name, "Suspended")
    sim.jobs["sw-3"]["metadata"]["annotations"]["pax.dev/sweep-stop"] = "early stop"  # the sweep's own
    plan = sim.step()
    held = _condition(sim, "TrialsSuspended")
    assert held is not None and (held.status, held.reason) == ("True", "UserSuspended")
    assert held.message.endswith(": sw-0, sw-1, sw-2")
    assert plan.new_trials == 1  # sw-3's slot (the sweep stopped it); the others still hold theirs
    sim.jobs["sw-4"]["spec"]["suspend"] = True
    sim.step()
    assert _condition(sim, "TrialsSuspended").message.endswith(": sw-0, sw-1, sw-2 and 1 more")  # type: ignore[union-attr]
    for name in ("sw-0", "sw-1", "sw-2", "sw-4"):
        sim.jobs[name]["spec"]["suspend"] = False
        sim.set_status(name, "Running")
    sim.step()
    held = _condition(sim, "TrialsSuspended")
    assert held is not None and (held.status, held.reason) == ("False", "NoneSuspended")


def test_trials_suspended_turns_false_when_the_sweep_ends() -> None:
    sim = Sim(
        sweep_spec(maxTrials=2, parallelTrials=2, objective={"metric": "eval_test/loss", "goalValue": 5.0})
    )
    sim.step()
    sim.jobs["sw-1"]["spec"]["suspend"] = True
    sim.step()
    assert _condition(sim, "TrialsSuspended").status == "True"  # type: ignore[union-attr]
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=10, evalStep=10)
    sim.step()  # GoalReached: the sweep stops sw-1 (its own stop now)
    sim.step()
    assert sim.status.phase == "Succeeded"
    assert _condition(sim, "TrialsSuspended").status == "False"  # type: ignore[union-attr]
