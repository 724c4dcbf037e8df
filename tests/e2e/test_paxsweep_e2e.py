"""PaxSweep e2e: trials really train (process kubelet). A random search over reverse_digits' learning rate
(log scale), 6 trials, 2 at a time; and a sweep over an experiment-declared space (reverse_digits_search's
pg.floatv learning rate, discovered by a describe pod). Both run concurrently with the PaxJob scenarios
(see conftest.scenario)."""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from pax_cluster.procs import wait_for
from pax_cluster.stack import LocalStack

from .conftest import Jobs, scenario

pytestmark = pytest.mark.e2e

SWEEP = "lr"
SWEEP_TIMEOUT_S = 900.0
TRIALS, PARALLEL = 6, 2


def sweep_spec(log_dir: str) -> dict[str, Any]:
    return {
        "template": {
            "experiment": "reverse_digits",
            "image": "pax/trainer:dev",
            "jobLogDir": log_dir,
            "topology": {"cpu": {"hosts": 1}},
            "overrides": {"num_train_steps": "40", "eval_interval_steps": "20", "save_interval_steps": "20"},
            "restartPolicy": {"backoffSeconds": 1},
            "podTemplate": {
                "volumes": [{"name": "joblog", "hostPath": {"path": log_dir}}],
                "volumeMounts": [{"name": "joblog", "mountPath": log_dir}],
            },
        },
        "parameters": [{"name": "learning_rate", "type": "float", "min": 1e-5, "max": 0.1, "scale": "log"}],
        "algorithm": {"name": "random", "seed": 6},  # rates from 1e-5 to 0.02
        "objective": {"metric": "eval_test/loss", "goal": "minimize"},
        "maxTrials": TRIALS,
        "parallelTrials": PARALLEL,
        "maxFailedTrials": 1,
    }


def _sweep(stack: LocalStack, ns: str, name: str = SWEEP) -> dict[str, Any]:
    out = stack.kubectl("get", "paxsweep", name, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out else {}


def _trials(stack: LocalStack, ns: str, name: str = SWEEP) -> list[dict[str, Any]]:
    out = stack.kubectl("get", "paxjobs", "-n", ns, "-l", f"pax.dev/sweep-name={name}", "-o", "json")
    return list(json.loads(out)["items"])


def _apply_and_wait(
    stack: LocalStack, jobs: Jobs, name: str, spec: dict[str, Any], watch: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Apply a PaxSweep and wait (bounded) until it Succeeds; `watch()` is called on every look."""
    body = {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "metadata": {"name": name, "namespace": jobs.ns},
    }
    stack.kubectl("apply", "-f", "-", input=json.dumps({**body, "spec": spec}))

    def done() -> dict[str, Any] | None:
        if watch is not None:
            watch()
        status = _sweep(stack, jobs.ns, name).get("status") or {}
        if status.get("phase") == "Failed":
            raise AssertionError(f"sweep failed: {json.dumps(status)}\n{jobs.diagnostics()}")
        return status if status.get("phase") == "Succeeded" else None

    try:
        return wait_for(f"{jobs.ns}/{name} Succeeded", done, SWEEP_TIMEOUT_S, interval=2.0)
    except TimeoutError as err:
        status = json.dumps(_sweep(stack, jobs.ns, name).get("status"))
        raise TimeoutError(f"{err}\n{status}\n{jobs.diagnostics()}") from None


@scenario("sweep")
def _lr_sweep(stack: LocalStack, jobs: Jobs, tmp: Path) -> dict[str, Any]:
    log_dir = tmp / "sweep"
    log_dir.mkdir()
    peak = [0]

    def count_running() -> None:
        running = [
            t
            for t in _trials(stack, jobs.ns)
            if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        peak[0] = max(peak[0], len(running))

    status = _apply_and_wait(stack, jobs, SWEEP, sweep_spec(str(log_dir)), count_running)
    table = stack.kubectl("get", "psw", SWEEP, "-n", jobs.ns)
    return {
        "status": status,
        "trials": _trials(stack, jobs.ns),
        "peak": peak[0],
        "table": table,
        "log_dir": log_dir,
    }


def test_learning_rate_sweep_finds_a_clearly_better_trial(scenarios: dict[str, Future[Any]]) -> None:
    outcome = scenarios["sweep"].result(timeout=SWEEP_TIMEOUT_S + 60)
    status, trials = outcome["status"], outcome["trials"]
    assert status["trials"]["succeeded"] == TRIALS and status["trials"]["failed"] == 0
    assert len(trials) == TRIALS and outcome["peak"] <= PARALLEL
    objectives = {
        t["metadata"]["name"]: json.loads(t["metadata"]["annotations"]["pax.dev/sweep-result"])["objective"]
        for t in trials
    }
    best = min(objectives, key=objectives.__getitem__)
    worst = max(objectives.values())
    assert status["bestTrial"]["name"] == best, (status, objectives)
    assert objectives[best] < 0.5 * worst, objectives  # a learning rate that learns vs one that barely does
    rates = {t["metadata"]["name"]: float(t["spec"]["overrides"]["learning_rate"]) for t in trials}
    assert all(1e-5 <= r <= 0.1 for r in rates.values())
    for trial in trials:  # each trial wrote under its own directory below the sweep's
        assert (outcome["log_dir"] / trial["metadata"]["name"] / "checkpoints").is_dir()
    assert best in outcome["table"] or f"{objectives[best]:.4g}"[:4] in outcome["table"]


EXP_SWEEP = "lrexp"
EXP_TRIALS = 2


@scenario("sweep-experiment-space")
def _experiment_space_sweep(stack: LocalStack, jobs: Jobs, tmp: Path) -> dict[str, Any]:
    log_dir = tmp / "sweep"
    log_dir.mkdir()
    spec = sweep_spec(str(log_dir))
    del spec["parameters"]
    spec["template"]["experiment"] = "reverse_digits_search"  # learning_rate = pg.floatv(1e-3, 1e-1, log)
    spec["template"]["overrides"] = {"num_train_steps": "20", "eval_interval_steps": "20"}
    spec.update(experimentSearchSpace=True, maxTrials=EXP_TRIALS, parallelTrials=EXP_TRIALS)
    status = _apply_and_wait(stack, jobs, EXP_SWEEP, spec)
    describe = stack.kubectl("get", "pod", f"{EXP_SWEEP}-describe", "-n", jobs.ns, check=False)
    return {"status": status, "trials": _trials(stack, jobs.ns, EXP_SWEEP), "describe_pod": describe}


def test_experiment_declared_search_space_sweep_completes(scenarios: dict[str, Future[Any]]) -> None:
    outcome = scenarios["sweep-experiment-space"].result(timeout=SWEEP_TIMEOUT_S + 60)
    status, trials = outcome["status"], outcome["trials"]
    assert json.loads(status["searchSpace"]) == {
        "parameters": [{"max": 0.1, "min": 0.001, "name": "learning_rate", "scale": "log", "type": "float"}]
    }
    assert status["trials"]["succeeded"] == EXP_TRIALS and len(trials) == EXP_TRIALS
    for trial in trials:  # the trainer's --set fixed the experiment's pg.floatv
        assert 1e-3 <= float(trial["spec"]["overrides"]["learning_rate"]) <= 0.1
    assert "learning_rate" in status["bestTrial"]["parameters"]
    assert not outcome["describe_pod"], "the describe pod is deleted once the space is known"
