"""Desired state as pure data: a PaxJob's headless Service and one pod per host."""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import pax_contract as contract

from pax_operator.spec import API_VERSION, GKE_TPU_ACCELERATOR, KIND, MAX_HOSTS, PaxJobSpec

LABEL_JOB_NAME = "pax.dev/job-name"
LABEL_HOST_INDEX = "pax.dev/host-index"
LABEL_RESTART_ATTEMPT = "pax.dev/restart-attempt"
LABEL_SLICE = "pax.dev/slice"
# A hash of the spec fields that shape the pods and may change only while suspended: a gang whose pods carry
# another one was made from an older spec (edited while suspended, resumed before the operator looked).
ANNOTATION_POD_SPEC_HASH = "pax.dev/pod-spec-hash"
POD_SHAPING_FIELDS = frozenset(
    {
        "image",
        "image_pull_policy",
        "mode",
        "overrides",
        "checkpoint_interval_steps",
        "pod_template",
        "tensorboard",
        "termination_grace_period_seconds",
    }
)
TRAINER_CONTAINER = "trainer"
TENSORBOARD_CONTAINER = "tensorboard"
TMP_VOLUME = "pax-tmp"
RUN_AS_USER = 65532
TPU_RESOURCE = "google.com/tpu"
GPU_RESOURCE = "nvidia.com/gpu"
GKE_TPU_ACCELERATOR_LABEL = "cloud.google.com/gke-tpu-accelerator"
GKE_TPU_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
# A multi-host TPU slice is one GKE node pool: its hosts share ICI only within it.
GKE_NODEPOOL_LABEL = "cloud.google.com/gke-nodepool"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
# libtpu's view of a multi-host slice: this host's index in it and every host of it, in index order. GKE's
# webhook sets them for Indexed Jobs only, so the operator does; the trainer never reads them (not in the
# contract), and podTemplate.env cannot set them (the reserved TPU_ prefix).
ENV_TPU_WORKER_ID = "TPU_WORKER_ID"
ENV_TPU_WORKER_HOSTNAMES = "TPU_WORKER_HOSTNAMES"
# Trainer requests when podTemplate.resources names neither a request nor a limit for them: a floor that
# keeps trainer pods out of the BestEffort QoS class (first evicted, unaccounted by the scheduler), not a
# sizing; real jobs set podTemplate.resources.
DEFAULT_TRAINER_REQUESTS = {"cpu": "100m", "memory": "512Mi"}
DEFAULT_OPERATOR_NAMESPACE = "pax-system"


@dataclass(frozen=True)
class JobRef:
    """Identity of the owning object: a PaxJob (or, for its trials and describe pod, a PaxSweep)."""

    name: str
    namespace: str
    uid: str
    kind: str = KIND

    def owner_reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def owned_metadata(self) -> dict[str, Any]:
        """Metadata of a per-job object named after the job: its label and its owner reference."""
        return {
            "name": self.name,
            "namespace": self.namespace,
            "labels": {LABEL_JOB_NAME: self.name},
            "ownerReferences": [self.owner_reference()],
        }


def pod_name(job: str, host: int) -> str:
    """Pods are named after their host: `<job>-<host>` (also their hostname under the Service)."""
    return f"{job}-{host}"


def host_dns_name(job: JobRef, host: int) -> str:
    return f"{pod_name(job.name, host)}.{job.name}.{job.namespace}.svc"


def coordinator_address(job: JobRef) -> str:
    return f"{host_dns_name(job, 0)}:{contract.COORDINATOR_PORT}"


def render_service(job: JobRef, spec: PaxJobSpec) -> dict[str, Any]:
    """Headless Service giving every host the DNS name `<job>-<i>.<job>.<ns>.svc`, ready or not."""
    named = {"coordinator": contract.COORDINATOR_PORT, "metrics": contract.METRICS_PORT}
    if spec.tensorboard.enabled:
        named["tensorboard"] = spec.tensorboard.port
    # As the apiserver stores them (protocol defaulted), so that an up-to-date Service compares equal.
    ports = [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in named.items()]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": job.owned_metadata(),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_JOB_NAME: job.name},
            "ports": ports,
        },
    }


def kubelet_escape(text: str) -> str:
    """`text` as the kubelet must see it to pass it through verbatim: it expands `$(VAR)` in commands,
    args and env values, and turns `$$` into `$` (Kubernetes' own escaping rule)."""
    return text.replace("$", "$$")


def trainer_invocation(spec: PaxJobSpec) -> contract.TrainerInvocation:
    """The trainer's command line: paxml's flags plus one --set per override (sorted)."""
    return contract.TrainerInvocation(
        exp=spec.experiment,
        job_log_dir=spec.job_log_dir,
        mode=spec.mode,
        overrides=spec.effective_overrides,
    )


def trainer_command(spec: PaxJobSpec) -> list[str]:
    """The container command, escaped so that no override value or path is expanded by the kubelet."""
    return [kubelet_escape(arg) for arg in trainer_invocation(spec).command()]


def _env(name: str, value: str | int) -> dict[str, Any]:
    return {"name": name, "value": str(value)}


def _pod_ip_env() -> dict[str, Any]:
    return {"name": contract.ENV_POD_IP, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def contract_env(job: JobRef, spec: PaxJobSpec, host: int, attempt: int) -> contract.TrainerEnv:
    """What the contract tells host `host` of gang `attempt` (POD_IP comes from the downward API)."""
    tpu = spec.topology.tpu
    megascale = None
    if tpu is not None and tpu.slices > 1:
        megascale = contract.Megascale(
            coordinator_address=f"{host_dns_name(job, 0)}:{contract.MEGASCALE_PORT}",
            num_slices=tpu.slices,
            slice_id=host // tpu.hosts_per_slice,
        )
    return contract.TrainerEnv(
        num_processes=spec.topology.hosts,
        process_id=host,
        coordinator_address=coordinator_address(job),
        restart_attempt=attempt,
        result_file=contract.DEFAULT_RESULT_FILE,
        metrics_port=contract.METRICS_PORT,
        job_name=job.name,
        job_namespace=job.namespace,
        megascale=megascale,
        # The pod's terminationGracePeriodSeconds, from the same field: after SIGTERM the trainer waits for a
        # save only while that leaves time to write its result and exit 42 before the SIGKILL.
        termination_grace_s=spec.termination_grace_period_seconds,
    )


def _multi_host_slice(spec: PaxJobSpec) -> int:
    """Hosts per TPU slice when a slice spans more than one host, else 0 (CPU, GPU, single-host slices)."""
    tpu = spec.topology.tpu
    return tpu.hosts_per_slice if tpu is not None and tpu.hosts_per_slice > 1 else 0


@functools.lru_cache(maxsize=16)
def _slice_hostnames(job: JobRef, hosts_per_slice: int, slice_id: int) -> str:
    # One string per slice, shared by its pods: a 1,000-host slice's list is tens of kB.
    first = slice_id * hosts_per_slice
    return ",".join(host_dns_name(job, host) for host in range(first, first + hosts_per_slice))


def tpu_worker_env(job: JobRef, spec: PaxJobSpec, host: int) -> dict[str, str]:
    """TPU_WORKER_ID and TPU_WORKER_HOSTNAMES of a host of a multi-host slice; nothing otherwise."""
    hosts_per_slice = _multi_host_slice(spec)
    if not hosts_per_slice:
        return {}
    slice_id, worker = divmod(host, hosts_per_slice)
    return {
        ENV_TPU_WORKER_ID: str(worker),
        ENV_TPU_WORKER_HOSTNAMES: _slice_hostnames(job, hosts_per_slice, slice_id),
    }


def trainer_env(job: JobRef, spec: PaxJobSpec, host: int, attempt: int) -> list[dict[str, Any]]:
    """POD_IP (first, so later values may use $(POD_IP)), the contract's environment, libtpu's worker
    variables, the pod defaults, then the user's extras (the CRD keeps them off the reserved names)."""
    variables = contract_env(job, spec, host, attempt).to_env() | tpu_worker_env(job, spec, host)
    env = [_pod_ip_env()]
    env += [_env(name, value) for name, value in variables.items()]
    env += [_env(name, value) for name, value in contract.POD_ENV.items()]
    env += [user.model_dump(by_alias=True, exclude_none=True) for user in spec.pod_template.env]
    return env


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _accelerator_limits(spec: PaxJobSpec) -> dict[str, str]:
    topology = spec.topology
    if topology.gpu is not None:
        return {GPU_RESOURCE: str(topology.gpu.gpus_per_host)}
    if topology.tpu is not None:
        return {TPU_RESOURCE: str(topology.tpu.chips_per_host)}
    return {}


def _resources(spec: PaxJobSpec) -> dict[str, Any]:
    requests = {key: str(value) for key, value in spec.pod_template.resources.requests.items()}
    limits = {key: str(value) for key, value in spec.pod_template.resources.limits.items()}
    for key, value in DEFAULT_TRAINER_REQUESTS.items():
        # A user's limit without a request makes the request equal the limit (Kubernetes' own default).
        if key not in requests and key not in limits:
            requests[key] = value
    accelerators = _accelerator_limits(spec)
    limits.update(accelerators)
    requests.update(accelerators)  # extended resources: requests must equal limits
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _tensorboard_sidecar(job: JobRef, spec: PaxJobSpec, attempt: int) -> dict[str, Any]:
    """TensorBoard as a native sidecar (an init container that keeps running) of host 0."""
    port = spec.tensorboard.port
    sidecar: dict[str, Any] = {
        "name": TENSORBOARD_CONTAINER,
        "image": spec.tensorboard.image or spec.image,
        "restartPolicy": "Always",
        "command": [
            "tensorboard",
            kubelet_escape(f"--logdir={spec.job_log_dir.rstrip('/')}/{contract.SUMMARIES_DIR}"),
            f"--host=$({contract.ENV_POD_IP})",
            f"--port={port}",
        ],
        # The trainer's env and the user's mounts: it reads the same jobLogDir (a volume, or gs://
        # credentials), and a user value such as $(PAX_JOB_NAME) expands as it does in the trainer.
        "env": trainer_env(job, spec, 0, attempt),
        "ports": [{"name": "tensorboard", "containerPort": port, "protocol": "TCP"}],
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *(m.model_dump(by_alias=True, exclude_none=True) for m in spec.pod_template.volume_mounts),
        ],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    if spec.image_pull_policy:
        sidecar["imagePullPolicy"] = spec.image_pull_policy
    return sidecar


def _tpu_scheduling(spec: PaxJobSpec) -> tuple[dict[str, str], list[dict[str, Any]]]:
    tpu = spec.topology.tpu
    if tpu is None:
        return {}, []
    selector = {
        GKE_TPU_ACCELERATOR_LABEL: GKE_TPU_ACCELERATOR[tpu.accelerator_type],
        GKE_TPU_TOPOLOGY_LABEL: tpu.topology,
    }
    tolerations = [{"key": TPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return selector, tolerations


def _slice_affinity(job: JobRef, spec: PaxJobSpec, host: int) -> dict[str, Any] | None:
    """A multi-host slice's pods share one node pool, and no other slice's (JobSet's exclusive placement):
    the node selector alone lets one slice straddle two pools of the same topology, with no ICI between."""
    hosts_per_slice = _multi_host_slice(spec)
    if not hosts_per_slice:
        return None
    slice_id = str(host // hosts_per_slice)

    def term(selector: dict[str, Any], **scope: Any) -> dict[str, Any]:
        return {"labelSelector": selector, "topologyKey": GKE_NODEPOOL_LABEL, **scope}

    other_slices = [{"key": LABEL_SLICE, "operator": "NotIn", "values": [slice_id]}]
    any_slice = [{"key": LABEL_SLICE, "operator": "Exists"}]
    other_jobs = [*any_slice, {"key": LABEL_JOB_NAME, "operator": "NotIn", "values": [job.name]}]
    other_namespaces = {
        "matchExpressions": [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": [job.namespace]}]
    }
    return {
        "podAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                term({"matchLabels": {LABEL_JOB_NAME: job.name, LABEL_SLICE: slice_id}})
            ]
        },
        # Selectors cannot say "not (this job and this slice)": three terms, all required.
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                term({"matchLabels": {LABEL_JOB_NAME: job.name}, "matchExpressions": other_slices}),
                term({"matchExpressions": other_jobs}),
                term({"matchExpressions": any_slice}, namespaceSelector=other_namespaces),
            ]
        },
    }


def pod_labels(job: JobRef, spec: PaxJobSpec, host: int, attempt: int) -> dict[str, str]:
    labels = dict(spec.pod_template.labels)
    labels |= {
        LABEL_JOB_NAME: job.name,
        LABEL_HOST_INDEX: str(host),
        LABEL_RESTART_ATTEMPT: str(attempt),
    }
    tpu = spec.topology.tpu
    if tpu is not None:
        labels[LABEL_SLICE] = str(host // tpu.hosts_per_slice)
    return labels


def pod_spec_hash(spec: PaxJobSpec) -> str:
    """The hash of the fields in POD_SHAPING_FIELDS as set (defaults left out: a default the operator adds
    later does not make every running gang look outdated)."""
    shaping = spec.model_dump(
        mode="json", by_alias=True, exclude_defaults=True, include=set(POD_SHAPING_FIELDS)
    )
    return hashlib.sha256(json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[
        :16
    ]


def render_pod(
    job: JobRef, spec: PaxJobSpec, host: int, attempt: int, spec_hash: str | None = None
) -> dict[str, Any]:
    """The pod of host `host` in gang `attempt`: restartPolicy Never, PSA-restricted, owned by the PaxJob."""
    template = spec.pod_template
    trainer: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image,
        "command": trainer_command(spec),
        "env": trainer_env(job, spec, host, attempt),
        "ports": [
            {"name": "coordinator", "containerPort": contract.COORDINATOR_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": contract.METRICS_PORT, "protocol": "TCP"},
        ],
        "terminationMessagePath": contract.DEFAULT_RESULT_FILE,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": _container_security_context(),
        "volumeMounts": [
            {"name": TMP_VOLUME, "mountPath": "/tmp"},
            *(mount.model_dump(by_alias=True, exclude_none=True) for mount in template.volume_mounts),
        ],
    }
    if spec.image_pull_policy:
        trainer["imagePullPolicy"] = spec.image_pull_policy
    resources = _resources(spec)
    if resources:
        trainer["resources"] = resources

    tpu_selector, tpu_tolerations = _tpu_scheduling(spec)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "hostname": pod_name(job.name, host),
        "subdomain": job.name,
        "automountServiceAccountToken": template.automount_service_account_token,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "fsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [trainer],
        "volumes": [{"name": TMP_VOLUME, "emptyDir": {}}, *template.volumes],
    }
    if host == 0 and spec.tensorboard.enabled:
        pod_spec["initContainers"] = [_tensorboard_sidecar(job, spec, attempt)]
    node_selector = tpu_selector | template.node_selector
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = tpu_tolerations + [
        t.model_dump(by_alias=True, exclude_none=True) for t in template.tolerations
    ]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    affinity = _slice_affinity(job, spec, host)
    if affinity:
        pod_spec["affinity"] = affinity
    if template.service_account_name:
        pod_spec["serviceAccountName"] = template.service_account_name
    if template.priority_class_name:
        pod_spec["priorityClassName"] = template.priority_class_name

    metadata: dict[str, Any] = {
        "name": pod_name(job.name, host),
        "namespace": job.namespace,
        "labels": pod_labels(job, spec, host, attempt),
        "ownerReferences": [job.owner_reference()],
    }
    metadata["annotations"] = dict(template.annotations) | {
        ANNOTATION_POD_SPEC_HASH: spec_hash or pod_spec_hash(spec)
    }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def render_gang(job: JobRef, spec: PaxJobSpec, attempt: int) -> list[dict[str, Any]]:
    """Every pod of gang `attempt`, host 0 first."""
    hosts = spec.topology.hosts
    if not 1 <= hosts <= MAX_HOSTS:  # spec.py refuses such a topology already; never allocate for one
        raise ValueError(f"topology of {hosts} hosts is outside 1..{MAX_HOSTS}")
    spec_hash = pod_spec_hash(spec)
    return [render_pod(job, spec, host, attempt, spec_hash) for host in range(hosts)]


def render_network_policy(
    job: JobRef, spec: PaxJobSpec, operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
) -> dict[str, Any]:
    """Ingress to the job's pods: anything from the job's own pods (the JAX coordinator, collectives and
    MEGASCALE use further ports), /metrics from the operator's namespace, TensorBoard (when enabled) from
    the job's namespace; nothing else. Egress stays open (gs://, DNS). Enforced only by a CNI that
    implements NetworkPolicy."""
    own_pods = {"podSelector": {"matchLabels": {LABEL_JOB_NAME: job.name}}}
    operator = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": operator_namespace}}}
    ingress: list[dict[str, Any]] = [
        {"from": [own_pods]},
        {"from": [operator], "ports": [{"protocol": "TCP", "port": contract.METRICS_PORT}]},
    ]
    if spec.tensorboard.enabled:
        ingress.append(
            {"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": spec.tensorboard.port}]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": job.owned_metadata(),
        "spec": {
            "podSelector": {"matchLabels": {LABEL_JOB_NAME: job.name}},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }
