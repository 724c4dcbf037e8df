"""Kubernetes API I/O: read a PaxJob and its pods, apply a Plan idempotently."""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from pax_operator.core.decide import Event, Plan, format_time
from pax_operator.core.render import DEFAULT_OPERATOR_NAMESPACE, LABEL_JOB_NAME
from pax_operator.spec import GROUP, KIND, PLURAL, VERSION

log = logging.getLogger(__name__)
REPORTING_COMPONENT = "pax.dev/operator"
MAX_EVENT_MESSAGE = 1024
TIMEOUT = 30  # seconds per API request: a stuck call must not hold a worker forever
PARALLEL_REQUESTS = 16  # pod creations / deletions in flight per reconcile
SERVICE_ACCOUNT_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class Conflict(Exception):
    """Someone else changed the PaxJob between our read and our write: read again."""


@dataclass
class Clients:
    core: client.CoreV1Api
    custom: client.CustomObjectsApi

    @classmethod
    def connect(cls) -> Clients:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
        api = client.ApiClient()
        return cls(core=client.CoreV1Api(api), custom=client.CustomObjectsApi(api))


def _ignore(err: ApiException, *codes: int) -> None:
    if err.status not in codes:
        raise err


def get_job(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return clients.custom.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, _request_timeout=TIMEOUT
        )
    except ApiException as err:
        _ignore(err, 404)
        return None


def list_owned_pods(clients: Clients, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Pods labelled with the job's name and controlled by this very PaxJob (uid), as camelCase dicts."""
    metadata = job["metadata"]
    response = clients.core.list_namespaced_pod(
        metadata["namespace"],
        label_selector=f"{LABEL_JOB_NAME}={metadata['name']}",
        _preload_content=False,
        _request_timeout=TIMEOUT,
    )
    pods = json.loads(response.data)["items"]
    return [
        pod
        for pod in pods
        if any(
            ref.get("uid") == metadata["uid"] and ref.get("controller")
            for ref in pod["metadata"].get("ownerReferences") or []
        )
    ]


def operator_namespace() -> str:
    """The operator's own namespace: $PAX_OPERATOR_NAMESPACE, else the in-cluster ServiceAccount's, else
    pax-system (the trainer pods' NetworkPolicy admits /metrics scrapes from it)."""
    if namespace := os.environ.get("PAX_OPERATOR_NAMESPACE"):
        return namespace
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE_FILE) as f:
            return f.read().strip() or DEFAULT_OPERATOR_NAMESPACE
    except OSError:
        return DEFAULT_OPERATOR_NAMESPACE


def ensure_network_policy(clients: Clients, policy: dict[str, Any]) -> None:
    """Create the job's NetworkPolicy (owned by the PaxJob, so garbage-collected with it) unless it exists."""
    networking = client.NetworkingV1Api(clients.core.api_client)
    try:
        networking.create_namespaced_network_policy(
            policy["metadata"]["namespace"], policy, _request_timeout=TIMEOUT
        )
    except ApiException as err:
        _ignore(err, 409)


def apply_plan(
    clients: Clients,
    job: dict[str, Any],
    plan: Plan,
    now: datetime,
    network_policy: dict[str, Any] | None = None,
) -> None:
    """Apply in a crash-safe order; every step is idempotent.

    The status is written before deletions (a restart's cause and counters are recorded before the pods go,
    so a crash in between is not mistaken for pods deleted by someone else) and after creations (the gang
    counts as created only once all its pods exist).
    """
    namespace = job["metadata"]["namespace"]
    if plan.service is not None:
        try:
            clients.core.create_namespaced_service(namespace, plan.service, _request_timeout=TIMEOUT)
        except ApiException as err:
            _ignore(err, 409)
        if network_policy is not None:  # before the pods: their ports are never open to all
            ensure_network_policy(clients, network_policy)
    if not plan.create_pods:
        write_status(clients, job, plan, fence=bool(plan.delete_pods or plan.force_delete_pods))

    def delete(doomed: tuple[str, str]) -> None:
        pod_name, uid = doomed
        try:
            clients.core.delete_namespaced_pod(
                pod_name,
                namespace,
                body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=uid)),
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            _ignore(err, 404, 409)  # gone already, or a newer pod holds the name

    def force_delete(doomed: tuple[str, str]) -> None:
        pod_name, uid = doomed
        try:
            clients.core.delete_namespaced_pod(
                pod_name,
                namespace,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=uid)
                ),
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            _ignore(err, 404, 409)

    def create(pod: dict[str, Any]) -> None:
        try:
            clients.core.create_namespaced_pod(namespace, pod, _request_timeout=TIMEOUT)
        except ApiException as err:
            _ignore(err, 409)  # created before an operator restart: names are per host, so never twice

    _concurrently(delete, plan.delete_pods)
    _concurrently(force_delete, plan.force_delete_pods)
    _concurrently(create, plan.create_pods)
    if plan.create_pods:
        write_status(clients, job, plan)
    for event in plan.events:
        post_event(clients, job, event, now)
    if plan.delete_job:
        try:
            clients.custom.delete_namespaced_custom_object(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                job["metadata"]["name"],
                body={"propagationPolicy": "Background", "preconditions": {"uid": job["metadata"]["uid"]}},
                _request_timeout=TIMEOUT,
            )
        except ApiException as err:
            _ignore(err, 404, 409)


def _concurrently[T](action: Callable[[T], None], items: list[T]) -> None:
    """Run `action` on every item, up to PARALLEL_REQUESTS at once (a 1000-host gang is 1000 requests);
    every item is tried, then the first error is raised."""
    if len(items) <= 1:
        for item in items:
            action(item)
        return
    with ThreadPoolExecutor(max_workers=min(PARALLEL_REQUESTS, len(items))) as pool:
        futures = [pool.submit(action, item) for item in items]
    errors = [future.exception() for future in futures if future.exception() is not None]
    if errors:
        raise errors[0]


def write_status(clients: Clients, job: dict[str, Any], plan: Plan, *, fence: bool = False) -> None:
    """Replace the status subresource; the resourceVersion we read makes a concurrent change a Conflict.

    With `fence`, an unchanged status is written too (a no-op for the apiserver): deletions decided on a
    stale view of the PaxJob are then refused instead of applied.
    """
    if plan.status is None and not fence:
        return
    namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
    body = dict(job)
    body["status"] = plan.status.to_api() if plan.status is not None else job.get("status") or {}
    try:
        clients.custom.replace_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, body, _request_timeout=TIMEOUT
        )
    except ApiException as err:
        if err.status == 409:
            raise Conflict(f"{namespace}/{name} changed while reconciling") from err
        raise


def post_event(clients: Clients, job: dict[str, Any], event: Event, now: datetime) -> None:
    """Post a core/v1 Event on the PaxJob (kubectl describe shows it); failing to post only logs."""
    metadata = job["metadata"]
    timestamp = format_time(now)
    body = {
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": KIND,
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
        },
        "type": event.type,
        "reason": event.reason,
        "message": event.message[:MAX_EVENT_MESSAGE],
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
        "source": {"component": "pax-operator"},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
    }
    try:
        clients.core.create_namespaced_event(metadata["namespace"], body, _request_timeout=TIMEOUT)
    except ApiException as err:
        log.warning(
            "could not post event %s on %s/%s: %s",
            event.reason,
            metadata["namespace"],
            metadata["name"],
            err.reason,
        )
