"""PaxSweep against hostile or odd inputs: non-finite objectives, hand-edited trial records and labels, a
forbidden trial creation, a deleted sweep's GP-bandit suggestion. Each case made a sweep stall for ever (or
slowed the others) before its fix."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_api import FakeApi
from pax_operator.sweep.decide import SweepPlan, TrialView, trial_view
from pax_operator.sweep.reconcile import SweepReconciler
from pax_operator.sweep.spec import PaxSweepSpec, PaxSweepStatus
from sweep_sim import Sim, sweep_spec


def _strict_json(status: PaxSweepStatus) -> None:
    """The apiserver refuses a body with Infinity or NaN (not JSON): every status write would fail."""
    json.dumps(status.to_api(), allow_nan=False)


@pytest.mark.parametrize(
    ("goal", "value"), [("minimize", math.inf), ("maximize", math.inf), ("minimize", -math.inf)]
)
def test_an_infinite_objective_is_a_failed_trial_and_the_status_stays_writable(
    goal: str, value: float
) -> None:
    """A diverged trial that still succeeded (loss = inf) became the best trial with objective inf: the
    status body carried `Infinity`, the apiserver refused every status write, the sweep never ended."""
    objective = {"metric": "eval_test/loss", "goal": goal, "valueForNaN": 5.0}
    sim = Sim(sweep_spec(objective=objective, maxTrials=2, parallelTrials=1))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": value}, step=10)
    sim.step()
    _strict_json(sim.status)
    assert sim.status.trials.failed == 1 and sim.status.best_trial is None
    result = json.loads(sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert result["state"] == "Failed" and "no finite eval_test/loss" in result["message"]
    sim.set_status("sw-1", "Succeeded", {"eval_test/loss": 2.0}, step=10)
    sim.step()
    _strict_json(sim.status)
    assert sim.status.phase == "Succeeded" and sim.status.best_trial is not None
    assert sim.status.best_trial.name == "sw-1"


@pytest.mark.parametrize(
    "result",
    [
        '{"state": "Succeeded", "seq": 0}',  # no objective: an assert failed in every pass
        '{"state": "Succeeded", "objective": 1e999, "seq": 0}',  # JSON reads it as inf
        '{"state": "Succeeded", "objective": "Infinity", "seq": 0}',
        '{"state": "Succeeded", "objective": NaN, "seq": 0}',
        '{"state": "Won", "objective": 1.0, "seq": 0}',
        '{"state": "Succeeded", "objective": 1.0, "seq": -4}',
    ],
)
def test_a_tampered_result_record_reads_as_absent_and_the_sweep_goes_on(result: str) -> None:
    sim = Sim(sweep_spec(maxTrials=2, parallelTrials=1))
    sim.step()
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 3.0}, step=10)
    sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-result"] = result
    sim.restart()
    sim.step()  # raised AssertionError (or wrote an unwritable status) in every pass
    _strict_json(sim.status)
    recorded = json.loads(sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert recorded["state"] == "Succeeded" and recorded["objective"] == 3.0  # read again from the PaxJob
    sim.run(lambda name, params: ("Succeeded", 2.0))
    assert sim.status.phase == "Succeeded" and sim.status.trials.succeeded == 2
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-1"


@pytest.mark.parametrize("label", ["5000", "1", "x", "-1"])
def test_a_tampered_trial_index_label_changes_nothing(label: str) -> None:
    """The index came from the editable pax.dev/trial-index label: 5000 made the rebuild replay 5,001
    proposals and count 5,001 trials against maxTrials=4 (10**9 hung the worker), "1" made two trials
    claim index 1 (one record lost to the replay), "x" hid the trial. The name `<sweep>-<index>` the
    sweep gave it cannot be edited."""
    sim = Sim(sweep_spec(maxTrials=4, parallelTrials=2))
    sim.step()
    sim.jobs["sw-0"]["metadata"]["labels"]["pax.dev/trial-index"] = label
    view = trial_view(sim.jobs["sw-0"])
    assert view is not None and view.index == 0
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=1)
    sim.restart()
    sim.step()
    assert sim.status.trials.created == 3 and sorted(sim.jobs) == ["sw-0", "sw-1", "sw-2"]
    sim.run(lambda name, params: ("Succeeded", 2.0))
    assert sim.status.phase == "Succeeded" and sim.status.trials.succeeded == 4


def test_a_trial_named_beyond_any_budget_is_not_a_trial() -> None:
    """Indices are bounded by maxTrials' maximum (10,000): a PaxJob made to look like trial 10**9 (the
    sweep's label and owner reference) would make the rebuild replay 10**9 proposals."""
    sim = Sim(sweep_spec(maxTrials=4, parallelTrials=1))
    sim.step()
    forged = json.loads(json.dumps(sim.jobs["sw-0"]))
    forged["metadata"]["name"] = "sw-1000000000"
    forged["metadata"]["labels"]["pax.dev/trial-index"] = "1000000000"
    assert trial_view(forged) is None
    forged["metadata"]["name"] = "other-3"
    forged["metadata"]["labels"]["pax.dev/trial-index"] = "3"
    assert trial_view(forged) is None  # not the sweep's name


def _sweep_object(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "metadata": {
            "name": "sw",
            "namespace": "ns",
            "uid": "uid-1",
            "resourceVersion": "1",
            "generation": 1,
        },
        "spec": sweep_spec(**spec),
    }


def test_a_forbidden_trial_creation_is_reported_not_raised() -> None:
    """A 403 on a trial's creation (a ResourceQuota on paxjobs, the namespace terminating, the operator's
    RBAC missing there) raised out of the reconcile: retried in silence for ever (a log line), the sweep
    Pending with no event or condition. Now it says why (Warning event, condition TrialCreationBlocked) and
    looks again later; the condition clears once trials are created."""
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    api.fail["POST paxjobs"] = [403]
    reconciler = SweepReconciler(api.clients())
    delay = reconciler.reconcile("ns", "sw")
    assert delay is not None and delay >= 10
    assert "POST events" in api.calls and "PUT paxsweeps/status" in api.calls
    status = api.bodies[api.calls.index("PUT paxsweeps/status")]["status"]
    blocked = [c for c in status["conditions"] if c["type"] == "TrialCreationBlocked"]
    assert blocked and blocked[0]["status"] == "True" and "sw-0" in blocked[0]["message"]
    assert status["trials"]["created"] == 0 and status["trials"]["running"] == 0
    event = api.bodies[api.calls.index("POST events")]
    assert event["type"] == "Warning" and event["reason"] == "TrialCreationBlocked"
    assert "Forbidden" in event["message"]

    api.calls.clear()
    api.bodies.clear()
    api.answers["GET paxsweeps"] = {**_sweep_object(), "status": status}
    reconciler.reconcile("ns", "sw")
    assert api.calls.count("POST paxjobs") == 2
    status = api.bodies[api.calls.index("PUT paxsweeps/status")]["status"]
    blocked = [c for c in status["conditions"] if c["type"] == "TrialCreationBlocked"]
    assert blocked and blocked[0]["status"] == "False" and status["trials"]["created"] == 2


def _view(index: int, params: dict[str, str], phase: str = "Running") -> TrialView:
    return TrialView(name=f"sw-{index}", uid=f"u{index}", index=index, dna=json.dumps(params), params=params)


def test_gp_bandit_skips_trials_whose_recorded_values_are_not_points_of_the_space() -> None:
    """Hand-edited params in a trial record reached Vizier as they were: float('abc'), an unknown name or a
    value out of range raised in the worker at every suggestion (SuggestionFailed for ever)."""
    from pax_operator.sweep.decide import TrialResult

    class Recording:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        def ask(self, uid: str, key: tuple[Any, ...], args: tuple[Any, ...], **_: Any) -> None:
            self.calls.append(args)

    spec = PaxSweepSpec.model_validate(
        sweep_spec(
            algorithm={"name": "gpBandit"},
            parameters=[
                {"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1, "scale": "log"},
                {"name": "layers", "type": "int", "min": 1, "max": 4},
                {"name": "act", "type": "discrete", "values": ["relu", "gelu"]},
            ],
        )
    )
    good = {"learning_rate": "0.01", "layers": "2", "act": "relu"}
    bad = [
        {**good, "learning_rate": "abc"},
        {**good, "learning_rate": "5.0"},
        {**good, "layers": "2.5"},
        {**good, "act": "tanh"},
        {**good, "extra": "1"},
        {"learning_rate": "0.01"},
    ]
    done = TrialResult("Succeeded", 1.0, seq=0)
    trials = [replace_result(_view(0, good), done)]
    trials += [
        replace_result(_view(i + 1, p), TrialResult("Succeeded", 1.0, seq=i + 1)) for i, p in enumerate(bad)
    ]
    trials += [_view(20, good), _view(21, {**good, "layers": "9"})]
    recording = Recording()
    reconciler = SweepReconciler(clients=None, suggester=recording)  # type: ignore[arg-type]
    reconciler._bandit("u", spec, PaxSweepStatus(), trials, SweepPlan(new_trials=1), 22, 7)
    completed, active = recording.calls[0][4], recording.calls[0][5]
    assert completed == [(good, 1.0)] and active == [good]


def replace_result(trial: TrialView, result: Any) -> TrialView:
    from dataclasses import replace

    return replace(trial, result=result)


def test_a_deleted_sweeps_suggestion_frees_the_worker_at_once() -> None:
    """Forgetting a deleted sweep dropped its queued job only: a suggestion of it that hung kept the single
    worker (every GP-bandit sweep's) busy up to the 10-minute deadline, and its result stayed in memory."""
    from pax_operator.sweep.vizier import Suggester
    from sweep_stub_suggest import slow_suggestion

    suggester = Suggester(deadline=600.0, function=slow_suggestion)
    try:
        end = time.monotonic() + 60
        while suggester.poll("warm", (0, 0, 1), (0.0, "warm")) is None and time.monotonic() < end:
            time.sleep(0.05)
        assert suggester.poll("gone", (0, 0, 1), (600.0, "gone")) is None  # the worker takes it
        assert suggester.poll("B", (0, 0, 1), (0.1, "B")) is None  # queued behind it
        suggester.forget("gone")  # the sweep was deleted
        outcome = None
        end = time.monotonic() + 60  # far below the 600 s the forgotten suggestion would take
        while outcome is None and time.monotonic() < end:
            outcome = suggester.poll("B", (0, 0, 1), (0.1, "B"))
            time.sleep(0.05)
        assert outcome == [{"tag": "B"}]
        assert "gone" not in suggester._finished and "gone" not in suggester._expired
    finally:
        suggester.close()


def test_a_deleted_sweep_is_reconciled_once_more_to_forget_it() -> None:
    """The DELETED event only dropped the key's requeue: a sweep deleted before it had trials (describing,
    or waiting for its first GP-bandit suggestion) was never reconciled again, so its algorithm stayed in
    memory and its queued suggestion still took the single worker, for nobody."""
    import asyncio

    import kopf
    from pax_operator.sweep.handlers import paxsweep_event

    class Queue:
        def __init__(self) -> None:
            self.calls: list[tuple[str, tuple[str, str]]] = []

        def add(self, key: tuple[str, str]) -> None:
            self.calls.append(("add", key))

        def forget(self, key: tuple[str, str]) -> None:
            self.calls.append(("forget", key))

    memo = kopf.Memo(sweep_queue=Queue())
    asyncio.run(paxsweep_event(event={"type": "DELETED", "object": {}}, name="sw", namespace="ns", memo=memo))
    assert memo.sweep_queue.calls == [("forget", ("ns", "sw")), ("add", ("ns", "sw"))]
    api = FakeApi()
    api.fail["GET paxsweeps"] = [404]
    reconciler = SweepReconciler(api.clients(), suggester=Forgetting())
    reconciler._uids[("ns", "sw")] = "uid-1"
    assert reconciler.reconcile("ns", "sw") is None
    assert reconciler.suggester.forgotten == ["uid-1"]  # type: ignore[attr-defined]


class Forgetting:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, uid: str) -> None:
        self.forgotten.append(uid)


def test_a_rebuild_replays_dna_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuild (every operator start, per sweep) materialized each replayed proposal into override values
    it then threw away: with PyGlove that was a third of a proposal's cost (1,000 records: ~1.4x the time,
    seconds of a sweep worker's CPU). The replay compares DNA only, and still finds every divergence."""
    from pax_operator.sweep.algorithms import Record, Search, SearchSpace

    spec = PaxSweepSpec.model_validate(sweep_spec(maxTrials=30))
    live = Search(spec)
    records = []
    for index in range(30):
        proposal = live.propose()
        assert proposal is not None
        records.append(Record(index, proposal.dna, live.fed, live.fed, -1.0))
        live.feedback(proposal.dna, -1.0)

    def materialize(*_: Any) -> None:
        raise AssertionError("a replay materialized a proposal")

    monkeypatch.setattr(SearchSpace, "proposal", materialize)
    rebuilt = Search(spec)
    rebuilt.replay(records, 30, 30)
    assert rebuilt.diverged == 0 and rebuilt.proposed == 30 and rebuilt.fed == 30
    tampered = [records[0], Record(1, records[2].dna, records[1].after, 1, -1.0), *records[2:]]
    other = Search(spec)
    other.replay(tampered, 30, 30)
    assert other.diverged == 1
    monkeypatch.undo()
    assert rebuilt.propose() == live.propose()  # the same state as the uninterrupted run


def test_a_forbidden_trial_is_created_later_from_the_same_proposal_without_a_rebuild() -> None:
    """The point drawn for a trial whose creation was forbidden put the algorithm one proposal ahead of the
    records, so every retry (each 30 s while a quota stays full) rebuilt the search by replaying every record
    (seconds of CPU for a 1,000-trial sweep). It is now kept and created on the next pass: the same trials,
    one build, and the records replay without divergence."""
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    api.fail["POST paxjobs"] = [0, 403]  # sw-0 is created (0: no failure), sw-1 is forbidden
    reconciler = SweepReconciler(api.clients())
    reconciler.reconcile("ns", "sw")
    bodies = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "POST paxjobs"]
    tried = bodies[1]["metadata"]["annotations"]["pax.dev/sweep-trial"]
    created = [_stored(bodies[0], 0)]
    status = api.bodies[api.calls.index("PUT paxsweeps/status")]["status"]
    assert status["trials"]["created"] == 1

    api.calls.clear()
    api.bodies.clear()
    api.answers["GET paxsweeps"] = {**_sweep_object(), "status": status}
    api.answers["LIST paxjobs"] = {"items": created}
    reconciler.reconcile("ns", "sw")
    bodies = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "POST paxjobs"]
    assert [b["metadata"]["name"] for b in bodies] == ["sw-1"]
    assert bodies[0]["metadata"]["annotations"]["pax.dev/sweep-trial"] == tried
    assert reconciler.rebuilds == 1  # was 2: the retry replayed every record

    fresh = SweepReconciler(api.clients())
    spec = PaxSweepSpec.model_validate(sweep_spec())
    views = [trial_view(job) for job in [*created, _stored(bodies[0], 1)]]
    search, error = fresh._search("uid-1", spec, PaxSweepStatus(), [v for v in views if v is not None])
    assert error is None and search is not None and search.diverged == 0


def _stored(body: dict[str, Any], index: int) -> dict[str, Any]:
    """A created trial PaxJob as the apiserver returns it (the sweep's controller reference kept)."""
    job = json.loads(json.dumps(body))
    job["metadata"]["uid"] = f"trial-{index}"
    return job


UNPICKLED: list[str] = []


def _unpickled(tag: str) -> str:
    """What a forged trial record ran inside the operator: it only records that it ran."""
    UNPICKLED.append(tag)
    return tag


class _Payload:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_unpickled, ("ran in the operator",))


def _forged_dna() -> str:
    """PyGlove's JSON for an opaque object: base64 pickle, which pg.from_json_str unpickles."""
    import base64
    import pickle

    value = base64.encodebytes(pickle.dumps(_Payload())).decode()
    return json.dumps({"_type": "pyglove.core.utils.json_conversion._OpaqueObject", "value": value})


@pytest.mark.parametrize(
    "dna", ["PAYLOAD", "5", "[1, 2]", "null", '"x"', '{"a": 1}', '{"_type": "os.system"}']
)
def test_a_forged_dna_is_never_deserialized_by_pyglove_and_the_sweep_goes_on(dna: str) -> None:
    """A trial record's DNA went to pg.from_json_str, which builds any registered type and unpickles
    `_OpaqueObject`s: anyone allowed to annotate a trial PaxJob (pax-paxjob-editor) ran code in the operator
    (its ServiceAccount creates pods in every namespace) at the next rebuild. A DNA that parsed but was no
    DNA (5, [1, 2], null...) raised AttributeError in every pass. The sweep now reads only PyGlove's compact
    DNA form itself (numbers and lists); anything else reads as no DNA: not fed back, the sweep goes on."""
    UNPICKLED.clear()
    sim = Sim(sweep_spec(maxTrials=3, parallelTrials=1))
    sim.step()
    record = json.loads(sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-trial"])
    record["dna"] = _forged_dna() if dna == "PAYLOAD" else dna
    sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-trial"] = json.dumps(record)
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 1.0}, step=1)
    sim.step()
    sim.restart()  # the rebuild replays (and feeds back) the forged record
    sim.run(lambda name, params: ("Succeeded", 2.0))
    assert UNPICKLED == []
    assert sim.status.phase == "Succeeded" and sim.status.trials.succeeded == 3


def test_a_trial_whose_overrides_were_edited_is_a_failed_trial_not_the_best() -> None:
    """PaxJob lets overrides change while a job is suspended: a trial edited to another learning rate
    (suspend, edit, resume) was credited to the proposed one: fed back to the algorithm and shown as
    status.bestTrial with parameters it never ran."""
    sim = Sim(sweep_spec(maxTrials=2, parallelTrials=2))
    sim.step()
    proposed = sim.params("sw-0")["learning_rate"]
    sim.jobs["sw-0"]["spec"]["overrides"]["learning_rate"] = "0.5"
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 0.001}, step=10)
    sim.set_status("sw-1", "Succeeded", {"eval_test/loss": 2.0}, step=10)
    sim.step()
    result = json.loads(sim.jobs["sw-0"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert result["state"] == "Failed" and result["objective"] is None
    assert "learning_rate='0.5'" in result["message"] and proposed in result["message"]
    assert sim.status.phase == "Succeeded" and sim.status.best_trial is not None
    assert sim.status.best_trial.name == "sw-1" and sim.status.trials.failed == 1


@pytest.mark.parametrize("where", ["propose", "feedback"])
def test_an_algorithm_that_raises_fails_its_sweep_visibly(
    monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Only ValueError from PyGlove was the algorithm's: any other exception (an algorithm's bug, a
    RuntimeError) raised out of every reconcile of the sweep, retried in silence for ever (a log line)."""
    import pyglove as pg
    from pax_operator.sweep import algorithms

    class Broken(pg.geno.Random):  # type: ignore[misc]
        def _propose(self) -> pg.DNA:
            if where == "propose":
                raise RuntimeError("the generator broke")
            return super()._propose()

        def _feedback(self, dna: pg.DNA, reward: float) -> None:
            raise RuntimeError("the generator broke")

    monkeypatch.setattr(algorithms, "make_generator", lambda spec: Broken(seed=1))
    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object(maxTrials=2, parallelTrials=1)
    api.answers["LIST paxjobs"] = {"items": []}
    reconciler = SweepReconciler(api.clients())
    if where == "feedback":
        reconciler.reconcile("ns", "sw")
        trial = _stored(api.bodies[api.calls.index("POST paxjobs")], 0)
        trial["status"] = {"phase": "Succeeded", "progress": {"step": 1, "metrics": {"eval_test/loss": 1.0}}}
        status = api.bodies[api.calls.index("PUT paxsweeps/status")]["status"]
        api.answers["GET paxsweeps"] = {**_sweep_object(maxTrials=2, parallelTrials=1), "status": status}
        api.answers["LIST paxjobs"] = {"items": [trial]}
        reconciler.reconcile("ns", "sw")  # feeds back (and fails), then the rebuild says why
        patched = api.bodies[api.calls.index("PATCH paxjobs")]["metadata"]["annotations"]
        trial["metadata"]["annotations"].update(patched)
        status = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "PUT paxsweeps/status"][-1]
        api.answers["GET paxsweeps"] = {**_sweep_object(maxTrials=2, parallelTrials=1), **status}
        api.calls.clear()
        api.bodies.clear()
    assert reconciler.reconcile("ns", "sw") is not None  # raised RuntimeError in every pass
    status = [b for c, b in zip(api.calls, api.bodies, strict=True) if c == "PUT paxsweeps/status"][-1]
    assert status["status"]["phase"] == "Failed"
    assert "RuntimeError: the generator broke" in status["status"]["message"]


def _holder(owner: dict[str, Any] | None, terminating: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "sw-0", "namespace": "ns", "uid": "held"}
    if owner is not None:
        metadata["ownerReferences"] = [{"apiVersion": "pax.dev/v1alpha1", "controller": True, **owner}]
    if terminating:
        metadata["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {"metadata": metadata}


PREDECESSOR = {"kind": "PaxSweep", "name": "sw", "uid": "uid-old"}


@pytest.mark.parametrize(
    ("owner", "terminating", "waits"),
    [
        (PREDECESSOR, True, True),  # `kubectl delete psw sw && kubectl apply -f sw.yaml`: being deleted
        (PREDECESSOR, False, True),  # the garbage collector has not reached it yet
        (None, True, True),  # someone's PaxJob of that name, being deleted
        (None, False, False),  # someone's PaxJob: never touched, the sweep fails
        ({"kind": "PaxSweep", "name": "other", "uid": "uid-other"}, False, False),
    ],
    ids=["predecessor-terminating", "predecessor-awaiting-gc", "terminating", "foreign", "other-sweeps"],
)
def test_a_trial_name_held_by_a_deleted_same_named_sweep_is_waited_for(
    owner: dict[str, Any] | None, terminating: bool, waits: bool
) -> None:
    """A sweep deleted and applied again (by hand, by GitOps, after its TTL) met its predecessor's trials,
    deleted in the background, and failed for good: TrialNameTaken."""
    from pax_operator.sweep.reconcile import PREDECESSOR_RETRY_SECONDS

    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object()
    api.answers["LIST paxjobs"] = {"items": []}
    api.fail["POST paxjobs"] = [409]
    api.answers["GET paxjobs"] = _holder(owner, terminating)
    delay = SweepReconciler(api.clients()).reconcile("ns", "sw")
    statuses = [body["status"] for call, body in zip(api.calls, api.bodies, strict=True) if "status" in call]
    if waits:
        assert delay == PREDECESSOR_RETRY_SECONDS and not statuses, api.calls
        return
    assert statuses[-1]["phase"] == "Failed", statuses
    assert "PaxJob sw-0 exists and is not a trial of this sweep" in statuses[-1]["message"]


def test_a_describe_pod_name_held_by_a_deleted_same_named_sweep_is_waited_for() -> None:
    """The same for an experimentSearchSpace sweep's describe pod: it failed the sweep InvalidSearchSpace."""
    from pax_operator.sweep.reconcile import PREDECESSOR_RETRY_SECONDS

    api = FakeApi()
    api.answers["GET paxsweeps"] = _sweep_object(experimentSearchSpace=True)
    del api.answers["GET paxsweeps"]["spec"]["parameters"]
    api.answers["LIST paxjobs"] = {"items": []}
    api.answers["GET pods"] = _holder(PREDECESSOR, terminating=False)
    delay = SweepReconciler(api.clients()).reconcile("ns", "sw")
    assert delay == PREDECESSOR_RETRY_SECONDS, api.calls
    assert not [call for call in api.calls if "status" in call or call.startswith("POST")], api.calls


def test_median_stopping_ranks_a_diverged_trial_as_the_worst() -> None:
    """A trial at loss inf among the others made the rank cutoff NaN (2 + (inf - 2) * 0): nothing compared
    worse than NaN, so median stopping stopped no trial while a diverged one ran."""
    from pax_operator.sweep.decide import _quantile

    rules = {"rules": [{"step": 10, "percentile": 50, "minTrials": 3}]}
    sim = Sim(sweep_spec(earlyStopping=rules, maxTrials=4, parallelTrials=4))
    sim.step()
    for name, loss in {"sw-0": 1.0, "sw-1": 2.0, "sw-2": math.inf, "sw-3": 50.0}.items():
        sim.set_status(name, "Running", {"eval_test/loss": loss}, step=10, evalStep=10)
    plan = sim.step()
    # sw-3 (50.0) vs the median 2 of [1, 2, inf]; sw-2 (inf) vs the median 2 of [1, 2, 50]
    assert sorted(name for name, _ in plan.stops) == ["sw-2", "sw-3"], plan.stops
    assert _quantile([1.0, math.inf], 0.0) == 1.0
    assert _quantile([1.0, math.inf], 0.5) == math.inf
    assert _quantile([-math.inf, 1.0], 0.5) == -math.inf
    assert _quantile([-math.inf, math.inf], 0.5) == math.inf  # the later (worse) one: stops least


def test_a_nan_measurement_is_written_once() -> None:
    """NaN != NaN: a trial whose objective stayed NaN got its measurements PATCHed again on every pass."""
    sim = Sim(sweep_spec(maxTrials=1, parallelTrials=1))
    sim.step()
    sim.set_status("sw-0", "Running", {"eval_test/loss": math.nan}, step=10, evalStep=10)
    assert [name for name, _ in sim.step().measurements] == ["sw-0"]
    assert sim.step().measurements == []


def test_a_stopped_trial_that_failed_or_succeeded_first_is_judged_by_how_it_ended() -> None:
    """A trial asked to stop that crashed (OOM) or finished before its suspension took effect was recorded
    EarlyStopped: the crash did not count toward maxFailedTrials and fed its last loss back as a feasible
    value; the finished run could never be the best trial."""
    rules = {"rules": [{"step": 10, "threshold": 5.0}]}
    sim = Sim(sweep_spec(earlyStopping=rules, maxTrials=3, parallelTrials=3, maxFailedTrials=0))
    sim.step()
    for name, loss in {"sw-0": 6.0, "sw-1": 7.0, "sw-2": 8.0}.items():
        sim.set_status(name, "Running", {"eval_test/loss": loss}, step=10, evalStep=10)
    assert sorted(name for name, _ in sim.step().stops) == ["sw-0", "sw-1", "sw-2"]
    sim.set_status("sw-0", "Succeeded", {"eval_test/loss": 0.5}, step=100)
    sim.set_status("sw-1", "Suspended")
    sim.step()
    results = {
        n: json.loads(j["metadata"]["annotations"]["pax.dev/sweep-result"])
        for n, j in sim.jobs.items()
        if "pax.dev/sweep-result" in j["metadata"]["annotations"]
    }
    assert results["sw-0"]["state"] == "Succeeded" and results["sw-0"]["objective"] == 0.5
    assert results["sw-1"]["state"] == "EarlyStopped" and results["sw-1"]["objective"] == 7.0
    assert sim.status.best_trial is not None and sim.status.best_trial.name == "sw-0"
    sim.jobs["sw-2"]["status"] = {
        "phase": "Failed",
        "conditions": [{"type": "Failed", "status": "True", "message": "pod sw-2-0: OOMKilled"}],
    }
    sim.step()
    result = json.loads(sim.jobs["sw-2"]["metadata"]["annotations"]["pax.dev/sweep-result"])
    assert (
        result["state"] == "Failed" and "OOMKilled" in result["message"] and result.get("objective") is None
    )
    assert sim.status.phase == "Failed" and "maxFailedTrials=0" in (sim.status.message or "")
    counts = sim.status.trials
    assert (counts.succeeded, counts.early_stopped, counts.failed) == (1, 1, 1)
