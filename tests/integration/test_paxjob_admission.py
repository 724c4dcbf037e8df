"""Must-show 1: the real apiserver rejects malformed PaxJobs with field-precise messages and creates nothing;
defaults, immutability and `kubectl explain` come from the same CRD.

Each case names the field path the apiserver's message must carry and what it must say about it. The cases
marked ACCEPTED-BUT-BROKEN were admitted by the CRD before issue 7 and then broke the job or the operator."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest
import yaml
from pax_cluster.procs import DEPLOY
from paxjob_harness import cpu_job, wait_for

pytestmark = pytest.mark.integration

LONG_NAME = "a" * 53
PVC = {"name": "ckpt", "persistentVolumeClaim": {"claimName": "checkpoints"}}


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


def _tpu(accelerator: str, topology: str, **more: Any) -> dict[str, Any]:
    """A valid spec on a TPU slice: `accelerator` (acceleratorType) shaped `topology`, plus `more` fields."""
    return _with("topology", {"tpu": {"acceleratorType": accelerator, "topology": topology, **more}})


# (case, spec, field path, what the apiserver's message says about that field)
MALFORMED: list[tuple[str, dict[str, Any], str, str]] = [
    ("missing experiment", _with("experiment", None), "spec.experiment", "Required value"),
    ("missing image", _with("image", None), "spec.image", "Required value"),
    ("missing jobLogDir", _with("jobLogDir", None), "spec.jobLogDir", "Required value"),
    ("hosts 0", _with("topology", {"cpu": {"hosts": 0}}), "spec.topology.cpu.hosts", "Invalid value: 0"),
    (
        "hosts not a number",
        _with("topology", {"cpu": {"hosts": "two"}}),
        "spec.topology.cpu.hosts",
        "Invalid value",
    ),
    (
        "GPU and TPU both",
        _with("topology", {"gpu": {"hosts": 1, "gpusPerHost": 8}, **TPU}),
        "spec.topology",
        "set exactly one of topology.cpu, topology.gpu or topology.tpu",
    ),
    ("empty topology", _with("topology", {}), "spec.topology", "set exactly one of topology.cpu"),
    (
        "GPU without gpusPerHost",
        _with("topology", {"gpu": {"hosts": 2}}),
        "spec.topology.gpu.gpusPerHost",
        "Required value",
    ),
    (
        "2D topology for v5p",
        _tpu("v5p", "2x2"),
        "spec.topology.tpu.topology",
        "Invalid value",
    ),
    (
        "v4 chips not a multiple of 4",
        _tpu("v4", "1x2x3"),
        "spec.topology.tpu.topology",
        "multiple of 4 chips",
    ),
    (
        "v6e topology that does not exist",
        _tpu("v6e", "3x3"),
        "spec.topology.tpu.topology",
        "Invalid value",
    ),
    (
        "unknown TPU generation",
        _tpu("v9", "2x2"),
        "spec.topology.tpu.acceleratorType",
        'Unsupported value: "v9"',
    ),
    (
        "zero slices",
        _tpu("v5p", "2x2x4", slices=0),
        "spec.topology.tpu.slices",
        "Invalid value: 0",
    ),
    (
        "negative maxFailures",
        _with("restartPolicy", {"maxFailures": -1}),
        "spec.restartPolicy.maxFailures",
        "Invalid value: -1",
    ),
    (
        "negative maxPreemptions",
        _with("restartPolicy", {"maxPreemptions": -5}),
        "spec.restartPolicy.maxPreemptions",
        "Invalid value: -5",
    ),
    (
        "backoff over an hour",
        _with("restartPolicy", {"backoffSeconds": 7200}),
        "spec.restartPolicy.backoffSeconds",
        "Invalid value: 7200",
    ),
    # strict field validation names the path inside the message: `strict decoding error: unknown field "..."`
    ("unknown spec field", _with("replicas", 3), "strict decoding error", 'unknown field "spec.replicas"'),
    (
        "unknown nested field",
        _with("topology", {"cpu": {"hosts": 1, "gpus": 1}}),
        "strict decoding error",
        'unknown field "spec.topology.cpu.gpus"',
    ),
    ("bad mode", _with("mode", "serve"), "spec.mode", 'Unsupported value: "serve"'),
    ("relative jobLogDir", _with("jobLogDir", "runs/x"), "spec.jobLogDir", "Invalid value"),
    ("s3 jobLogDir", _with("jobLogDir", "s3://bucket/x"), "spec.jobLogDir", "Invalid value"),
    ("experiment with a space", _with("experiment", "lm tiny"), "spec.experiment", "Invalid value"),
    (
        "override name not an identifier",
        _with("overrides", {"learning rate": "1"}),
        "spec.overrides",
        "override names must be Python identifiers of at most 128 characters",
    ),
    (
        "overrides over 64 KiB in all (a 4096-host gang copied 1 MiB of them into every pod: 4 GiB of pods)",
        _with("overrides", {f"o{i}": "x" * 4096 for i in range(17)}),
        "spec.overrides",
        "overrides must total at most 64 KiB",
    ),
    (
        "checkpoint interval twice",
        _with("overrides", {"save_interval_steps": "10"}, base=_with("checkpointIntervalSteps", 5)),
        "spec.checkpointIntervalSteps",
        "set either checkpointIntervalSteps or overrides.save_interval_steps",
    ),
    (
        "reserved env name",
        _with("podTemplate", {"env": [{"name": "JAX_PROCESS_ID", "value": "3"}]}),
        "spec.podTemplate.env[0].name",
        "Forbidden: env name JAX_PROCESS_ID is reserved",
    ),
    (
        "GPU limit via podTemplate",
        _with("podTemplate", {"resources": {"limits": {"nvidia.com/gpu": 1}}}),
        "spec.podTemplate.resources.limits",
        "accelerators come from topology",
    ),
    (
        "GPU request via podTemplate (a request without its limit: every pod refused at creation)",
        _with("podTemplate", {"resources": {"requests": {"nvidia.com/gpu": 1}}}),
        "spec.podTemplate.resources.requests",
        "accelerators come from topology",
    ),
    (
        "reserved label prefix",
        _with("podTemplate", {"labels": {"pax.dev/host-index": "9"}}),
        "spec.podTemplate.labels",
        "label keys under pax.dev/ are reserved",
    ),
    (
        "reserved volume name",
        _with("podTemplate", {"volumes": [{"name": "pax-tmp", "emptyDir": {}}]}),
        "spec.podTemplate.volumes[0].name",
        "the volume name pax-tmp is reserved",
    ),
    (
        "tensorboard on the metrics port",
        _with("tensorboard", {"enabled": True, "port": 9431}),
        "spec.tensorboard.port",
        "Forbidden: ports 8476 (coordinator), 9431 (metrics) and 8080 (MEGASCALE) are reserved",
    ),
    ("hang timeout too short", _with("hangTimeoutSeconds", 5), "spec.hangTimeoutSeconds", "Invalid value: 5"),
    (
        "grace period 0 (an immediate SIGKILL: no save, no result)",
        _with("terminationGracePeriodSeconds", 0),
        "spec.terminationGracePeriodSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "negative grace period",
        _with("terminationGracePeriodSeconds", -30),
        "spec.terminationGracePeriodSeconds",
        "should be greater than or equal to 1",
    ),
    (
        "grace period of a day (every gang restart would wait up to it)",
        _with("terminationGracePeriodSeconds", 86400),
        "spec.terminationGracePeriodSeconds",
        "should be less than or equal to 3600",
    ),
    (
        "grace period as a duration string",
        _with("terminationGracePeriodSeconds", "30s"),
        "spec.terminationGracePeriodSeconds",
        "Invalid value",
    ),
    ("zero deadline", _with("activeDeadlineSeconds", 0), "spec.activeDeadlineSeconds", "Invalid value: 0"),
    (
        "negative TTL",
        _with("ttlSecondsAfterFinished", -1),
        "spec.ttlSecondsAfterFinished",
        "Invalid value: -1",
    ),
    # --- ACCEPTED-BUT-BROKEN before issue 7 -------------------------------------------------------------
    (
        "ACCEPTED-BUT-BROKEN: a 4000x4000x4000 TPU topology (the operator allocated until OOM-killed)",
        _tpu("v5p", "4000x4000x4000"),
        "spec.topology.tpu.topology",
        "Too long: may not be more than 11",
    ),
    (
        "ACCEPTED-BUT-BROKEN: topology x slices beyond 4096 hosts",
        _tpu("v5p", "16x16x32", slices=64),
        "spec.topology.tpu.topology",
        "topology 16x16x32 times slices is more than 4096 hosts",
    ),
    (
        "ACCEPTED-BUT-BROKEN: activeDeadlineSeconds 10^12 (every reconcile crashed: date value out of range)",
        _with("activeDeadlineSeconds", 10**12),
        "spec.activeDeadlineSeconds",
        "should be less than or equal to 2147483647",
    ),
    (
        "ACCEPTED-BUT-BROKEN: ttlSecondsAfterFinished 10^12 (date value out of range)",
        _with("ttlSecondsAfterFinished", 10**12),
        "spec.ttlSecondsAfterFinished",
        "should be less than or equal to 2147483647",
    ),
    (
        "ACCEPTED-BUT-BROKEN: the CRD's own example of a dotted override name, which the trainer rejects",
        _with("overrides", {"model.num_layers": "4"}),
        "spec.overrides",
        "no dots: hyperparameters are flat, e.g. num_layers, not model.num_layers",
    ),
    (
        "ACCEPTED-BUT-BROKEN: jobLogDir /tmp/run (the trainer's emptyDir: checkpoints lost on restart)",
        _with("jobLogDir", "/tmp/run"),
        "spec.jobLogDir",
        "jobLogDir /tmp/run must be gs://bucket/path or lie under the mountPath of a writable, persistent",
    ),
    (
        "ACCEPTED-BUT-BROKEN: HOME (the operator sets it to the writable /tmp)",
        _with("podTemplate", {"env": [{"name": "HOME", "value": "/"}]}),
        "spec.podTemplate.env[0].name",
        "Forbidden: env name HOME is reserved",
    ),
    (
        "ACCEPTED-BUT-BROKEN: a PAX_ name outside the old list",
        _with("podTemplate", {"env": [{"name": "PAX_TRAINER_FLAGS", "value": "x"}]}),
        "spec.podTemplate.env[0].name",
        "Forbidden: env name PAX_TRAINER_FLAGS is reserved",
    ),
    (
        "ACCEPTED-BUT-BROKEN: TensorBoard on the MEGASCALE port of host 0",
        _with("tensorboard", {"enabled": True, "port": 8080}),
        "spec.tensorboard.port",
        "Forbidden: ports 8476 (coordinator), 9431 (metrics) and 8080 (MEGASCALE) are reserved",
    ),
    (
        "ACCEPTED-BUT-BROKEN: hangTimeoutSeconds 10^12 (date value out of range)",
        _with("hangTimeoutSeconds", 10**12),
        "spec.hangTimeoutSeconds",
        "should be less than or equal to 2147483647",
    ),
    # --- jobLogDir must survive a gang restart ------------------------------------------------------------
    (
        "jobLogDir on an emptyDir volume",
        _with(
            "jobLogDir",
            "/scratch/run",
            base=_with(
                "podTemplate",
                {
                    "volumes": [{"name": "s", "emptyDir": {}}],
                    "volumeMounts": [{"name": "s", "mountPath": "/scratch"}],
                },
            ),
        ),
        "spec.jobLogDir",
        "not emptyDir or ephemeral",
    ),
    (
        "jobLogDir on a read-only mount",
        _with(
            "jobLogDir",
            "/data/run",
            base=_with(
                "podTemplate",
                {
                    "volumes": [PVC],
                    "volumeMounts": [{"name": "ckpt", "mountPath": "/data", "readOnly": True}],
                },
            ),
        ),
        "spec.jobLogDir",
        "writable, persistent volume",
    ),
    (
        "jobLogDir with no volume at all",
        _with("jobLogDir", "/data/run"),
        "spec.jobLogDir",
        "persistent volume",
    ),
    (
        "jobLogDir beside the mount, not under it",
        _with(
            "jobLogDir",
            "/database/run",
            base=_with(
                "podTemplate", {"volumes": [PVC], "volumeMounts": [{"name": "ckpt", "mountPath": "/data"}]}
            ),
        ),
        "spec.jobLogDir",
        "persistent volume",
    ),
    (
        "jobLogDir on a configMap",
        _with(
            "jobLogDir",
            "/cfg/run",
            base=_with(
                "podTemplate",
                {
                    "volumes": [{"name": "c", "configMap": {"name": "x"}}],
                    "volumeMounts": [{"name": "c", "mountPath": "/cfg"}],
                },
            ),
        ),
        "spec.jobLogDir",
        "persistent volume",
    ),
    ("jobLogDir climbing out with ..", _with("jobLogDir", "/data/../tmp/x"), "spec.jobLogDir", "'..'"),
    (
        "mount of a volume that does not exist",
        _with("podTemplate", {"volumeMounts": [{"name": "ghost", "mountPath": "/g"}]}),
        "spec.podTemplate.volumeMounts",
        "must name one of podTemplate.volumes",
    ),
    (
        "mount over the trainer's /tmp",
        _with("podTemplate", {"volumes": [PVC], "volumeMounts": [{"name": "ckpt", "mountPath": "/tmp"}]}),
        "spec.podTemplate.volumeMounts[0].mountPath",
        "Forbidden: /tmp is the trainer's own emptyDir",
    ),
    (
        "two mounts on one path",
        _with(
            "podTemplate",
            {
                "volumes": [PVC],
                "volumeMounts": [{"name": "ckpt", "mountPath": "/d"}, {"name": "ckpt", "mountPath": "/d"}],
            },
        ),
        "spec.podTemplate.volumeMounts[1]",
        "Duplicate value",
    ),
    (
        "two volumes of one name",
        _with("podTemplate", {"volumes": [PVC, PVC]}),
        "spec.podTemplate.volumes[1]",
        "Duplicate value",
    ),
    # --- reserved names and ports -----------------------------------------------------------------------
    (
        "reserved env TPU_*",
        _with("podTemplate", {"env": [{"name": "TPU_WORKER_ID", "value": "0"}]}),
        "spec.podTemplate.env[0].name",
        "Forbidden: env name TPU_WORKER_ID is reserved",
    ),
    (
        "reserved env PYTHONUNBUFFERED",
        _with(
            "podTemplate", {"env": [{"name": "X", "value": "1"}, {"name": "PYTHONUNBUFFERED", "value": "0"}]}
        ),
        "spec.podTemplate.env[1].name",
        "Forbidden: env name PYTHONUNBUFFERED is reserved",
    ),
    (
        "the same env name twice",
        _with("podTemplate", {"env": [{"name": "X", "value": "1"}, {"name": "X", "value": "2"}]}),
        "spec.podTemplate.env[1]",
        "Duplicate value",
    ),
    (
        "tensorboard on the coordinator port",
        _with("tensorboard", {"enabled": True, "port": 8476}),
        "spec.tensorboard.port",
        "Forbidden: ports 8476 (coordinator), 9431 (metrics) and 8080 (MEGASCALE) are reserved",
    ),
    # --- override names: the contract's one rule -------------------------------------------------------
    (
        "override name starting with a digit",
        _with("overrides", {"2nd_lr": "1"}),
        "spec.overrides",
        "override names must be Python identifiers",
    ),
    (
        "override name of 129 characters",
        _with("overrides", {"a" * 129: "1"}),
        "spec.overrides",
        "at most 128 characters",
    ),
    # --- every number bounded ----------------------------------------------------------------------------
    (
        "5000 CPU hosts",
        _with("topology", {"cpu": {"hosts": 5000}}),
        "spec.topology.cpu.hosts",
        "should be less than or equal to 4096",
    ),
    (
        "5000 GPU hosts",
        _with("topology", {"gpu": {"hosts": 5000, "gpusPerHost": 8}}),
        "spec.topology.gpu.hosts",
        "should be less than or equal to 4096",
    ),
    (
        "17 GPUs per host",
        _with("topology", {"gpu": {"hosts": 1, "gpusPerHost": 17}}),
        "spec.topology.gpu.gpusPerHost",
        "should be less than or equal to 16",
    ),
    (
        "65 slices",
        _tpu("v5p", "2x2x4", slices=65),
        "spec.topology.tpu.slices",
        "should be less than or equal to 64",
    ),
    (
        "a TPU dimension of 1000",
        _tpu("v4", "1000x2x2"),
        "spec.topology.tpu.topology",
        "Invalid value",
    ),
    (
        "maxFailures 10^12",
        _with("restartPolicy", {"maxFailures": 10**12}),
        "spec.restartPolicy.maxFailures",
        "should be less than or equal to 2147483647",
    ),
    (
        "maxPreemptions 10^12",
        _with("restartPolicy", {"maxPreemptions": 10**12}),
        "spec.restartPolicy.maxPreemptions",
        "should be less than or equal to 2147483647",
    ),
    (
        "checkpointIntervalSteps 10^12",
        _with("checkpointIntervalSteps", 10**12),
        "spec.checkpointIntervalSteps",
        "should be less than or equal to 2147483647",
    ),
    (
        "tolerationSeconds 10^12",
        _with(
            "podTemplate",
            {
                "tolerations": [
                    {"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10**12}
                ]
            },
        ),
        "spec.podTemplate.tolerations[0].tolerationSeconds",
        "should be less than or equal to 2147483647",
    ),
    (
        "a cpu request that is not a quantity",
        _with("podTemplate", {"resources": {"requests": {"cpu": "lots"}}}),
        "spec.podTemplate.resources.requests.cpu",
        "Invalid value",
    ),
    (
        "a node selector value longer than a label value",
        _with("podTemplate", {"nodeSelector": {"pool": "p" * 64}}),
        "spec.podTemplate.nodeSelector.pool",
        "Too long",
    ),
    (
        "a pod label value with a space",
        _with("podTemplate", {"labels": {"team": "a b"}}),
        "spec.podTemplate.labels.team",
        "Invalid value",
    ),
    (
        "ACCEPTED-BUT-BROKEN (every pod creation refused, retried forever): a pod label key with a space",
        _with("podTemplate", {"labels": {"team lead": "ann"}}),
        "spec.podTemplate.labels",
        "label keys must be qualified names",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): a node selector key with two slashes",
        _with("podTemplate", {"nodeSelector": {"a/b/c": "x"}}),
        "spec.podTemplate.nodeSelector",
        "node selector keys must be qualified names",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): a node selector value with a space",
        _with("podTemplate", {"nodeSelector": {"pool": "a b"}}),
        "spec.podTemplate.nodeSelector.pool",
        "Invalid value",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): an annotation key that is a sentence",
        _with("podTemplate", {"annotations": {"why not?": "x"}}),
        "spec.podTemplate.annotations",
        "annotation keys must be qualified names",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): 64 annotations of 16 000 characters (over a pod's 256 KiB)",
        _with("podTemplate", {"annotations": {f"a{i}": "x" * 16_000 for i in range(64)}}),
        "spec.podTemplate.annotations",
        "annotations must total at most 256 KiB",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): a toleration with operator Exists and a value",
        _with("podTemplate", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        "spec.podTemplate.tolerations[0]",
        "value must be empty when operator is Exists",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): a toleration without a key that is not Exists",
        _with("podTemplate", {"tolerations": [{"operator": "Equal", "value": "v"}]}),
        "spec.podTemplate.tolerations[0]",
        "operator must be Exists when key is empty",
    ),
    (
        "ACCEPTED-BUT-BROKEN (pods refused): tolerationSeconds with effect NoSchedule",
        _with("podTemplate", {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 5}]}),
        "spec.podTemplate.tolerations[0]",
        "tolerationSeconds needs effect NoExecute",
    ),
    (
        "ACCEPTED (a 1.4 MB PaxJob; a few hundred held the operator's memory limit): 44 env values of 32 KiB",
        _with("podTemplate", {"env": [{"name": f"E{i}", "value": "x" * 32_000} for i in range(44)]}),
        "spec.podTemplate.env",
        "env names and values must total at most 64 KiB",
    ),
    (
        "an env value of 40 000 characters",
        _with("podTemplate", {"env": [{"name": "X", "value": "x" * 40_000}]}),
        "spec.podTemplate.env[0].value",
        "Too long",
    ),
    (
        "65 annotations",
        _with("podTemplate", {"annotations": {f"a{i}": "x" for i in range(65)}}),
        "spec.podTemplate.annotations",
        "Too many",
    ),
    (
        "a TensorBoard image with a space",
        _with("tensorboard", {"enabled": True, "image": "tb image"}),
        "spec.tensorboard.image",
        "Invalid value",
    ),
]
# metadata.name cases: (case, name, field path, what)
BAD_NAMES = [
    (
        "ACCEPTED-BUT-BROKEN (message was '<nil>:'): a 53-character name",
        LONG_NAME,
        "metadata.name",
        "Too long",
    ),
    ("an upper-case name", "LmTiny", "metadata.name", "Invalid value"),
]


def _manifest(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {"apiVersion": "pax.dev/v1alpha1", "kind": "PaxJob", "metadata": {"name": name}, "spec": spec}
    )


def _says(stderr: str, path: str, what: str) -> bool:
    """One of the apiserver's errors is about `path` and says `what` (field errors are `path: detail`)."""
    return re.search(rf"(^|[\s*]){re.escape(path)}: [^\n]*{re.escape(what)}", stderr) is not None


def test_malformed_paxjobs_are_rejected_with_field_precise_messages(
    kubectl, pax_installed, namespace
) -> None:
    assert len(MALFORMED) + len(BAD_NAMES) >= 60
    assert sum("ACCEPTED-BUT-BROKEN" in case for case, *_ in MALFORMED + BAD_NAMES) >= 10
    mismatches = []
    for index, (case, spec, path, what) in enumerate(MALFORMED):
        result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(f"bad-{index}", spec))
        if result.returncode == 0 or not _says(result.stderr, path, what):
            mismatches.append(f"{case}: rc={result.returncode} stderr={result.stderr.strip()!r}")
    for case, name, path, what in BAD_NAMES:
        result = kubectl("create", "-n", namespace, "-f", "-", input=_manifest(name, cpu_job()))
        # The old CRD said `<nil>: Invalid value: "object": metadata.name must be ...` (no field path).
        nameless = '<nil>: Invalid value: "object"' in result.stderr
        if result.returncode == 0 or not _says(result.stderr, path, what) or nameless:
            mismatches.append(f"{case}: rc={result.returncode} stderr={result.stderr.strip()!r}")
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
    assert "terminationGracePeriodSeconds" not in spec  # 30 is the operator's: an older one parses the object
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


def test_a_running_job_changes_only_its_lifecycle_fields(kubectl, pax_installed, namespace) -> None:
    """While not suspended only suspend, budgets, deadlines, TTL and the hang timeout may change (batch/v1
    Job's rule for its template); what shapes the pods changes only while suspended; topology, experiment
    and jobLogDir never."""
    kubectl("create", "-n", namespace, "-f", "-", input=_manifest("live", cpu_job()), check=True)

    def patch(spec: dict[str, Any]) -> Any:
        body = json.dumps({"spec": spec})
        return kubectl("patch", "-n", namespace, "pj", "live", "--type=merge", "-p", body)

    frozen = {
        "overrides": {"learning_rate": "1e-3"},  # ACCEPTED-BUT-BROKEN: took effect at the next restart
        "image": "pax/trainer:other",
        "mode": "eval",
        "checkpointIntervalSteps": 7,
        "imagePullPolicy": "Always",
        "tensorboard": {"enabled": True},
        "podTemplate": {"env": [{"name": "X", "value": "1"}]},
        "terminationGracePeriodSeconds": 600,  # the running pods keep theirs: a pod's grace is not editable
    }
    for field, value in frozen.items():
        result = patch({field: value})
        expected = f"spec.{field}: Forbidden: {field} may change only while the job is suspended"
        assert result.returncode != 0 and expected in result.stderr, (field, result.stderr)
    for lifecycle in (
        {"restartPolicy": {"maxFailures": 5, "maxPreemptions": 7, "backoffSeconds": 3}},
        {"activeDeadlineSeconds": 3600},
        {"ttlSecondsAfterFinished": 60},
        {"hangTimeoutSeconds": 600},
        {"suspend": True},
    ):
        result = patch(lifecycle)
        assert result.returncode == 0, (lifecycle, result.stderr)
    for field, value in frozen.items():  # suspended now: the next gang may run differently
        result = patch({field: value})
        assert result.returncode == 0, (field, result.stderr)
    result = patch({"topology": {"cpu": {"hosts": 3}}})
    assert result.returncode != 0 and "spec.topology: Forbidden: topology is immutable" in result.stderr


def test_kubectl_explain_reads_well(kubectl, pax_installed) -> None:
    explained = wait_for(  # the OpenAPI of a new CRD is published a moment after it is Established
        "kubectl explain",
        lambda: (r := kubectl("explain", "paxjob.spec.topology.tpu")).returncode == 0 and r,
        timeout=30,
    )
    text = " ".join(explained.stdout.split())
    assert "acceleratorType" in text and "Hosts per slice follow from the chip count" in text
    text = " ".join(kubectl("explain", "pj.spec.restartPolicy", check=True).stdout.split())
    assert "maxPreemptions" in text and "preemptions and failures are counted separately" in text
    resources = kubectl("api-resources", "--categories=pax", "-o", "name", check=True)
    assert sorted(resources.stdout.split()) == ["paxjobs.pax.dev", "paxsweeps.pax.dev"]


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
