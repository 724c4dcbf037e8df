"""The pod list+watch (bounded; any error or a 410 re-lists) and binding unscheduled pods to the node."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from pax_cluster.kubelet.common import REQUEST_TIMEOUT_S

log = logging.getLogger("pax_cluster.kubelet.watch")
WATCH_S = 60

Handler = Callable[[dict[str, Any]], None]


def bind(core: client.CoreV1Api, pod: dict[str, Any], node: str) -> None:
    """Bind an unscheduled pod to `node` (a lost race, 404 or 409, is fine)."""
    meta = pod["metadata"]
    body = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": meta["name"]},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }
    try:
        core.create_namespaced_binding(meta["namespace"], body, _preload_content=False)
    except ApiException as err:
        if err.status not in (404, 409):
            log.warning("binding %s/%s failed: %s", meta["namespace"], meta["name"], err.reason)


class PodWatch:
    """Lists pods, then watches from the list's resourceVersion; `on_change` gets ADDED/MODIFIED pods
    (and every listed one), `on_delete` DELETED ones."""

    def __init__(self, core: client.CoreV1Api, on_change: Handler, on_delete: Handler) -> None:
        self.core = core
        self.on_change = on_change
        self.on_delete = on_delete
        self._response: Any = None

    def run(self, stopping: threading.Event) -> None:
        """Until `stopping`: list, watch; on any error wait 0.5 s and list again."""
        while not stopping.is_set():
            try:
                listing = self.core.list_pod_for_all_namespaces(
                    _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
                )
                doc = json.loads(listing.data)
                for pod in doc["items"]:
                    self.on_change(pod)
                self._watch(doc["metadata"]["resourceVersion"], stopping)
            except Exception as err:
                if not stopping.is_set():
                    log.info("pod watch restarting: %s", err)
                    time.sleep(0.5)

    def _watch(self, version: str, stopping: threading.Event) -> None:
        """One bounded watch; `close()` shuts its connection down so the thread ends at once."""
        resp = self.core.list_pod_for_all_namespaces(
            watch=True,
            resource_version=version,
            timeout_seconds=WATCH_S,
            _request_timeout=(REQUEST_TIMEOUT_S, WATCH_S + REQUEST_TIMEOUT_S),
            _preload_content=False,
        )
        self._response = resp
        try:
            if stopping.is_set():
                return
            for line in iter_resp_lines(resp):
                event = json.loads(line)
                if event["type"] == "ERROR":  # e.g. 410 Gone: the version is too old
                    raise RuntimeError(f"watch error: {event['object'].get('message')}")
                if event["type"] == "DELETED":
                    self.on_delete(event["object"])
                elif event["type"] in ("ADDED", "MODIFIED"):
                    self.on_change(event["object"])
        finally:
            self._response = None
            resp.close()
            resp.release_conn()

    def close(self) -> None:
        """Shut the open watch connection (unblocks the watching thread's read)."""
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):
                response.shutdown()
