"""Operator metrics (Prometheus) and its /metrics, /healthz and /readyz endpoints.

Hooked in by small calls: `observe_job` from the PaxJob watch, `timed` around the reconcile function,
`watch_queue` on the work queue, `instrument_kubernetes_client` once at start-up (every request the
kubernetes client makes: reconcilers and leader election; kopf's own watch requests are not counted).

Readiness: a replica is ready when it leads (its work queue runs), or when it is a standby that has read the
Lease within one lease duration (it could take over). No Service sends traffic to the operator, so
readiness only paces rollouts and shows which replicas are fit to lead; liveness is the event loop
answering within a few seconds.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import urlsplit

from pax_contract.serving import BoundedThreadingMixIn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
LOOP_PROBE_TIMEOUT_S = 5.0

RECONCILE_SECONDS = Histogram(
    "pax_operator_reconcile_seconds",
    "Wall time of one reconcile pass",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
RECONCILE_ERRORS = Counter("pax_operator_reconcile_errors_total", "Reconcile passes that raised")
QUEUE_DEPTH = Gauge("pax_operator_queue_depth", "Keys waiting for a reconcile worker")
API_REQUESTS = Counter(
    "pax_operator_apiserver_requests_total",
    "Requests to the apiserver by verb and status code",
    ["verb", "code"],
)
RESTARTS = Counter(
    "pax_operator_gang_restarts_total",
    "Gang restarts by the cause's outcome and reason",
    ["outcome", "reason"],
)
PREEMPTIONS = Counter(
    "pax_operator_preemptions_total", "Preemptions counted on PaxJobs, by reason", ["reason"]
)
FAILURES = Counter("pax_operator_failures_total", "Failures counted on PaxJobs, by reason", ["reason"])
FINISHED = Counter(
    "pax_operator_jobs_finished_total",
    "PaxJobs that entered Succeeded or Failed, by phase and the terminal condition's reason",
    ["phase", "reason"],
)
TERMINAL_PHASES = ("Succeeded", "Failed")
# Reasons are the operator's and the cluster's words (ConfigError, Evicted, ImagePullBackOff, ...), but a
# pod's status.reason is anyone's with pods/status rights: label values stay few whatever is written.
MAX_REASON_LABELS = 64
REASON_LABEL_MAX_CHARS = 64
OTHER_REASON = "Other"
LEADER = Gauge("pax_operator_leader", "1 while this replica holds the leader Lease (or runs alone)")
INSTALL_BLOCKED = Gauge(
    "pax_operator_install_blocked",
    "1 while the install guard (--admission-policy) refuses to reconcile, by reason",
    ["reason"],
)


@dataclass
class _Job:
    uid: str
    phase: str
    blocked: str | None  # the reason of a True StartupBlocked condition (a pod that cannot start)
    restarts: int
    preemptions: int
    failures: int


@dataclass(eq=False)  # registries key collectors by identity
class JobBook(Collector):
    """Last seen phase and counters per PaxJob: the jobs-by-phase gauge and counter deltas.

    Counters move only by increases seen while this replica leads (a standby or a fresh start takes
    what it sees as its baseline), so a replica never counts what happened before it was in charge.
    """

    jobs: dict[tuple[str, str], _Job] = field(default_factory=dict)
    leading: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    reasons: set[str] = field(default_factory=set)  # reason label values handed out so far

    def reason_label(self, reason: object) -> str:
        """`reason` as a label value: the first MAX_REASON_LABELS distinct short identifiers, else Other."""
        text = str(reason or "Unknown")
        with self.lock:
            if text in self.reasons:
                return text
            if (
                len(text) > REASON_LABEL_MAX_CHARS
                or not text.isidentifier()
                or len(self.reasons) >= MAX_REASON_LABELS
            ):
                return OTHER_REASON
            self.reasons.add(text)
            return text

    def observe(self, namespace: str, name: str, body: dict[str, Any] | None) -> None:
        key = (namespace, name)
        with self.lock:
            if body is None:
                self.jobs.pop(key, None)
                return
            status = body.get("status") or {}
            seen = _Job(
                uid=str((body.get("metadata") or {}).get("uid", "")),
                phase=str(status.get("phase") or "Pending"),
                blocked=_true_condition_reason(status, "StartupBlocked"),
                restarts=int(status.get("restarts") or 0),
                preemptions=int(status.get("preemptions") or 0),
                failures=int(status.get("failures") or 0),
            )
            before = self.jobs.get(key)
            self.jobs[key] = seen
        if before is None or before.uid != seen.uid or not self.leading:
            return
        if seen.phase in TERMINAL_PHASES and before.phase not in TERMINAL_PHASES:
            terminal = _condition(status, seen.phase) or {}
            FINISHED.labels(seen.phase, self.reason_label(terminal.get("reason"))).inc()
        grew = (
            seen.restarts > before.restarts,
            seen.preemptions > before.preemptions,
            seen.failures > before.failures,
        )
        if not any(grew):
            return
        cause = status.get("lastRestart") or {}
        outcome, reason = str(cause.get("outcome") or "Unknown"), self.reason_label(cause.get("reason"))
        if seen.restarts > before.restarts:
            RESTARTS.labels(outcome, reason).inc(seen.restarts - before.restarts)
        if seen.preemptions > before.preemptions:
            PREEMPTIONS.labels(reason).inc(seen.preemptions - before.preemptions)
        if seen.failures > before.failures:
            FAILURES.labels(reason).inc(seen.failures - before.failures)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("pax_operator_jobs", "PaxJobs by phase (as last seen)", labels=["phase"])
        with self.lock:
            counts: dict[str, int] = {}
            for job in self.jobs.values():
                counts[job.phase] = counts.get(job.phase, 0) + 1
        for phase in ("Pending", "Running", "Restarting", "Suspended", "Succeeded", "Failed"):
            counts.setdefault(phase, 0)
        for phase, count in sorted(counts.items()):
            family.add_metric([phase], count)
        yield family
        blocked = GaugeMetricFamily(
            "pax_operator_jobs_startup_blocked",
            "PaxJobs with a pod that cannot start by itself (StartupBlocked), by reason",
            labels=["reason"],
        )
        with self.lock:
            reasons = [job.blocked for job in self.jobs.values() if job.blocked is not None]
        by_reason: dict[str, int] = {}
        for reason in reasons:
            label = self.reason_label(reason)
            by_reason[label] = by_reason.get(label, 0) + 1
        for reason, count in sorted(by_reason.items()):
            blocked.add_metric([reason], count)
        yield blocked


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    conditions = status.get("conditions") or []
    return next((c for c in conditions if isinstance(c, dict) and c.get("type") == kind), None)


def _true_condition_reason(status: dict[str, Any], kind: str) -> str | None:
    """The reason of condition `kind` when it is True ("Unknown" without one), else None."""
    cond = _condition(status, kind)
    return str(cond.get("reason") or "Unknown") if cond is not None and cond.get("status") == "True" else None


BOOK = JobBook()
REGISTRY.register(BOOK)


def observe_job(namespace: str, name: str, body: dict[str, Any] | None) -> None:
    """Hook for the PaxJob watch: `body` None when the PaxJob was deleted."""
    BOOK.observe(namespace, name, body)


def set_leading(leading: bool) -> None:
    BOOK.leading = leading
    LEADER.set(1 if leading else 0)


def set_install_blocked(reasons: dict[str, bool]) -> None:
    """The install guard's last look: for each reason, whether it now blocks."""
    for reason, blocked in reasons.items():
        INSTALL_BLOCKED.labels(reason).set(1 if blocked else 0)


def timed[F: Callable[..., Any]](reconcile: F) -> F:
    """Wrap a reconcile function (plain or async): latency histogram and error counter."""
    if inspect.iscoroutinefunction(reconcile):

        @functools.wraps(reconcile)
        async def timed_async(*args: Any, **kwargs: Any) -> Any:
            with RECONCILE_ERRORS.count_exceptions(), RECONCILE_SECONDS.time():
                return await reconcile(*args, **kwargs)

        return timed_async  # type: ignore[return-value]

    @functools.wraps(reconcile)
    def timed_sync(*args: Any, **kwargs: Any) -> Any:
        with RECONCILE_ERRORS.count_exceptions(), RECONCILE_SECONDS.time():
            return reconcile(*args, **kwargs)

    return timed_sync  # type: ignore[return-value]


def watch_queue(queue: object) -> None:
    """Queue depth is read from the queue at scrape time (`depth()`, else the number of queued keys)."""
    depth = getattr(queue, "depth", None)
    if callable(depth):
        QUEUE_DEPTH.set_function(lambda: float(depth()))
    else:
        QUEUE_DEPTH.set_function(lambda: float(len(getattr(queue, "_queued", ()))))


def attach(queue: object) -> None:
    """Startup hook (in the event loop): liveness probes this loop; the depth gauge reads `queue`."""
    HEALTH.loop = asyncio.get_running_loop()
    watch_queue(queue)


def verb_of(method: str, url: str) -> str:
    """The Kubernetes verb of a request: GET on a collection is list (watch with ?watch=), else get."""
    method = method.upper()
    parts = urlsplit(url)
    if method != "GET":
        return {
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete",
        }.get(method, method.lower())
    if "watch=true" in parts.query.lower() or "watch=1" in parts.query:
        return "watch"
    segments = [s for s in parts.path.split("/") if s]
    # /api/v1/... or /apis/<group>/<version>/...; then [namespaces/<ns>/]<resource>[/<name>[/<sub>]]
    rest = segments[2:] if segments[:1] == ["api"] else segments[3:]
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) > 2:
        rest = rest[2:]
    return "list" if len(rest) == 1 else "get"


def instrument_kubernetes_client() -> None:
    """Count every request the kubernetes client makes (idempotent)."""
    from kubernetes.client import rest

    original = rest.RESTClientObject.request
    if getattr(original, "_pax_counted", False):
        return

    @functools.wraps(original)
    def request(self: rest.RESTClientObject, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        code = "error"
        try:
            response = original(self, method, url, *args, **kwargs)
            code = str(getattr(response, "status", "") or "")
            return response
        except rest.ApiException as err:
            code = str(err.status)
            raise
        finally:
            API_REQUESTS.labels(verb_of(method, url), code).inc()

    request._pax_counted = True  # type: ignore[attr-defined]
    rest.RESTClientObject.request = request  # type: ignore[method-assign]


@dataclass
class Health:
    """What the endpoints report: the event loop (liveness) and a readiness callable."""

    loop: asyncio.AbstractEventLoop | None = None
    readiness: Callable[[], tuple[bool, str]] = lambda: (False, "starting")

    def alive(self) -> tuple[bool, str]:
        if self.loop is None:
            return True, "starting"
        try:
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0), self.loop).result(LOOP_PROBE_TIMEOUT_S)
        except Exception as err:  # a stuck or closed loop
            return False, f"event loop not answering: {err!r}"
        return True, "ok"


HEALTH = Health()


REQUEST_TIMEOUT_S = 10.0  # an idle or trickling client is dropped after this (probes answer in ms)
MAX_CONNECTIONS = 32  # more at once are closed unanswered: each holds a thread


class _TelemetryServer(BoundedThreadingMixIn, HTTPServer):
    """The port is reachable from pods: at most `max_connections` threads serve it."""


def _handler(health: Health, timeout_s: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = timeout_s

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/healthz", "/readyz"):
                ok, why = health.alive() if path == "/healthz" else health.readiness()
                self._send(200 if ok else 503, f"{why}\n".encode(), "text/plain; charset=utf-8")
            else:
                self._send(404, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no access log
            return

    return Handler


def serve(
    address: str,
    health: Health = HEALTH,
    *,
    timeout_s: float = REQUEST_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
) -> HTTPServer:
    """Serve /metrics, /healthz, /readyz on `host:port` from a daemon thread."""
    host, _, port = address.rpartition(":")
    server = _TelemetryServer(
        (host or "0.0.0.0", int(port)), _handler(health, timeout_s), max_connections=max_connections
    )
    threading.Thread(target=server.serve_forever, name="pax-telemetry", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics", *server.server_address[:2])
    return server
