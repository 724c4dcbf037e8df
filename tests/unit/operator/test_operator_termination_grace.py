"""spec.terminationGracePeriodSeconds: parsed and bounded as the CRD says, rendered into every gang pod and
into PAX_TERMINATION_GRACE_SECONDS from the one field, and invisible to the pod-spec-hash of jobs that leave
it unset (an upgrade recreates no running gang)."""

from __future__ import annotations

from typing import Any

import pax_contract as contract
import pytest
import yaml
from pax_cluster.procs import DEPLOY
from pax_operator.core.plan import SETTLE_REQUEUE_SECONDS
from pax_operator.core.render import pod_spec_hash, render_gang
from pax_operator.spec import (
    DEFAULT_TERMINATION_GRACE_SECONDS,
    MAX_TERMINATION_GRACE_SECONDS,
    PaxJobSpec,
    Phase,
)
from pax_operator.sweep.algorithms import Search
from pax_operator.sweep.decide import SweepRef, render_trial
from pax_operator.sweep.spec import PaxSweepSpec
from paxjob_factory import JOB, make_pod, make_spec, step
from pydantic import ValidationError
from sweep_sim import sweep_spec

FIELD = "terminationGracePeriodSeconds"


def _crd_spec(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((DEPLOY / "crds" / name).read_text())
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


def _grace_of(pod: dict[str, Any]) -> tuple[int, str]:
    (trainer,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    return pod["spec"]["terminationGracePeriodSeconds"], env[contract.ENV_TERMINATION_GRACE]


def test_unset_is_kubernetes_default_written_out() -> None:
    assert make_spec().termination_grace_period_seconds == DEFAULT_TERMINATION_GRACE_SECONDS == 30
    assert {_grace_of(pod) for pod in render_gang(JOB, make_spec(), attempt=0)} == {(30, "30")}


@pytest.mark.parametrize(
    "topology",
    [{"cpu": {"hosts": 3}}, {"tpu": {"acceleratorType": "v5p", "topology": "2x2x2", "slices": 2}}],
)
def test_a_set_grace_period_reaches_every_pod_and_the_trainer(topology: dict[str, object]) -> None:
    spec = make_spec(topology=topology, terminationGracePeriodSeconds=900)
    pods = render_gang(JOB, spec, attempt=2)
    assert len(pods) == spec.topology.hosts > 1
    assert {_grace_of(pod) for pod in pods} == {(900, "900")}
    (trainer,) = pods[-1]["spec"]["containers"]
    told = contract.TrainerEnv.from_env({e["name"]: e["value"] for e in trainer["env"] if "value" in e})
    assert told.termination_grace_s == 900


@pytest.mark.parametrize("value", [1, 30, MAX_TERMINATION_GRACE_SECONDS])
def test_bounds_admit(value: int) -> None:
    assert make_spec(terminationGracePeriodSeconds=value).termination_grace_period_seconds == value


@pytest.mark.parametrize("value", [0, -1, MAX_TERMINATION_GRACE_SECONDS + 1, 86400, "30s", 1.5])
def test_bounds_refuse_naming_the_field(value: object) -> None:
    with pytest.raises(ValidationError) as err:
        make_spec(terminationGracePeriodSeconds=value)
    assert FIELD in str(err.value)


def test_the_operator_repeats_the_crd_bounds_and_the_crd_has_no_default() -> None:
    """No CRD default: the apiserver would add the field to every stored PaxJob, and an operator rolled back
    to a version without it (extra fields forbidden) could then parse none of them."""
    node = _crd_spec("pax.dev_paxjobs.yaml")["properties"][FIELD]
    assert (node["type"], node["minimum"], node["maximum"]) == ("integer", 1, MAX_TERMINATION_GRACE_SECONDS)
    assert "default" not in node
    info = PaxJobSpec.model_fields["termination_grace_period_seconds"]
    bounds = {type(m).__name__: m for m in info.metadata}
    assert (bounds["Ge"].ge, bounds["Le"].le) == (1, MAX_TERMINATION_GRACE_SECONDS)


def test_the_crd_allows_a_change_only_while_suspended() -> None:
    crd = yaml.safe_load((DEPLOY / "crds" / "pax.dev_paxjobs.yaml").read_text())
    rules = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    (rule,) = [r for r in rules if r.get("fieldPath") == f".spec.{FIELD}"]
    assert rule["rule"].startswith("oldSelf.spec.suspend ||") and rule["reason"] == "FieldValueForbidden"


def test_pod_spec_hash_unchanged_for_jobs_without_the_field() -> None:
    """Running gangs of jobs that never set the field (all of them, at the upgrade) keep their hash (pinned
    in test_operator_version_skew); the default written out is the same pods, so the same hash too."""
    assert pod_spec_hash(make_spec()) == "7f601d000c4c3677"
    assert pod_spec_hash(make_spec(terminationGracePeriodSeconds=30)) == pod_spec_hash(make_spec())


def test_another_grace_period_is_another_gang() -> None:
    """The pods carry it and a pod's grace period cannot be edited: a value changed while suspended and
    resumed before the operator saw the suspension makes the running gang outdated (SpecChanged)."""
    assert pod_spec_hash(make_spec(terminationGracePeriodSeconds=600)) != pod_spec_hash(make_spec())


def test_a_sweep_trial_carries_it() -> None:
    """A PaxSweep's template is a PaxJob spec: the generated CRD copies the field and its bounds, and each
    trial PaxJob gets the template's value."""
    node = _crd_spec("pax.dev_paxsweeps.yaml")["properties"]["template"]["properties"][FIELD]
    assert (node["minimum"], node["maximum"], "default" in node) == (1, MAX_TERMINATION_GRACE_SECONDS, False)
    raw = sweep_spec()
    raw["template"] = raw["template"] | {FIELD: 1200}
    spec = PaxSweepSpec.model_validate(raw)
    assert spec.template.termination_grace_period_seconds == 1200
    proposal = Search(spec).propose()
    assert proposal is not None
    trial = render_trial(SweepRef("lr", "ns", "u1"), spec, raw["template"], 0, proposal, after=0)
    assert trial["spec"][FIELD] == 1200
    assert {_grace_of(pod) for pod in render_gang(JOB, PaxJobSpec.model_validate(trial["spec"]), 0)} == {
        (1200, "1200")
    }


def test_a_restart_waits_for_the_old_gang_up_to_its_grace_period_never_shortening_it() -> None:
    """The documented interplay: a preemption's restart deletes the old gang with the pods' own grace period
    (no gracePeriodSeconds; a failed attempt's gets at most 30 s: test_operator_failed_gang_grace) and
    creates the new one only once every old pod is gone; a scheduled pod still terminating (its SIGTERM'd
    trainer saving, for up to the grace period) is waited for, never forced."""
    spec = make_spec(terminationGracePeriodSeconds=MAX_TERMINATION_GRACE_SECONDS)
    created = step(None, [], spec).status
    running = step(created, [make_pod(0), make_pod(1)], spec).status
    restart = step(running, [make_pod(0), make_pod(1, disruption="PreemptionByScheduler")], spec)
    assert restart.status is not None and restart.status.phase is Phase.RESTARTING
    assert [name for name, _ in restart.delete_pods] == ["lm-0", "lm-1"] and restart.force_delete_pods == []
    assert restart.delete_grace == {}
    saving = make_pod(0, deleting=True)
    saving["spec"] = {"nodeName": "node-a"}  # a kubelet runs it: its trainer may save until the grace ends
    for later in (30, 600, MAX_TERMINATION_GRACE_SECONDS):
        waiting = step(restart.status, [saving], spec, now_plus=later)
        assert (waiting.create_pods, waiting.force_delete_pods) == ([], [])
        assert waiting.requeue_after == SETTLE_REQUEUE_SECONDS
    gang = step(restart.status, [], spec, now_plus=MAX_TERMINATION_GRACE_SECONDS).create_pods
    assert {_grace_of(pod) for pod in gang} == {(MAX_TERMINATION_GRACE_SECONDS, "3600")}
    assert {pod["metadata"]["labels"]["pax.dev/restart-attempt"] for pod in gang} == {"1"}
