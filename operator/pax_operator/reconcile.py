"""One reconcile pass: observe (the cache: PaxJob + owned pods + latest scrape) → decide (pure) → apply.

Reads come from the watch-fed cache on the event loop; only the writes (and recovery reads) run in a thread.
The apiserver is read only to recover: after a conflicting write (GET the PaxJob) or when the watch has not
shown our own pod creations/deletions for too long (LIST the job's pods).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from pax_operator.adapters import kube
from pax_operator.adapters.cache import Cache, JobKey
from pax_operator.adapters.events import EventRecorder
from pax_operator.adapters.kube import NOT_LEADING_RETRY_SECONDS
from pax_operator.adapters.scrape import Scraper
from pax_operator.core.decide import Event, Observed, Plan, creation_refused, decide
from pax_operator.core.observe import PodView, pod_view
from pax_operator.core.render import JobRef, render_network_policy
from pax_operator.settings import STARTUP_DEADLINE_SECONDS
from pax_operator.spec import PaxJobSpec, PaxJobStatus, Phase

log = logging.getLogger(__name__)
CONFLICT_RETRY_SECONDS = 0.2
EXPECTATIONS_RETRY_SECONDS = 0.5  # the watch has yet to show our own creations/deletions
NAMES_TAKEN_RETRY_SECONDS = 2.0  # a foreign pod holds a gang pod's name (not labelled: no event wakes us)


@dataclass
class Reconciler:
    """Decides and applies one PaxJob at a time; `reconcile` runs on the event loop (work queue worker)."""

    clients: kube.Clients
    cache: Cache
    scraper: Scraper[JobKey]
    events: EventRecorder
    executor: Executor | None = None  # where the API writes run (None: the loop's default executor)
    operator_namespace: str = field(default_factory=kube.operator_namespace)
    startup_deadline_seconds: float = STARTUP_DEADLINE_SECONDS
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _unparsable: set[str] = field(default_factory=set)  # UIDs whose spec did not parse (logged once)

    async def reconcile_key(self, key: JobKey) -> float | None:
        """The work queue's entry point: key = (namespace, name)."""
        return await self.reconcile(*key)

    async def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one PaxJob a step closer to its desired state.

        Returns seconds until it wants another look, or None when nothing is due (an event brings it back).
        """
        if not self.clients.may_write():  # fenced: leadership unconfirmed; decide nothing on a stale view
            log.warning("%s/%s: not reconciling: leadership not confirmed", namespace, name)
            return NOT_LEADING_RETRY_SECONDS
        key = (namespace, name)
        job = self.cache.job(key)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self.forget(key, None if job is None else job["metadata"]["uid"])
            return None  # gone or going: owner references let the garbage collector remove the pods
        uid = job["metadata"]["uid"]
        part = "spec"
        try:
            spec = PaxJobSpec.model_validate(job.get("spec") or {})
            part = "status"  # e.g. a phase of a newer operator's, read after a rollback
            status = PaxJobStatus.model_validate(job.get("status") or {})
        except ValidationError as err:  # the CRD admits no such spec; an older CRD version might
            if uid not in self._unparsable:  # said once per PaxJob: in the log and on the object
                self._unparsable.add(uid)
                log.error("%s/%s: %s does not parse, not reconciling: %s", namespace, name, part, err)
                first = err.errors()[0]
                where = ".".join((part, *(str(loc) for loc in first["loc"])))
                message = (
                    f"{where}: {first['msg']}; the operator does not reconcile this PaxJob (pods untouched)"
                )
                if part == "status":
                    message += "; written by another version of the operator? Run that version again"
                reason = "SpecNotUnderstood" if part == "spec" else "StatusNotUnderstood"
                await self._io(self.events.post, job, Event("Warning", reason, message), self.clock())
            return None
        pods = self.cache.owned_pods(namespace, uid)
        settled = self.cache.settled(uid, pods)
        if settled is False:
            return EXPECTATIONS_RETRY_SECONDS
        if settled is None:
            log.info("%s/%s: the watch has not shown our pod changes; reading the pods", namespace, name)
            pods = [pod_view(p) for p in await self._io(kube.list_owned_pods, self.clients, job)]
            self.cache.reset(uid)
        scrape = self.scraper.latest(key, status.restart_attempt)
        observed = Observed(
            job=JobRef(name=name, namespace=namespace, uid=uid),
            spec=spec,
            status=status,
            pods=pods,
            now=self.clock(),
            scrape=scrape,
            metrics_answered=scrape is not None,
            generation=job["metadata"].get("generation"),
            foreign_pods=self.cache.foreign_pods(namespace, name, uid),
            startup_deadline_seconds=self.startup_deadline_seconds,
        )
        plan = decide(observed)
        owned = [render_network_policy(observed.job, spec, self.operator_namespace)] if plan.service else []
        try:
            applied = await self._io(self._apply, job, plan, owned, observed.now)
        except kube.Conflict:
            log.debug("%s/%s changed while reconciling; reading it again", namespace, name)
            fresh = await self._io(kube.get_job, self.clients, namespace, name)
            if fresh is not None:
                self.cache.remember(fresh)
            return CONFLICT_RETRY_SECONDS
        except kube.NamesTaken as err:
            self._remember(await self._io(self._refused, job, observed, err.reason, str(err)))
            return NAMES_TAKEN_RETRY_SECONDS
        except ApiException as err:
            if err.status == 404 and await self._io(kube.get_job, self.clients, namespace, name) is None:
                log.info("%s/%s is gone (deleted while the watch was away)", namespace, name)
                self.forget(key, uid)
                return None
            if isinstance(err, kube.StatusRefused):  # only say so: a second write would be refused too
                message = f"status: {kube.api_message(err)}"
                await self._io(self.events.post, job, Event("Warning", "FailedApply", message), observed.now)
            elif err.status in (400, 403, 422):  # e.g. pods refused by admission: say so on the PaxJob
                reason = "FailedCreatePod" if plan.create_pods else "FailedApply"
                self._remember(await self._io(self._refused, job, observed, reason, kube.api_message(err)))
            raise
        _log_plan(namespace, name, plan)  # once applied: a refused creation is no "GangCreated"
        self._remember(applied.job)
        self.cache.expect(uid, applied.created, applied.deleted)
        self._track(key, plan.status or status, pods)
        if plan.delete_job:
            self.forget(key, uid)
            return None
        return plan.requeue_after

    def forget(self, key: JobKey, uid: str | None) -> None:
        """The PaxJob is gone: drop what is remembered about it."""
        self.cache.forget(key, uid)
        self.scraper.untrack(key, keep_latest=False)
        if uid is not None:
            self.events.forget(uid)
            self._unparsable.discard(uid)

    def _remember(self, written: dict[str, Any] | None) -> None:
        if written is not None:
            self.cache.remember(written)

    def _track(self, key: JobKey, status: PaxJobStatus, pods: list[PodView]) -> None:
        """Scrape host 0 of the current gang while it runs its trainer."""
        host0 = next((p for p in pods if p.host == 0 and p.attempt == status.restart_attempt), None)
        if status.phase is Phase.RUNNING and host0 is not None and host0.trainer_running and host0.pod_ip:
            self.scraper.track(key, status.restart_attempt, host0.pod_ip)
        else:
            self.scraper.untrack(key)

    def _apply(
        self, job: dict[str, Any], plan: Plan, owned: list[dict[str, Any]], now: datetime
    ) -> kube.Applied:
        applied = kube.apply_plan(self.clients, job, plan, owned)
        for event in plan.events:
            self.events.post(job, event, now)
        return applied

    def _refused(
        self, job: dict[str, Any], observed: Observed, reason: str, message: str
    ) -> dict[str, Any] | None:
        """The apiserver refused part of the plan: a Warning (aggregated when repeated) and, for pods,
        Created=False on the PaxJob. Returns the PaxJob as written, if it was."""
        self.events.post(job, Event("Warning", reason, message), observed.now)
        if reason == "FailedApply":
            return None
        refused = creation_refused(observed, message, reason)
        if refused == observed.status:
            return None
        try:
            return kube.write_status(self.clients, job, Plan(status=refused))
        except kube.Conflict:
            return None

    async def _io[T](self, function: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(function, *args))


def _log_plan(namespace: str, name: str, plan: Plan) -> None:
    for event in plan.events:
        log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
    if plan.delete_pods and not plan.events:
        log.info("%s/%s: deleting %d pods of a previous gang", namespace, name, len(plan.delete_pods))
    if plan.delete_grace:
        grace = min(plan.delete_grace.values())
        log.info(
            "%s/%s: a failed attempt's gang cannot save: its pods get %d s to stop", namespace, name, grace
        )
    if plan.force_delete_pods:
        stuck = ", ".join(pod for pod, _ in plan.force_delete_pods)
        log.warning("%s/%s: force-deleting unscheduled pods stuck in deletion: %s", namespace, name, stuck)
