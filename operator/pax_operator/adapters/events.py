"""core/v1 Events on PaxJobs, aggregated: an event identical to one already posted (same object, type,
reason and message) increments that Event's `count` and `lastTimestamp` instead of adding another,
as the kubelet's and client-go's recorders do (`kubectl describe` shows "x5 over 2m"). Past
`MAX_SIMILAR` distinct messages of one reason on one object within `SIMILAR_WINDOW` (a restart loop's
events differ only by their counters), they are one Event whose message is the latest, prefixed
"(combined from similar events): " (client-go's EventAggregator): a job restarting for ever adds a few
Events, not three per restart."""

from __future__ import annotations

import logging
import socket
import threading
from collections import OrderedDict
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from pax_operator.adapters import kube
from pax_operator.adapters.kube import Clients
from pax_operator.core.decide import Event, format_time
from pax_operator.spec import GROUP, KIND, VERSION

log = logging.getLogger(__name__)
REPORTING_COMPONENT = "pax.dev/operator"
MAX_EVENT_MESSAGE = 1024
MAX_REMEMBERED = 4096  # distinct events remembered for aggregation (least recently posted forgotten)
MAX_PENDING = 1000  # events waiting to be posted (client-go's broadcaster queue holds as many)
POSTING_THREADS = 4  # the off-path recorder's own threads (never the request pool's)
MAX_SIMILAR = 10  # distinct messages of one reason on one object before they are combined (client-go's)
SIMILAR_WINDOW = timedelta(minutes=10)  # counted over this long since the first of them
COMBINED_PREFIX = "(combined from similar events): "


def event_body(
    obj: dict[str, Any], kind: str, type_: str, reason: str, message: str, now: datetime, instance: str
) -> dict[str, Any]:
    """A new core/v1 Event (count 1) on the pax.dev object `obj` of `kind`, reported by `instance`."""
    metadata = obj["metadata"]
    timestamp = format_time(now)
    return {
        "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
        "involvedObject": {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "firstTimestamp": timestamp,
        "lastTimestamp": timestamp,
        "count": 1,
        "source": {"component": "pax-operator"},
        "reportingComponent": REPORTING_COMPONENT,
        "reportingInstance": instance,
    }


def warn_unposted(reason: str, obj: dict[str, Any], err: ApiException) -> None:
    """Log that the Event `reason` on `obj` could not be posted (events are best effort)."""
    metadata = obj["metadata"]
    log.warning(
        "could not post event %s on %s/%s: %s", reason, metadata["namespace"], metadata["name"], err.reason
    )


@dataclass
class _Posted:
    name: str
    count: int
    first: str


@dataclass
class _Similar:
    since: datetime
    messages: set[str]


class EventRecorder:
    """Posts Events; thread-safe. Posting never raises: failing to post only logs."""

    def __init__(
        self,
        clients: Clients,
        remembered: int = MAX_REMEMBERED,
        executor: Executor | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.clients = clients
        self.remembered = remembered
        self.executor, self.max_pending = executor, max_pending
        self._pending = 0
        self._posted: OrderedDict[tuple[str, str, str, str | None], _Posted] = OrderedDict()
        self._similar: OrderedDict[tuple[str, str, str], _Similar] = OrderedDict()
        self._lock = threading.Lock()
        self._instance = socket.gethostname()[:128]

    @classmethod
    def off_path(cls, clients: Clients) -> EventRecorder:
        """A recorder posting on POSTING_THREADS threads of its own: the reconcile does not wait for it, and
        a backlog of Events while requests hang holds none of the request pool's threads, which the
        reconcilers' pod creations and deletions need."""
        return cls(clients, executor=ThreadPoolExecutor(POSTING_THREADS, thread_name_prefix="pax-events"))

    def post(self, job: dict[str, Any], event: Event, now: datetime) -> None:
        """Post on the executor when there is one (the reconcile does not wait for it), else now. As
        client-go's broadcaster does, a full backlog drops the event (logged) instead of growing."""
        if self.executor is None:
            self._post(job, event, now)
            return
        with self._lock:
            if self._pending >= self.max_pending:
                log.warning("event backlog full (%d): dropped %s", self.max_pending, event.reason)
                return
            self._pending += 1
        self.executor.submit(self._post_pending, job, event, now)

    def _post_pending(self, job: dict[str, Any], event: Event, now: datetime) -> None:
        try:
            self._post(job, event, now)
        finally:
            with self._lock:
                self._pending -= 1

    def _post(self, job: dict[str, Any], event: Event, now: datetime) -> None:
        metadata = job["metadata"]
        message = event.message[:MAX_EVENT_MESSAGE]
        key: tuple[str, str, str, str | None] = (metadata["uid"], event.type, event.reason, message)
        with self._lock:
            if self._combine(key[:3], message, now):  # one Event for all of them: keyed without a message
                key, message = (*key[:3], None), (COMBINED_PREFIX + message)[:MAX_EVENT_MESSAGE]
            seen = self._posted.get(key)
            if seen is not None:
                self._posted.move_to_end(key)
        combined = key[3] is None
        try:
            if seen is not None and self._bump(
                metadata["namespace"], seen, now, message if combined else None
            ):
                return
            posted = self._create(job, event, message, now)
        except ApiException as err:
            warn_unposted(event.reason, job, err)
            return
        with self._lock:
            self._posted[key] = posted
            while len(self._posted) > self.remembered:
                self._posted.popitem(last=False)

    def _combine(self, similar: tuple[str, str, str], message: str, now: datetime) -> bool:
        """Count `message` among its similar events (same object, type and reason); True once there are
        more than MAX_SIMILAR distinct ones in the window. Call with the lock held."""
        seen = self._similar.get(similar)
        if seen is None or now - seen.since > SIMILAR_WINDOW:
            seen = self._similar[similar] = _Similar(now, set())
        self._similar.move_to_end(similar)
        while len(self._similar) > self.remembered:
            self._similar.popitem(last=False)
        if len(seen.messages) < MAX_SIMILAR or message in seen.messages:
            seen.messages.add(message)
            return False
        return True

    def forget(self, uid: str) -> None:
        """Drop what was remembered for a deleted PaxJob."""
        with self._lock:
            for key in [key for key in self._posted if key[0] == uid]:
                del self._posted[key]
            for similar in [similar for similar in self._similar if similar[0] == uid]:
                del self._similar[similar]

    def _bump(self, namespace: str, seen: _Posted, now: datetime, message: str | None = None) -> bool:
        """Count one more occurrence on the Event already posted (a combined one takes the latest
        `message`); False when it is gone (expired)."""
        count = seen.count + 1
        body: dict[str, Any] = {"count": count, "lastTimestamp": format_time(now)}
        if message is not None:
            body["message"] = message
        if kube.patch(self.clients, kube.EVENTS.path(namespace, seen.name), body) is None:
            return False
        seen.count = count
        return True

    def _create(self, job: dict[str, Any], event: Event, message: str, now: datetime) -> _Posted:
        metadata = job["metadata"]
        body = event_body(job, KIND, event.type, event.reason, message, now, self._instance)
        name = self.clients.request("POST", kube.EVENTS.path(metadata["namespace"]), body)["metadata"]["name"]
        return _Posted(name=name, count=1, first=body["firstTimestamp"])
