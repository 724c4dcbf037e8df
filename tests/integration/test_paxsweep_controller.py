"""PaxSweep controller on the real apiserver with the operator as a subprocess; trial outcomes are simulated
by patching the trial PaxJobs' status (see paxsweep_harness)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
from paxjob_harness import cpu_job, wait_for
from paxsweep_harness import Sweeps, lr_objective, sweep_spec

from tests.api import unless_missing

pytestmark = pytest.mark.integration


@pytest.fixture
def sweeps(custom, namespace) -> Sweeps:
    return Sweeps(custom, namespace)


def _check_trial(sweeps: Sweeps, trial: dict, sweep: str, uid: str, index: int) -> None:
    metadata = trial["metadata"]
    assert metadata["name"] == f"{sweep}-{index}"
    assert metadata["labels"]["pax.dev/sweep-name"] == sweep
    owner = metadata["ownerReferences"][0]
    assert owner["kind"] == "PaxSweep" and owner["uid"] == uid and owner["controller"] is True
    assert trial["spec"]["jobLogDir"].endswith(f"/{sweep}-{index}")
    assert trial["spec"]["overrides"].items() >= sweeps.params(trial).items()


def test_random_sweep_over_log_learning_rate(sweeps, operator) -> None:
    created = sweeps.create("rand", sweep_spec(algorithm={"name": "random", "seed": 3}))
    peak = sweeps.drive("rand", lr_objective, parallel=2, max_trials=6)
    status = sweeps.wait_phase("rand", "Succeeded")
    trials = sweeps.trials("rand")
    assert [t["metadata"]["name"] for t in trials] == [f"rand-{i}" for i in range(6)]
    assert peak == 2
    for index, trial in enumerate(trials):
        _check_trial(sweeps, trial, "rand", created["metadata"]["uid"], index)
        assert 1e-4 <= float(sweeps.params(trial)["learning_rate"]) <= 1e-1
    objectives = {t["metadata"]["name"]: sweeps.result(t)["objective"] for t in trials}  # type: ignore[index]
    best = min(objectives, key=objectives.__getitem__)
    assert status["bestTrial"]["name"] == best and status["bestTrial"]["objective"] == objectives[best]
    assert status["trials"] == {"created": 6, "running": 0, "succeeded": 6, "failed": 0, "earlyStopped": 0}
    assert "learning_rate" in status["bestTrial"]["parameters"]


def test_grid_covers_a_finite_space_exactly_once(sweeps, operator) -> None:
    params = [
        {"name": "num_layers", "type": "int", "min": 1, "max": 2},
        {"name": "optimizer", "type": "discrete", "values": ["adam", "sgd", "lion"]},
    ]
    sweeps.create(
        "grid", sweep_spec(parameters=params, algorithm={"name": "grid"}, maxTrials=10, parallelTrials=3)
    )
    sweeps.drive("grid", lambda p: float(p["num_layers"]) + len(p["optimizer"]), parallel=3, max_trials=6)
    status = sweeps.wait_phase("grid", "Succeeded")
    points = {tuple(sorted(sweeps.params(t).items())) for t in sweeps.trials("grid")}
    assert len(points) == 6 and len(sweeps.trials("grid")) == 6
    assert "exhausted" in status["message"]
    assert status["bestTrial"]["parameters"] == {"num_layers": "1", "optimizer": "sgd"}


def test_failed_trials_beyond_the_budget_fail_the_sweep(sweeps, operator) -> None:
    sweeps.create("flaky", sweep_spec(maxTrials=8, parallelTrials=2, maxFailedTrials=1))
    outcomes = iter([1.0, None, None])
    sweeps.drive("flaky", lambda p: next(outcomes), parallel=2, max_trials=8, completions=3)
    status = sweeps.wait_phase("flaky", "Failed")
    assert "maxFailedTrials=1" in status["message"] and status["trials"]["failed"] == 2
    # the trial still running when the sweep failed is stopped through the PaxJob's suspend path
    running = wait_for(
        "the last trial stopped",
        lambda: [
            t
            for t in sweeps.trials("flaky")
            if t["spec"].get("suspend") and "pax.dev/sweep-stop" in t["metadata"]["annotations"]
        ],
        timeout=30,
    )
    assert [t["metadata"]["name"] for t in running] == ["flaky-3"]


def test_config_error_in_the_first_trial_fails_the_sweep_fast(sweeps, operator) -> None:
    sweeps.create("typo", sweep_spec())
    wait_for("two trials", lambda: len(sweeps.trials("typo")) == 2, timeout=30)
    sweeps.fail(
        "typo-0", "pod typo-0-0: trainer exited 2: unknown hyperparameter 'learning_rat'", permanent=True
    )
    status = sweeps.wait_phase("typo", "Failed")
    assert "unknown hyperparameter 'learning_rat'" in status["message"]
    assert len(sweeps.trials("typo")) == 2  # nothing more was started


def test_early_stopping_by_value_and_by_median(sweeps, operator) -> None:
    rules = {"rules": [{"step": 10, "threshold": 5.0}, {"step": 20, "percentile": 50, "minTrials": 3}]}
    sweeps.create("es", sweep_spec(maxTrials=5, parallelTrials=5, earlyStopping=rules))
    wait_for("five trials", lambda: len(sweeps.trials("es")) == 5, timeout=30)
    for index, loss in enumerate([1.0, 2.0, 3.0, 4.0, 6.0]):
        sweeps.measure(f"es-{index}", 10, loss)

    def stopped() -> list[str]:
        return [t["metadata"]["name"] for t in sweeps.trials("es") if t["spec"].get("suspend")]

    wait_for("es-4 stopped by value", lambda: stopped() == ["es-4"], timeout=30)
    for index, loss in enumerate([1.0, 2.0, 3.5, 4.0]):
        sweeps.measure(f"es-{index}", 20, loss)
    # at step 20: es-2 (3.5) and es-3 (4.0) are worse than the median of the other three
    wait_for("es-2 and es-3 stopped by rank", lambda: stopped() == ["es-2", "es-3", "es-4"], timeout=30)
    sweeps.succeed("es-0", 0.9, step=30)
    sweeps.succeed("es-1", 1.9, step=30)
    status = sweeps.wait_phase("es", "Succeeded")  # the stopped trials end Suspended through PaxJob
    assert status["trials"]["earlyStopped"] == 3 and status["trials"]["succeeded"] == 2
    results = {t["metadata"]["name"]: sweeps.result(t) for t in sweeps.trials("es")}
    assert results["es-4"]["state"] == "EarlyStopped" and results["es-4"]["objective"] == 6.0  # type: ignore[index]
    assert status["bestTrial"]["name"] == "es-0"


def test_operator_sigkill_mid_sweep_gives_the_same_trials(sweeps, operator_factory, namespace) -> None:
    fields = {
        "algorithm": {"name": "regularizedEvolution", "seed": 11, "populationSize": 4, "tournamentSize": 2},
        "maxTrials": 10,
        "parallelTrials": 2,
    }
    first = operator_factory(namespace)
    sweeps.create("plain", sweep_spec(**fields))
    sweeps.drive("plain", lr_objective, parallel=2, max_trials=10)
    plain = sweeps.wait_phase("plain", "Succeeded")
    holder = {"operator": first}
    sweeps.create("killed", sweep_spec(**fields))

    def kill_now_and_then(done: int) -> None:
        if done in (3, 6):
            holder["operator"].kill()
            holder["operator"] = operator_factory(namespace)

    sweeps.drive("killed", lr_objective, parallel=2, max_trials=10, on_completion=kill_now_and_then)
    killed = sweeps.wait_phase("killed", "Succeeded")
    plain_trials = [sweeps.params(t) for t in sweeps.trials("plain")]
    killed_trials = [sweeps.params(t) for t in sweeps.trials("killed")]
    assert len(killed_trials) == 10 and [t["metadata"]["name"] for t in sweeps.trials("killed")] == [
        f"killed-{i}" for i in range(10)
    ]
    assert killed_trials == plain_trials
    assert killed["bestTrial"]["parameters"] == plain["bestTrial"]["parameters"]
    assert math.isclose(killed["bestTrial"]["objective"], plain["bestTrial"]["objective"])


@pytest.mark.slow
def test_gp_bandit_proposes_off_the_workers(sweeps, operator) -> None:
    """OSS Vizier's GP-bandit in the operator's worker process: valid points, budgets respected, and the
    PaxJob side keeps reconciling meanwhile (suggestions take seconds)."""
    sweeps.create("gp", sweep_spec(algorithm={"name": "gpBandit", "seed": 2}, maxTrials=4, parallelTrials=2))
    peak = sweeps.drive("gp", lr_objective, parallel=2, max_trials=4, timeout=300)
    status = sweeps.wait_phase("gp", "Succeeded")
    trials = sweeps.trials("gp")
    assert len(trials) == 4 and peak == 2
    rates = [float(sweeps.params(t)["learning_rate"]) for t in trials]
    assert all(1e-4 <= r <= 1e-1 for r in rates) and len(set(rates)) == 4
    assert status["trials"]["succeeded"] == 4
    # the worker process dies with the operator, even a SIGKILLed one (no GP fit left running)
    assert operator.proc is not None
    tasks = Path(f"/proc/{operator.proc.pid}/task").glob("*/children")  # children of every thread
    workers = [int(pid) for task in tasks for pid in task.read_text().split()]
    assert workers, "the GP-bandit worker process should be running"
    operator.kill()
    wait_for(
        "the GP-bandit worker to exit", lambda: not any(Path(f"/proc/{p}").exists() for p in workers), 15
    )


def test_a_trial_name_taken_by_another_paxjob_fails_the_sweep(sweeps, operator, custom, namespace) -> None:
    body = {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxJob", "metadata": {"name": "taken-1"}}
    custom.create_namespaced_custom_object(
        "pax.dev", "v1alpha1", namespace, "paxjobs", {**body, "spec": cpu_job(hosts=1, suspend=True)}
    )
    sweeps.create("taken", sweep_spec())
    status = sweeps.wait_phase("taken", "Failed")
    assert "PaxJob taken-1 exists and is not a trial of this sweep" in status["message"]
    assert "pax.dev/sweep-trial" not in (
        custom.get_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxjobs", "taken-1")[
            "metadata"
        ].get("annotations")
        or {}
    )  # never touched


def test_a_sweep_deleted_and_applied_again_waits_for_its_predecessors_trials(
    sweeps, operator, custom, namespace
) -> None:
    """`kubectl delete psw again && kubectl apply -f again.yaml` (or GitOps, or a TTL): the old sweep's trials
    are still being deleted when the new one creates its first trial under the same name. It failed for good
    (TrialNameTaken); it waits now. A finalizer holds the old trials Terminating as long as the test likes."""
    sweeps.create("again", sweep_spec(maxTrials=2, parallelTrials=2))
    wait_for("two trials", lambda: len(sweeps.trials("again")) == 2, timeout=30)
    hold = {"metadata": {"finalizers": ["pax.dev/test-hold"]}}
    for trial in ("again-0", "again-1"):
        custom.patch_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxjobs", trial, hold)
    custom.delete_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxsweeps", "again")
    wait_for("the old sweep to go", lambda: sweeps.get("again") is None, timeout=30)
    created = sweeps.create("again", sweep_spec(maxTrials=2, parallelTrials=2))
    wait_for(
        "the old trials to be deleted",
        lambda: all(t["metadata"].get("deletionTimestamp") for t in sweeps.trials("again")),
        timeout=30,
    )
    time.sleep(5)  # the new sweep's passes meet the names taken (every 2 s)
    assert sweeps.status("again").get("phase") != "Failed", sweeps.status("again")
    for trial in ("again-0", "again-1"):
        custom.patch_namespaced_custom_object(
            "pax.dev", "v1alpha1", namespace, "paxjobs", trial, {"metadata": {"finalizers": None}}
        )
    uid = created["metadata"]["uid"]

    def new_trials() -> bool:
        trials = sweeps.trials("again")
        owners = [t["metadata"]["ownerReferences"][0]["uid"] for t in trials]
        return len(trials) == 2 and owners == [uid, uid]

    wait_for("the new sweep's own two trials", new_trials, timeout=30)
    assert sweeps.status("again").get("phase") != "Failed", sweeps.status("again")


def test_a_deleted_trial_frees_its_slot_and_still_counts(sweeps, operator, custom, namespace) -> None:
    """The sweep reads its trials from the operator's PaxJob informer: a running trial deleted with kubectl
    is seen gone (and wakes the sweep), its slot gets the next index (never its own again), and the sweep
    still ends after maxTrials trials."""
    sweeps.create("gone", sweep_spec(maxTrials=4, parallelTrials=2))
    wait_for("two trials", lambda: len(sweeps.trials("gone")) == 2, timeout=30)
    custom.delete_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxjobs", "gone-0")

    def names() -> list[str]:
        return [t["metadata"]["name"] for t in sweeps.trials("gone")]

    wait_for("gone-2 in gone-0's slot", lambda: names() == ["gone-1", "gone-2"], timeout=30)
    sweeps.succeed("gone-1", 1.0)
    wait_for("gone-3 in gone-1's slot", lambda: names() == ["gone-1", "gone-2", "gone-3"], timeout=30)
    sweeps.succeed("gone-2", 2.0)
    sweeps.succeed("gone-3", 3.0)
    status = sweeps.wait_phase("gone", "Succeeded")
    assert status["trials"] == {"created": 4, "running": 0, "succeeded": 3, "failed": 0, "earlyStopped": 0}
    assert status["bestTrial"]["name"] == "gone-1"
    assert names() == ["gone-1", "gone-2", "gone-3"]


def test_raising_max_trials_runs_a_finished_sweep_again(sweeps, operator, custom, namespace) -> None:
    """A sweep that used up its trial budget runs again when maxTrials is raised (Katib's LongRunning)."""
    sweeps.create("more", sweep_spec(maxTrials=2, parallelTrials=2))
    wait_for("two trials", lambda: len(sweeps.trials("more")) == 2, timeout=30)
    sweeps.succeed("more-0", 2.0)
    sweeps.succeed("more-1", 1.0)
    assert sweeps.wait_phase("more", "Succeeded")["trials"]["created"] == 2
    patch = {"spec": {"maxTrials": 3}}
    custom.patch_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxsweeps", "more", patch)
    wait_for("a third trial", lambda: len(sweeps.trials("more")) == 3, timeout=30)
    assert "completionTime" not in sweeps.wait_phase("more", "Running")
    sweeps.succeed("more-2", 0.5)
    status = wait_for(
        "more Succeeded with 3 trials",
        lambda: (
            (s := sweeps.status("more")).get("phase") == "Succeeded" and s["trials"]["created"] == 3 and s
        ),
        timeout=30,
    )
    assert status["bestTrial"]["name"] == "more-2" and status["trials"]["succeeded"] == 3


SEARCH_SPACE_REPORT = json.dumps(
    {
        "parameters": [
            {"name": "learning_rate", "type": "float", "min": 1e-3, "max": 1e-1, "scale": "log"},
            {"name": "num_layers", "type": "discrete", "values": ["1", "2"]},
        ]
    }
)


def _describe_pod(core, namespace: str, sweep: str) -> dict | None:
    found = unless_missing(lambda: core.read_namespaced_pod(f"{sweep}-describe", namespace))
    return None if found is None else found.to_dict()


def _terminate(core, namespace: str, pod: str, code: int, message: str) -> None:
    """What the kubelet reports when the describe pod's trainer container exits."""
    state = {
        "terminated": {"exitCode": code, "message": message, "reason": "Completed" if code == 0 else "Error"}
    }
    container = {"name": "trainer", "image": "pax:dev", "imageID": "", "ready": False, "restartCount": 0}
    status = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{**container, "state": state}],
    }
    core.patch_namespaced_pod_status(pod, namespace, {"status": status})


def _experiment_sweep(**fields: object) -> dict:
    spec = sweep_spec(experimentSearchSpace=True, **fields)
    del spec["parameters"]
    return spec


def test_experiment_search_space_is_described_once_then_searched(
    sweeps, operator_factory, core, namespace
) -> None:
    holder = {"operator": operator_factory(namespace)}
    created = sweeps.create("exp", _experiment_sweep(maxTrials=3, parallelTrials=2))
    pod = wait_for("the describe pod", lambda: _describe_pod(core, namespace, "exp"), timeout=30)
    owner = pod["metadata"]["owner_references"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == (
        "PaxSweep",
        created["metadata"]["uid"],
        True,
    )
    assert "--describe_search_space" in pod["spec"]["containers"][0]["command"]
    assert pod["spec"]["security_context"]["run_as_non_root"] is True
    status = sweeps.status("exp")
    assert status["phase"] == "Pending" and sweeps.trials("exp") == []
    assert any(c["type"] == "Describing" and c["status"] == "True" for c in status["conditions"])

    _terminate(core, namespace, "exp-describe", 0, SEARCH_SPACE_REPORT)
    wait_for("the trials", lambda: len(sweeps.trials("exp")) == 2, timeout=30)
    wait_for("the describe pod deleted", lambda: _describe_pod(core, namespace, "exp") is None, timeout=30)
    assert json.loads(sweeps.status("exp")["searchSpace"]) == json.loads(SEARCH_SPACE_REPORT)
    # a restarted operator keeps the described space: no second describe pod
    holder["operator"].kill()
    holder["operator"] = operator_factory(namespace)
    sweeps.drive("exp", lr_objective, parallel=2, max_trials=3)
    status = sweeps.wait_phase("exp", "Succeeded")
    assert _describe_pod(core, namespace, "exp") is None
    trials = sweeps.trials("exp")
    assert [t["metadata"]["name"] for t in trials] == ["exp-0", "exp-1", "exp-2"]
    for index, trial in enumerate(trials):
        _check_trial(sweeps, trial, "exp", created["metadata"]["uid"], index)
        params = sweeps.params(trial)
        assert 1e-3 <= float(params["learning_rate"]) <= 1e-1 and params["num_layers"] in ("1", "2")
    assert set(status["bestTrial"]["parameters"]) == {"learning_rate", "num_layers"}


def test_a_failed_describe_pod_fails_the_sweep_with_its_message(sweeps, operator, core, namespace) -> None:
    sweeps.create("nospace", _experiment_sweep())
    wait_for("the describe pod", lambda: _describe_pod(core, namespace, "nospace"), timeout=30)
    result = {"exit_reason": "config_error", "message": "experiment X declares no search space", "attempt": 0}
    _terminate(core, namespace, "nospace-describe", 2, json.dumps(result))
    status = sweeps.wait_phase("nospace", "Failed")
    assert (
        status["message"] == "the describe pod nospace-describe failed: experiment X declares no search space"
    )
    wait_for(
        "the describe pod deleted", lambda: _describe_pod(core, namespace, "nospace") is None, timeout=30
    )
    assert sweeps.trials("nospace") == []


def test_a_trial_creation_forbidden_by_a_quota_is_reported_then_retried(
    sweeps, operator, core, custom, namespace
) -> None:
    """A ResourceQuota admits one PaxJob: the second trial's creation is refused 403 (exceeded quota). It
    raised out of the reconcile and was retried in silence; now condition TrialCreationBlocked and a Warning
    event say why, and the trial is created once the quota has room (the quota controller does not run
    here: the test writes the quota's usage as it would)."""
    from kubernetes import client

    quota = client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="paxjobs"),
        spec=client.V1ResourceQuotaSpec(hard={"count/paxjobs.pax.dev": "1"}),
    )
    core.create_namespaced_resource_quota(namespace, quota)

    def usage(used: int) -> None:
        status = {
            "status": {"hard": {"count/paxjobs.pax.dev": "1"}, "used": {"count/paxjobs.pax.dev": str(used)}}
        }
        core.patch_namespaced_resource_quota_status("paxjobs", namespace, status)

    usage(0)
    sweeps.create("quota", sweep_spec(maxTrials=2, parallelTrials=2))

    def blocked() -> dict | None:
        status = sweeps.status("quota")
        found = [c for c in status.get("conditions") or [] if c["type"] == "TrialCreationBlocked"]
        return found[0] if found and found[0]["status"] == "True" else None

    condition = wait_for("quota: TrialCreationBlocked", blocked, 60)
    assert "quota-1" in condition["message"] and "exceeded quota" in condition["message"]
    assert [t["metadata"]["name"] for t in sweeps.trials("quota")] == ["quota-0"]
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=quota").items
    assert any(e.reason == "TrialCreationBlocked" and e.type == "Warning" for e in events)
    assert sweeps.status("quota")["trials"]["created"] == 1

    usage(0)  # room again (as the quota controller would count after a deletion)
    wait_for("quota: quota-1 created", lambda: len(sweeps.trials("quota")) == 2, 90)
    cleared = wait_for(
        "quota: TrialCreationBlocked cleared",
        lambda: [
            c
            for c in sweeps.status("quota").get("conditions") or []
            if c["type"] == "TrialCreationBlocked" and c["status"] == "False"
        ],
        30,
    )
    assert cleared[0]["reason"] == "TrialsCreated"
    sweeps.succeed("quota-0", 1.0)
    sweeps.succeed("quota-1", 2.0)
    status = sweeps.wait_phase("quota", "Succeeded")
    assert status["trials"]["created"] == 2 and status["bestTrial"]["name"] == "quota-0"
