"""The per-job NetworkPolicy and the trainer's default requests (issue 7 §4)."""

from __future__ import annotations

from typing import Any

import pax_contract as contract
import pytest
from pax_operator.core.render import (
    DEFAULT_TRAINER_REQUESTS,
    render_network_policy,
    render_pod,
    render_service,
)
from paxjob_factory import JOB, make_spec


def _rules(policy: dict[str, Any]) -> list[dict[str, Any]]:
    return policy["spec"]["ingress"]


def test_network_policy_selects_the_jobs_pods_and_is_owned_by_the_job() -> None:
    spec = make_spec()
    policy = render_network_policy(JOB, spec, "pax-system")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["kind"] == "NetworkPolicy"
    assert (policy["metadata"]["name"], policy["metadata"]["namespace"]) == ("lm", "team-a")
    assert policy["metadata"]["ownerReferences"] == render_service(JOB, spec)["metadata"]["ownerReferences"]
    # The policy selects exactly the pods the Service selects: every host of every attempt.
    assert policy["spec"]["podSelector"] == {"matchLabels": render_service(JOB, spec)["spec"]["selector"]}
    labels = render_pod(JOB, spec, 1, 4)["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress (gs://, DNS) stays open


def test_coordinator_only_from_own_pods_metrics_only_from_operator_namespace() -> None:
    own, metrics = _rules(render_network_policy(JOB, make_spec(), "ops"))
    # The job's own pods reach every port (coordinator, gloo/NCCL collectives, MEGASCALE).
    assert own == {"from": [{"podSelector": {"matchLabels": {"pax.dev/job-name": "lm"}}}]}
    # /metrics only from the operator's namespace, and only that port.
    assert metrics == {
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}],
        "ports": [{"protocol": "TCP", "port": contract.METRICS_PORT}],
    }
    # No rule admits the coordinator port from anywhere but the job's own pods.
    first, *others = _rules(render_network_policy(JOB, make_spec(tensorboard={"enabled": True}), "ops"))
    assert first == own
    for rule in others:
        assert rule.get("ports"), "a rule without ports would open every port"
        assert contract.COORDINATOR_PORT not in [p["port"] for p in rule["ports"]]


def test_tensorboard_port_open_to_the_namespace_only_when_enabled() -> None:
    assert len(_rules(render_network_policy(JOB, make_spec()))) == 2
    rules = _rules(render_network_policy(JOB, make_spec(tensorboard={"enabled": True, "port": 7007})))
    assert rules[-1] == {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 7007}]}


def test_default_operator_namespace() -> None:
    (_, metrics) = _rules(render_network_policy(JOB, make_spec()))
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "pax-system"
    }


def _trainer_resources(**pod_template: Any) -> dict[str, Any]:
    spec = make_spec(podTemplate=pod_template) if pod_template else make_spec()
    return render_pod(JOB, spec, 0, 0)["spec"]["containers"][0]["resources"]


def test_trainer_gets_default_requests_so_it_is_not_best_effort() -> None:
    assert _trainer_resources() == {"requests": DEFAULT_TRAINER_REQUESTS}
    assert set(DEFAULT_TRAINER_REQUESTS) == {"cpu", "memory"}


@pytest.mark.parametrize(
    ("resources", "want"),
    [
        ({"requests": {"cpu": "4"}}, {"requests": {"cpu": "4", "memory": "512Mi"}}),
        ({"requests": {"cpu": 2, "memory": "8Gi"}}, {"requests": {"cpu": "2", "memory": "8Gi"}}),
        # A limit alone: Kubernetes makes the request equal the limit; a default could exceed it.
        ({"limits": {"memory": "256Mi"}}, {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}}),
        (
            {"limits": {"cpu": "1", "memory": "1Gi"}},
            {"limits": {"cpu": "1", "memory": "1Gi"}},
        ),
    ],
)
def test_user_resources_win_over_defaults(resources: dict[str, Any], want: dict[str, Any]) -> None:
    assert _trainer_resources(resources=resources) == want


def test_accelerator_pods_get_default_requests_too() -> None:
    spec = make_spec(topology={"gpu": {"hosts": 1, "gpusPerHost": 8}})
    resources = render_pod(JOB, spec, 0, 0)["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {**DEFAULT_TRAINER_REQUESTS, "nvidia.com/gpu": "8"}
    assert resources["limits"] == {"nvidia.com/gpu": "8"}
