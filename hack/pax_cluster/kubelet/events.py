"""core/v1 Events about pods, as a kubelet posts them (`kubectl describe pod` shows them)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from pax_cluster.kubelet.common import now

log = logging.getLogger("pax_cluster.kubelet.events")
NORMAL, WARNING = "Normal", "Warning"
EVENT_TIMEOUT_S = 10


def pod_event(
    pod: Mapping[str, Any],
    node: str,
    kind: str,
    reason: str,
    message: str,
    container: str | None = None,
) -> dict[str, Any]:
    """The Event document (involvedObject the pod, or one of its containers via fieldPath)."""
    meta = pod["metadata"]
    stamp = now()
    involved: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "namespace": meta["namespace"],
        "name": meta["name"],
        "uid": meta.get("uid"),
    }
    if container is not None:
        init = any(c["name"] == container for c in pod["spec"].get("initContainers") or [])
        involved["fieldPath"] = f"spec.{'initContainers' if init else 'containers'}{{{container}}}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
        "involvedObject": involved,
        "reason": reason,
        "message": message[:1024],
        "type": kind,
        "source": {"component": "kubelet", "host": node},
        "reportingComponent": "kubelet",
        "reportingInstance": node,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    """Posts Events; best effort (a failure is logged, never raised into the pod's life)."""

    def __init__(self, core: client.CoreV1Api, node: str) -> None:
        self.core = core
        self.node = node

    def record(
        self,
        pod: Mapping[str, Any],
        kind: str,
        reason: str,
        message: str,
        container: str | None = None,
    ) -> None:
        body = pod_event(pod, self.node, kind, reason, message, container)
        try:
            self.core.create_namespaced_event(
                pod["metadata"]["namespace"], body, _request_timeout=EVENT_TIMEOUT_S, _preload_content=False
            )
        except Exception as err:
            log.warning("event %s for %s failed: %s", reason, pod["metadata"]["name"], err)
