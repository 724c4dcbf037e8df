"""Desired-state renderers: Service and pods for CPU, GPU, TPU single slice and multislice."""

from __future__ import annotations

import dataclasses
from typing import Any

import pax_contract as contract
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pax_cluster.podenv import expand
from pax_operator.core.render import (
    contract_env,
    kubelet_escape,
    pod_spec_hash,
    render_gang,
    render_pod,
    render_service,
    trainer_command,
    trainer_invocation,
)
from pax_operator.spec import MAX_HOSTS
from paxjob_factory import JOB, make_spec
from pydantic import ValidationError


def env_of(pod: dict[str, Any], container: int = 0) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][container]["env"]
    }


def test_service_is_headless_and_publishes_not_ready() -> None:
    service = render_service(JOB, make_spec())
    assert service["metadata"]["name"] == "lm"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"pax.dev/job-name": "lm"}
    assert {p["port"] for p in service["spec"]["ports"]} == {contract.COORDINATOR_PORT, contract.METRICS_PORT}
    assert service["metadata"]["ownerReferences"][0]["controller"] is True


def test_cpu_gang_env_labels_owner_dns() -> None:
    pods = render_gang(JOB, make_spec(), attempt=3)
    assert [p["metadata"]["name"] for p in pods] == ["lm-0", "lm-1"]
    for host, pod in enumerate(pods):
        spec = pod["spec"]
        assert (spec["hostname"], spec["subdomain"], spec["restartPolicy"]) == (f"lm-{host}", "lm", "Never")
        assert pod["metadata"]["labels"] == {
            "pax.dev/job-name": "lm",
            "pax.dev/host-index": str(host),
            "pax.dev/restart-attempt": "3",
        }
        (owner,) = pod["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "pax.dev/v1alpha1",
            "kind": "PaxJob",
            "name": "lm",
            "uid": "uid-1",
            "controller": True,
            "blockOwnerDeletion": True,
        }
        env = env_of(pod)
        assert env[contract.ENV_COORDINATOR_ADDRESS] == "lm-0.lm.team-a.svc:8476"
        assert env[contract.ENV_NUM_PROCESSES] == "2"
        assert env[contract.ENV_PROCESS_ID] == str(host)
        assert env[contract.ENV_RESTART_ATTEMPT] == "3"
        assert env[contract.ENV_RESULT_FILE] == contract.DEFAULT_RESULT_FILE
        assert env[contract.ENV_METRICS_PORT] == "9431"
        assert (env[contract.ENV_JOB_NAME], env[contract.ENV_JOB_NAMESPACE]) == ("lm", "team-a")
        assert env[contract.ENV_POD_IP] == {"fieldRef": {"fieldPath": "status.podIP"}}
        assert not any(name.startswith("MEGASCALE_") for name in env)
        assert env["HOME"] == "/tmp" and env["PYTHONUNBUFFERED"] == "1"
        trainer = spec["containers"][0]
        assert trainer["terminationMessagePath"] == contract.DEFAULT_RESULT_FILE
        assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError"
        assert trainer["resources"] == {"requests": {"cpu": "100m", "memory": "512Mi"}}  # not BestEffort
        assert "nodeSelector" not in spec and "initContainers" not in spec


def test_pod_ip_env_comes_first_so_later_values_can_expand_it() -> None:
    pod = render_pod(JOB, make_spec(), 0, 0)
    assert pod["spec"]["containers"][0]["env"][0]["name"] == contract.ENV_POD_IP


def test_command_has_paxml_flags_and_sorted_overrides() -> None:
    spec = make_spec(
        mode="eval", overrides={"model_dims": "64", "learning_rate": "3e-4"}, checkpointIntervalSteps=50
    )
    assert trainer_command(spec) == [
        "python",
        "-m",
        "pax_trainer",
        "--exp=lm_tiny",
        "--mode=eval",
        "--job_log_dir=gs://bucket/runs/lm",
        "--set=learning_rate=3e-4",
        "--set=model_dims=64",
        "--set=save_interval_steps=50",
    ]


def test_command_round_trips_through_the_contract_and_escapes_kubelet_expansion() -> None:
    """What the trainer parses (after the kubelet's $(VAR) expansion) is exactly the spec's invocation."""
    spec = make_spec(
        jobLogDir="gs://bucket/$(HOME)/x",
        overrides={"tag": "$(POD_IP) costs $$5 $", "learning_rate": "3e-4"},
    )
    command = trainer_command(spec)
    assert "--set=tag=$$(POD_IP) costs $$$$5 $$" in command
    assert "--job_log_dir=gs://bucket/$$(HOME)/x" in command
    env = {"POD_IP": "10.0.0.1", "HOME": "/tmp"}
    expanded = [expand(arg, env) for arg in command]  # the process kubelet's Kubernetes expansion
    assert expanded[: len(contract.ENTRYPOINT)] == list(contract.ENTRYPOINT)
    parsed = contract.TrainerInvocation.from_argv(expanded[len(contract.ENTRYPOINT) :])
    assert parsed == trainer_invocation(spec)
    assert parsed.overrides["tag"] == "$(POD_IP) costs $$5 $"


def test_env_is_the_contracts_and_parses_back() -> None:
    spec = make_spec(topology={"tpu": {"acceleratorType": "v5p", "topology": "2x2x4", "slices": 2}})
    pod = render_pod(JOB, spec, 5, 2)
    env = pod["spec"]["containers"][0]["env"]
    values = {e["name"]: e["value"] for e in env if "value" in e}
    parsed = contract.TrainerEnv.from_env(values | {contract.ENV_POD_IP: "10.0.0.9"})
    assert parsed == dataclasses.replace(contract_env(JOB, spec, 5, 2), pod_ip="10.0.0.9")
    assert (parsed.num_processes, parsed.process_id, parsed.restart_attempt) == (8, 5, 2)
    assert parsed.megascale == contract.Megascale("lm-0.lm.team-a.svc:8080", 2, 1)
    assert [e["name"] for e in env][: len(contract.TRAINER_ENV)] == list(contract.TRAINER_ENV)


def test_tensorboard_logdir_is_escaped_but_its_host_expands() -> None:
    spec = make_spec(jobLogDir="gs://b/$(X)", tensorboard={"enabled": True})
    (sidecar,) = render_pod(JOB, spec, 0, 0)["spec"]["initContainers"]
    assert sidecar["command"][1:3] == ["--logdir=gs://b/$$(X)/summaries", "--host=$(POD_IP)"]


def test_gang_size_is_bounded_before_anything_is_allocated() -> None:
    huge = {"tpu": {"acceleratorType": "v5p", "topology": "4000x4000x4000"}}
    with pytest.raises(ValidationError, match="topology"):
        make_spec(topology=huge)
    too_many = {"tpu": {"acceleratorType": "v5p", "topology": "16x16x32", "slices": 64}}
    with pytest.raises(ValidationError, match="more than 4096"):
        make_spec(topology=too_many)
    assert len(render_gang(JOB, make_spec(topology={"cpu": {"hosts": MAX_HOSTS}}), 0)) == MAX_HOSTS


def test_pod_is_psa_restricted() -> None:
    pod = render_pod(JOB, make_spec(), 0, 0)
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 65532
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
    assert {"name": "pax-tmp", "emptyDir": {}} in spec["volumes"]
    assert "hostNetwork" not in spec


def test_gpu_limits() -> None:
    pods = render_gang(JOB, make_spec(topology={"gpu": {"hosts": 3, "gpusPerHost": 8}}), 0)
    assert len(pods) == 3
    for pod in pods:
        resources = pod["spec"]["containers"][0]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "8"
        assert resources["requests"]["nvidia.com/gpu"] == "8"
    assert env_of(pods[2])[contract.ENV_NUM_PROCESSES] == "3"


@pytest.mark.parametrize(
    ("accelerator", "topology", "hosts", "chips", "gke"),
    [
        ("v5p", "2x2x4", 4, "4", "tpu-v5p-slice"),
        ("v5p", "2x2x1", 1, "4", "tpu-v5p-slice"),
        ("v4", "2x2x2", 2, "4", "tpu-v4-podslice"),
        ("v6e", "2x4", 1, "8", "tpu-v6e-slice"),
        ("v6e", "4x4", 4, "4", "tpu-v6e-slice"),
        ("v5litepod", "1x1", 1, "1", "tpu-v5-lite-podslice"),
        ("v5litepod", "16x16", 64, "4", "tpu-v5-lite-podslice"),
    ],
)
def test_tpu_single_slice(accelerator: str, topology: str, hosts: int, chips: str, gke: str) -> None:
    spec = make_spec(topology={"tpu": {"acceleratorType": accelerator, "topology": topology}})
    pods = render_gang(JOB, spec, 0)
    assert len(pods) == hosts
    pod = pods[-1]
    assert pod["spec"]["nodeSelector"] == {
        "cloud.google.com/gke-tpu-accelerator": gke,
        "cloud.google.com/gke-tpu-topology": topology,
    }
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"google.com/tpu": chips}
    assert {"key": "google.com/tpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]
    assert pod["metadata"]["labels"]["pax.dev/slice"] == "0"
    assert not any(name.startswith("MEGASCALE_") for name in env_of(pod))


def test_tpu_multislice() -> None:
    spec = make_spec(topology={"tpu": {"acceleratorType": "v5p", "topology": "2x2x4", "slices": 2}})
    pods = render_gang(JOB, spec, 1)
    assert len(pods) == 8
    for host, pod in enumerate(pods):
        env = env_of(pod)
        assert env[contract.ENV_NUM_PROCESSES] == "8"
        assert env[contract.ENV_PROCESS_ID] == str(host)
        assert env[contract.ENV_NUM_SLICES] == "2"
        assert env[contract.ENV_SLICE_ID] == str(host // 4)
        assert env[contract.ENV_MEGASCALE_COORDINATOR] == "lm-0.lm.team-a.svc:8080"
        assert env[contract.ENV_COORDINATOR_ADDRESS] == "lm-0.lm.team-a.svc:8476"
        assert pod["metadata"]["labels"]["pax.dev/slice"] == str(host // 4)


def test_tensorboard_native_sidecar_on_host_0_only() -> None:
    spec = make_spec(tensorboard={"enabled": True, "port": 6010})
    host0, host1 = render_gang(JOB, spec, 0)
    (sidecar,) = host0["spec"]["initContainers"]
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["image"] == "pax/trainer:1"
    assert sidecar["command"] == [
        "tensorboard",
        "--logdir=gs://bucket/runs/lm/summaries",
        "--host=$(POD_IP)",
        "--port=6010",
    ]
    assert sidecar["env"] == host0["spec"]["containers"][0]["env"]  # POD_IP first, the trainer's env
    assert "initContainers" not in host1["spec"]
    assert 6010 in {p["port"] for p in render_service(JOB, spec)["spec"]["ports"]}


def test_pod_template_overrides_are_merged() -> None:
    spec = make_spec(
        topology={"tpu": {"acceleratorType": "v6e", "topology": "4x4"}},
        podTemplate={
            "serviceAccountName": "trainer-gcs",
            "nodeSelector": {"pool": "a"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "env": [{"name": "XLA_FLAGS", "value": "--xla_dump_to=/tmp"}],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            "resources": {"requests": {"cpu": 2, "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
            "labels": {"team": "a"},
            "annotations": {"note": "x"},
            "priorityClassName": "high",
        },
        imagePullPolicy="IfNotPresent",
    )
    pod = render_pod(JOB, spec, 1, 0)
    pod_spec, trainer = pod["spec"], pod["spec"]["containers"][0]
    assert pod_spec["serviceAccountName"] == "trainer-gcs" and pod_spec["priorityClassName"] == "high"
    assert pod_spec["nodeSelector"]["pool"] == "a"
    assert pod_spec["nodeSelector"]["cloud.google.com/gke-tpu-topology"] == "4x4"
    assert {"key": "spot", "operator": "Exists"} in pod_spec["tolerations"]
    assert env_of(pod)["XLA_FLAGS"] == "--xla_dump_to=/tmp"
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "d"}} in pod_spec["volumes"]
    assert {"name": "data", "mountPath": "/data"} in trainer["volumeMounts"]
    assert trainer["resources"] == {
        "requests": {"cpu": "2", "memory": "8Gi", "google.com/tpu": "4"},
        "limits": {"memory": "8Gi", "google.com/tpu": "4"},
    }
    assert trainer["imagePullPolicy"] == "IfNotPresent"
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["annotations"] == {"note": "x", "pax.dev/pod-spec-hash": pod_spec_hash(spec)}


def test_rendering_is_deterministic() -> None:
    spec = make_spec(overrides={"b": "1", "a": "2"})
    assert render_gang(JOB, spec, 0) == render_gang(JOB, spec, 0)


@given(st.text(alphabet=st.sampled_from("$()ab_ {}\\"), max_size=30), st.text(max_size=30))
def test_kubelet_escape_survives_kubernetes_expansion(text: str, other: str) -> None:
    """Whatever an override value or path holds, the kubelet's $(VAR) expansion gives it back verbatim."""
    env = {"a": "EXPANDED", "POD_IP": "10.0.0.1", "HOME": "/tmp"}
    assert expand(kubelet_escape(text), env) == text
    assert expand(kubelet_escape(other), env) == other
