"""PaxSweep API I/O: read a sweep and its trial PaxJobs, record trial results, create trials, write status."""

from __future__ import annotations

import socket
from datetime import datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from pax_operator.adapters import kube
from pax_operator.adapters.events import MAX_EVENT_MESSAGE, event_body, warn_unposted
from pax_operator.adapters.kube import Clients
from pax_operator.core.observe import controller_ref, controller_uid
from pax_operator.core.plan import Event
from pax_operator.spec import GROUP, VERSION
from pax_operator.sweep.spec import LABEL_SWEEP_NAME, SWEEP_KIND, SWEEP_PLURAL, PaxSweepStatus

SWEEPS = kube.Resource(GROUP, VERSION, SWEEP_PLURAL)


def get_sweep(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    return kube.read(clients, SWEEPS.path(namespace, name))


def list_trials(clients: Clients, sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Trial PaxJobs labelled with the sweep's name and controlled by this very sweep (uid). Only when the
    informer's view stays behind the sweep's own writes (sweep.trials): passes read the informer."""
    metadata = sweep["metadata"]
    return kube.list_controlled(
        clients,
        kube.PAXJOBS.path(metadata["namespace"]),
        selector=f"{LABEL_SWEEP_NAME}={metadata['name']}",
        owner_uid=metadata["uid"],
    )


def patch_trial(
    clients: Clients, namespace: str, name: str, annotations: dict[str, str], *, suspend: bool = False
) -> dict[str, Any] | None:
    """Merge-patch a trial's annotations (and spec.suspend to stop it through PaxJob's graceful path); the
    trial as written, None when it is gone."""
    body: dict[str, Any] = {"metadata": {"annotations": annotations}}
    if suspend:
        body["spec"] = {"suspend": True}
    return kube.patch(clients, kube.PAXJOBS.path(namespace, name), body)


def create_trial(clients: Clients, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create a trial PaxJob: the trial as stored; None when its name is taken (created before a restart:
    read again)."""
    return kube.create(clients, kube.PAXJOBS.path(body["metadata"]["namespace"]), body)


def name_holder(obj: dict[str, Any] | None, sweep: dict[str, Any]) -> str:
    """Who holds the name of a trial or describe pod the sweep could not create: `ours` (or gone again:
    read again), `leaving` (being deleted, or left by a deleted sweep of the same name for the garbage
    collector: `kubectl delete psw x && kubectl apply -f x.yaml`), or `another` (never touched)."""
    if obj is None or controller_uid(obj) == sweep["metadata"]["uid"]:
        return "ours"
    metadata = obj["metadata"]
    controller = controller_ref(obj)
    predecessor = (controller.get("kind"), controller.get("name")) == (SWEEP_KIND, sweep["metadata"]["name"])
    return "leaving" if predecessor or metadata.get("deletionTimestamp") is not None else "another"


def trial_name_holder(clients: Clients, sweep: dict[str, Any], name: str) -> str:
    """`name_holder` of PaxJob `name`, which the sweep could not create."""
    return name_holder(kube.get_job(clients, sweep["metadata"]["namespace"], name), sweep)


def get_pod(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    """A pod (the sweep's describe pod), None when absent."""
    return kube.read(clients, kube.PODS.path(namespace, name))


def create_pod(clients: Clients, body: dict[str, Any]) -> None:
    """Create a pod; one that exists already (created before a restart) is read on the next pass."""
    kube.create(clients, kube.PODS.path(body["metadata"]["namespace"]), body)


def delete_pod(clients: Clients, pod: dict[str, Any]) -> None:
    """Delete exactly this pod (uid precondition); gone already is fine."""
    metadata = pod["metadata"]
    kube.delete_pod(clients, metadata["namespace"], metadata["name"], metadata["uid"])


def write_status(clients: Clients, sweep: dict[str, Any], status: PaxSweepStatus) -> None:
    """Replace the status subresource, fenced by the resourceVersion read (a concurrent change: Conflict)."""
    kube.replace_status(clients, SWEEPS, sweep, status.to_api())


def delete_sweep(clients: Clients, sweep: dict[str, Any]) -> None:
    metadata = sweep["metadata"]
    path = SWEEPS.path(metadata["namespace"], metadata["name"])
    kube.delete_exactly(clients, path, uid=metadata["uid"], propagation="Background")


def post_event(clients: Clients, sweep: dict[str, Any], event: Event, now: datetime) -> None:
    """A core/v1 Event on the PaxSweep; failing to post only logs."""
    metadata = sweep["metadata"]
    message = event.message[:MAX_EVENT_MESSAGE]
    body = event_body(sweep, SWEEP_KIND, event.type, event.reason, message, now, socket.gethostname()[:128])
    try:
        clients.request("POST", kube.EVENTS.path(metadata["namespace"]), body)
    except ApiException as err:
        warn_unposted(event.reason, sweep, err)
