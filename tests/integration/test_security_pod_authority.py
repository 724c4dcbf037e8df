"""An attacker's probes of the pod-authority policy (deploy/policy/) on the real apiserver: a user with only
pax-paxjob-editor (no pods, no secrets) tries to get, through a PaxJob, a PaxSweep or a sweep's trial, what
test_confused_deputy.py's plain cases do not cover: a forbidden source hidden beside an allowed one, a
key the CRD would prune, pod-shaping fields outside podTemplate, control-plane tolerations and annotations
that other controllers act on, and a developer's sweep or trial edited to run the editor's code."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pax_cluster.controlplane import ControlPlane
from test_confused_deputy import (  # noqa: F401  (fixtures: users needs pod_authority_policy)
    DEVELOPER,
    EDITOR,
    POLICY_NAME,
    SECRET_VOLUME,
    _grant,
    _submit,
    kubectl_run,
    paxjob,
    paxsweep,
    pod_authority_policy,
    users,
)

pytestmark = pytest.mark.integration

SECRET = {"secretKeyRef": {"name": "team-credentials", "key": "token"}}
# (case, podTemplate, the field path the refusal names)
HIDDEN: list[tuple[str, dict[str, Any], str]] = [
    # One valueFrom naming an allowed source and a forbidden one: the pod would read the Secret.
    (
        "fieldref-beside-secret",
        {"env": [{"name": "T", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}, **SECRET}}]},
        "spec.podTemplate.env: T",
    ),
    # A source the policy does not know (a typo, or one added to Kubernetes later) is not waved through.
    ("unknown-env-source", {"env": [{"name": "F", "valueFrom": {"fileKeyRef": {"path": "x"}}}]}, "env: F"),
    # emptyDir beside hostPath in one volume.
    (
        "emptydir-beside-hostpath",
        {"volumes": [{"name": "v", "emptyDir": {}, "hostPath": {"path": "/"}}]},
        "spec.podTemplate.volumes: v",
    ),
    ("csi-inline", {"volumes": [{"name": "c", "csi": {"driver": "secrets-store.csi.k8s.io"}}]}, "volumes: c"),
    ("image-volume", {"volumes": [{"name": "i", "image": {"reference": "private/model:1"}}]}, "volumes: i"),
    (
        "downward-api-volume",
        {"volumes": [{"name": "d", "downwardAPI": {"items": []}}]},
        "spec.podTemplate.volumes: d",
    ),
    (
        "control-plane-toleration",
        {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]},
        "spec.podTemplate: tolerations",
    ),
    ("tolerate-everything", {"tolerations": [{"operator": "Exists"}]}, "spec.podTemplate: tolerations"),
    (
        "apparmor-unconfined",
        {"annotations": {"container.apparmor.security.beta.kubernetes.io/trainer": "unconfined"}},
        "spec.podTemplate: annotations",
    ),
    ("istio-injection", {"labels": {"sidecar.istio.io/inject": "true"}}, "spec.podTemplate: labels"),
    ("priority-class", {"priorityClassName": "system-cluster-critical"}, "priorityClassName"),
]


def _refused(r: subprocess.CompletedProcess[str], field: str) -> None:
    assert r.returncode != 0, f"admitted: {r.stdout}"
    assert POLICY_NAME in r.stderr and field in r.stderr, r.stderr


def _patch(
    cp: ControlPlane, kubeconfig: Path, kind: str, name: str, namespace: str, patch: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return kubectl_run(cp, "patch", kind, name, f"--namespace={namespace}", "--type=merge", "-p",
                       json.dumps(patch), kubeconfig=kubeconfig)  # fmt: skip


@pytest.mark.parametrize(("case", "template", "field"), HIDDEN, ids=[c for c, _, _ in HIDDEN])
def test_hidden_escalations_are_refused_in_paxjobs_and_sweeps(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Path],  # noqa: F811  (the fixture)
    case: str,
    template: dict[str, Any],
    field: str,
) -> None:
    cp, editor = control_plane, users[EDITOR]
    _refused(_submit(cp, editor, paxjob(case, namespace, podTemplate=template), "--dry-run=server"), field)
    sweep_field = field.replace("spec.podTemplate", "spec.template.podTemplate")
    _refused(_submit(cp, editor, paxsweep(case, namespace, template), "--dry-run=server"), sweep_field)
    # Whoever may create the pod may write it through the operator too.
    r = _submit(cp, users[DEVELOPER], paxjob(case, namespace, podTemplate=template), "--dry-run=server")
    assert r.returncode == 0 or POLICY_NAME not in r.stderr, r.stderr


def test_pod_fields_the_crd_does_not_know_never_reach_the_pod(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Path],  # noqa: F811  (the fixture)
    kubectl,
) -> None:
    """nodeName (no scheduler), hostNetwork, securityContext, imagePullSecrets, a miscased
    serviceAccountName: strict field validation (kubectl's default) refuses them, and without it the
    structural schema prunes what podTemplate does not declare before any admission plugin or the operator
    sees it, so the editor's PaxJob is stored without them."""
    smuggled = {
        "nodeName": "control-plane-0",
        "hostNetwork": True,
        "hostPID": True,
        "securityContext": {"privileged": True, "runAsUser": 0},
        "imagePullSecrets": [{"name": "registry-of-another-team"}],
        "ServiceAccountName": "deployer",
        "runtimeClassName": "unsandboxed",
    }
    job = paxjob("pruned", namespace, podTemplate=smuggled, hostNetwork=True, nodeName="n")
    r = _submit(control_plane, users[EDITOR], job)
    assert r.returncode != 0 and 'unknown field "spec.podTemplate.hostNetwork"' in r.stderr, r.stderr
    r = _submit(control_plane, users[EDITOR], job, "--validate=false")
    assert r.returncode == 0, r.stderr
    stored = json.loads(kubectl("get", "paxjob", "pruned", f"--namespace={namespace}", "-o", "json").stdout)
    assert stored["spec"]["podTemplate"] == {"automountServiceAccountToken": False}, stored["spec"]
    assert "hostNetwork" not in stored["spec"] and "nodeName" not in stored["spec"], stored["spec"]


def test_a_developers_sweep_and_its_trials_cannot_be_repointed_by_an_editor(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Path],  # noqa: F811  (the fixture)
) -> None:
    """A sweep a developer wrote mounts a Secret. The editor may re-budget it (the trials run the template
    the developer vouched for), but not change what its trials run; nor may they edit such a trial PaxJob
    (the operator created it, with the operator's rights) to run their own image."""
    cp, editor = control_plane, users[EDITOR]
    r = _submit(cp, users[DEVELOPER], paxsweep("dev-sweep", namespace, SECRET_VOLUME))
    assert r.returncode == 0, r.stderr
    assert _patch(cp, editor, "paxsweep", "dev-sweep", namespace, {"spec": {"maxTrials": 4}}).returncode == 0
    for change in (
        {"image": "attacker/image:1"},
        {"overrides": {"seed": "1"}},
        {"tensorboard": {"enabled": True}},
    ):
        r = _patch(cp, editor, "paxsweep", "dev-sweep", namespace, {"spec": {"template": change}})
        _refused(r, "spec.template.podTemplate")
    # A trial as the operator makes it: a PaxJob owned by the sweep, created with the operator's rights
    # (here the admin's, which pass the policy the same way).
    trial = paxjob("dev-sweep-0", namespace, podTemplate=SECRET_VOLUME)
    assert kubectl_run(cp, "create", "-f", "-", stdin=json.dumps(trial)).returncode == 0
    assert _patch(cp, editor, "paxjob", "dev-sweep-0", namespace, {"spec": {"suspend": True}}).returncode == 0
    r = _patch(cp, editor, "paxjob", "dev-sweep-0", namespace, {"spec": {"image": "attacker/image:1"}})
    _refused(r, "spec.podTemplate.volumes: creds")


def test_an_editor_cannot_forge_the_status_the_operator_trusts(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Path],  # noqa: F811  (the fixture)
    kubectl,
) -> None:
    """The operator reads back its own status (restart attempt, gang created, a sweep's described search
    space): a status in the editor's create or update is dropped (the status subresource), and the editor
    may not write the subresource itself."""
    cp, editor = control_plane, users[EDITOR]
    forged_job = {"phase": "Succeeded", "restartAttempt": 7, "gangCreated": True}
    job = {**paxjob("forged", namespace), "status": forged_job}
    sweep = {**paxsweep("forged-sweep", namespace, {}), "status": {"searchSpace": '{"parameters": []}'}}
    for body, kind, name in ((job, "paxjob", "forged"), (sweep, "paxsweep", "forged-sweep")):
        assert _submit(cp, editor, body).returncode == 0
        stored = json.loads(kubectl("get", kind, name, f"--namespace={namespace}", "-o", "json").stdout)
        assert "status" not in stored or not stored["status"], stored["status"]
        failed = {"status": {"phase": "Failed"}}
        r = kubectl_run(cp, "patch", kind, name, f"--namespace={namespace}", "--subresource=status",
                        "--type=merge", "-p", json.dumps(failed), kubeconfig=editor)  # fmt: skip
        assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
        _patch(cp, editor, kind, name, namespace, failed)  # accepted, the status part ignored
        stored = json.loads(kubectl("get", kind, name, f"--namespace={namespace}", "-o", "json").stdout)
        assert "status" not in stored or not stored["status"], stored["status"]


def _refs(secrets_: range, config_maps: range = range(0), claims: range = range(0)) -> dict[str, Any]:
    """Env values from Secrets and ConfigMaps, a Secret volume each after the eighth Secret, claims."""
    env = [
        {"name": f"S{i}", "valueFrom": {"secretKeyRef": {"name": f"s{i}", "key": "k"}}} for i in secrets_[:8]
    ]
    env += [
        {"name": f"C{i}", "valueFrom": {"configMapKeyRef": {"name": f"c{i}", "key": "k"}}}
        for i in config_maps
    ]
    volumes = [{"name": f"v{i}", "secret": {"secretName": f"s{i}"}} for i in secrets_[8:]]
    volumes += [{"name": f"p{i}", "persistentVolumeClaim": {"claimName": f"p{i}"}} for i in claims]
    return {"env": env, "volumes": volumes}


def test_an_editor_may_reference_up_to_sixteen_objects_they_may_read(
    control_plane: ControlPlane,
    api: client.ApiClient,
    namespace: str,
    users: dict[str, Path],  # noqa: F811  (the fixture)
) -> None:
    """The per-reference rule held for two references at most: with three Secrets or ConfigMaps an editor
    allowed to read every one of them was refused with "actual cost limit exceeded" (one CEL expression
    checked them all, and an authorization check costs a third of an expression's budget). Each reference
    now has its own check, up to 16; beyond, or for one the editor may not read, the refusal names it."""
    cp, editor = control_plane, users[EDITOR]
    _grant(api, namespace, EDITOR, ["get"], "secrets", *(f"s{i}" for i in range(12)))
    _grant(api, namespace, EDITOR, ["get"], "configmaps", *(f"c{i}" for i in range(3)))
    _grant(api, namespace, EDITOR, ["use"], "persistentvolumeclaims", "p0")
    sixteen = paxjob("sixteen", namespace, podTemplate=_refs(range(12), range(3), range(1)))
    deadline = time.monotonic() + 30
    while (r := _submit(cp, editor, sixteen, "--dry-run=server")).returncode != 0:
        assert "cost limit" not in r.stderr, r.stderr
        assert time.monotonic() < deadline, r.stderr  # RBAC grants reach the authorizer asynchronously
        time.sleep(0.3)
    sweep = paxsweep("sixteen", namespace, _refs(range(12), range(3), range(1)))
    assert _submit(cp, editor, sweep, "--dry-run=server").returncode == 0

    # One more Secret, which the editor may not read: the refusal names it.
    unread = paxjob("unread", namespace, podTemplate=_refs(range(13)))
    names_it = f"spec.podTemplate.volumes: v12 reads secrets/s12: {EDITOR} must be allowed to get it"
    _refused(_submit(cp, editor, unread, "--dry-run=server"), names_it)
    claim = paxjob("claim", namespace, podTemplate=_refs(range(1), claims=range(2)))
    _refused(_submit(cp, editor, claim, "--dry-run=server"), "to use each persistentVolumeClaim")
    # Seventeen, all readable: beyond what is checked one by one.
    seventeen = paxjob("seventeen", namespace, podTemplate=_refs(range(12), range(3), range(1)))
    seventeen["spec"]["podTemplate"]["env"].append(
        {"name": "AGAIN", "valueFrom": {"secretKeyRef": {"name": "s0", "key": "k"}}}
    )
    _refused(_submit(cp, editor, seventeen, "--dry-run=server"), "17 env values and volumes read Secrets")
    # Whoever may create pods is not limited (nor checked one by one).
    many = _refs(range(60), range(200), range(4))  # the CRD allows 256 env values, 64 volumes
    r = _submit(cp, users[DEVELOPER], paxjob("many", namespace, podTemplate=many), "--dry-run=server")
    assert r.returncode == 0, r.stderr
