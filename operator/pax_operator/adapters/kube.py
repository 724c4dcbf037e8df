"""Kubernetes API I/O: apply a Plan idempotently, and the few reads that recover a stale cache.

Every request goes through `Clients.request`: a client-side rate limit (QPS/burst), a per-request timeout,
and raw JSON both ways (bodies are dicts; no client models): the status write's answer becomes the cache's
newest copy of the PaxJob.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pax_operator.adapters.incluster import RetryUnlessTimedOut, default_namespace, load_config
from pax_operator.core.decide import Plan
from pax_operator.core.observe import controller_uid
from pax_operator.core.render import DEFAULT_OPERATOR_NAMESPACE, LABEL_JOB_NAME
from pax_operator.settings import KUBE_BURST, KUBE_QPS, WORKERS
from pax_operator.spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)
TIMEOUT = 30  # seconds per API request: a stuck call must not hold a worker forever
PARALLEL_REQUESTS = 16  # pod creations / deletions in flight per reconcile


class Conflict(Exception):
    """Someone else changed the PaxJob between our read and our write: read again."""


class StatusRefused(ApiException):
    """The apiserver refused the status write itself (not a conflict): writing it again in the same pass
    would be refused too."""


NOT_LEADING_RETRY_SECONDS = 1.0  # a reconciler fenced (NotLeading) looks again: renewed, or the process stops


class NotLeading(ApiException):
    """A write refused on this side: leader election could not confirm, within its renew deadline, that
    this replica still holds the Lease (it was paused, or cut off, and a standby may lead by now). An
    ApiException, so every caller handles it as a failed request."""

    def __init__(self) -> None:
        super().__init__(status=0, reason="not writing: leadership not confirmed within the renew deadline")


class NamesTaken(Exception):
    """Objects of the gang could not be created: their names are held by objects this PaxJob does not
    control (`reason`: PodNameTaken, ServiceNameTaken, NetworkPolicyNameTaken)."""

    def __init__(self, message: str, reason: str = "PodNameTaken") -> None:
        super().__init__(message)
        self.reason = reason


def api_message(err: ApiException) -> str:
    """The apiserver's own words for a refusal (its Status message), else the HTTP reason."""
    try:
        return str(orjson.loads(err.body or "{}").get("message") or err.reason)
    except (orjson.JSONDecodeError, AttributeError):
        return str(err.reason)


class TokenBucket:
    """Blocking client-side rate limit shared by every thread: `qps` sustained, `burst` at once; qps <= 0
    means unlimited."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps, self.burst, self._clock = qps, max(1, burst), clock
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take a token; return how long the caller must wait before using it."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def wait(self) -> None:
        delay = self.reserve()
        if delay > 0:
            time.sleep(delay)


@dataclass(frozen=True)
class Resource:
    """An API resource by its REST path: group ('' for core), version, plural."""

    group: str
    version: str
    plural: str

    def collection(self, namespace: str | None) -> str:
        """The objects in a namespace, or in every namespace (None)."""
        return self.path(namespace) if namespace else f"{self.base}/{self.plural}"

    @property
    def base(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        parts = [self.base, "namespaces", namespace, self.plural, name, subresource]
        return "/".join(part for part in parts if part)


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
EVENTS = Resource("", "v1", "events")
NETWORK_POLICIES = Resource("networking.k8s.io", "v1", "networkpolicies")
PAXJOBS = Resource(GROUP, VERSION, PLURAL)

# (verb, path, body, headers, timeout) → the answer's JSON; ApiTransport, or a fake in the unit tests
Transport = Callable[[str, str, Any, dict[str, str], float], dict[str, Any]]


class ApiTransport:
    """Raw JSON over the kubernetes client's connection pool, auth and TLS settings: our bodies are plain
    dicts already, so the generated API methods (argument validation, model projection of every body) are
    skipped; they cost as much CPU as the HTTP exchange itself."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def __call__(
        self, verb: str, path: str, body: Any, headers: dict[str, str], timeout: float
    ) -> dict[str, Any]:
        response = self._send(verb, path, body, headers, timeout)
        try:
            data = response.read()
        finally:
            response.response.release_conn()  # read to the end: the connection goes back to the pool
        return orjson.loads(data)

    def stream(self, path: str, read_timeout: float) -> Iterator[dict[str, Any]]:
        """GET a watch: its events, one JSON document per line, until the server ends the stream; a silence
        longer than `read_timeout` raises (urllib3's ReadTimeoutError)."""
        response = self._send("GET", path, None, {}, (TIMEOUT, read_timeout))
        pending = b""
        try:
            for chunk in response.response.stream(amt=None, decode_content=False):
                pending += chunk
                if b"\n" in chunk:  # a large object spans many chunks: split once it is whole
                    *lines, pending = pending.split(b"\n")
                    yield from (orjson.loads(line) for line in lines if line.strip())
        finally:
            response.response.close()  # a watch left mid-stream cannot go back to the pool

    def _send(
        self, verb: str, path: str, body: Any, headers: dict[str, str], timeout: float | tuple[float, float]
    ) -> Any:
        """The response, its body unread; a non-2xx answer raises ApiException."""
        headers = {"Accept": "application/json", **self.api.default_headers, **headers}
        self.api.update_params_for_auth(headers, [], ["BearerToken"], path, verb, body)
        url = self.api.configuration.host + path
        response = self.api.call_api(verb, url, headers, body, _request_timeout=timeout)
        if not 200 <= response.status <= 299:
            try:
                data = response.read()
            finally:
                response.response.release_conn()
            text = data.decode(errors="replace")
            raise ApiException.from_response(http_resp=response, body=text, data=None)
        return response


def request_pool(workers: int) -> ThreadPoolExecutor:
    """The shared request pool: every reconcile worker's PARALLEL_REQUESTS (threads start when needed)."""
    return ThreadPoolExecutor(PARALLEL_REQUESTS * workers, thread_name_prefix="pax-api")


@dataclass
class Clients:
    """Every API request of the reconcilers: rate-limited (QPS/burst), with a timeout, as raw JSON."""

    transport: Transport
    limiter: TokenBucket = field(default_factory=lambda: TokenBucket(KUBE_QPS, KUBE_BURST))
    pool: ThreadPoolExecutor = field(default_factory=lambda: request_pool(WORKERS))
    # Fencing: asked right before every write (any verb but GET); False refuses it (NotLeading).
    may_write: Callable[[], bool] = field(default=lambda: True)

    @classmethod
    def connect(cls, qps: float = KUBE_QPS, burst: int = KUBE_BURST, workers: int = WORKERS) -> Clients:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config; a request pool
        for `workers` reconciles at a time."""
        load_config()
        configuration = client.Configuration.get_default_copy()
        # Enough connections for every request in flight (workers × PARALLEL_REQUESTS would be the most):
        # a full pool discards connections and pays a new TLS handshake.
        configuration.connection_pool_maxsize = 4 * PARALLEL_REQUESTS
        # TCP keepalive as client-go asks for it (probed after 30 s idle, dropped after 9 probes 15 s apart):
        # a watch to an apiserver that vanished without a FIN (node lost, a load balancer's idle cut) ends
        # in under 3 minutes instead of at the watch's 330 s read timeout.
        configuration.keep_alive = True
        configuration.retries = RetryUnlessTimedOut(3)
        return cls(
            ApiTransport(client.ApiClient(configuration)),
            limiter=TokenBucket(qps, burst),
            pool=request_pool(workers),
        )

    def request(
        self,
        verb: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        """One API request; the answer as a camelCase dict. A non-2xx answer raises ApiException; a write
        while `may_write` says no raises NotLeading (asked after the rate limit's wait, right before it
        is sent)."""
        self.limiter.wait()
        if verb != "GET" and not self.may_write():
            raise NotLeading()
        if query:
            path = f"{path}?{urlencode(query)}"
        headers = {"Content-Type": content_type} if body is not None else {}
        return self.transport(verb, path, body, headers, TIMEOUT)

    def watch(self, path: str, query: dict[str, str], read_timeout: float) -> Iterator[dict[str, Any]]:
        """A watch's events (rate-limited like any request); needs the real ApiTransport."""
        if not isinstance(self.transport, ApiTransport):
            raise TypeError("watching needs a connection to the apiserver (ApiTransport)")
        self.limiter.wait()
        return self.transport.stream(f"{path}?{urlencode({**query, 'watch': '1'})}", read_timeout)


MAX_RETRY_AFTER_SECONDS = 60.0  # a longer Retry-After is cut to this (the work queue's backoff cap)


def retry_after(err: BaseException) -> float | None:
    """Seconds the apiserver asked the client to wait before trying again: Retry-After on a 429 (API
    Priority and Fairness, or its max-in-flight limit) or a 5xx, at most MAX_RETRY_AFTER_SECONDS; None when
    it did not say (or said it as an HTTP date, which the apiserver never sends)."""
    if not isinstance(err, ApiException) or not (err.status == 429 or (err.status or 0) >= 500):
        return None
    try:
        seconds = float((err.headers or {}).get("Retry-After"))
    except (TypeError, ValueError):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def _ignore(err: ApiException, *codes: int) -> None:
    if err.status not in codes:
        raise err


# -- requests every adapter shares (PaxJob and PaxSweep alike) ---------------------------------------
def read(clients: Clients, path: str) -> dict[str, Any] | None:
    """GET one object; None when it does not exist."""
    try:
        return clients.request("GET", path)
    except ApiException as err:
        _ignore(err, 404)
        return None


def list_controlled(clients: Clients, path: str, *, selector: str, owner_uid: str) -> list[dict[str, Any]]:
    """The objects matching a label selector that this very owner (UID) controls."""
    items = clients.request("GET", path, query={"labelSelector": selector})["items"]
    return [obj for obj in items if controller_uid(obj) == owner_uid]


def create(clients: Clients, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """POST an object; its stored form, or None when the name is taken (409)."""
    try:
        return clients.request("POST", path, body)
    except ApiException as err:
        _ignore(err, 409)
        return None


def patch(clients: Clients, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """JSON merge-patch an object; None when it does not exist."""
    try:
        return clients.request("PATCH", path, body, content_type="application/merge-patch+json")
    except ApiException as err:
        _ignore(err, 404)
        return None


def delete_exactly(
    clients: Clients,
    path: str,
    *,
    uid: str,
    grace_period_seconds: int | None = None,
    propagation: str | None = None,
    resource_version: str | None = None,
) -> None:
    """DELETE an object only if it is still the one we saw (UID precondition); gone already is fine. With
    `resource_version`, only if it has not changed since either: a change raises Conflict (read again)."""
    options: dict[str, Any] = {"preconditions": {"uid": uid}}
    if resource_version is not None:
        options["preconditions"]["resourceVersion"] = resource_version
    if grace_period_seconds is not None:
        options["gracePeriodSeconds"] = grace_period_seconds
    if propagation is not None:
        options["propagationPolicy"] = propagation
    try:
        clients.request("DELETE", path, options)
    except ApiException as err:
        if err.status == 409 and resource_version is not None:
            raise Conflict(f"{path} changed since it was read") from err
        _ignore(err, 404, 409)  # gone already, or a newer object holds the name


def replace_status(
    clients: Clients, resource: Resource, obj: dict[str, Any], status: dict[str, Any]
) -> dict[str, Any]:
    """Replace a custom object's status subresource, fenced by the resourceVersion read (a concurrent
    change raises Conflict); returns the object as stored."""
    namespace, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
    try:
        return clients.request("PUT", resource.path(namespace, name, "status"), {**obj, "status": status})
    except ApiException as err:
        if err.status == 409:
            raise Conflict(f"{namespace}/{name} changed while reconciling") from err
        if err.status in (400, 403, 422):
            refused = StatusRefused(status=err.status, reason=err.reason)
            refused.body, refused.headers = err.body, err.headers
            raise refused from err
        raise


# -- reads: only to recover a stale cache ------------------------------------------------------------
def get_job(clients: Clients, namespace: str, name: str) -> dict[str, Any] | None:
    return read(clients, PAXJOBS.path(namespace, name))


def list_owned_pods(clients: Clients, job: dict[str, Any]) -> list[dict[str, Any]]:
    """Pods labelled with the job's name and controlled by this very PaxJob (uid)."""
    metadata = job["metadata"]
    return list_controlled(
        clients,
        PODS.path(metadata["namespace"]),
        selector=f"{LABEL_JOB_NAME}={metadata['name']}",
        owner_uid=metadata["uid"],
    )


def held_by_another(obj: dict[str, Any] | None, owner_uid: str) -> str | None:
    """Why `obj` (read after a create found its name taken) is not the owner's, or None if it is the
    owner's or gone."""
    if obj is None or controller_uid(obj) == owner_uid:
        return None
    if obj["metadata"].get("deletionTimestamp") is not None:
        return "belongs to another owner (terminating, waiting for it to go)"
    return "belongs to another owner (not controlled by this PaxJob)"


# -- owned objects -----------------------------------------------------------------------------------
def operator_namespace() -> str:
    """The operator's own namespace ($POD_NAMESPACE, else the in-cluster ServiceAccount's, as for the
    leader-election Lease), else pax-system; the trainer pods' NetworkPolicy admits /metrics from it."""
    return default_namespace() or DEFAULT_OPERATOR_NAMESPACE


def ensure_owned(clients: Clients, objects: list[dict[str, Any]], owner_uid: str) -> None:
    """Create the objects a PaxJob owns besides its pods (Service, NetworkPolicy), or bring the existing
    ones up to date (a suspended job's TensorBoard port may have changed). The one place for them: a new
    kind is one more entry in `_OWNED`. NamesTaken when one exists and is not the PaxJob's (a user's
    Service of that name would leave the hosts' DNS names unresolved)."""
    taken: list[tuple[str, str]] = []

    def one(body: dict[str, Any]) -> None:
        kind, metadata = body["kind"], body["metadata"]
        resource = _OWNED[kind]
        if create(clients, resource.path(metadata["namespace"]), body) is not None:
            return
        path = resource.path(metadata["namespace"], metadata["name"])
        stored = read(clients, path)
        why = held_by_another(stored, owner_uid)
        if why is not None:
            taken.append((kind, f"{kind} {metadata['name']} exists and {why}"))
        elif stored is not None and _outdated(stored.get("spec") or {}, body.get("spec") or {}):
            patch(clients, path, {"spec": body["spec"]})  # a merge patch replaces the lists (ports, ingress)

    concurrently(clients, one, objects)
    if taken:
        kinds = [body["kind"] for body in objects]  # the reason names the first taken, in `objects` order
        first = min((kind for kind, _ in taken), key=kinds.index)
        raise NamesTaken("; ".join(sorted(message for _, message in taken)), f"{first}NameTaken")


_OWNED = {"Service": SERVICES, "NetworkPolicy": NETWORK_POLICIES}


def _outdated(stored: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A field we render differs from the stored one (fields the apiserver adds are not ours to compare)."""
    return any(stored.get(key) != value for key, value in wanted.items())


# -- applying a plan ---------------------------------------------------------------------------------
@dataclass
class Applied:
    """What an applied plan changed, for the cache: the PaxJob as written, pods created and deleted."""

    job: dict[str, Any] | None = None  # the status write's response (newest resourceVersion), if written
    created: list[str] = field(default_factory=list)  # UIDs
    deleted: list[str] = field(default_factory=list)  # UIDs


def apply_plan(
    clients: Clients, job: dict[str, Any], plan: Plan, owned: list[dict[str, Any]] | None = None
) -> Applied:
    """Apply in a crash-safe order; every step is idempotent. Events are posted by the caller.

    The status is written before deletions (a restart's cause and counters are recorded before the pods go,
    so a crash in between is not mistaken for pods deleted by someone else) and after creations (the gang
    counts as created only once all its pods exist). Owned objects come before the pods (the
    NetworkPolicy must exist before a pod's ports are open).
    """
    namespace = job["metadata"]["namespace"]
    applied = Applied()
    ensure_owned(
        clients, [body for body in [plan.service, *(owned or [])] if body is not None], job["metadata"]["uid"]
    )
    if not plan.create_pods:
        applied.job = write_status(clients, job, plan, fence=bool(plan.delete_pods or plan.force_delete_pods))

    def delete(grace: int | None) -> Callable[[tuple[str, str]], None]:
        def one(doomed: tuple[str, str]) -> None:
            seconds = plan.delete_grace.get(doomed[1]) if grace is None else grace  # None: the pod's own
            delete_pod(clients, namespace, *doomed, grace_period_seconds=seconds)
            applied.deleted.append(doomed[1])

        return one

    taken: list[str] = []

    def create_pod(pod: dict[str, Any]) -> None:
        created = create(clients, PODS.path(namespace), pod)
        if created is not None:
            applied.created.append(created["metadata"]["uid"])
            return
        # The name is taken: created before an operator restart, or a foreign pod holds it.
        name = pod["metadata"]["name"]
        why = held_by_another(read(clients, PODS.path(namespace, name)), job["metadata"]["uid"])
        if why is not None:
            taken.append(f"pod {name} exists and {why}")

    concurrently(clients, delete(None), plan.delete_pods)
    concurrently(clients, delete(0), plan.force_delete_pods)
    concurrently(clients, create_pod, plan.create_pods)
    if taken:
        raise NamesTaken("; ".join(sorted(taken)))
    if plan.create_pods:
        applied.job = write_status(clients, job, plan)
    if plan.delete_job:  # decided on this very version (a TTL raised since must be read first)
        path, decided_on = PAXJOBS.path(namespace, job["metadata"]["name"]), (applied.job or job)["metadata"]
        delete_exactly(
            clients,
            path,
            uid=decided_on["uid"],
            propagation="Background",
            resource_version=decided_on.get("resourceVersion"),
        )
    return applied


def delete_pod(
    clients: Clients, namespace: str, name: str, uid: str, *, grace_period_seconds: int | None = None
) -> None:
    """Delete one pod if it is still the one we saw (UID precondition); grace 0 forces it."""
    delete_exactly(clients, PODS.path(namespace, name), uid=uid, grace_period_seconds=grace_period_seconds)


def concurrently[T](clients: Clients, action: Callable[[T], None], items: list[T]) -> None:
    """Run `action` on every item on the shared request pool (a 1000-host gang is 1000 requests), at most
    PARALLEL_REQUESTS of them at a time: the pool holds that many for every reconcile worker, so a job whose
    requests hang (a stuck admission webhook) holds its own share only, never the others'. The first 16 are
    all tried; after a failure no further item is started (the next pass tries again): a hanging or
    throttling apiserver costs one round of timeouts, not one per 16 items. The first item's error is
    raised."""
    if len(items) <= 1:
        for item in items:
            action(item)
        return
    pending = iter(enumerate(items))
    lock = threading.Lock()
    errors: dict[int, Exception] = {}

    def drain(first: tuple[int, T]) -> None:
        taken: tuple[int, T] | None = first
        while taken is not None:
            index, item = taken
            try:
                action(item)
            except Exception as err:
                errors[index] = err
            with lock:
                taken = None if errors else next(pending, None)

    # the first round always goes out whole (a Service and its NetworkPolicy: both tried)
    firsts = [next(pending) for _ in range(min(len(items), PARALLEL_REQUESTS))]
    runners = [clients.pool.submit(drain, first) for first in firsts]
    for runner in runners:
        runner.result()
    if errors:
        raise errors[min(errors)]


def write_status(
    clients: Clients, job: dict[str, Any], plan: Plan, *, fence: bool = False
) -> dict[str, Any] | None:
    """Replace the PaxJob's status; returns the PaxJob as stored, or None when nothing was written.

    With `fence`, an unchanged status is written too (a no-op for the apiserver): deletions decided on a
    stale view of the PaxJob are then refused instead of applied.
    """
    if plan.status is None and not fence:
        return None
    status = plan.status.to_api() if plan.status is not None else job.get("status") or {}
    return replace_status(clients, PAXJOBS, job, status)
