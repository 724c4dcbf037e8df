"""The operator's wiring, kept thin: two informers (PaxJobs; gang pods) feed the cache and enqueue keys;
the work queue runs the reconciler. kopf runs the process: start-up and clean-up, liveness, and PaxSweeps
(whose passes read their trials from the PaxJob informer too, and are woken by it).

No kopf daemons, timers or change handlers: they would add finalizers (a PaxJob could not be deleted while the
operator is down) and annotations. Clock-based rules (backoff, deadlines, TTL, hang checks) are requeues;
progress scrapes run on the loop and wake a job when what it serves changed.

The work queue takes no key before both informers have their initial listing: no reconcile ever sees a
PaxJob without its pods.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from pax_operator import telemetry
from pax_operator.adapters.cache import Cache, controller_key
from pax_operator.adapters.events import EventRecorder
from pax_operator.adapters.informer import Informer
from pax_operator.adapters.kube import PAXJOBS, PODS, Clients
from pax_operator.adapters.lease import fence_writes, start_when_leading, step_down
from pax_operator.adapters.scrape import Scraper
from pax_operator.core.observe import PodView, pod_view
from pax_operator.core.render import LABEL_JOB_NAME
from pax_operator.reconcile import Reconciler
from pax_operator.settings import (
    KUBE_BURST,
    KUBE_QPS,
    SCRAPE_INTERVAL_SECONDS,
    STARTUP_DEADLINE_SECONDS,
    WORKERS,
)
from pax_operator.spec import GROUP
from pax_operator.sweep.trials import trial_index_keys
from pax_operator.workqueue import WorkQueue


class NoDiffBase(kopf.DiffBaseStorage):
    """No change handlers, so no diff base: skips kopf's deep copy of every event's body."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
async def start(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """Tune kopf; start the informers and the work queue."""
    settings.posting.enabled = False  # the reconciler posts its own transition events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = f"{GROUP}/operator"  # never added: no handler needs one
    settings.persistence.diffbase_storage = NoDiffBase()
    workers = memo.get("workers", WORKERS)
    clients = Clients.connect(
        qps=memo.get("kube_qps", KUBE_QPS), burst=memo.get("kube_burst", KUBE_BURST), workers=workers
    )
    fence_writes(memo, clients)  # leader election: no write unless the Lease is confirmed
    informer = functools.partial(
        Informer,
        lambda path, query: clients.request("GET", path, query=query),
        clients.watch,
        namespaces=memo.get("namespaces") or (),
    )
    memo.jobs = informer(
        collection=PAXJOBS.collection,
        parse=paxjob_body,
        keys=paxjob_keys,
        on_event=lambda kind, namespace, body: paxjob_event(memo, kind, namespace, body),
    )
    memo.pods = informer(
        collection=PODS.collection,
        parse=pod_view,
        keys=pod_keys,
        on_event=lambda kind, namespace, pod: pod_event(memo, namespace, pod),
        selector=LABEL_JOB_NAME,  # server-side: gang pods only
    )
    memo.cache = Cache(jobs=memo.jobs, pods=memo.pods)
    memo.scraper = Scraper(
        on_change=lambda key: memo.queue.add(key),
        interval=memo.get("scrape_interval", SCRAPE_INTERVAL_SECONDS),
    )
    memo.reconciler = Reconciler(
        clients,
        memo.cache,
        memo.scraper,
        EventRecorder.off_path(clients),
        executor=ThreadPoolExecutor(workers, thread_name_prefix="pax-reconcile"),
        startup_deadline_seconds=memo.get("startup_deadline", STARTUP_DEADLINE_SECONDS),
    )
    memo.queue = WorkQueue(
        telemetry.timed(memo.reconciler.reconcile_key),
        workers=workers,
        ready=(memo.jobs.synced, memo.pods.synced),
    )
    telemetry.attach(memo.queue)
    for started in (memo.jobs, memo.pods):
        started.start(asyncio.get_running_loop())
    start_when_leading(memo, memo.queue.start)  # leader election: the queue runs only while leading
    logger.info("pax-operator work queue started")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    queue = memo.get("queue")
    if queue is not None:
        await queue.stop()
    scraper = memo.get("scraper")
    if scraper is not None:
        await scraper.stop()
    for informer in (memo.get("jobs"), memo.get("pods")):
        if informer is not None:
            informer.stop()
    await step_down(memo)  # hand the Lease back only once nothing more is written


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def paxjob_body(body: dict[str, Any]) -> dict[str, Any]:
    """A PaxJob as the cache holds it: without managedFields and kubectl's last-applied copy of the spec
    (together up to twice the object again, for every PaxJob, in the operator's memory). Only the status
    is ever written back from it, and the apiserver keeps what it omits."""
    metadata = {key: value for key, value in body["metadata"].items() if key != "managedFields"}
    if LAST_APPLIED in (metadata.get("annotations") or {}):
        metadata["annotations"] = {k: v for k, v in metadata["annotations"].items() if k != LAST_APPLIED}
    return {**body, "metadata": metadata}


def paxjob_keys(namespace: str, body: dict[str, Any]) -> list[Hashable]:
    """A PaxJob is found by (namespace, name); a sweep's trial also by its controller (the sweep's reads)."""
    return [(namespace, body["metadata"]["name"]), *trial_index_keys(namespace, body)]


def pod_keys(namespace: str, pod: PodView) -> list[Hashable]:
    """A gang pod is found by its controller (namespace and UID) and by (namespace, job-name label)."""
    keys: list[Hashable] = []
    if pod.controller_uid:
        keys.append(controller_key(namespace, pod.controller_uid))
    if pod.job_name:
        keys.append((namespace, pod.job_name))
    return keys


def pod_event(memo: kopf.Memo, namespace: str, pod: PodView) -> None:
    """A gang pod changed: reconcile its PaxJob."""
    if pod.job_name:
        memo.queue.add((namespace, pod.job_name))


def paxjob_event(memo: kopf.Memo, kind: str, namespace: str, body: dict[str, Any]) -> None:
    """Any change to a PaxJob (including the initial listing after a restart): reconcile it, unless the
    event only echoes our own status write."""
    key = (namespace, body["metadata"]["name"])
    telemetry.observe_job(*key, None if kind == "DELETED" else body)
    pax_operator.sweep.handlers.trial_changed(memo, kind, namespace, body)  # a trial wakes its sweep
    if kind == "DELETED":
        memo.queue.forget(key)
        memo.reconciler.forget(key, body["metadata"].get("uid"))
        return
    if not memo.cache.is_own_write(body):
        memo.queue.add(key)


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)

# PaxSweep registers its own kopf handlers and work queue (self-contained; see pax_operator/sweep/).
import pax_operator.sweep.handlers  # noqa: E402
