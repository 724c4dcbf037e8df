"""Must-show 1: the real apiserver rejects malformed PaxJobs with field-precise messages and creates nothing;
defaults, immutability and `kubectl explain` come from the same CRD."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from paxjob_harness import DEPLOY, cpu_job, wait_for

pytestmark = pytest.mark.integration

LONG_NAME = "a" * 53


def _with(path: str, value: Any, *, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid spec with the dotted `path` set to `value` (None deletes it)."""
    spec = copy.deepcopy(base or cpu_job())
    *parents, leaf = path.split(".")
    node = spec
    for key in parents:
        node = node.setdefault(key, {})
    if value is None:
        node.pop(leaf, None)
    else:
        node[leaf] = value
    return spec


TPU = {"tpu": {"acceleratorType": "v5p", "topology": "2x2x4"}}

# (case, spec, substring the apiserver's message must contain: the field path and what is wrong)
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("missing experiment", _with("experiment", None), "spec.experiment: Required value"),
    ("missing image", _with("image", None), "spec.image: Required value"),
    ("missing jobLogDir", _with("jobLogDir", None), "spec.jobLogDir: Required value"),
    ("hosts 0", _with("topology", {"cpu": {"hosts": 0}}), "spec.topology.cpu.hosts: Invalid value: 0"),
    (
        "hosts not a number",
        _with("topology", {"cpu": {"hosts": "two"}}),
        "spec.topology.cpu.hosts: Invalid value",
    ),
    (
        "GPU and TPU both",
        _with("topology", {"gpu": {"hosts": 1, "gpusPerHost": 8}, **TPU}),
        "set exactly one of topology.cpu, topology.gpu or topology.tpu",
    ),
    ("empty topology", _with("topology", {}), "set exactly one of topology.cpu"),
    (
        "GPU without gpusPerHost",
        _with("topology", {"gpu": {"hosts": 2}}),
        "spec.topology.gpu.gpusPerHost: Required value",
    ),
    (
        "2D topology for v5p",
        _with("topology", {"tpu": {"acceleratorType": "v5p", "topology": "2x2"}}),
        "spec.topology.tpu.topology: Invalid value",
    ),
    (
        "v4 chips not a multiple of 4",
        _with("topology", {"tpu": {"acceleratorType": "v4", "topology": "1x2x3"}}),
        "multiple of 4 chips",
    ),
    (
        "v6e topology that does not exist",
        _with("topology", {"tpu": {"acceleratorType": "v6e", "topology": "3x3"}}),
        "spec.topology.tpu.topology: Invalid value",
    ),
    (
        "unknown TPU generation",
        _with("topology", {"tpu": {"acceleratorType": "v9", "topology": "2x2"}}),
        'spec.topology.tpu.acceleratorType: Unsupported value: "v9"',
    ),
    (
        "zero slices",
        _with("topology", {"tpu": {"acceleratorType": "v5p", "topology": "2x2x4", "slices": 0}}),
        "spec.topology.tpu.slices: Invalid value: 0",
    ),
    (
        "negative maxFailures",
        _with("restartPolicy", {"maxFailures": -1}),
        "spec.restartPolicy.maxFailures: Invalid value: -1",
    ),
    (
        "negative maxPreemptions",
        _with("restartPolicy", {"maxPreemptions": -5}),
        "spec.restartPolicy.maxPreemptions: Invalid value: -5",
    ),
    (
        "backoff over an hour",
        _with("restartPolicy", {"backoffSeconds": 7200}),
        "spec.restartPolicy.backoffSeconds: Invalid value: 7200",
    ),
    ("unknown spec field", _with("replicas", 3), 'unknown field "spec.replicas"'),
    (
        "unknown nested field",
        _with("topology", {"cpu": {"hosts": 1, "gpus": 1}}),
        'unknown field "spec.topology.cpu.gpus"',
    ),
    ("bad mode", _with("mode", "serve"), 'spec.mode: Unsupported value: "serve"'),
    ("relative jobLogDir", _with("jobLogDir", "runs/x"), "spec.jobLogDir: Invalid value"),
    ("s3 jobLogDir", _with("jobLogDir", "s3://bucket/x"), "spec.jobLogDir: Invalid value"),
    ("experiment with a space", _with("experiment", "lm tiny"), "spec.experiment: Invalid value"),
    (
        "override name not an identifier",
        _with("overrides", {"learning rate": "1"}),
        "override names must be dotted",
    ),
    (
        "checkpoint interval twice",
        _with("overrides", {"save_interval_steps": "10"}, base=_with("checkpointIntervalSteps", 5)),
        "spec.checkpointIntervalSteps: Invalid value",
    ),
    (
        "reserved env name",
        _with("podTemplate", {"env": [{"name": "JAX_PROCESS_ID", "value": "3"}]}),
        "spec.podTemplate.env[0].name",
    ),
    (
        "GPU limit via podTemplate",
        _with("podTemplate", {"resources": {"limits": {"nvidia.com/gpu": 1}}}),
        "spec.podTemplate.resources.limits",
    ),
    (
        "reserved label prefix",
        _with("podTemplate", {"labels": {"pax.dev/host-index": "9"}}),
        "label keys under pax.dev/ are reserved",
    ),
    (
        "reserved volume name",
        _with("podTemplate", {"volumes": [{"name": "pax-tmp", "emptyDir": {}}]}),
        "spec.podTemplate.volumes[0].name",
    ),
    (
        "tensorboard on the metrics port",
        _with("tensorboard", {"enabled": True, "port": 9431}),
        "spec.tensorboard.port",
    ),
    ("hang timeout too short", _with("hangTimeoutSeconds", 5), "spec.hangTimeoutSeconds: Invalid value: 5"),
    ("zero deadline", _with("activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds: Invalid value: 0"),
    ("negative TTL", _with("ttlSecondsAfterFinished", -1), "spec.ttlSecondsAfterFinished: Invalid value: -1"),
]


def _manifest(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxJob", "metadata": {"name": name}, "spec": spec}
    )


def test_malformed_paxjobs_are_rejected_with_field_precise_messages(
    kubectl, pax_installed, namespace
) -> None:
    assert len(MALFORMED) >= 20
    mismatches = []
    for index, (case, spec, expected) in enumerate(MALFORMED):
        result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(f"bad-{index}", spec))
        if result.returncode == 0 or expected not in result.stderr:
            mismatches.append(f"{case}: rc={result.returncode} stderr={result.stderr.strip()!r}")
    result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(LONG_NAME, cpu_job()))
    if result.returncode == 0 or "metadata.name must be a DNS-1035 label" not in result.stderr:
        mismatches.append(f"name too long: {result.stderr.strip()!r}")
    assert mismatches == []
    listed = kubectl("get", "paxjobs,pods,services", "-n", namespace, "-o", "name", check=True)
    assert listed.stdout.strip() == ""


def test_defaults_come_from_the_crd(kubectl, pax_installed, namespace) -> None:
    result = kubectl(
        "create",
        "-n",
        namespace,
        "--dry-run=server",
        "-o",
        "json",
        "-f",
        "-",
        input=_manifest("ok", cpu_job()),
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads(result.stdout)["spec"]
    assert spec["mode"] == "train" and spec["suspend"] is False and spec["hangTimeoutSeconds"] == 1800
    assert spec["restartPolicy"] == {"maxPreemptions": 100, "maxFailures": 3, "backoffSeconds": 1}
    assert spec["tensorboard"] == {"enabled": False, "port": 6006}
    tpu = _with("topology", TPU)
    result = kubectl(
        "create", "-n", namespace, "--dry-run=server", "-o", "json", "-f", "-", input=_manifest("t", tpu)
    )
    assert json.loads(result.stdout)["spec"]["topology"]["tpu"]["slices"] == 1


def test_topology_experiment_and_job_log_dir_are_immutable(kubectl, pax_installed, namespace) -> None:
    kubectl("create", "-n", namespace, "-f", "-", input=_manifest("fixed", cpu_job(suspend=True)), check=True)
    for patch, message in [
        ({"spec": {"topology": {"cpu": {"hosts": 8}}}}, "topology is immutable"),
        ({"spec": {"experiment": "other"}}, "experiment is immutable"),
        ({"spec": {"jobLogDir": "/elsewhere"}}, "jobLogDir is immutable"),
    ]:
        result = kubectl("patch", "-n", namespace, "paxjob", "fixed", "--type=merge", "-p", json.dumps(patch))
        assert result.returncode != 0 and message in result.stderr, result.stderr
    result = kubectl(
        "patch", "-n", namespace, "pj", "fixed", "--type=merge", "-p", '{"spec": {"suspend": false}}'
    )
    assert result.returncode == 0, result.stderr


def test_kubectl_explain_reads_well(kubectl, pax_installed) -> None:
    explained = wait_for(  # the OpenAPI of a new CRD is published a moment after it is Established
        "kubectl explain", lambda: (r := kubectl("explain", "paxjob.spec.topology.tpu")).returncode == 0 and r
    )
    text = " ".join(explained.stdout.split())
    assert "acceleratorType" in text and "Hosts per slice follow from the chip count" in text
    text = " ".join(kubectl("explain", "pj.spec.restartPolicy", check=True).stdout.split())
    assert "maxPreemptions" in text and "preemptions and failures are counted separately" in text
    resources = kubectl("api-resources", "--categories=pax", "-o", "name", check=True)
    assert resources.stdout.split() == ["paxjobs.pax.dev"]


def test_deploy_manifests_and_sample_are_admitted(kubectl, pax_installed, namespace) -> None:
    """deploy/ applies as a whole (server-side dry run), the operator Deployment meets PSA restricted."""
    result = kubectl("apply", "-k", str(DEPLOY), "--dry-run=server")
    assert result.returncode == 0, result.stderr
    assert "would violate PodSecurity" not in result.stderr, result.stderr
    samples = sorted((DEPLOY / "samples").glob("*.yaml"))
    assert len(samples) >= 3
    for sample in samples:
        result = kubectl("create", "-n", namespace, "--dry-run=server", "-f", str(sample))
        assert result.returncode == 0, (sample.name, result.stderr)
