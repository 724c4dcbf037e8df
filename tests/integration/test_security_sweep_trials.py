"""The chart as installed, end to end on the real apiserver: its pod-authority policy refuses an editor's
sweep that would smuggle a Secret into its trials, while the operator, under the chart's namespaced RBAC,
still creates the trials (and their pods) of the sweeps that pass, a developer's Secret-mounting sweep
included: the policy must never stop the operator's own trial PaxJobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from pax_cluster.controlplane import ControlPlane
from paxjob_harness import OperatorProcess, Pax, wait_for
from paxsweep_harness import Sweeps, sweep_spec
from test_confused_deputy import HOST_PATH, SECRET_VOLUME, _bind, _grant, _submit
from test_helm import helm, namespaced_release  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration

ENFORCED_WITHIN_S = 30.0
EDITOR, DEVELOPER = "carol-editor", "dave-developer"


def _sweep(name: str, namespace: str, pod_template: dict[str, Any]) -> dict[str, Any]:
    spec = sweep_spec(maxTrials=1, parallelTrials=1)
    spec["template"] = {**spec["template"], "podTemplate": pod_template}
    return {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxSweep",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}  # fmt: skip


def test_the_charts_policy_checks_sweeps_but_never_the_operators_trials(
    control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    restricted_namespace: str,
    namespace: str,
    namespaced_release: str,  # noqa: F811  (the fixture)
    tmp_path: Path,
) -> None:
    cp = control_plane
    editor, developer = cp.kubeconfig_for_user(EDITOR), cp.kubeconfig_for_user(DEVELOPER)
    editor_role = f"{namespaced_release}-pax-operator-paxjob-editor"  # the chart's user role
    for user in (EDITOR, DEVELOPER):
        _bind(api, namespace, user, "ClusterRole", editor_role)
    _grant(api, namespace, DEVELOPER, ["create"], "pods")
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "team-credentials"}, "stringData": {"token": "s3cr3t"}}
    )
    policy = f"{namespaced_release}-pax-operator-paxjob-pod-authority"
    probe = _sweep("probe", namespace, HOST_PATH)
    deadline = time.monotonic() + ENFORCED_WITHIN_S
    while policy not in (r := _submit(cp, editor, probe, "--dry-run=server")).stderr:
        assert time.monotonic() < deadline, f"{policy} not enforced: {r.stderr or r.stdout}"
        time.sleep(0.5)

    r = _submit(cp, editor, _sweep("sneaky", namespace, SECRET_VOLUME))
    assert r.returncode != 0 and "spec.template.podTemplate.volumes: creds" in r.stderr, r.stderr
    plain = {"volumes": [{"name": "scratch", "emptyDir": {}}]}
    for kubeconfig, name, template in ((editor, "plain", plain), (developer, "vetted", SECRET_VOLUME)):
        deadline = time.monotonic() + ENFORCED_WITHIN_S
        while (r := _submit(cp, kubeconfig, _sweep(name, namespace, template))).returncode != 0:
            assert time.monotonic() < deadline, r.stderr  # the RoleBindings are eventually consistent
            time.sleep(0.2)

    operator_kubeconfig = cp.kubeconfig_for_service_account(
        restricted_namespace, f"{namespaced_release}-pax-operator"
    )
    operator = OperatorProcess(operator_kubeconfig, namespace, tmp_path / "operator.log").start()
    try:
        sweeps, pax = Sweeps(custom, namespace), Pax(core, custom, namespace)
        for name in ("plain", "vetted"):
            (trial,) = wait_for(f"{name}'s trial", lambda n=name: sweeps.trials(n) or None, 30)
            assert trial["metadata"]["ownerReferences"][0]["name"] == name
            (pod,) = pax.wait_pods(trial["metadata"]["name"], 1, 0)
            volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
            if name == "vetted":  # the Secret the developer may mount, through the operator's trial
                assert volumes["creds"]["secret"]["secretName"] == "team-credentials"
            else:
                assert "creds" not in volumes
        log = operator.log_tail(400)
        for denied in ("Forbidden", "pod-authority", "Not enough permissions"):
            assert denied not in log, log
    finally:
        operator.kill()
    assert sweeps.trials("sneaky") == []
