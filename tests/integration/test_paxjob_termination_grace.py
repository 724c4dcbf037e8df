"""spec.terminationGracePeriodSeconds against the real apiserver: the operator (a subprocess under deploy/'s
RBAC) renders it into every gang pod and the trainer's PAX_TERMINATION_GRACE_SECONDS, an edit reaches the
next gang only through a suspension, a PaxSweep's template is bounded the same way, and a user with PaxJob
rights only may set it (a grace period reaches nothing the user could not otherwise reach: it is a top-level
field, not one of podTemplate's, which the pod-authority policy reserves for users who may create pods)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml
from kubernetes.client.exceptions import ApiException
from pax_cluster.controlplane import ControlPlane
from pax_contract import ENV_TERMINATION_GRACE
from paxjob_harness import Pax, cpu_job
from paxsweep_harness import sweep_spec
from test_confused_deputy import (  # noqa: F401  (fixtures: users needs pod_authority_policy)
    EDITOR,
    _submit,
    paxjob,
    pod_authority_policy,
    users,
)

pytestmark = pytest.mark.integration

FIELD = "terminationGracePeriodSeconds"


def _graces(pods: list[dict[str, Any]]) -> set[tuple[int, str]]:
    """(pod's terminationGracePeriodSeconds, the trainer's PAX_TERMINATION_GRACE_SECONDS) of each pod."""
    found = set()
    for pod in pods:
        (trainer,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        found.add((pod["spec"]["terminationGracePeriodSeconds"], env[ENV_TERMINATION_GRACE]))
    return found


def test_every_gang_pod_gets_the_jobs_grace_period(operator, pax: Pax) -> None:
    pax.create("long-save", cpu_job(3, **{FIELD: 900}))
    pax.create("plain", cpu_job(2))
    assert _graces(pax.wait_pods("long-save", 3, 0)) == {(900, "900")}
    assert _graces(pax.wait_pods("plain", 2, 0)) == {(30, "30")}


def test_an_edit_reaches_the_next_gang_only_through_a_suspension(operator, pax: Pax) -> None:
    pax.create("edit-grace", cpu_job(2))
    pax.wait_pods("edit-grace", 2, 0)
    with pytest.raises(ApiException) as refused:
        pax.patch_spec("edit-grace", {FIELD: 600})
    message = json.loads(refused.value.body)["message"]
    assert f"spec.{FIELD}: Forbidden: {FIELD} may change only while the job is suspended" in message
    pax.patch_spec("edit-grace", {"suspend": True})
    pax.wait_status("edit-grace", "Suspended", lambda s: s.get("phase") == "Suspended")
    pax.patch_spec("edit-grace", {FIELD: 600})
    pax.patch_spec("edit-grace", {"suspend": False})
    assert _graces(pax.wait_pods("edit-grace", 2, 1)) == {(600, "600")}


@pytest.mark.parametrize(
    ("value", "says"),
    [(0, "should be greater than or equal to 1"), (7200, "should be less than or equal to 3600")],
)
def test_a_sweep_template_is_bounded_like_a_paxjob(kubectl, pax_installed, namespace, value, says) -> None:
    def manifest(name: str, grace: int) -> str:
        spec = sweep_spec(template=cpu_job(hosts=1, **{FIELD: grace}))
        return yaml.safe_dump(
            {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxSweep", "metadata": {"name": name}, "spec": spec}
        )

    result = kubectl("create", "-n", namespace, "-f", "-", input=manifest("bad-grace", value))
    assert result.returncode != 0 and f"spec.template.{FIELD}" in result.stderr and says in result.stderr
    result = kubectl(
        "create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=manifest("ok", 1200)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["spec"]["template"][FIELD] == 1200


def test_a_user_with_paxjob_rights_only_may_set_it(
    control_plane: ControlPlane,
    namespace: str,
    users: dict[str, Any],  # noqa: F811  (the fixture: the pod-authority policy enforced)
) -> None:
    job = paxjob("editor-grace", namespace, **{FIELD: 3600})
    result = _submit(control_plane, users[EDITOR], job)
    assert result.returncode == 0, result.stderr
