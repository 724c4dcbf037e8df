"""PersistentVolumeClaims on the local stack: hostPath PersistentVolumes under the kubelet's root.

The `pax-local` StorageClass is the default class (so a claim without a class gets it). When a pod needs
a Pending claim of that class, the kubelet provisions `pvc-<claim uid>`: a directory under
`<root>/persistent-volumes/`, a PersistentVolume (reclaim policy Retain: the data outlives the claim)
pre-bound to the claim, and binds the claim to it, as the PV controller would. A claim bound to a PV
that is not a hostPath, or of another class, fails the pod with a clear message.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pax_cluster.kubelet.common import MERGE, REQUEST_TIMEOUT_S, api_retry
from pax_cluster.podenv import PodSpecError

log = logging.getLogger("pax_cluster.kubelet.provisioner")
STORAGE_CLASS = "pax-local"
PROVISIONER = "pax.dev/process-kubelet"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def storage_class() -> dict[str, Any]:
    """The default StorageClass this kubelet provisions for."""
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS, "annotations": {DEFAULT_CLASS_ANNOTATION: "true"}},
        "provisioner": PROVISIONER,
        "reclaimPolicy": "Retain",
        "volumeBindingMode": "Immediate",
    }


def volume_name(claim_uid: str) -> str:
    """The PersistentVolume provisioned for a claim (the name Kubernetes provisioners use)."""
    return f"pvc-{claim_uid}"


def persistent_volume(claim: dict[str, Any], path: Path) -> dict[str, Any]:
    """A hostPath PersistentVolume pre-bound to `claim`."""
    meta, spec = claim["metadata"], claim["spec"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume_name(meta["uid"]),
            "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
        },
        "spec": {
            "capacity": {
                "storage": ((spec.get("resources") or {}).get("requests") or {}).get("storage", "1Gi")
            },
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": STORAGE_CLASS,
            "hostPath": {"path": str(path), "type": "DirectoryOrCreate"},
            "claimRef": {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "namespace": meta["namespace"],
                "name": meta["name"],
                "uid": meta["uid"],
            },
        },
    }


class HostPathProvisioner:
    """Provisions and binds claims of the `pax-local` class; answers the host path of bound claims."""

    def __init__(self, core: client.CoreV1Api, storage: client.StorageV1Api, root: Path) -> None:
        self.core = core
        self.storage = storage
        self.root = root / "persistent-volumes"
        self._lock = threading.Lock()

    @api_retry
    def ensure_storage_class(self) -> None:
        """Create the default StorageClass if absent."""
        try:
            self.storage.create_storage_class(storage_class(), _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as err:
            if err.status != 409:
                raise

    def claim_path(self, namespace: str, claim: str) -> Path:
        """The host directory of claim `namespace/claim`, provisioning and binding it if Pending."""
        with self._lock:  # two pods of a gang may start on the same claim at once
            doc = self._read_claim(namespace, claim)
            name = (doc.get("spec") or {}).get("volumeName")
            if not name:
                name = self._provision(doc)
            return self._volume_path(f"persistentVolumeClaim {claim}", name)

    def _read_claim(self, namespace: str, claim: str) -> dict[str, Any]:
        try:
            read = self.core.read_namespaced_persistent_volume_claim(claim, namespace)
        except ApiException as err:
            if err.status == 404:
                raise PodSpecError(
                    f"persistentVolumeClaim {claim!r} not found in namespace {namespace}"
                ) from err
            raise
        return dict(self.core.api_client.sanitize_for_serialization(read))

    def _volume_path(self, what: str, volume: str) -> Path:
        try:
            pv = self.core.read_persistent_volume(volume)
        except ApiException as err:
            raise PodSpecError(f"{what}: PersistentVolume {volume}: {err.reason}") from err
        if pv.spec.host_path is None:
            raise PodSpecError(
                f"{what}: PersistentVolume {volume} is not a hostPath volume (the process kubelet mounts "
                "only hostPath PersistentVolumes)"
            )
        path = Path(pv.spec.host_path.path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _provision(self, claim: dict[str, Any]) -> str:
        meta, spec = claim["metadata"], claim["spec"]
        wanted = spec.get("storageClassName")
        if wanted not in (None, STORAGE_CLASS):
            raise PodSpecError(
                f"persistentVolumeClaim {meta['name']!r}: storageClassName {wanted!r} has no provisioner on "
                f"the local stack (use {STORAGE_CLASS!r}, the default, or leave it unset)"
            )
        path = self.root / f"{meta['namespace']}-{meta['name']}-{meta['uid'][:8]}"
        path.mkdir(parents=True, exist_ok=True)
        pv = persistent_volume(claim, path)
        name = pv["metadata"]["name"]
        try:
            self.core.create_persistent_volume(pv, _request_timeout=REQUEST_TIMEOUT_S)
        except ApiException as err:
            if err.status != 409:
                raise
        self.core.patch_persistent_volume_status(
            name, {"status": {"phase": "Bound"}}, _content_type=MERGE, _request_timeout=REQUEST_TIMEOUT_S
        )
        bind = {
            "metadata": {
                "annotations": {
                    "pv.kubernetes.io/bind-completed": "yes",
                    "pv.kubernetes.io/bound-by-controller": "yes",
                }
            },
            "spec": {"volumeName": name},
        }
        self.core.patch_namespaced_persistent_volume_claim(
            meta["name"], meta["namespace"], bind, _content_type=MERGE, _request_timeout=REQUEST_TIMEOUT_S
        )
        status = {
            "phase": "Bound",
            "accessModes": pv["spec"]["accessModes"],
            "capacity": pv["spec"]["capacity"],
        }
        self.core.patch_namespaced_persistent_volume_claim_status(
            meta["name"],
            meta["namespace"],
            {"status": status},
            _content_type=MERGE,
            _request_timeout=REQUEST_TIMEOUT_S,
        )
        log.info("provisioned %s at %s for claim %s/%s", name, path, meta["namespace"], meta["name"])
        return name
