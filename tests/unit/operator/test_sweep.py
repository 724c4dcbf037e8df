"""PaxSweep, pure parts: the generated CRD, the search algorithms, decide_sweep (with an in-memory sim)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from pax_cluster.procs import DEPLOY, REPO_ROOT

sys.path.insert(0, str(Path(__file__).parent))
from pax_operator.sweep.algorithms import Search
from pax_operator.sweep.decide import (
    ObservedSweep,
    SweepRef,
    decide_sweep,
    render_trial,
)
from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus
from sweep_sim import NOW, Sim, sweep_spec


def _gen_crds():  # hack/gen-crds.py is a script (dash in its name)
    spec = importlib.util.spec_from_file_location("gen_crds", REPO_ROOT / "hack" / "gen-crds.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_sweep_crd_is_fresh() -> None:
    """Fails when the PaxJob CRD (or the sweep input) changed and `python hack/gen-crds.py` was not rerun."""
    gen = _gen_crds()
    expected = gen.render(gen.PAXJOB_CRD.read_text(), gen.SWEEP_INPUT.read_text())
    assert gen.SWEEP_CRD.read_text() == expected, (
        "stale deploy/crds/pax.dev_paxsweeps.yaml: run hack/gen-crds.py"
    )


def test_sweep_template_is_the_paxjob_spec_schema() -> None:
    import yaml

    job = yaml.safe_load((DEPLOY / "crds/pax.dev_paxjobs.yaml").read_text())
    sweep = yaml.safe_load((DEPLOY / "crds/pax.dev_paxsweeps.yaml").read_text())
    job_spec = job["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    template = sweep["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "template"
    ]
    assert {k: v for k, v in template.items() if k != "description"} == {
        k: v for k, v in job_spec.items() if k != "description"
    }
    assert (REPO_ROOT / "charts/pax-operator/crds/pax.dev_paxsweeps.yaml").resolve() == (
        DEPLOY / "crds/pax.dev_paxsweeps.yaml"
    )


def _spec(**fields: object) -> PaxSweepSpec:
    return PaxSweepSpec.model_validate(sweep_spec(**fields))


def test_random_log_scale_stays_in_range_and_is_log_uniform() -> None:
    search = Search(_spec(maxTrials=400, algorithm={"name": "random", "seed": 7}))
    values = [float(search.propose().params["learning_rate"]) for _ in range(400)]  # type: ignore[union-attr]
    assert all(1e-4 <= v <= 1e-1 for v in values)
    decades = [sum(1 for v in values if 10**-k <= v < 10 ** (-k + 1)) for k in (4, 3, 2)]
    assert min(decades) > 80, decades  # log-uniform: each decade gets about a third


def test_same_seed_same_proposals_other_seed_other_ones() -> None:
    def points(seed: int) -> list[str]:
        search = Search(_spec(algorithm={"name": "random", "seed": seed}))
        return [search.propose().params["learning_rate"] for _ in range(5)]  # type: ignore[union-attr]

    assert points(1) == points(1)
    assert points(1) != points(2)


def test_int_and_discrete_parameters() -> None:
    params = [
        {"name": "num_layers", "type": "int", "min": 1, "max": 4},
        {"name": "width", "type": "int", "min": 8, "max": 4096, "scale": "log"},
        {"name": "optimizer", "type": "discrete", "values": ["adam", "sgd"]},
    ]
    search = Search(_spec(parameters=params))
    for _ in range(50):
        proposal = search.propose()
        assert proposal is not None
        assert 1 <= int(proposal.params["num_layers"]) <= 4
        assert 8 <= int(proposal.params["width"]) <= 4096
        assert proposal.params["optimizer"] in ("adam", "sgd")


def test_grid_enumerates_the_space_once_then_the_sweep_succeeds() -> None:
    params = [
        {"name": "num_layers", "type": "int", "min": 1, "max": 3},
        {"name": "optimizer", "type": "discrete", "values": ["adam", "sgd"]},
    ]
    sim = Sim(sweep_spec(parameters=params, algorithm={"name": "grid"}, maxTrials=20, parallelTrials=3))
    sim.run(lambda name, p: ("Succeeded", float(p["num_layers"]) + (p["optimizer"] == "sgd")))
    points = {(sim.params(n)["num_layers"], sim.params(n)["optimizer"]) for n in sim.jobs}
    assert len(sim.jobs) == 6 and len(points) == 6
    assert sim.status.phase == "Succeeded" and "exhausted" in (sim.status.message or "")
    assert sim.status.best_trial is not None and sim.status.best_trial.parameters == {
        "num_layers": "1",
        "optimizer": "adam",
    }


def test_parallelism_and_budget_respected() -> None:
    sim = Sim(sweep_spec(maxTrials=7, parallelTrials=3))
    peak = 0
    for _ in range(50):
        sim.step()
        peak = max(peak, len(sim.running()))
        if sim.status.phase == "Succeeded":
            break
        for job in sim.running()[:1]:
            sim.set_status(job["metadata"]["name"], "Succeeded", {"eval_test/loss": 1.0}, step=10)
    assert peak == 3
    assert len(sim.jobs) == 7
    assert sim.status.trials.succeeded == 7 and sim.status.trials.running == 0


def test_failed_trials_beyond_budget_fail_the_sweep_and_stop_the_rest() -> None:
    sim = Sim(sweep_spec(maxTrials=10, parallelTrials=2, maxFailedTrials=1))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=10)
    sim.set_status("sw-1", "Failed")
    sim.step()
    sim.set_status("sw-2", "Failed")
    plan = sim.step()
    assert sim.status.phase == "Failed" and sim.status.trials.failed == 2
    assert "maxFailedTrials=1" in (sim.status.message or "")
    assert [name for name, _ in plan.stops] == ["sw-3"]
    assert plan.new_trials == 0


def test_config_error_in_the_first_trial_fails_fast_with_the_trainers_message() -> None:
    sim = Sim(sweep_spec())
    sim.step()
    job = sim.jobs["sw-0"]
    job["status"] = {
        "phase": "Failed",
        "lastRestart": {"outcome": "Permanent", "reason": "ConfigError"},
        "conditions": [
            {"type": "Failed", "status": "True", "message": "unknown hyperparameter 'learning_rat'"}
        ],
    }
    sim.step()
    assert sim.status.phase == "Failed"
    assert sim.status.conditions[-1].reason == "TrialConfigError"
    assert "unknown hyperparameter 'learning_rat'" in (sim.status.message or "")


def test_a_misspelled_objective_metric_fails_the_sweep_at_the_first_success() -> None:
    """Every trial would train in full and fail the same way: maxFailedTrials + 1 wasted trainings."""
    sim = Sim(sweep_spec(maxFailedTrials=5))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_tset/loss": 1.0, "train/loss": 2.0}, step=10)
    plan = sim.step()
    assert sim.status.phase == "Failed"
    assert sim.status.conditions[-1].reason == "ObjectiveMetricMissing"
    assert "sw-0 succeeded without ever reporting eval_test/loss" in (sim.status.message or "")
    assert "eval_tset/loss, train/loss" in (sim.status.message or "")
    assert [name for name, _ in plan.stops] == ["sw-1"] and plan.new_trials == 0


def test_a_nan_objective_or_a_sweep_that_saw_the_metric_does_not_fail_fast() -> None:
    sim = Sim(sweep_spec(maxFailedTrials=5))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": math.nan}, step=10)  # present, not finite
    sim.step()
    assert sim.status.phase not in ("Failed", "Succeeded") and sim.status.trials.failed == 1
    sim.set_status("sw-1", "Succeeded", {"eval_test/loss": 1.0}, step=10)
    sim.step()
    sim.set_status("sw-2", "Succeeded", {"train/loss": 2.0}, step=10)  # others reported it: this one failed
    sim.step()
    assert sim.status.phase not in ("Failed", "Succeeded")
    assert (sim.status.trials.succeeded, sim.status.trials.failed) == (1, 2)


def test_preempted_trial_is_still_running() -> None:
    sim = Sim(sweep_spec())
    sim.step()
    sim.set_status("sw-0", "Restarting")
    plan = sim.step()
    assert not plan.results and sim.status.trials.running == 2 and sim.status.trials.failed == 0


def _evolution_outcome(name: str, params: dict[str, str]) -> tuple[str, float | None]:
    return "Succeeded", (math.log10(float(params["learning_rate"])) + 2.5) ** 2


def test_evolution_fed_from_its_records_proposes_what_it_proposes_fed_directly() -> None:
    """The sweep feeds back the DNA recorded on each trial (with evolution's metadata); a record it cannot
    read would leave the algorithm without feedback (or, as a restart replays the same records, without it
    in both runs of the restart test)."""
    evolution = {"name": "regularizedEvolution", "seed": 5, "populationSize": 4, "tournamentSize": 2}
    spec = PaxSweepSpec.model_validate(sweep_spec(algorithm=evolution, maxTrials=40))

    def reward(params: dict[str, str]) -> float:
        return -((math.log10(float(params["learning_rate"])) + 2.5) ** 2)

    direct, recorded = Search(spec), Search(spec)
    direct_points, recorded_points = [], []
    for _ in range(16):
        dna = direct.generator.propose()
        params = direct.space.proposal(dna).params
        direct.generator.feedback(dna, reward(params))
        direct_points.append(params)
        proposal = recorded.propose()
        assert proposal is not None
        recorded.feedback(proposal.dna, reward(proposal.params))
        recorded_points.append(proposal.params)
    assert recorded_points == direct_points
    assert len({p["learning_rate"] for p in direct_points}) > 8  # mutations, not one point again


def test_restart_mid_sweep_gives_the_same_trials_as_an_uninterrupted_run() -> None:
    fields = {
        "algorithm": {"name": "regularizedEvolution", "seed": 5, "populationSize": 4, "tournamentSize": 2},
        "maxTrials": 14,
        "parallelTrials": 3,
    }
    plain = Sim(sweep_spec(**fields))
    plain.run(_evolution_outcome)
    interrupted = Sim(sweep_spec(**fields))
    original_step = interrupted.step
    calls = {"n": 0}

    def step_with_restarts():  # forget the algorithm every third pass, as an operator SIGKILL would
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            interrupted.restart()
        return original_step()

    interrupted.step = step_with_restarts  # type: ignore[method-assign]
    interrupted.run(_evolution_outcome)
    assert sorted(plain.jobs) == sorted(interrupted.jobs)
    assert {n: plain.params(n) for n in plain.jobs} == {n: interrupted.params(n) for n in interrupted.jobs}
    assert plain.status.best_trial == interrupted.status.best_trial


def test_objective_aggregation_nan_and_goal_value() -> None:
    sim = Sim(sweep_spec(objective={"metric": "eval_test/loss", "valueForNaN": 9.0, "goalValue": 0.5}))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": math.nan}, step=10)
    assert sim.jobs["sw-0"]["status"]["progress"]["nonFiniteMetrics"] == {"eval_test/loss": "NaN"}
    sim.step()
    assert sim.status.trials.succeeded == 1 and sim.status.best_trial.objective == 9.0  # type: ignore[union-attr]
    sim.set_status("sw-1", "Running", {"eval_test/loss": 2.0}, step=5, evalStep=5)
    sim.step()
    sim.set_status("sw-1", "Running", {"eval_test/loss": 0.8}, step=10, evalStep=10)
    sim.step()
    sim.set_status("sw-1", "Succeeded", {"eval_test/loss": 0.4}, step=20, evalStep=20)
    plan = sim.step()
    assert sim.status.phase == "Succeeded" and sim.status.conditions[-1].reason == "GoalReached"
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-1"
    assert [name for name, _ in plan.stops] == ["sw-2"]  # the other running trial ends with the sweep


def test_mean_of_last_n_and_best_aggregations() -> None:
    for aggregation, expected in (("meanOfLastN", (0.8 + 0.6) / 2), ("best", 0.6), ("last", 0.7)):
        objective = {"metric": "eval_test/loss", "aggregation": aggregation}
        if aggregation == "meanOfLastN":
            objective["lastN"] = 2
        sim = Sim(sweep_spec(objective=objective, parallelTrials=1))
        sim.step()
        for step, value in ((10, 1.0), (20, 0.8), (30, 0.6)):
            sim.set_status("sw-0", "Running", {"eval_test/loss": value}, step=step, evalStep=step)
            sim.step()
        final = 0.7 if aggregation == "last" else 0.6
        sim.set_status(
            "sw-0", "Succeeded", {"eval_test/loss": final}, step=30 if final == 0.6 else 40, evalStep=None
        )
        sim.step()
        assert sim.status.best_trial is not None
        assert sim.status.best_trial.objective == pytest.approx(expected), aggregation


def test_early_stopping_by_value_and_by_median() -> None:
    rules = {"rules": [{"step": 10, "threshold": 5.0}, {"step": 20, "percentile": 50, "minTrials": 3}]}
    sim = Sim(sweep_spec(earlyStopping=rules, maxTrials=8, parallelTrials=6))
    sim.step()
    losses = {"sw-0": 1.0, "sw-1": 2.0, "sw-2": 3.0, "sw-3": 4.0, "sw-4": 6.0, "sw-5": 3.5}
    for name, loss in losses.items():
        sim.set_status(name, "Running", {"eval_test/loss": loss}, step=10, evalStep=10)
    plan = sim.step()
    assert [n for n, _ in plan.stops] == ["sw-4"]  # 6.0 > threshold 5.0
    assert "worse than 5" in plan.stops[0][1]
    for name, loss in losses.items():
        if name != "sw-4":
            sim.set_status(name, "Running", {"eval_test/loss": loss}, step=20, evalStep=20)
    plan = sim.step()
    # at step 20 (sw-4 never measured there): median stopping stops those worse than the others' median
    stopped = sorted(n for n, _ in plan.stops)
    assert stopped == ["sw-2", "sw-3", "sw-5"], plan.stops  # 3.0, 4.0, 3.5 vs medians 2.75, 2.5, 2.5
    sim.set_status("sw-4", "Suspended")
    sim.step()
    assert sim.status.trials.early_stopped == 1
    result = json.loads(sim.jobs["sw-4"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert result["state"] == "EarlyStopped" and result["objective"] == 6.0


def test_trial_pax_job_render() -> None:
    spec = _spec()
    search = Search(spec)
    proposal = search.propose()
    assert proposal is not None
    body = render_trial(SweepRef("lr", "ns", "u1"), spec, sweep_spec()["template"], 3, proposal, after=2)
    assert body["metadata"]["name"] == "lr-3"
    assert body["metadata"]["labels"] == {"pax.dev/sweep-name": "lr", "pax.dev/trial-index": "3"}
    owner = body["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "u1" and owner["kind"] == "PaxSweep" and owner["controller"] is True
    assert body["spec"]["jobLogDir"] == "/logs/sweep/lr-3"
    assert body["spec"]["overrides"] == proposal.params
    assert json.loads(body["metadata"]["annotations"]["pax.dev/sweep-trial"])["after"] == 2


def test_status_stays_small_with_many_trials() -> None:
    sim = Sim(sweep_spec(maxTrials=300, parallelTrials=20, maxFailedTrials=1000))
    counter = {"n": 0}

    def outcome(name: str, params: dict[str, str]) -> tuple[str, float | None]:
        counter["n"] += 1
        return ("Failed", None) if counter["n"] % 7 == 0 else ("Succeeded", float(params["learning_rate"]))

    sim.run(outcome, steps=2000)
    assert sim.status.trials.created == 300
    assert len(json.dumps(sim.status.to_api())) < 2000


def test_unavailable_algorithm_fails_the_sweep_with_its_reason() -> None:
    spec = _spec(algorithm={"name": "gpBandit"})
    plan = decide_sweep(
        ObservedSweep(
            SweepRef("s", "n", "u"), spec, PaxSweepStatus(), [], NOW, space_error="no gpBandit here"
        )
    )
    assert plan.status is not None and plan.status.phase == "Failed"
    assert plan.status.message == "no gpBandit here"


def test_eval_metrics_travel_from_the_trainer_gauges_to_the_trial_view() -> None:
    """Trainer /metrics (pax_eval_step, pax_eval_metric) → PaxJob scrape → status.progress → sweep."""
    from pax_operator.adapters.scrape import parse_metrics
    from pax_operator.sweep.decide import current_measurement, trial_view
    from pax_trainer.progress import Progress
    from prometheus_client import generate_latest

    gauges = Progress(total_steps=100)
    gauges.update(40, loss=1.5)
    gauges.evaluated(40, {"eval_test/loss": 0.75, "eval_test/accuracy": 0.5})
    scrape = parse_metrics(generate_latest(gauges.registry).decode())
    assert scrape.eval_step == 40
    assert dict(scrape.eval_metrics) == {"eval_test/loss": 0.75, "eval_test/accuracy": 0.5}
    job = {
        "metadata": {
            "name": "s-0",
            "labels": {"pax.dev/sweep-name": "s", "pax.dev/trial-index": "0"},
            "annotations": {},
        },
        "status": {
            "phase": "Running",
            "progress": {"step": 45, "evalStep": 40, "metrics": dict(scrape.eval_metrics)},
        },
    }
    trial = trial_view(job)
    assert trial is not None
    assert current_measurement(trial, "eval_test/loss") == (40, 0.75)
    assert current_measurement(trial, "train/loss") is None


@pytest.mark.slow
def test_gp_bandit_suggestions_are_valid_and_deterministic() -> None:
    """Real OSS Vizier (a few seconds per suggestion): same records and seed, same point."""
    from pax_operator.sweep.vizier import suggest

    parameters = [
        {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"},
        {"name": "num_layers", "type": "int", "min": 1, "max": 4},
        {"name": "optimizer", "type": "discrete", "values": ["adam", "sgd"]},
    ]
    completed = [
        ({"learning_rate": "0.001", "num_layers": "2", "optimizer": "adam"}, 0.5),
        ({"learning_rate": "0.05", "num_layers": "1", "optimizer": "sgd"}, 2.0),
        ({"learning_rate": "0.0002", "num_layers": "4", "optimizer": "adam"}, None),
    ]
    active = [{"learning_rate": "0.003", "num_layers": "3", "optimizer": "sgd"}]
    first = suggest(parameters, "minimize", 7, 4, completed, active, 2)
    again = suggest(parameters, "minimize", 7, 4, completed, active, 2)
    assert first == again and len(first) == 2
    for point in first:
        assert 1e-4 <= float(point["learning_rate"]) <= 1e-1
        assert 1 <= int(point["num_layers"]) <= 4 and point["optimizer"] in ("adam", "sgd")


def test_suspend_starts_no_trial_and_ttl_deletes_the_finished_sweep() -> None:
    sim = Sim(sweep_spec(suspend=True))
    plan = sim.step()
    assert plan.new_trials == 0 and sim.status.phase == "Suspended" and not sim.jobs
    sim.raw["suspend"] = False
    sim.spec = PaxSweepSpec.model_validate(sim.raw)
    sim.step()
    assert len(sim.jobs) == 2 and sim.status.phase == "Running"

    from datetime import timedelta

    finished = PaxSweepStatus.model_validate(
        {"phase": "Succeeded", "completionTime": "2026-11-29T23:00:00Z", "trials": {"created": 1}}
    )
    spec = _spec(ttlSecondsAfterFinished=7200)
    ref = SweepRef("s", "n", "u")
    early = decide_sweep(ObservedSweep(ref, spec, finished, [], NOW))
    assert not early.delete_sweep and early.requeue_after == pytest.approx(3600)
    late = decide_sweep(ObservedSweep(ref, spec, finished, [], NOW + timedelta(hours=1)))
    assert late.delete_sweep


def test_the_largest_admitted_ttl_decides_and_a_larger_one_is_refused() -> None:
    """ttlSecondsAfterFinished=10**12 was admitted, and every pass of the finished sweep then raised
    OverflowError (completionTime + TTL is past datetime's range)."""
    finished = PaxSweepStatus.model_validate(
        {"phase": "Succeeded", "completionTime": "2026-11-29T23:00:00Z", "trials": {"created": 1}}
    )
    plan = decide_sweep(
        ObservedSweep(SweepRef("s", "n", "u"), _spec(ttlSecondsAfterFinished=2**31 - 1), finished, [], NOW)
    )
    assert not plan.delete_sweep and plan.requeue_after is not None
    for field, value in (("ttlSecondsAfterFinished", 10**12), ("algorithm", {"seed": 2**31})):
        with pytest.raises(ValueError, match=field.split(".")[0]):
            _spec(**{field: value})


def test_a_rewound_step_replaces_later_measurements() -> None:
    """After a restart from an older checkpoint (or a stale scrape), the trainer's final result wins."""
    sim = Sim(
        sweep_spec(
            parallelTrials=1, objective={"metric": "eval_test/loss", "aggregation": "meanOfLastN", "lastN": 3}
        )
    )
    sim.step()
    sim.set_status("sw-0", "Running", {"eval_test/loss": 2.5}, step=300, evalStep=300)
    sim.step()
    sim.set_status("sw-0", "Running", {"eval_test/loss": 2.4}, step=301, evalStep=301)
    sim.step()
    # the result: step 40, its metrics; evalStep still says 301 (the last scrape's)
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 0.01}, step=40)
    sim.step()
    result = json.loads(sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert result["objective"] == 0.01


def test_deleted_trials_still_count_and_the_sweep_ends() -> None:
    """A trial PaxJob deleted after it finished (its own TTL, kubectl delete) takes its records along: the
    sweep still runs exactly maxTrials trials, never reuses an index, and ends."""
    template = dict(sweep_spec()["template"], ttlSecondsAfterFinished=0)
    sim = Sim(sweep_spec(template=template, maxTrials=3, parallelTrials=1))
    started: list[str] = []
    seqs: list[int] = []
    for _ in range(20):
        sim.step()
        for job in list(sim.jobs.values()):
            assert "ttlSecondsAfterFinished" not in job["spec"]  # the trial holds the sweep's record
            result = job["metadata"]["annotations"].get("pax.dev/sweep-result")
            if result is not None:  # the trial deletes itself once finished
                seqs.append(json.loads(result)["seq"])
                del sim.jobs[job["metadata"]["name"]]
        if sim.status.phase is not None and sim.status.phase.is_terminal:
            break
        for job in sim.running():
            name = job["metadata"]["name"]
            if name not in started:
                started.append(name)
            sim.set_status(name, "Succeeded", {"eval_test/loss": 1.0 + len(started)}, step=100, evalStep=100)
    assert started == ["sw-0", "sw-1", "sw-2"]
    assert seqs == [0, 1, 2]
    assert sim.status.phase == "Succeeded"
    assert sim.status.trials.created == 3 and sim.status.trials.succeeded == 3
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-0"


def test_deleted_trials_leave_a_gap_the_rebuilt_algorithm_skips() -> None:
    """After a restart, the rebuilt random search proposes for the deleted indices too: the next trial gets
    the point an uninterrupted run would have given it."""
    spec = sweep_spec(maxTrials=6, parallelTrials=1, algorithm={"name": "random", "seed": 3})
    straight = Sim(spec)
    straight.run(lambda name, params: ("Succeeded", 1.0))
    gappy = Sim(spec)
    for _ in range(3):
        gappy.step()
        gappy.set_status(gappy.running()[0]["metadata"]["name"], "Succeeded", {"eval_test/loss": 1.0}, step=1)
    assert sorted(gappy.jobs) == ["sw-0", "sw-1", "sw-2"]
    del gappy.jobs["sw-1"]
    gappy.restart()
    gappy.step()
    assert gappy.params("sw-3") == straight.params("sw-3")
    assert "sw-1" not in gappy.jobs


def test_template_suspend_does_not_suspend_the_trials() -> None:
    """A suspended trial would never finish: trials start unsuspended whatever the template says."""
    template = dict(sweep_spec()["template"], suspend=True)
    sim = Sim(sweep_spec(template=template, maxTrials=2, parallelTrials=1))
    sim.run(lambda name, params: ("Succeeded", 1.0))
    assert sim.status.phase == "Succeeded"
    assert all(not job["spec"].get("suspend") for job in sim.jobs.values())


def test_records_of_another_space_fail_the_sweep_instead_of_raising() -> None:
    """spec.parameters edited after trials ran (admission refuses it now; an older object may have it): the
    rebuild reports why, and the sweep fails InvalidSearchSpace rather than raising in every pass."""
    from pax_operator.sweep.decide import trial_view
    from pax_operator.sweep.reconcile import SweepReconciler

    sim = Sim(sweep_spec(maxTrials=4, parallelTrials=1))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=1)
    sim.step()
    trials = [t for t in (trial_view(j) for j in sim.jobs.values()) if t is not None]
    reconciler = SweepReconciler(clients=None)  # type: ignore[arg-type]  # _search does no API I/O
    changed = [
        [{"name": "learning_rate", "type": "float", "min": 0.05, "max": 0.1}],  # narrowed
        [{"name": "learning_rate", "type": "discrete", "values": ["0.1", "0.01"]}],  # another type
        [sweep_spec()["parameters"][0], {"name": "dropout", "type": "float", "min": 0.0, "max": 0.5}],
    ]
    for parameters in changed:
        spec = _spec(maxTrials=4, parallelTrials=1, parameters=parameters)
        search, error = reconciler._search("uid-1", spec, sim.status, trials)
        assert search is None and error is not None and "do not fit the search space" in error
        plan = decide_sweep(ObservedSweep(sim.ref, spec, sim.status, trials, NOW, space_error=error))
        assert plan.status is not None and plan.status.phase == "Failed"
        assert plan.status.conditions[-1].reason == "InvalidSearchSpace"
    search, error = reconciler._search("uid-1", sim.spec, sim.status, trials)
    assert search is not None and error is None and search.diverged == 0


def test_ranges_that_admit_no_point_fail_the_sweep_with_the_reason() -> None:
    """gpBandit gets the same space checks as the others (an int range without an integer made Vizier raise
    in every suggestion); a range whose width overflows fails before any proposal."""
    from pax_operator.sweep.reconcile import SweepReconciler

    reconciler = SweepReconciler(clients=None)  # type: ignore[arg-type]  # _search does no API I/O
    no_integer = [{"name": "num_layers", "type": "int", "min": 0.2, "max": 0.8}]
    too_wide = [{"name": "dropout", "type": "float", "min": -1e308, "max": 1e308}]
    for algorithm in ("gpBandit", "random", "regularizedEvolution"):
        for parameters, reason in (
            (no_integer, "no integer in [0.2, 0.8]"),
            (too_wide, "not a range within"),
        ):
            spec = _spec(algorithm={"name": algorithm}, parameters=parameters)
            search, error = reconciler._search(f"uid-{algorithm}", spec, PaxSweepStatus(), [])
            assert search is None and error is not None and reason in error, (algorithm, error)


def test_a_proposal_error_is_a_space_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from pax_operator.sweep.algorithms import SpaceError

    search = Search(_spec())

    def broken() -> None:
        raise ValueError("Value inf is out of range")

    monkeypatch.setattr(search.generator, "propose", broken)
    with pytest.raises(SpaceError, match="could not propose a point: Value inf"):
        search.propose()


@pytest.mark.parametrize(
    ("algorithm", "parameters"),
    [
        ("grid", [{"name": "n", "type": "int", "min": 0, "max": 100000}]),
        ("random", [{"name": f"n{i}", "type": "int", "min": 0, "max": 1000} for i in range(5)]),
        (
            "random",
            [
                {"name": f"d{i}", "type": "discrete", "values": [str(v) for v in range(256)]}
                for i in range(17)
            ],
        ),
    ],
    ids=["grid-int-100001", "random-5-ints-of-1001", "random-17-discrete-of-256"],
)
def test_too_many_choices_is_a_space_error(algorithm: str, parameters: list[dict[str, object]]) -> None:
    """Every choice costs PyGlove about a millisecond of spec building at each rebuild (a grid over 100,001
    ints took 88 s): more than 4096 in all is refused before anything is built."""
    from pax_operator.sweep.algorithms import SearchSpace, SpaceError

    with pytest.raises(SpaceError, match="choices in all, more than 4096"):
        SearchSpace(_spec(algorithm={"name": algorithm}, parameters=parameters))


def test_wide_and_log_int_ranges_are_no_choices() -> None:
    """Linear int ranges over 1000 wide and log ones are searched as floats: they do not count."""
    from pax_operator.sweep.algorithms import SearchSpace

    wide = [{"name": f"n{i}", "type": "int", "min": 0, "max": 100000} for i in range(8)]
    log = [{"name": "batch", "type": "int", "min": 1, "max": 65536, "scale": "log"}]
    space = SearchSpace(_spec(parameters=wide + log))
    assert space.size is None


_SCHEMA_KEYWORDS = {
    "type", "description", "properties", "items", "required", "enum", "default", "format", "pattern",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "minItems",
    "maxItems", "minProperties", "maxProperties", "additionalProperties", "nullable", "anyOf", "oneOf",
    "allOf", "not", "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
    "x-kubernetes-embedded-resource", "uniqueItems", "multipleOf", "title", "example", "externalDocs",
}  # fmt: skip


@pytest.mark.parametrize("crd", ["pax.dev_paxsweeps.yaml", "pax.dev_paxjobs.yaml"])
def test_every_schema_node_has_only_schema_keywords_and_no_nulls(crd: str) -> None:
    """A comma in an unquoted flow-mapping value ends it: `{description: a, b}` made a stray key `b: null`."""
    import yaml

    doc = yaml.safe_load((DEPLOY / "crds" / crd).read_text())
    problems: list[str] = []

    def walk(node: object, path: str) -> None:
        if not isinstance(node, dict):
            problems.append(f"{path}: not a schema object")
            return
        for key, value in node.items():
            if value is None:
                problems.append(f"{path}.{key}: null")
            if key not in _SCHEMA_KEYWORDS:
                problems.append(f"{path}: unknown keyword {key!r}")
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties", "not"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")
        for key in ("anyOf", "oneOf", "allOf"):
            for index, child in enumerate(node.get(key) or []):
                walk(child, f"{path}.{key}[{index}]")

    for version in doc["spec"]["versions"]:
        walk(version["schema"]["openAPIV3Schema"], version["name"])
        for column in version.get("additionalPrinterColumns") or []:
            problems += [f"column {column.get('name')}.{k}: null" for k, v in column.items() if v is None]
    assert problems == []


@pytest.mark.parametrize(
    "record",
    ['{"after": "x", "dna": 5, "params": [1]}', '["a", "list"]', '"text"', "not json", '{"after": -3}'],
)
def test_a_malformed_trial_record_reads_as_absent_and_the_sweep_goes_on(record: str) -> None:
    """A hand-edited pax.dev/sweep-trial annotation made trial_view raise in every pass."""
    from pax_operator.sweep.decide import trial_view

    sim = Sim(sweep_spec(maxTrials=3, parallelTrials=1))
    sim.step()
    sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-trial"] = record
    view = trial_view(sim.jobs["sw-0"])
    assert view is not None and view.index == 0 and view.after == 0 and view.dna == "" and view.params == {}
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=1)
    sim.step()
    sim.restart()  # the rebuild replays the malformed record too
    sim.run(lambda name, params: ("Succeeded", 2.0))
    assert sim.status.phase == "Succeeded" and sim.status.trials.succeeded == 3
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-0"


def test_float_values_keep_their_precision_and_stay_in_range() -> None:
    """Six significant digits turned every point of [1000000.2, 1000000.4] into 1e+06, below min."""
    from pax_operator.sweep.spec import float_override

    narrow = [{"name": "offset", "type": "float", "min": 1000000.2, "max": 1000000.4}]
    for algorithm in ("random", "regularizedEvolution"):
        search = Search(_spec(algorithm={"name": algorithm, "seed": 2}, parameters=narrow))
        values = [float(search.propose().params["offset"]) for _ in range(20)]  # type: ignore[union-attr]
        assert all(1000000.2 <= v <= 1000000.4 for v in values), values
        assert len(set(values)) == 20
    assert float_override(0.1 + 1e-17, 1e-4, 0.1) == "0.1"  # exp(log(max)) an ulp above max
    assert float_override(0.0123456789012, 1e-4, 0.1) == "0.0123456789012"


def _poll_all(suggester: object, jobs: dict[str, float], limit: float = 60.0) -> dict[str, str]:
    """Poll every sweep's suggestion until each has a result or an error (bounded)."""
    import time

    from pax_operator.sweep.vizier import Suggester

    assert isinstance(suggester, Suggester)
    outcome: dict[str, str] = {}
    end = time.monotonic() + limit
    while len(outcome) < len(jobs) and time.monotonic() < end:
        for uid, seconds in jobs.items():
            if uid in outcome:
                continue
            try:
                points = suggester.poll(uid, (0, 0, 1), (seconds, uid))
            except Exception as err:  # the test records which error
                outcome[uid] = type(err).__name__
                continue
            if points is not None:
                outcome[uid] = points[0]["tag"]
        time.sleep(0.05)
    return outcome


def test_queued_suggestions_do_not_time_out_and_a_timeout_loses_no_other_job() -> None:
    """One worker for every GP-bandit sweep: the deadline counts a suggestion's own compute (it started at
    submit, so the 4th queued sweep timed out), and a timed-out job restarts the worker without cancelling
    the others' jobs."""
    from pax_operator.sweep.vizier import Suggester
    from sweep_stub_suggest import slow_suggestion

    suggester = Suggester(deadline=2.5, function=slow_suggestion)
    try:
        assert _poll_all(suggester, {"warm": 0.0}) == {"warm": "warm"}  # the worker process is up
        jobs = {uid: 1.0 for uid in "ABCD"}
        assert _poll_all(suggester, jobs) == {uid: uid for uid in jobs}
        outcome = _poll_all(suggester, {"hangs": 30.0, "E": 0.1, "F": 0.1})
        assert outcome == {"hangs": "TimeoutError", "E": "E", "F": "F"}
    finally:
        suggester.close()


def test_gp_bandit_asks_for_at_most_8_points_at_once() -> None:
    from pax_operator.sweep.decide import SweepPlan
    from pax_operator.sweep.reconcile import SweepReconciler

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[object, ...]] = []

        def ask(self, uid: str, key: tuple[object, ...], args: tuple[object, ...], **_: object) -> None:
            self.calls.append(args)

    recording = Recording()
    reconciler = SweepReconciler(clients=None, suggester=recording)  # type: ignore[arg-type]
    spec = _spec(algorithm={"name": "gpBandit"}, maxTrials=100, parallelTrials=50)
    assert reconciler._bandit("u", spec, PaxSweepStatus(), [], SweepPlan(new_trials=50), 0, 0) == []
    assert recording.calls[0][-1] == 8
