"""The Node object: registration, heartbeats, readiness, and the kubelet endpoint the apiserver
dials for `kubectl logs`."""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pax_cluster.kubelet.common import MERGE, api_retry, now
from pax_cluster.podenv import NODE_ALLOCATABLE

log = logging.getLogger("pax_cluster.kubelet.node")
HEARTBEAT_S = 10.0
NODE_LABEL = "pax.dev/process-kubelet"


def node_status(name: str, ready: bool, reason: str, endpoint_port: int | None) -> dict[str, Any]:
    """The Node's status document."""
    stamp = now()
    status: dict[str, Any] = {
        "capacity": dict(NODE_ALLOCATABLE),
        "allocatable": dict(NODE_ALLOCATABLE),
        "addresses": [
            {"type": "InternalIP", "address": "127.0.0.1"},
            {"type": "Hostname", "address": name},
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "reason": reason,
                "message": "process kubelet",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": stamp,
            }
        ],
        "nodeInfo": {
            "kubeletVersion": "v1.37.2-process",
            "operatingSystem": "linux",
            "architecture": "amd64",
            "containerRuntimeVersion": "process://",
            "kernelVersion": os.uname().release,
            "osImage": "local processes",
            "kubeProxyVersion": "",
            "machineID": "",
            "systemUUID": "",
            "bootID": "",
        },
    }
    if endpoint_port is not None:
        status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": endpoint_port}}
    return status


class NodeAgent:
    """Registers the Node, keeps it Ready with heartbeats (`run_heartbeats` in a thread)."""

    def __init__(self, core: client.CoreV1Api, name: str, endpoint_port: int | None = None) -> None:
        self.core = core
        self.name = name
        self.endpoint_port = endpoint_port
        self.ready = threading.Event()

    @api_retry
    def register(self, ready: bool = True, reason: str = "KubeletReady") -> None:
        """Create the Node if absent and write its status."""
        body = {
            "metadata": {
                "name": self.name,
                "labels": {
                    "kubernetes.io/hostname": self.name,
                    "kubernetes.io/os": "linux",
                    NODE_LABEL: "true",
                },
            }
        }
        try:
            self.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
        status = node_status(self.name, ready, reason, self.endpoint_port)
        self.core.patch_node_status(self.name, {"status": status}, _content_type=MERGE)
        (self.ready.set if ready else self.ready.clear)()

    def run_heartbeats(self, stopping: threading.Event) -> None:
        """Refresh the Ready condition every HEARTBEAT_S until `stopping` (skipped while lost)."""
        while not stopping.wait(HEARTBEAT_S):
            if self.ready.is_set():
                try:
                    self.register()
                except Exception as err:
                    log.warning("heartbeat failed: %s", err)


POD_SUBNETS = range(1, 256)  # 127.10.<n>.0/24, one per kubelet on this machine (0: older kubelets' range)


def claim_pod_subnet() -> tuple[socket.socket, str]:
    """A /24 of loopback pod addresses no other process kubelet on this machine holds (each stack's
    kubelet would otherwise hand out the same 127.10.0.x and their pods' ports would collide). Held by
    an abstract unix socket: nothing written to disk, released when the socket closes or we die."""
    for n in POD_SUBNETS:
        lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lock.bind(f"\0pax-kubelet-pod-subnet-127.10.{n}")
        except OSError:
            lock.close()
            continue
        return lock, f"127.10.{n}.0/24"
    raise RuntimeError(f"all {len(POD_SUBNETS)} pod subnets are held by other process kubelets")
