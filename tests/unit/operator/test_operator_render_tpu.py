"""Multi-host TPU slices: libtpu's worker variables, one node pool per slice; the sidecar's env."""

from __future__ import annotations

from typing import Any

import pax_contract as contract
import pytest
from pax_cluster.podenv import dns_names, resolve_env
from pax_operator.core.render import JobRef, render_gang, render_pod
from paxjob_factory import JOB, make_spec

MULTISLICE = {"tpu": {"acceleratorType": "v5p", "topology": "2x2x4", "slices": 2}}  # 4 hosts per slice
SINGLE_HOST_SLICES = {"tpu": {"acceleratorType": "v6e", "topology": "2x4", "slices": 2}}
POOL = "cloud.google.com/gke-nodepool"
TPU_ENV = ("TPU_WORKER_ID", "TPU_WORKER_HOSTNAMES")


def _no_lookup(*_: Any) -> str | None:
    raise AssertionError("no configMap or secret")


def _env(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """As the kubelet resolves it ($(VAR) expanded against the variables defined before it)."""
    return resolve_env(pod | {"status": {"podIP": "10.0.0.1"}}, container, _no_lookup)


def test_each_host_of_a_multi_host_slice_gets_its_worker_id_and_its_slices_hostnames() -> None:
    pods = render_gang(JOB, make_spec(topology=MULTISLICE), 0)
    names = {
        pod["metadata"]["name"]: dns_names(pod["spec"]["hostname"], pod["spec"]["subdomain"], JOB.namespace)
        for pod in pods
    }
    for host, pod in enumerate(pods):
        env = _env(pod, pod["spec"]["containers"][0])
        assert env["TPU_WORKER_ID"] == str(host % 4)
        hostnames = env["TPU_WORKER_HOSTNAMES"].split(",")
        assert hostnames == [f"lm-{i}.lm.team-a.svc" for i in range(host // 4 * 4, host // 4 * 4 + 4)]
        # Each is a name the headless Service gives the pod of that worker, in worker order.
        for worker, hostname in enumerate(hostnames):
            assert hostname in names[f"lm-{host // 4 * 4 + worker}"]
        assert hostnames[host % 4] in names[pod["metadata"]["name"]]
    assert all(contract.is_reserved_env(name) for name in TPU_ENV)  # podTemplate.env cannot set them


@pytest.mark.parametrize(
    "topology",
    [{"cpu": {"hosts": 2}}, {"gpu": {"hosts": 2, "gpusPerHost": 8}}, SINGLE_HOST_SLICES],
    ids=["cpu", "gpu", "single-host-slices"],
)
def test_no_worker_variables_or_affinity_without_a_multi_host_slice(topology: dict[str, Any]) -> None:
    for pod in render_gang(JOB, make_spec(topology=topology), 0):
        assert not set(TPU_ENV) & {e["name"] for e in pod["spec"]["containers"][0]["env"]}
        assert "affinity" not in pod["spec"]


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and In/NotIn/Exists/DoesNotExist expressions)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for req in selector.get("matchExpressions", []):
        value, op = labels.get(req["key"]), req["operator"]
        ok = {
            "In": value in req.get("values", []),
            "NotIn": value not in req.get("values", []),
            "Exists": value is not None,
            "DoesNotExist": value is None,
        }[op]
        if not ok:
            return False
    return True


def _term_selects(term: dict[str, Any], owner: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether a pod-affinity term of pod `owner` selects pod `other` (namespaces, then labels)."""
    assert term["topologyKey"] == POOL
    namespace = other["metadata"]["namespace"]
    if "namespaceSelector" in term:
        in_scope = _matches(term["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:
        in_scope = namespace in term.get("namespaces", [owner["metadata"]["namespace"]])
    return in_scope and _matches(term["labelSelector"], other["metadata"]["labels"])


def test_a_multi_host_slice_keeps_one_node_pool_and_shares_it_with_no_other_slice() -> None:
    spec = make_spec(topology=MULTISLICE)
    pods = render_gang(JOB, spec, 2)
    other_job = render_pod(JobRef("other", JOB.namespace, "uid-2"), spec, 0, 0)
    same_name_elsewhere = render_pod(JobRef(JOB.name, "team-b", "uid-3"), spec, 0, 0)
    single_host = render_pod(
        JobRef("small", JOB.namespace, "uid-4"), make_spec(topology=SINGLE_HOST_SLICES), 0, 0
    )
    unrelated = {"metadata": {"namespace": JOB.namespace, "labels": {"app": "web"}}}
    foreign = [other_job, same_name_elsewhere, single_host, unrelated]
    for pod in pods:
        slice_id = pod["metadata"]["labels"]["pax.dev/slice"]
        affinity = pod["spec"]["affinity"]
        (together,) = affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        apart = affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        for other in pods:
            same_slice = other["metadata"]["labels"]["pax.dev/slice"] == slice_id
            assert _term_selects(together, pod, other) is same_slice
            assert any(_term_selects(term, pod, other) for term in apart) is not same_slice
        for other in foreign:
            assert not _term_selects(together, pod, other)
            assert any(_term_selects(term, pod, other) for term in apart) is (
                "pax.dev/slice" in other["metadata"]["labels"]
            )
    # The user's scheduling constraints stay as they were, ours only add a pod (anti-)affinity.
    spec = make_spec(
        topology=MULTISLICE,
        podTemplate={"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "spot", "operator": "Exists"}]},
    )
    pod_spec = render_pod(JOB, spec, 5, 0)["spec"]
    assert (
        pod_spec["nodeSelector"]["pool"] == "a"
        and {"key": "spot", "operator": "Exists"} in pod_spec["tolerations"]
    )
    assert set(pod_spec["affinity"]) == {"podAffinity", "podAntiAffinity"}


def test_the_tensorboard_sidecar_expands_user_env_as_the_trainer_does() -> None:
    """The kubelet expands $(VAR) only against variables defined before, in the same container."""
    user_env = [{"name": "WHO", "value": "$(PAX_JOB_NAME)-$(JAX_PROCESS_ID)"}]
    spec = make_spec(topology=MULTISLICE, tensorboard={"enabled": True}, podTemplate={"env": user_env})
    pod = render_pod(JOB, spec, 0, 1)
    (trainer,), (sidecar,) = pod["spec"]["containers"], pod["spec"]["initContainers"]
    assert sidecar["env"] == trainer["env"]
    assert _env(pod, sidecar)["WHO"] == _env(pod, trainer)["WHO"] == "lm-0"
