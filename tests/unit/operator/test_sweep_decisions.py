"""PaxSweep decisions a review found wrong: a rank rule judging a trial again long after it passed the rule's
step, a goal reached in the same pass as one failure too many, a finished sweep's trials shown running for
ever, and a trial whose overrides were edited fed back to the algorithm."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from pax_operator.sweep.algorithms import Search
from pax_operator.sweep.decide import SweepPlan, TrialResult, TrialView, trial_view
from pax_operator.sweep.reconcile import SweepReconciler
from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus
from sweep_sim import Sim, sweep_spec

EVOLUTION = {"name": "regularizedEvolution", "seed": 5, "populationSize": 4, "tournamentSize": 2}


def _measure(sim: Sim, name: str, step: int, value: float, phase: str = "Running") -> None:
    sim.set_status(name, phase, {"eval_test/loss": value}, step=step, evalStep=step)


def test_a_rank_rule_judges_a_trial_once_when_it_reaches_the_rules_step() -> None:
    """PyGlove's early_stop_by_rank decides at each gate once, against the trials that reached it before. The
    rule was evaluated on every pass instead: a trial that passed step 10 alone (too few others to rank) was
    stopped at step 990 of 1000 once three better trials reached step 10, and could never be the best."""
    rules = {"rules": [{"step": 10, "percentile": 50, "minTrials": 3}]}
    sim = Sim(sweep_spec(maxTrials=6, parallelTrials=5, earlyStopping=rules))
    sim.step()
    _measure(sim, "sw-0", 10, 5.0)
    assert sim.step().stops == []  # alone at the step: not ranked
    _measure(sim, "sw-0", 990, 0.1)
    sim.step()
    for name in ("sw-1", "sw-2", "sw-3"):
        _measure(sim, name, 10, 1.0)
    assert sim.step().stops == []  # each ranked against sw-0's 5.0 and the two others: not worse
    sim.step()  # the decision is kept on the trials (the sweep is rebuilt from them every pass)
    _measure(sim, "sw-0", 1000, 0.1, "Succeeded")
    sim.step()
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-0"
    _measure(sim, "sw-4", 10, 4.0)  # reaches the step after four others: ranked against them
    plan = sim.step()
    assert [name for name, _ in plan.stops] == ["sw-4"] and "of 4 other trials" in plan.stops[0][1]


def test_a_goal_reached_in_the_pass_of_one_failure_too_many_succeeds() -> None:
    sim = Sim(
        sweep_spec(
            maxTrials=6,
            parallelTrials=3,
            maxFailedTrials=1,
            objective={"metric": "eval_test/loss", "goalValue": 0.5},
        )
    )
    sim.step()
    _measure(sim, "sw-0", 100, 0.1, "Succeeded")
    sim.set_status("sw-1", "Failed")
    sim.set_status("sw-2", "Failed")
    sim.step()
    assert sim.status.phase == "Succeeded" and sim.status.conditions[-1].reason == "GoalReached"
    assert sim.status.trials.failed == 2


def test_a_finished_sweeps_running_count_drops_as_its_trials_stop() -> None:
    """A finished sweep stops its running trials but records no result for them: status.trials.running
    showed them running for ever."""
    sim = Sim(
        sweep_spec(maxTrials=6, parallelTrials=3, objective={"metric": "eval_test/loss", "goalValue": 0.5})
    )
    sim.step()
    _measure(sim, "sw-0", 100, 0.1, "Succeeded")
    plan = sim.step()
    assert sim.status.phase == "Succeeded" and sorted(n for n, _ in plan.stops) == ["sw-1", "sw-2"]
    assert sim.status.trials.running == 2  # still stopping
    sim.set_status("sw-1", "Suspended")
    sim.step()
    assert sim.status.trials.running == 1
    sim.set_status("sw-2", "Succeeded", {"eval_test/loss": 0.01}, step=50)  # ended before its stop
    sim.step()
    assert sim.status.trials.running == 0 and sim.status.trials.created == 3
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-0"


def _fed_dnas(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    fed: list[str] = []
    feedback = Search.feedback

    def recording(self: Search, encoded_dna: str, reward: float | None) -> None:
        fed.append(encoded_dna)
        feedback(self, encoded_dna, reward)

    monkeypatch.setattr(Search, "feedback", recording)
    return fed


def _edited_evolution_sweep() -> Sim:
    """sw-0 ran another learning rate than proposed, sw-1 the proposed one; both finished."""
    sim = Sim(sweep_spec(algorithm=EVOLUTION, maxTrials=8, parallelTrials=2))
    sim.step()
    sim.jobs["sw-0"]["spec"]["overrides"]["learning_rate"] = "0.05"
    _measure(sim, "sw-0", 10, 0.5, "Succeeded")
    _measure(sim, "sw-1", 10, 1.0, "Succeeded")
    sim.step()
    return sim


def test_an_edited_trial_is_counted_but_never_fed_back_even_after_a_restart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A trial whose overrides a user edited was fed back as failed (evolution: reward -inf) to the point it
    never ran, penalising it; it is counted as a failed trial and the algorithm is not told."""
    fed = _fed_dnas(monkeypatch)
    plain = _edited_evolution_sweep()
    edited, kept = (trial_view(plain.jobs[name]) for name in ("sw-0", "sw-1"))
    assert edited is not None and kept is not None and edited.result is not None
    assert edited.result.state == "Failed" and not edited.result.credited and edited.result.seq is not None
    assert plain.status.trials.failed == 1 and plain.status.trials.succeeded == 1
    assert fed == [kept.dna]
    assert plain.search is not None and plain.search.fed == 2  # its feedback number is still taken

    restarted = _edited_evolution_sweep()
    restarted.restart()
    fed.clear()
    restarted.step()  # the rebuild replays the records
    assert fed == [kept.dna]
    plain.step()
    assert {n: plain.params(n) for n in plain.jobs} == {n: restarted.params(n) for n in restarted.jobs}


def test_gp_bandit_leaves_out_an_edited_trial() -> None:
    """GP-bandit was told the proposed point of an edited trial was infeasible."""

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> None:
            self.calls.append(args)

    spec = PaxSweepSpec.model_validate(sweep_spec(algorithm={"name": "gpBandit"}))
    edited, kept = {"learning_rate": "0.01"}, {"learning_rate": "0.001"}
    trials = [
        _view(0, edited, TrialResult("Failed", None, seq=0, message="edited", credited=False)),
        _view(1, kept, TrialResult("Succeeded", 1.0, seq=1)),
    ]
    recording = Recording()
    reconciler = SweepReconciler(clients=None, suggester=recording)  # type: ignore[arg-type]
    reconciler._bandit("u", spec, PaxSweepStatus(), trials, SweepPlan(new_trials=1), 2, 2)
    completed, active = recording.calls[0][4], recording.calls[0][5]
    assert completed == [(kept, 1.0)] and active == []


def test_a_result_reads_back_with_its_credit() -> None:
    uncredited = TrialResult("Failed", None, seq=3, message="edited", credited=False)
    assert TrialResult.from_json(uncredited.to_json()) == uncredited
    credited = TrialResult("Succeeded", 1.0, seq=4)
    assert "credited" not in json.loads(credited.to_json())  # as written before the field existed
    assert TrialResult.from_json(credited.to_json()) == credited
    assert TrialResult.from_json('{"state":"Failed","objective":null,"seq":1,"credited":"no"}') is None


def _view(index: int, params: dict[str, str], result: TrialResult | None) -> TrialView:
    return TrialView(name=f"sw-{index}", uid=f"u{index}", index=index, params=params, result=result)
