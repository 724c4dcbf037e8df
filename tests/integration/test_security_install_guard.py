"""The install guard on the real apiserver: an operator started with --admission-policy (as deploy/ and the
chart start it) creates no pod until its pod-authority policy and binding enforce, stops when they are
deleted, and refuses to run beside an older install watching the same namespace (a cluster-wide one here).
The operator runs as deploy/rbac's ServiceAccount: its read-only guard rights are the ones exercised."""

from __future__ import annotations

import copy
import shlex
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pax_cluster.procs import DEPLOY
from paxjob_harness import ObservedOperator, Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration

POLICY = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority.yaml").read_text())
BINDING = yaml.safe_load((DEPLOY / "policy" / "paxjob_pod_authority_binding.yaml").read_text())
NAME = POLICY["metadata"]["name"]  # the name deploy/rbac lets the operator read
OTHER = "other-pax-operator-paxjob-pod-authority"  # another install's binding
GUARD_S = 30.0  # the guard looks every 5 s; a loaded 2-core box
START_S = 90.0
QUIET_S = 8.0  # longer than an ungated operator needs to create a gang once its caches are synced


class Operator(ObservedOperator):
    """The operator with --admission-policy."""

    def __init__(self, kubeconfig: Path, namespace: str, log: Path) -> None:
        super().__init__(kubeconfig, namespace, log, extra_args=[f"--admission-policy={NAME}"])

    def blocked(self, reason: str) -> float:
        return self.metric("pax_operator_install_blocked", reason=reason)


@pytest.fixture
def admission(api: client.ApiClient) -> Iterator[client.AdmissionregistrationV1Api]:
    """Admin access to policies and bindings; this module's objects deleted before and after."""
    admission = client.AdmissionregistrationV1Api(api)

    def clear() -> None:
        for delete, name in [
            (admission.delete_validating_admission_policy_binding, NAME),
            (admission.delete_validating_admission_policy_binding, OTHER),
            (admission.delete_validating_admission_policy, NAME),
        ]:
            try:
                delete(name)
            except ApiException as err:
                if err.status != 404:
                    raise

    clear()
    yield admission
    clear()


def _binding(name: str, policy: str, watch: str, actions: list[str] | None = None) -> dict[str, Any]:
    binding = copy.deepcopy(BINDING)
    binding["metadata"] = {"name": name, "annotations": {"pax.dev/watch-namespaces": watch}}
    binding["spec"] = {"policyName": policy, "validationActions": actions or ["Deny"]}
    return binding


def _no_pods_for_a_while(pax: Pax, job: str) -> None:
    deadline = time.monotonic() + QUIET_S
    while time.monotonic() < deadline:
        assert pax.pods(job) == [], "the operator created a gang while its guard should refuse"
        time.sleep(0.5)
    assert not pax.status(job), "the operator wrote the status of a PaxJob it should not reconcile"


def test_no_gang_until_the_policy_and_binding_enforce_and_a_stop_when_they_go(
    pax_installed: Path,
    namespace: str,
    pax: Pax,
    admission: client.AdmissionregistrationV1Api,
    tmp_path: Path,
) -> None:
    operator = Operator(pax_installed, namespace, tmp_path / "operator.log")
    try:
        operator.start(timeout_s=START_S)
        pax.create("early", cpu_job(hosts=2))
        wait_for("the guard to refuse", lambda: operator.blocked("policy") == 1, GUARD_S)
        code, why = operator.readiness()
        assert code == 503 and f"ValidatingAdmissionPolicy {NAME} does not exist" in why, (code, why)
        _no_pods_for_a_while(pax, "early")
        assert "install guard: not reconciling (no pod is created)" in operator.log_tail(40)

        # The policy, bound only to audit: still refused, now for the binding.
        admission.create_validating_admission_policy(POLICY)
        admission.create_validating_admission_policy_binding(_binding(NAME, NAME, namespace, ["Audit"]))
        wait_for(
            "the guard to refuse the binding only",
            lambda: (operator.blocked("policy"), operator.blocked("binding")) == (0, 1),
            GUARD_S,
        )
        assert "lack Deny" in operator.readiness()[1]
        assert pax.pods("early") == []

        # Enforced: the waiting job gets its gang.
        admission.patch_validating_admission_policy_binding(NAME, {"spec": {"validationActions": ["Deny"]}})
        pax.wait_pods("early", 2, attempt=0, timeout=GUARD_S + START_S)
        assert operator.readiness() == (200, "running")
        assert operator.blocked("binding") == 0

        # The binding deleted: the operator stops (a restarted container waits at the guard again).
        admission.delete_validating_admission_policy_binding(NAME)
        assert operator.proc is not None
        rc = wait_for("the operator to stop", lambda: operator.proc.poll(), GUARD_S)  # type: ignore[union-attr]
        assert rc == 1
        log = operator.log_tail(40)
        assert (
            f"install guard: stopping the operator: ValidatingAdmissionPolicyBinding {NAME} does not exist"
            in log
        )
    finally:
        operator.dump_stacks()
        operator.kill()
        print(f"--- operator log ---\n{operator.log_tail(20)}")


def test_an_operator_refuses_to_run_beside_an_older_install_watching_its_namespace(
    pax_installed: Path,
    namespace: str,
    pax: Pax,
    admission: client.AdmissionregistrationV1Api,
    tmp_path: Path,
) -> None:
    # Another install, cluster-wide, older (creation times have one-second resolution).
    admission.create_validating_admission_policy_binding(_binding(OTHER, OTHER, "*"))
    time.sleep(1.1)
    admission.create_validating_admission_policy(POLICY)
    admission.create_validating_admission_policy_binding(_binding(NAME, NAME, namespace))
    operator = Operator(pax_installed, namespace, tmp_path / "operator.log")
    try:
        operator.start(timeout_s=START_S)
        pax.create("contested", cpu_job(hosts=2))
        wait_for("the guard to refuse", lambda: operator.blocked("conflict") == 1, GUARD_S)
        code, why = operator.readiness()
        assert code == 503 and f"ValidatingAdmissionPolicyBinding {OTHER}" in why, why
        assert f"watches {namespace} too" in why, why
        _no_pods_for_a_while(pax, "contested")

        # The other install narrowed to namespaces this one does not watch: no overlap, this one runs.
        admission.patch_validating_admission_policy_binding(
            OTHER, {"metadata": {"annotations": {"pax.dev/watch-namespaces": "team-elsewhere"}}}
        )
        pax.wait_pods("contested", 2, attempt=0, timeout=GUARD_S + START_S)
        assert operator.blocked("conflict") == 0

        # A newer install arriving later is the one that refuses: this one keeps running.
        admission.delete_validating_admission_policy_binding(OTHER)
        admission.create_validating_admission_policy_binding(_binding(OTHER, OTHER, "*"))
        time.sleep(QUIET_S)
        assert operator.proc is not None and operator.proc.poll() is None
        assert operator.readiness() == (200, "running")
    finally:
        operator.dump_stacks()
        operator.kill()
        print(f"--- operator log ---\n{operator.log_tail(20)}")


def _review_commands() -> list[list[str]]:
    """docs/security.md's review commands (after 'Checked when written'), as kubectl argument lists."""
    text = (DEPLOY.parent / "docs" / "security.md").read_text().split("**Checked when written", 1)[1]
    block = text.split("```console", 1)[1].split("```", 1)[0]
    return [shlex.split(line.removeprefix("$ kubectl ")) for line in block.strip().splitlines()]


def test_the_documented_review_finds_a_job_admitted_before_the_policy(
    pax_installed: Path, namespace: str, pax: Pax, admission: client.AdmissionregistrationV1Api, kubectl
) -> None:
    """What the policy did not see is not re-checked (docs/security.md says why); the review it documents
    lists such a job, created before the policy, with its hostPath volume."""
    pax.create(
        "unchecked", cpu_job(hosts=1, podTemplate={"volumes": [{"name": "h", "hostPath": {"path": "/"}}]})
    )
    time.sleep(1.1)  # creation times have one-second resolution
    admission.create_validating_admission_policy(POLICY)
    policy_cmd, objects_cmd = _review_commands()
    created = kubectl(*policy_cmd, check=True).stdout.strip()
    rows = [
        row
        for row in kubectl(*objects_cmd, check=True).stdout.splitlines()
        if f"{namespace}/unchecked" in row
    ]
    assert len(rows) == 1 and '"hostPath":{"path":"/"}' in rows[0], rows
    assert rows[0].split()[0] < created  # RFC 3339 UTC: ordered as strings
