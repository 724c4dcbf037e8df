"""PaxSweep API I/O: read a sweep and its trial PaxJobs, record trial results, create trials, write status."""

from __future__ import annotations

import json
import socket
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from pax_operator.adapters.events import MAX_EVENT_MESSAGE, event_body, warn_unposted
from pax_operator.adapters.kube import Clients, Conflict
from pax_operator.spec import GROUP, PLURAL, VERSION
from pax_operator.sweep.decide import Event
from pax_operator.sweep.spec import LABEL_SWEEP_NAME, SWEEP_KIND, SWEEP_PLURAL, PaxSweepStatus


def get_sweep(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return clients.call(
            clients.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, SWEEP_PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def list_trials(clients: Clients, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Trial PaxJobs labelled with the sweep's name and controlled by this very sweep (uid)."""
    metadata = sweep["metadata"]
    response = clients.call(
        clients.custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        metadata["namespace"],
        PLURAL,
        label_selector=f"{LABEL_SWEEP_NAME}={metadata['name']}",
        _preload_content=False,
    )
    jobs = json.loads(response.data)["items"]
    return [
        job
        for job in jobs
        if any(
            ref.get("uid") == metadata["uid"] and ref.get("controller")
            for ref in job["metadata"].get("ownerReferences") or []
        )
    ]


def patch_trial(
    clients: Clients, namespace: str, name: str, annotations: dict[str, str], *, suspend: bool = False
) -> None:
    """Merge-patch a trial's annotations (and spec.suspend to stop it through PaxJob's graceful path)."""
    body: dict[str, Any] = {"metadata": {"annotations": annotations}}
    if suspend:
        body["spec"] = {"suspend": True}
    try:
        clients.call(
            clients.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, body
        )
    except ApiException as err:
        if err.status != 404:
            raise


def create_trial(clients: Clients, body: dict[str, Any]) -> bool:
    """Create a trial PaxJob; False when its name is taken (created before a restart: read again)."""
    try:
        clients.call(
            clients.custom.create_namespaced_custom_object,
            GROUP,
            VERSION,
            body["metadata"]["namespace"],
            PLURAL,
            body,
        )
        return True
    except ApiException as err:
        if err.status == 409:
            return False
        raise


def owned_trial_exists(clients: Clients, namespace: str, name: str, sweep_uid: str) -> bool:
    """Whether PaxJob `name` exists and is controlled by the sweep (else its name is taken by another)."""
    try:
        job = clients.call(
            clients.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as err:
        if err.status == 404:
            return True  # gone again: read again and retry
        raise
    refs = job["metadata"].get("ownerReferences") or []
    return any(ref.get("uid") == sweep_uid and ref.get("controller") for ref in refs)


def get_pod(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """A pod (the sweep's describe pod) as a camelCase dict, None when absent."""
    try:
        response = clients.call(clients.core.read_namespaced_pod, name, namespace, _preload_content=False)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    return json.loads(response.data)


def create_pod(clients: Clients, body: dict[str, Any]) -> None:
    """Create a pod; one that exists already (created before a restart) is read on the next pass."""
    try:
        clients.call(clients.core.create_namespaced_pod, body["metadata"]["namespace"], body)
    except ApiException as err:
        if err.status != 409:
            raise


def delete_pod(clients: Clients, pod: dict[str, Any]) -> None:
    """Delete exactly this pod (uid precondition); gone already is fine."""
    metadata = pod["metadata"]
    try:
        clients.call(
            clients.core.delete_namespaced_pod,
            metadata["name"],
            metadata["namespace"],
            body={"preconditions": {"uid": metadata["uid"]}},
        )
    except ApiException as err:
        if err.status not in (404, 409):
            raise


def write_status(clients: Clients, sweep: dict[str, Any], status: PaxSweepStatus) -> None:
    """Replace the status subresource, fenced by the resourceVersion read (a concurrent change: Conflict)."""
    metadata = sweep["metadata"]
    body = dict(sweep)
    body["status"] = status.to_api()
    try:
        clients.call(
            clients.custom.replace_namespaced_custom_object_status,
            GROUP,
            VERSION,
            metadata["namespace"],
            SWEEP_PLURAL,
            metadata["name"],
            body,
        )
    except ApiException as err:
        if err.status == 409:
            raise Conflict(f"{metadata['namespace']}/{metadata['name']} changed while reconciling") from err
        raise


def delete_sweep(clients: Clients, sweep: dict[str, Any]) -> None:
    metadata = sweep["metadata"]
    try:
        clients.call(
            clients.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            metadata["namespace"],
            SWEEP_PLURAL,
            metadata["name"],
            body={"propagationPolicy": "Background", "preconditions": {"uid": metadata["uid"]}},
        )
    except ApiException as err:
        if err.status not in (404, 409):
            raise


def post_event(clients: Clients, sweep: dict[str, Any], event: Event, now: datetime) -> None:
    """A core/v1 Event on the PaxSweep; failing to post only logs."""
    metadata = sweep["metadata"]
    message = event.message[:MAX_EVENT_MESSAGE]
    body = event_body(sweep, SWEEP_KIND, event.type, event.reason, message, now, socket.gethostname()[:128])
    try:
        clients.call(clients.core.create_namespaced_event, metadata["namespace"], body)
    except ApiException as err:
        warn_unposted(event.reason, sweep, err)
