"""The local control plane is a real one: versions, RBAC, PodSecurity admission, controllers, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pax_cluster import procs
from pax_cluster.controlplane import ControlPlane, read_state
from pax_cluster.procs import alive

pytestmark = pytest.mark.integration

WAIT_S = 60.0


def test_version_is_stamped(control_plane: ControlPlane, kubectl) -> None:
    want = control_plane.binaries.version
    assert control_plane.version()["gitVersion"] == want
    out = kubectl("version", "-o", "json", check=True).stdout
    versions = json.loads(out)
    assert versions["serverVersion"]["gitVersion"] == want
    server_minor = int(versions["serverVersion"]["minor"])
    assert abs(int(versions["clientVersion"]["minor"]) - server_minor) <= 1  # kubectl skew policy


def test_configmap_round_trip(namespace: str, kubectl) -> None:
    kubectl("create", "configmap", "cfg", "-n", namespace, "--from-literal=answer=42", check=True)
    got = json.loads(kubectl("get", "configmap", "cfg", "-n", namespace, "-o", "json", check=True).stdout)
    assert got["data"] == {"answer": "42"}
    kubectl("delete", "configmap", "cfg", "-n", namespace, check=True)
    assert "NotFound" in kubectl("get", "configmap", "cfg", "-n", namespace).stderr


def test_rbac_denies_then_allows_service_account(
    control_plane: ControlPlane, namespace: str, kubectl
) -> None:
    sa_kubeconfig = control_plane.kubeconfig_for_service_account(namespace, "reader")
    denied = kubectl("get", "configmaps", "-n", namespace, kubeconfig=sa_kubeconfig)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert f"system:serviceaccount:{namespace}:reader" in denied.stderr

    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "cm-reader", "namespace": namespace},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "cm-reader", "namespace": namespace},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac), check=True)
    procs.wait_for(
        "the RoleBinding to take effect",
        lambda: kubectl("get", "configmaps", "-n", namespace, kubeconfig=sa_kubeconfig).returncode == 0,
        WAIT_S,
    )
    # Still nothing beyond the Role.
    assert kubectl("get", "secrets", "-n", namespace, kubeconfig=sa_kubeconfig).returncode != 0
    assert kubectl("get", "configmaps", "-A", kubeconfig=sa_kubeconfig).returncode != 0


def test_user_certificate_identity(control_plane: ControlPlane, kubectl) -> None:
    kc = control_plane.kubeconfig_for_user("alice", ["pax-devs"])
    review = json.loads(kubectl("auth", "whoami", "-o", "json", kubeconfig=kc, check=True).stdout)
    assert review["status"]["userInfo"]["username"] == "alice"
    assert "pax-devs" in review["status"]["userInfo"]["groups"]
    assert kubectl("get", "namespaces", kubeconfig=kc).returncode != 0


def _pod(name: str, *, privileged: bool) -> dict:
    container: dict = {"name": "main", "image": "busybox", "command": ["true"]}
    if privileged:
        container["securityContext"] = {"privileged": True}
    else:
        container["securityContext"] = {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [container]},
    }


def test_pod_security_restricted(restricted_namespace: str, namespace: str, kubectl) -> None:
    ns = restricted_namespace
    rejected = kubectl("create", "-n", ns, "-f", "-", input=json.dumps(_pod("bad", privileged=True)))
    assert rejected.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in rejected.stderr
    assert "privileged" in rejected.stderr
    ok = _pod("good", privileged=False)
    kubectl("create", "--dry-run=server", "-n", ns, "-f", "-", input=json.dumps(ok), check=True)
    # An unlabelled namespace keeps the default (privileged) level.
    bad = json.dumps(_pod("bad", privileged=True))
    kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", input=bad, check=True)


def test_garbage_collector_deletes_dependents(namespace: str, kubectl) -> None:
    kubectl("create", "configmap", "owner", "-n", namespace, check=True)
    uid = kubectl(
        "get", "configmap", "owner", "-n", namespace, "-o", "jsonpath={.metadata.uid}", check=True
    ).stdout
    owned = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owned",
            "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}],
        },
    }
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(owned), check=True)
    kubectl("delete", "configmap", "owner", "-n", namespace, "--wait=false", check=True)
    procs.wait_for(
        "the garbage collector to delete the owned ConfigMap",
        lambda: "NotFound" in kubectl("get", "configmap", "owned", "-n", namespace).stderr,
        WAIT_S,
    )


def test_job_controller_creates_pods(namespace: str, kubectl) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "containers": [{"name": "main", "image": "busybox", "command": ["true"]}],
                }
            }
        },
    }
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job), check=True)

    def pod_created() -> bool:
        out = kubectl("get", "pods", "-n", namespace, "-l", "job-name=j", "-o", "name").stdout
        return out.strip() != ""

    procs.wait_for("the job controller to create a pod", pod_created, WAIT_S)


def test_namespace_deletion_completes(control_plane: ControlPlane, kubectl) -> None:
    name = f"doomed-{os.getpid()}"
    kubectl("create", "namespace", name, check=True)
    kubectl("create", "configmap", "c", "-n", name, check=True)
    kubectl("delete", "namespace", name, "--wait=false", check=True)
    procs.wait_for(
        "namespace finalization", lambda: "NotFound" in kubectl("get", "namespace", name).stderr, WAIT_S
    )


def test_warm_start_time(control_plane: ControlPlane) -> None:
    assert control_plane.start_seconds is not None
    print(f"control plane (warm) started in {control_plane.start_seconds:.1f}s")
    assert control_plane.start_seconds < 120


def _watched_resources(*texts: str) -> set[str]:
    """What each `kubectl get X -w` told to a newcomer watches: in `texts`, the README, docs/install.md and
    deploy/samples."""
    docs = [procs.REPO_ROOT / "README.md", procs.REPO_ROOT / "docs" / "install.md"]
    docs += sorted((procs.DEPLOY / "samples").glob("*.yaml"))
    text = "\n".join([*texts, *(doc.read_text() for doc in docs)])
    found = re.findall(r"kubectl get (\S+) (?:-w|--watch)\b", text)
    assert found, "no `kubectl get X -w` found: the pattern no longer matches the docs"
    return set(found)


def _watch_starts(kubectl: str, kubeconfig: Path, resource: str) -> bool:
    """`kubectl get <resource> -w` is still watching after 3 s (a category naming two kinds, `pax`, makes
    it exit at once: "you may only specify a single resource type")."""
    argv = [kubectl, f"--kubeconfig={kubeconfig}", "get", resource, "-w"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as watch:
        try:
            _, err = watch.communicate(timeout=3)
        except subprocess.TimeoutExpired:
            watch.kill()
            watch.communicate()
            return True
    raise AssertionError(f"`kubectl get {resource} -w` exited {watch.returncode}: {err.strip()}")


@pytest.mark.slow
def test_cli_up_status_down(tmp_path: Path) -> None:
    """`up` leaves a detached control plane behind (in the whole local stack); `down` stops every process."""
    root = tmp_path / "cluster"
    cli = [sys.executable, "-m", "pax_cluster.cli"]
    up = subprocess.run([*cli, "up", "--root", str(root)], capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stderr
        assert f"export KUBECONFIG={root / 'kubeconfig'}" in up.stdout
        state = read_state(root / "control-plane")  # `up` runs the whole stack; its control plane here
        assert state is not None
        status = subprocess.run(
            [*cli, "status", "--root", str(root)], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stdout
        kubectl = str(ControlPlane(root).binaries.kubectl)
        got = subprocess.run(
            [kubectl, f"--kubeconfig={root / 'kubeconfig'}", "get", "--raw", "/readyz"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert got.stdout.strip() == "ok", got.stderr
        for resource in _watched_resources(up.stdout):
            assert _watch_starts(kubectl, root / "kubeconfig", resource)
        # On a machine with no kubectl of its own, the printed export is what puts one on the PATH.
        export = next(line.strip() for line in up.stdout.splitlines() if "export KUBECONFIG=" in line)
        found = subprocess.run(
            ["/bin/bash", "-c", f"{export} && command -v kubectl"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PATH": str(tmp_path / "empty")},
        )
        assert found.stdout.strip() == kubectl, (export, found.stderr)
    finally:
        down = subprocess.run(
            [*cli, "down", "--root", str(root)], capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert not any(alive(p["pid"], p["exe"]) for p in state["procs"])
    assert read_state(root / "control-plane") is None
