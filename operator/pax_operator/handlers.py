"""kopf wiring, kept thin: watch events only enqueue keys; the work queue runs the reconciler.

No kopf daemons, timers or change handlers: they would add finalizers (a PaxJob could not be deleted while the
operator is down) and annotations. Clock-based rules (backoff, deadlines, TTL, progress scrapes) are requeues.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from pax_operator import telemetry
from pax_operator.core.render import LABEL_JOB_NAME
from pax_operator.kits.kube import Clients
from pax_operator.kits.lease import start_when_leading, step_down
from pax_operator.reconcile import SCRAPE_INTERVAL_SECONDS, Reconciler
from pax_operator.spec import GROUP, PLURAL, VERSION
from pax_operator.workqueue import WorkQueue

WORKERS = 4


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Tune kopf and start the work queue."""
    settings.posting.enabled = False  # the reconciler posts its own transition events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 30
    settings.persistence.finalizer = f"{GROUP}/operator"  # never added: no handler needs one
    reconciler = Reconciler(
        Clients.connect(), scrape_interval=memo.get("scrape_interval", SCRAPE_INTERVAL_SECONDS)
    )
    memo.queue = WorkQueue(telemetry.timed(reconciler.reconcile), workers=memo.get("workers", WORKERS))
    telemetry.attach(memo.queue)
    start_when_leading(memo, memo.queue.start)  # leader election: the queue runs only while leading
    logger.info("pax-operator work queue started")


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    queue = memo.get("queue")
    if queue is not None:
        await queue.stop()
    await step_down(memo)  # hand the Lease back only once nothing more is written


@kopf.on.event(GROUP, VERSION, PLURAL)
async def paxjob_event(event: kopf.RawEvent, name: str, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """Any change to a PaxJob (including the initial listing after a restart): reconcile it."""
    telemetry.observe_job(namespace, name, None if event.get("type") == "DELETED" else event.get("object"))
    if event.get("type") == "DELETED":
        memo.queue.forget((namespace, name))
        return
    memo.queue.add((namespace, name))


@kopf.on.event("", "v1", "pods", labels={LABEL_JOB_NAME: kopf.PRESENT})
async def pod_event(labels: kopf.Labels, namespace: str, memo: kopf.Memo, **_: Any) -> None:
    """A gang pod changed: reconcile its PaxJob."""
    memo.queue.add((namespace, labels[LABEL_JOB_NAME]))


logging.getLogger("kubernetes.client.rest").setLevel(logging.WARNING)

# PaxSweep registers its own kopf handlers and work queue (self-contained; see pax_operator/sweep/).
import pax_operator.sweep.handlers  # noqa: E402, F401
