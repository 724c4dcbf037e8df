"""No one gets through the operator what RBAC denies them (issue 7 §4): deploy/policy's
ValidatingAdmissionPolicy on the real apiserver, with two real users (client certificates signed by the
local CA). An editor-only user (pax-paxjob-editor: no pods, no secrets) is refused PaxJobs whose pods would
mount a Secret, a hostPath or run as another ServiceAccount, and keeps plain ones; a user who may create
pods is refused nothing."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from pax_cluster.controlplane import ControlPlane
from pax_cluster.procs import DEPLOY

pytestmark = pytest.mark.integration

POLICY_DIR = DEPLOY / "policy"
POLICY_NAME = "pax-paxjob-pod-authority"
ENFORCED_WITHIN_S = 30.0  # policies and bindings reach the apiserver's informers asynchronously
EDITOR = "alice-editor"
DEVELOPER = "bob-developer"


def kubectl_run(
    cp: ControlPlane, *args: str, kubeconfig: Path | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return cp.binaries.run_kubectl(kubeconfig or cp.kubeconfig, *args, input=stdin)


def paxjob(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "experiment": "lm_tiny",
        "image": "pax/trainer:test",
        "jobLogDir": f"gs://pax-test/runs/{name}",
        "topology": {"cpu": {"hosts": 1}},
    }
    body.update(spec)
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": body,
    }


def paxsweep(name: str, namespace: str, template: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A PaxSweep of `paxjob`'s spec with pod template `template` (two trials at most)."""
    return {
        "apiVersion": "pax.dev/v1alpha1",
        "kind": "PaxSweep",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": paxjob(name, namespace, podTemplate=template)["spec"],
            "parameters": [{"name": "learning_rate", "type": "float", "min": 1e-4, "max": 1e-1}],
            "objective": {"metric": "eval_test/loss"},
            "maxTrials": 2,
            **spec,
        },
    }


SECRET_VOLUME = {
    "volumes": [{"name": "creds", "secret": {"secretName": "team-credentials"}}],
    "volumeMounts": [{"name": "creds", "mountPath": "/creds"}],
}
SECRET_ENV = {
    "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "team-credentials", "key": "token"}}}]
}
HOST_PATH = {
    "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
    "volumeMounts": [{"name": "host", "mountPath": "/host"}],
}
OTHER_SERVICE_ACCOUNT = {"serviceAccountName": "deployer"}
DEFAULT_TOKEN = {"automountServiceAccountToken": True}
PROJECTED_TOKEN = {
    "volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
}
SERVICE_LABELS = {"labels": {"app": "web"}}  # would make the pods endpoints of someone's Service
DEVICE = {"resources": {"limits": {"devices.kubevirt.io/kvm": "1"}}}  # the device plugin mounts /dev/kvm

# (case, podTemplate, the field path the refusal names)
ELEVATED: list[tuple[str, dict[str, Any], str]] = [
    ("secret-volume", SECRET_VOLUME, "spec.podTemplate.volumes: creds"),
    ("secret-env", SECRET_ENV, "spec.podTemplate.env: TOKEN"),
    ("host-path", HOST_PATH, "spec.podTemplate.volumes: host"),
    ("projected", PROJECTED_TOKEN, "spec.podTemplate.volumes: t"),
    ("service-account", OTHER_SERVICE_ACCOUNT, "ServiceAccount deployer"),
    ("default-token", DEFAULT_TOKEN, "ServiceAccount default"),
    ("labels", SERVICE_LABELS, "spec.podTemplate: labels"),
    ("device-resource", DEVICE, "spec.podTemplate.resources: devices.kubevirt.io/kvm"),
]
PLAIN: dict[str, Any] = {
    "env": [
        {"name": "XLA_FLAGS", "value": "--xla_force_host_platform_device_count=2"},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
    ],
    "volumes": [{"name": "scratch", "emptyDir": {}}],
    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
    "resources": {"requests": {"cpu": "1", "memory": "1Gi", "ephemeral-storage": "1Gi"}},
    "nodeSelector": {"pool": "cpu"},
    "automountServiceAccountToken": False,
}


@pytest.fixture(scope="module")
def pod_authority_policy(control_plane: ControlPlane, pax_installed: Path) -> Iterator[None]:
    """deploy/policy applied for this module only (other modules' users are not part of this story)."""
    kubectl_run(control_plane, "apply", "-f", str(POLICY_DIR)).check_returncode()
    yield
    kubectl_run(control_plane, "delete", "-f", str(POLICY_DIR), "--ignore-not-found")


def _rbac(api: client.ApiClient) -> client.RbacAuthorizationV1Api:
    return client.RbacAuthorizationV1Api(api)


def _bind(api: client.ApiClient, namespace: str, user: str, kind: str, role: str) -> None:
    """RoleBinding of `user` to the ClusterRole or Role `role`."""
    body = {
        "metadata": {"name": f"{user}-{role}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }
    _rbac(api).create_namespaced_role_binding(namespace, body)


def _grant(
    api: client.ApiClient, namespace: str, user: str, verbs: list[str], resource: str, *names: str
) -> None:
    """A Role for `verbs` on `resource` (only the objects `names`, if given), bound to `user`."""
    role = f"{user}-{'-'.join(verbs)}-{resource}-{'-'.join(names) or 'all'}"
    rule: dict[str, Any] = {"apiGroups": [""], "resources": [resource], "verbs": verbs}
    if names:
        rule["resourceNames"] = list(names)
    _rbac(api).create_namespaced_role(namespace, {"metadata": {"name": role}, "rules": [rule]})
    _bind(api, namespace, user, "Role", role)


def _can_i(user_api: client.ApiClient, namespace: str, verb: str, resource: str, group: str = "") -> bool:
    review = {
        "spec": {
            "resourceAttributes": {"namespace": namespace, "verb": verb, "resource": resource, "group": group}
        }
    }
    answer = client.AuthorizationV1Api(user_api).create_self_subject_access_review(review)
    return bool(answer.status.allowed)


def _submit(
    cp: ControlPlane, kubeconfig: Path, job: dict[str, Any], *extra: str
) -> subprocess.CompletedProcess[str]:
    return kubectl_run(cp, "create", *extra, "-f", "-", kubeconfig=kubeconfig, stdin=json.dumps(job))


def _wait_until_enforced(cp: ControlPlane, kubeconfig: Path, namespace: str) -> None:
    """Dry-run a hostPath job as the editor until the policy denies it (bounded)."""
    probe = paxjob(f"probe-{secrets.token_hex(3)}", namespace, podTemplate=HOST_PATH)
    deadline = time.monotonic() + ENFORCED_WITHIN_S
    while True:
        r = _submit(cp, kubeconfig, probe, "--dry-run=server")
        if POLICY_NAME in r.stderr:
            return
        assert r.returncode == 0 or "forbidden" in r.stderr.lower(), r.stderr
        if time.monotonic() > deadline:
            pytest.fail(
                f"{POLICY_NAME} not enforced within {ENFORCED_WITHIN_S:.0f}s (last: {r.stderr or r.stdout})"
            )
        time.sleep(0.5)


@pytest.fixture
def users(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, pod_authority_policy: None
) -> dict[str, Path]:
    """Two real users of `namespace`: the editor may manage PaxJobs only, the developer also create pods."""
    cp = control_plane
    kubeconfigs = {EDITOR: cp.kubeconfig_for_user(EDITOR), DEVELOPER: cp.kubeconfig_for_user(DEVELOPER)}
    _bind(api, namespace, EDITOR, "ClusterRole", "pax-paxjob-editor")
    _bind(api, namespace, DEVELOPER, "ClusterRole", "pax-paxjob-editor")
    # The built-in `edit` would do, but no aggregation controller fills it in here: a Role that lets the
    # developer create pods (and nothing else: not even get the Secret).
    _grant(api, namespace, DEVELOPER, ["create", "get", "list"], "pods")
    for user, may_create_pods in ((EDITOR, False), (DEVELOPER, True)):
        user_api = config.new_client_from_config(config_file=str(kubeconfigs[user]))
        deadline = time.monotonic() + ENFORCED_WITHIN_S
        while not (
            _can_i(user_api, namespace, "create", "paxjobs", "pax.dev")
            and _can_i(user_api, namespace, "create", "pods") is may_create_pods
        ):
            assert time.monotonic() < deadline, "RoleBindings not effective"
            time.sleep(0.2)
        assert not _can_i(user_api, namespace, "get", "secrets")
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "team-credentials"}, "stringData": {"token": "s3cr3t"}}
    )
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "deployer"}})
    _wait_until_enforced(cp, kubeconfigs[EDITOR], namespace)
    return kubeconfigs


@pytest.mark.parametrize(("case", "template", "field"), ELEVATED, ids=[c for c, _, _ in ELEVATED])
def test_editor_is_denied_what_only_pod_authors_may_do(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Path],
    case: str,
    template: dict[str, Any],
    field: str,
) -> None:
    r = _submit(control_plane, users[EDITOR], paxjob(case, namespace, podTemplate=template))
    assert r.returncode != 0, f"{case} was admitted for {EDITOR}"
    assert "forbidden" in r.stderr.lower() and POLICY_NAME in r.stderr, r.stderr
    assert field in r.stderr, r.stderr
    assert EDITOR in r.stderr and namespace in r.stderr, r.stderr  # who, and where the right is missing
    # The same PaxJob from a user who may create pods (and so could make that pod directly) is admitted.
    r = _submit(control_plane, users[DEVELOPER], paxjob(case, namespace, podTemplate=template))
    assert r.returncode == 0, r.stderr


def test_editor_keeps_plain_paxjobs(
    control_plane: ControlPlane, namespace: str, users: dict[str, Path]
) -> None:
    for name, spec in [
        ("bare", {}),
        (
            "plain",
            {"podTemplate": PLAIN, "tensorboard": {"enabled": True}, "overrides": {"num_train_steps": "9"}},
        ),
    ]:
        r = _submit(control_plane, users[EDITOR], paxjob(name, namespace, **spec))
        assert r.returncode == 0, r.stderr


def test_referenced_objects_the_editor_may_read_are_allowed(
    control_plane: ControlPlane, api: client.ApiClient, namespace: str, users: dict[str, Path]
) -> None:
    """Reading a Secret yourself is enough to reference it: the pod gives you nothing new. Reading a claim
    is not: `get` shows the claim object, a mount its data, so a claim needs `use` (or create pods)."""
    cp, editor = control_plane, users[EDITOR]
    claim = {
        "volumes": [{"name": "ckpt", "persistentVolumeClaim": {"claimName": "checkpoints"}}],
        "volumeMounts": [{"name": "ckpt", "mountPath": "/ckpt"}],
    }
    assert _submit(cp, editor, paxjob("claim", namespace, podTemplate=claim)).returncode != 0
    assert _submit(cp, editor, paxjob("secret", namespace, podTemplate=SECRET_VOLUME)).returncode != 0
    _grant(api, namespace, EDITOR, ["get"], "persistentvolumeclaims", "checkpoints")
    _grant(api, namespace, EDITOR, ["get"], "secrets", "team-credentials")
    for name, template in (("secret", SECRET_VOLUME), ("secret-env", SECRET_ENV)):
        deadline = time.monotonic() + ENFORCED_WITHIN_S
        while (r := _submit(cp, editor, paxjob(name, namespace, podTemplate=template))).returncode != 0:
            assert time.monotonic() < deadline, r.stderr  # RBAC grants are eventually consistent too
            time.sleep(0.2)
    r = _submit(cp, editor, paxjob("claim", namespace, podTemplate=claim))  # `get` on it is not enough
    assert "spec.podTemplate.volumes: ckpt" in r.stderr and "to use each persistentVolumeClaim" in r.stderr
    _grant(api, namespace, EDITOR, ["use"], "persistentvolumeclaims", "checkpoints")
    deadline = time.monotonic() + ENFORCED_WITHIN_S
    while (r := _submit(cp, editor, paxjob("claim", namespace, podTemplate=claim))).returncode != 0:
        assert time.monotonic() < deadline, r.stderr
        time.sleep(0.2)
    # A grant on one Secret opens no other.
    other = {"volumes": [{"name": "other", "secret": {"secretName": "someone-elses"}}]}
    r = _submit(cp, editor, paxjob("other-secret", namespace, podTemplate=other))
    assert "spec.podTemplate.volumes: other" in r.stderr, r.stderr


def test_editor_may_suspend_but_not_repoint_a_developers_job(
    control_plane: ControlPlane, namespace: str, users: dict[str, Path]
) -> None:
    cp = control_plane
    r = _submit(cp, users[DEVELOPER], paxjob("shared", namespace, podTemplate=SECRET_VOLUME))
    assert r.returncode == 0, r.stderr

    def patch(spec: dict[str, Any], user: str = EDITOR) -> subprocess.CompletedProcess[str]:
        return kubectl_run(
            cp,
            "patch",
            "paxjob",
            "shared",
            f"--namespace={namespace}",
            "--type=merge",
            "-p",
            json.dumps({"spec": spec}),
            kubeconfig=users[user],
        )

    # Lifecycle fields change no pod's contents.
    assert patch({"suspend": True, "restartPolicy": {"maxFailures": 1}}).returncode == 0
    # A new image would run the editor's code with the developer's Secret mounted.
    r = patch({"image": "attacker/image:1"})
    assert r.returncode != 0 and "spec.podTemplate.volumes: creds" in r.stderr, r.stderr
    r = patch({"overrides": {"num_train_steps": "5"}})
    assert r.returncode != 0 and POLICY_NAME in r.stderr, r.stderr
    # The developer may.
    r = patch({"image": "pax/trainer:2"}, user=DEVELOPER)
    assert r.returncode == 0, r.stderr


def test_a_sweep_cannot_smuggle_a_secret_into_its_trials(
    control_plane: ControlPlane, namespace: str, users: dict[str, Path]
) -> None:
    """The operator creates a sweep's trial PaxJobs with its own rights: the sweep's template is checked."""
    r = kubectl_run(
        control_plane, "wait", "--for=condition=Established", "crd/paxsweeps.pax.dev", "--timeout=30s"
    )
    assert r.returncode == 0, r.stderr  # pax_installed applies deploy/crds/pax.dev_paxsweeps.yaml

    r = _submit(control_plane, users[EDITOR], paxsweep("sneaky", namespace, SECRET_VOLUME))
    assert r.returncode != 0 and POLICY_NAME in r.stderr, r.stderr
    assert "spec.template.podTemplate.volumes: creds" in r.stderr, r.stderr
    r = _submit(control_plane, users[EDITOR], paxsweep("plain", namespace, PLAIN))
    assert r.returncode == 0, r.stderr
    r = _submit(control_plane, users[DEVELOPER], paxsweep("sneaky", namespace, SECRET_VOLUME))
    assert r.returncode == 0, r.stderr
