"""The operator's ServiceAccount, as deploy/rbac and the chart bind it, asked of the real apiserver's
authorizer (SubjectAccessReviews with the ServiceAccount's groups): every right an attacker who took its
token would want beyond its job is denied, everywhere — Secrets, ConfigMaps, exec/attach/port-forward,
tokens, nodes, RBAC escalate/bind/impersonate, the admission policy that checks PaxJob authors, CRDs,
namespaces, workloads other than bare pods, other Leases — while what it needs is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
from kubernetes import client
from pax_cluster import procs
from paxjob_harness import OPERATOR_NAMESPACE, OPERATOR_SA
from test_helm import CHART, Helm, helm, namespaced_release  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

RBAC_WAIT_S = 30.0


class Right(NamedTuple):
    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    name: str = ""


DENIED: list[Right] = [
    *(Right(v, "secrets") for v in ("get", "list", "watch", "create")),
    *(Right(v, "configmaps") for v in ("get", "list", "create")),
    Right("create", "pods", subresource="exec"),
    Right("get", "pods", subresource="exec"),
    Right("create", "pods", subresource="attach"),
    Right("create", "pods", subresource="portforward"),
    Right("patch", "pods", subresource="ephemeralcontainers"),
    Right("patch", "pods"),
    Right("update", "pods"),
    Right("patch", "pods", subresource="status"),
    Right("create", "serviceaccounts", subresource="token"),
    Right("create", "serviceaccounts"),
    Right("impersonate", "serviceaccounts"),
    Right("impersonate", "users"),
    Right("impersonate", "groups"),
    Right("create", "persistentvolumeclaims"),
    Right("get", "persistentvolumeclaims"),
    Right("use", "persistentvolumeclaims"),
    Right("create", "deployments", "apps"),
    Right("create", "daemonsets", "apps"),
    Right("create", "jobs", "batch"),
    Right("create", "roles", "rbac.authorization.k8s.io"),
    Right("create", "rolebindings", "rbac.authorization.k8s.io"),
    Right("escalate", "roles", "rbac.authorization.k8s.io"),
    Right("bind", "clusterroles", "rbac.authorization.k8s.io"),
    Right("delete", "services"),
    Right("delete", "networkpolicies", "networking.k8s.io"),
    Right("update", "leases", "coordination.k8s.io", name="kube-controller-manager"),
    Right("delete", "events"),
    Right("update", "paxjobs", "pax.dev"),  # spec edits are the users'; trials are created and patched
    Right("create", "paxsweeps", "pax.dev"),
    Right("patch", "paxsweeps", "pax.dev"),
    # Rights nothing uses: status is written whole (PUT), events are core/v1.
    Right("patch", "paxjobs", "pax.dev", subresource="status"),
    Right("patch", "paxsweeps", "pax.dev", subresource="status"),
    Right("create", "events", "events.k8s.io"),
]
DENIED_CLUSTER_WIDE: list[Right] = [
    Right("get", "nodes"),
    Right("get", "nodes", subresource="proxy"),
    Right("patch", "nodes"),
    Right("create", "namespaces"),
    Right("patch", "namespaces"),
    Right("delete", "namespaces"),
    Right("create", "certificatesigningrequests", "certificates.k8s.io"),
    Right("update", "customresourcedefinitions", "apiextensions.k8s.io"),
    Right("delete", "customresourcedefinitions", "apiextensions.k8s.io"),
    Right("delete", "validatingadmissionpolicies", "admissionregistration.k8s.io"),
    Right("patch", "validatingadmissionpolicies", "admissionregistration.k8s.io"),
    Right("delete", "validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
    Right("create", "validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
    Right("patch", "validatingwebhookconfigurations", "admissionregistration.k8s.io"),
    Right("create", "mutatingwebhookconfigurations", "admissionregistration.k8s.io"),
    Right("create", "clusterrolebindings", "rbac.authorization.k8s.io"),
    Right("escalate", "clusterroles", "rbac.authorization.k8s.io"),
    Right("list", "secrets"),
    Right("create", "persistentvolumes"),
    # The install guard reads its own policy by name and lists bindings; nothing more of admission.
    Right("get", "validatingadmissionpolicies", "admissionregistration.k8s.io", name="another-policy"),
    Right("list", "validatingadmissionpolicies", "admissionregistration.k8s.io"),
    Right("watch", "validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
    Right("update", "validatingadmissionpolicybindings", "admissionregistration.k8s.io"),
]


def guard_rights(policy: str) -> list[Right]:
    """What the install guard (--admission-policy) needs, cluster-wide."""
    group = "admissionregistration.k8s.io"
    return [Right("get", "validatingadmissionpolicies", group, name=policy),
            Right("list", "validatingadmissionpolicybindings", group)]  # fmt: skip


NEEDED: list[Right] = [
    Right("create", "pods"),
    Right("delete", "pods"),
    Right("watch", "pods"),
    Right("create", "services"),
    Right("patch", "services"),
    Right("create", "networkpolicies", "networking.k8s.io"),
    Right("create", "events"),
    Right("create", "paxjobs", "pax.dev"),
    Right("patch", "paxjobs", "pax.dev"),
    Right("delete", "paxjobs", "pax.dev"),
    Right("update", "paxjobs", "pax.dev", subresource="status"),
    Right("update", "paxsweeps", "pax.dev", subresource="status"),
]


def _allowed(authz: client.AuthorizationV1Api, sa_namespace: str, sa: str, right: Right, where: str) -> bool:
    """The authorizer's answer for the ServiceAccount (with the groups its token carries)."""
    attributes = {"verb": right.verb, "resource": right.resource, "group": right.group}
    attributes |= {k: v for k, v in (("subresource", right.subresource), ("name", right.name)) if v}
    if where:
        attributes["namespace"] = where
    review = {
        "spec": {
            "user": f"system:serviceaccount:{sa_namespace}:{sa}",
            "groups": [
                "system:serviceaccounts",
                f"system:serviceaccounts:{sa_namespace}",
                "system:authenticated",
            ],
            "resourceAttributes": attributes,
        }
    }
    return bool(authz.create_subject_access_review(review).status.allowed)


def _check(
    authz: client.AuthorizationV1Api, sa_namespace: str, sa: str, watched: str, unwatched: list[str]
) -> None:
    # RBAC objects reach the authorizer's cache asynchronously: wait for one needed right first.
    procs.wait_for(
        "the operator's RoleBinding to take effect",
        lambda: _allowed(authz, sa_namespace, sa, Right("create", "pods"), watched),
        RBAC_WAIT_S,
    )
    wrong = [
        f"needed, denied: {r} in {watched}"
        for r in NEEDED
        if not _allowed(authz, sa_namespace, sa, r, watched)
    ]
    for where in (watched, "kube-system", sa_namespace, *unwatched):
        wrong += [f"allowed: {r} in {where}" for r in DENIED if _allowed(authz, sa_namespace, sa, r, where)]
    wrong += [
        f"allowed cluster-wide: {r}" for r in DENIED_CLUSTER_WIDE if _allowed(authz, sa_namespace, sa, r, "")
    ]
    for where in unwatched:  # a namespaced install stops at its namespaces
        wrong += [
            f"allowed unwatched: {r} in {where}"
            for r in NEEDED
            if _allowed(authz, sa_namespace, sa, r, where)
        ]
    assert not wrong, "\n".join(wrong)


def test_kustomize_operator_service_account(
    api: client.ApiClient, pax_installed: Path, namespace: str
) -> None:
    authz = client.AuthorizationV1Api(api)
    _check(authz, OPERATOR_NAMESPACE, OPERATOR_SA, namespace, unwatched=[])
    for right in guard_rights("pax-paxjob-pod-authority"):
        assert _allowed(authz, OPERATOR_NAMESPACE, OPERATOR_SA, right, ""), right


def test_chart_operator_service_account_watching_one_namespace(
    api: client.ApiClient,
    restricted_namespace: str,
    namespace: str,
    namespaced_release: str,  # noqa: F811  (the fixture)
) -> None:
    authz = client.AuthorizationV1Api(api)
    sa = f"{namespaced_release}-pax-operator"
    _check(authz, restricted_namespace, sa, namespace, unwatched=["default", "kube-system"])
    for right in guard_rights(f"{sa}-paxjob-pod-authority"):
        assert _allowed(authz, restricted_namespace, sa, right, ""), right
    # Its Lease, and no other.
    lease = Right("update", "leases", "coordination.k8s.io", name=sa)
    assert _allowed(authz, restricted_namespace, sa, lease, restricted_namespace)
    assert not _allowed(authz, restricted_namespace, sa, lease, namespace)
