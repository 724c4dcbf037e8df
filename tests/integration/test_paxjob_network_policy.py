"""The per-job NetworkPolicy and default requests on the real apiserver (issue 7 §4). The local cluster has
no network plugin, so the policy is not enforced here: this checks that the operator (under deploy/'s RBAC)
creates it before the pods, as rendered, owned by the PaxJob, and that the garbage collector removes it
with the job."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from pax_operator.adapters import kube
from pax_operator.core.render import JobRef, render_network_policy, render_service
from pax_operator.spec import PaxJobSpec
from paxjob_harness import OPERATOR_NAMESPACE, OperatorProcess, Pax, cpu_job, wait_for

from tests.api import unless_missing

pytestmark = pytest.mark.integration
GC_TIMEOUT_S = 60.0


def _policy(networking: client.NetworkingV1Api, namespace: str, name: str) -> dict | None:
    found = unless_missing(lambda: networking.read_namespaced_network_policy(name, namespace))
    return None if found is None else client.ApiClient().sanitize_for_serialization(found)


def test_operator_creates_network_policy_owned_by_the_job_and_gc_removes_it(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, pax: Pax
) -> None:
    networking = client.NetworkingV1Api(api)
    job = pax.create("lm", cpu_job(2, jobLogDir="gs://pax-test/lm", tensorboard={"enabled": True}))
    pods = pax.wait_pods("lm", 2, 0, timeout=60)
    policy = _policy(networking, namespace, "lm")
    assert policy is not None, "no NetworkPolicy next to the pods"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    # Created before the pods: the ports are never open to everyone.
    created = policy["metadata"]["creationTimestamp"]
    assert all(created <= p["metadata"]["creationTimestamp"] for p in pods)
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": {"pax.dev/job-name": "lm"}}
    assert spec["policyTypes"] == ["Ingress"]
    own, metrics, tensorboard = spec["ingress"]
    assert own == {"from": [{"podSelector": {"matchLabels": {"pax.dev/job-name": "lm"}}}]}
    assert metrics["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}
    ]
    assert metrics["ports"] == [{"port": 9431, "protocol": "TCP"}]
    assert tensorboard["ports"] == [{"port": 6006, "protocol": "TCP"}]
    for pod in pods:  # default requests: not BestEffort
        assert pod["status"]["qosClass"] == "Burstable", pod["status"]
        assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "100m", "memory": "512Mi"}

    pax.custom.delete_namespaced_custom_object("pax.dev", "v1alpha1", namespace, "paxjobs", "lm")
    gone = lambda: _policy(networking, namespace, "lm") is None  # noqa: E731
    wait_for("the garbage collector to delete the NetworkPolicy", gone, timeout=GC_TIMEOUT_S)


def test_an_up_to_date_service_and_policy_are_not_patched_at_a_gang_restart(
    api: client.ApiClient, namespace: str, operator: OperatorProcess, pax: Pax
) -> None:
    """Every gang (re)creation ensures the owned objects; as the apiserver stores them (defaults added),
    they must compare equal to what is rendered, or each restart of every job costs a PATCH per object."""
    job = pax.create("kept", cpu_job(2, tensorboard={"enabled": True}))
    pax.wait_pods("kept", 2, 0, timeout=60)
    transport = kube.ApiTransport(api)
    verbs: list[str] = []

    def recording(verb: str, path: str, body: Any, headers: dict[str, str], timeout: float) -> dict[str, Any]:
        verbs.append(verb)
        return transport(verb, path, body, headers, timeout)

    ref = JobRef(name="kept", namespace=namespace, uid=job["metadata"]["uid"])
    spec = PaxJobSpec.model_validate(job["spec"])
    owned = [render_service(ref, spec), render_network_policy(ref, spec, OPERATOR_NAMESPACE)]
    kube.ensure_owned(kube.Clients(recording), owned, ref.uid)
    assert sorted(verbs) == ["GET", "GET", "POST", "POST"]  # AlreadyExists, read, equal: no PATCH
