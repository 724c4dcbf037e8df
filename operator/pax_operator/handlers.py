"""kopf wiring, kept thin: watch events feed the cache (a kopf index of PaxJobs, our pod informer) and
enqueue keys; the work queue runs the reconciler.

No kopf daemons, timers or change handlers: they would add finalizers (a PaxJob could not be deleted while the
operator is down) and annotations. Clock-based rules (backoff, deadlines, TTL, hang checks) are requeues;
progress scrapes run on the loop and wake a job when what it serves changed.

kopf holds back every handler until the PaxJob index has its initial listing, and the work queue waits for
the pod informer's: no reconcile ever sees a PaxJob without its pods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from pax_operator import telemetry
from pax_operator.adapters.cache import Cache
from pax_operator.adapters.events import EventRecorder
from pax_operator.adapters.informer import PodInformer
from pax_operator.adapters.kube import Clients
from pax_operator.adapters.lease import start_when_leading, step_down
from pax_operator.adapters.scrape import Scraper
from pax_operator.core.render import LABEL_JOB_NAME
from pax_operator.reconcile import Reconciler
from pax_operator.settings import (
    KUBE_BURST,
    KUBE_QPS,
    SCRAPE_INTERVAL_SECONDS,
    STARTUP_DEADLINE_SECONDS,
    WORKERS,
)
from pax_operator.spec import GROUP, PLURAL, VERSION
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
    paxjob_index: kopf.Index,
    **_: Any,
) -> None:
    """Tune kopf, start the pod informer and the work queue."""
    settings.posting.enabled = False  # the reconciler posts its own transition events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = f"{GROUP}/operator"  # never added: no handler needs one
    settings.persistence.diffbase_storage = NoDiffBase()
    workers = memo.get("workers", WORKERS)
    clients = Clients.connect(qps=memo.get("kube_qps", KUBE_QPS), burst=memo.get("kube_burst", KUBE_BURST))
    memo.pods = PodInformer(
        lambda path, query: clients.request("GET", path, query=query),
        clients.watch,
        selector=LABEL_JOB_NAME,  # server-side: gang pods only
        namespaces=memo.get("namespaces") or (),
        on_change=lambda key: memo.queue.add(key),
    )
    memo.pods.start(asyncio.get_running_loop())
    memo.cache = Cache(jobs=paxjob_index, pods=memo.pods)
    memo.scraper = Scraper(
        on_change=lambda key: memo.queue.add(key),
        interval=memo.get("scrape_interval", SCRAPE_INTERVAL_SECONDS),
    )
    memo.reconciler = Reconciler(
        clients,
        memo.cache,
        memo.scraper,
        EventRecorder(clients, executor=clients.pool),  # posted off the reconcile's path
        executor=ThreadPoolExecutor(workers, thread_name_prefix="pax-reconcile"),
        startup_deadline_seconds=memo.get("startup_deadline", STARTUP_DEADLINE_SECONDS),
    )
    memo.queue = WorkQueue(
        telemetry.timed(memo.reconciler.reconcile_key), workers=workers, ready=memo.pods.synced
    )
    telemetry.attach(memo.queue)
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
    pods = memo.get("pods")
    if pods is not None:
        pods.stop()
    await step_down(memo)  # hand the Lease back only once nothing more is written


@kopf.index(GROUP, VERSION, PLURAL)
async def paxjob_index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], Any]:
    """The cache of PaxJobs: (namespace, name) → body. Indexers are coroutines: kopf would run a plain
    function in a thread, a hop per watch event."""
    return {(namespace, name): dict(body)}


@kopf.on.event(GROUP, VERSION, PLURAL)
async def paxjob_event(event: kopf.RawEvent, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Any change to a PaxJob (including the initial listing after a restart): reconcile it, unless the
    event only echoes our own status write."""
    body = event.get("object") or {}
    telemetry.observe_job(namespace, name, None if event.get("type") == "DELETED" else body)
    if event.get("type") == "DELETED":
        memo.queue.forget((namespace, name))
        memo.reconciler.forget((namespace, name), (body.get("metadata") or {}).get("uid"))
        return
    if memo.cache.is_own_write(body):
        return
    memo.queue.add((namespace, name))


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)

# PaxSweep registers its own kopf handlers and work queue (self-contained; see pax_operator/sweep/).
import pax_operator.sweep.handlers  # noqa: E402, F401
