"""One reconcile pass: observe (PaxJob + owned pods) → decide (pure) → apply."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from pax_operator.core.decide import Event, Observed, Plan, Scrape, creation_refused, decide
from pax_operator.core.observe import pod_view
from pax_operator.core.render import JobRef, render_network_policy
from pax_operator.kits import kube
from pax_operator.kits.scrape import scrape_host
from pax_operator.spec import PaxJobSpec, PaxJobStatus, Phase

log = logging.getLogger(__name__)
SCRAPE_INTERVAL_SECONDS = 10.0
CONFLICT_RETRY_SECONDS = 0.2
IDLE_RESYNC_SECONDS = 60.0  # look again now and then even when nothing is due (missed watch events)


@dataclass
class Reconciler:
    """Holds the API clients and the last scrape time per job (memory only: losing it costs one scrape)."""

    clients: kube.Clients
    scrape_interval: float = SCRAPE_INTERVAL_SECONDS
    operator_namespace: str = field(default_factory=kube.operator_namespace)
    _last_scrape: dict[str, float] = field(default_factory=dict)
    _answered: dict[str, int] = field(default_factory=dict)  # job → attempt whose host 0 answered a scrape

    def reconcile(self, namespace: str, name: str) -> float | None:
        """Bring one PaxJob a step closer to its desired state.

        Returns seconds until it wants another look, or None when the PaxJob is gone (forget it).
        """
        job = kube.get_job(self.clients, namespace, name)
        if job is None or job["metadata"].get("deletionTimestamp"):
            self._forget(f"{namespace}/{name}")
            return None  # gone or going: owner references let the garbage collector remove the pods
        try:
            spec = PaxJobSpec.model_validate(job.get("spec") or {})
        except ValidationError as err:  # the CRD admits nothing like this; an older CRD version might
            log.error("%s/%s: spec does not parse, not reconciling: %s", namespace, name, err)
            return None
        status = PaxJobStatus.model_validate(job.get("status") or {})
        pods = [pod_view(p) for p in kube.list_owned_pods(self.clients, job)]
        ref = JobRef(name=name, namespace=namespace, uid=job["metadata"]["uid"])
        key = f"{namespace}/{name}"
        now = datetime.now(UTC)
        scrape = self._scrape(ref, status, pods)
        observed = Observed(
            job=ref,
            spec=spec,
            status=status,
            pods=pods,
            now=now,
            scrape=scrape,
            metrics_answered=scrape is not None or self._answered.get(key) == status.restart_attempt,
            running_requeue_seconds=self.scrape_interval,
            generation=job["metadata"].get("generation"),
        )
        plan = decide(observed)
        for event in plan.events:
            log.info("%s/%s: %s: %s", namespace, name, event.reason, event.message)
        if plan.delete_pods and not plan.events:
            log.info("%s/%s: deleting %d pods of a previous gang", namespace, name, len(plan.delete_pods))
        if plan.force_delete_pods:
            stuck = ", ".join(pod for pod, _ in plan.force_delete_pods)
            log.warning(
                "%s/%s: force-deleting unscheduled pods stuck in deletion: %s", namespace, name, stuck
            )
        try:
            policy = render_network_policy(ref, spec, self.operator_namespace) if plan.service else None
            kube.apply_plan(self.clients, job, plan, now, policy)
        except kube.Conflict:
            log.debug("%s/%s changed while reconciling; reading it again", namespace, name)
            return CONFLICT_RETRY_SECONDS
        except ApiException as err:
            if err.status in (400, 403, 422):  # e.g. pods refused by admission: say so on the PaxJob
                message = _api_message(err)
                reason = "FailedCreatePod" if plan.create_pods else "FailedApply"
                kube.post_event(self.clients, job, Event("Warning", reason, message), now)
                if plan.create_pods:
                    refused = Plan(status=creation_refused(observed, message))
                    if refused.status != status:
                        kube.write_status(self.clients, job, refused)
            raise
        if plan.delete_job:
            self._forget(f"{namespace}/{name}")
            return None
        return IDLE_RESYNC_SECONDS if plan.requeue_after is None else plan.requeue_after

    def _scrape(self, ref: JobRef, status: PaxJobStatus, pods: list) -> Scrape | None:
        """Scrape host 0 at most every scrape_interval seconds while Running."""
        key = f"{ref.namespace}/{ref.name}"
        if status.phase is not Phase.RUNNING:
            return None
        host0 = next((p for p in pods if p.host == 0 and p.attempt == status.restart_attempt), None)
        if host0 is None or not host0.pod_ip or not host0.trainer_running:
            return None
        if time.monotonic() - self._last_scrape.get(key, 0.0) < self.scrape_interval:
            return None
        self._last_scrape[key] = time.monotonic()
        scrape = scrape_host(host0.pod_ip)
        if scrape is not None:
            self._answered[key] = status.restart_attempt
        return scrape

    def _forget(self, key: str) -> None:
        self._last_scrape.pop(key, None)
        self._answered.pop(key, None)


def _api_message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.reason)
