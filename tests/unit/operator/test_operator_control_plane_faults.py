"""The operator's answers to a misbehaving control plane, unit tier: Retry-After honoured by the work queue,
one job's hanging requests holding no other job's, a relist after a watch outage forgetting what was deleted
meanwhile (tests/integration/test_control_plane_faults.py runs the same against real faults)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from datetime import UTC, datetime
from typing import Any

import kopf
import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pax_operator import handlers
from pax_operator.adapters import kube
from pax_operator.adapters.cache import Cache
from pax_operator.adapters.events import MAX_PENDING, POSTING_THREADS, EventRecorder
from pax_operator.adapters.informer import Informer
from pax_operator.adapters.kube import (
    MAX_RETRY_AFTER_SECONDS,
    PARALLEL_REQUESTS,
    PAXJOBS,
    Clients,
    concurrently,
    retry_after,
)
from pax_operator.core.decide import Event
from pax_operator.workqueue import RateLimiter, WorkQueue

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal(status: int, retry: str | None) -> ApiException:
    err = ApiException(status=status, reason="refused")
    err.headers = {"Retry-After": retry} if retry is not None else {}
    return err


@pytest.mark.parametrize(
    ("err", "seconds"),
    [
        (refusal(429, "3"), 3.0),
        (refusal(503, "1"), 1.0),
        (refusal(429, None), None),  # no header: the work queue's own backoff
        (refusal(429, "Wed, 21 Oct 2015 07:28:00 GMT"), None),  # a date: the apiserver sends seconds
        (refusal(409, "3"), None),  # only throttling and server errors ask for a wait
        (refusal(429, "86400"), MAX_RETRY_AFTER_SECONDS),  # bounded
        (RuntimeError("no answer"), None),
    ],
)
def test_retry_after_is_the_apiservers_bounded_request(err: BaseException, seconds: float | None) -> None:
    assert retry_after(err) == seconds


def test_a_throttled_key_waits_the_retry_after_not_the_first_backoff() -> None:
    clock = FakeClock()
    outcomes = iter([refusal(429, "5"), RuntimeError("down"), refusal(429, "5")])

    def reconcile(key: str) -> float | None:
        raise next(outcomes)

    async def scenario() -> list[float | None]:
        limiter = RateLimiter(base=0.5, cap=60, qps=1000, burst=1000, clock=clock)
        queue: WorkQueue[str] = WorkQueue(reconcile, limiter=limiter, clock=clock)
        delays = []
        for _ in range(3):
            await queue.process("a")
            delays.append(queue.due_in("a"))
            queue.add("a")  # due now: take it at once
        return delays

    # the per-key backoff still grows underneath (0.5, 1, 2): a Retry-After only ever lengthens the wait
    assert asyncio.run(scenario()) == [5.0, 1.0, 5.0]


def test_a_reconcile_whose_requests_hang_holds_only_its_share_of_the_request_pool() -> None:
    """40 requests of one job hang: 16 are in flight (its share), and another job's requests still run."""
    clients = Clients(transport=lambda *_: {})
    release, lock = threading.Event(), threading.Lock()
    in_flight: list[int] = []
    done: list[str] = []

    def hang(item: int) -> None:
        with lock:
            in_flight.append(item)
        release.wait(10)

    stuck = threading.Thread(target=concurrently, args=(clients, hang, list(range(40))))
    stuck.start()
    try:
        for _ in range(1000):  # up to 10 s for the threads to start on a loaded machine
            if len(in_flight) >= PARALLEL_REQUESTS:
                break
            threading.Event().wait(0.01)
        concurrently(clients, done.append, ["other-0", "other-1"])  # would queue behind the stuck 40
        assert sorted(done) == ["other-0", "other-1"] and len(in_flight) == PARALLEL_REQUESTS
    finally:
        release.set()
        stuck.join(30)
        clients.pool.shutdown()
    assert sorted(in_flight) == list(range(40))


def test_a_backlog_of_events_whose_posts_hang_holds_no_thread_of_the_request_pool() -> None:
    """Events posted while every request hangs: they were posted on the request pool, so a full backlog
    (1,000) held all its threads and a reconcile's pod creations queued behind them until their timeouts.
    The operator's recorder posts on threads of its own."""
    release, lock = threading.Event(), threading.Lock()
    posting: list[str] = []

    def transport(verb: str, path: str, *_: Any) -> dict[str, Any]:
        if path.endswith("/events"):
            with lock:
                posting.append(path)
            release.wait(10)
        return {"metadata": {"name": "e", "resourceVersion": "1"}}

    clients = Clients(transport=transport)
    events = EventRecorder.off_path(clients)
    job = {"metadata": {"name": "lm", "namespace": "ns", "uid": "u"}}
    try:
        for i in range(MAX_PENDING):
            events.post(job, Event("Warning", f"R{i}", "m"), NOW)
        for _ in range(1000):  # up to 10 s for the threads to start on a loaded machine
            if len(posting) >= POSTING_THREADS:
                break
            threading.Event().wait(0.01)
        done: list[str] = []
        runner = threading.Thread(target=concurrently, args=(clients, done.append, ["pod-0", "pod-1"]))
        runner.start()
        runner.join(5)
        assert sorted(done) == ["pod-0", "pod-1"], "a reconcile's requests queued behind hanging Events"
        assert len(posting) == POSTING_THREADS
    finally:
        release.set()
        assert events.executor is not None
        events.executor.shutdown(wait=True)
        clients.pool.shutdown()


def test_after_a_failure_no_further_request_is_started_and_the_first_items_error_is_raised() -> None:
    """1,000 pod creations against an apiserver that times out: one round of 16, not 63 rounds of 30 s."""
    clients = Clients(transport=lambda *_: {})
    tried: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(PARALLEL_REQUESTS, timeout=10)

    def time_out(item: int) -> None:
        with lock:
            tried.append(item)
        barrier.wait()  # the first round's requests are all in flight, then all fail
        raise TimeoutError(item)

    with pytest.raises(TimeoutError, match=r"^0$"):
        concurrently(clients, time_out, list(range(1000)))
    assert sorted(tried) == list(range(PARALLEL_REQUESTS))
    clients.pool.shutdown()


def paxjob(uid: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": "lm", "namespace": "ns", "uid": uid, "resourceVersion": rv}, "spec": {}}


def test_a_relist_forgets_a_paxjob_deleted_and_made_again_under_its_name_while_unwatched() -> None:
    """The watch was down (apiserver restarted, history compacted: 410) while lm was deleted and created
    again: the relist finds lm with another UID. The old one's DELETED was never seen: the relist says it,
    so the reconciler forgets the old UID (its expectations, its Events, host 0's last scrape: a new gang
    at attempt 0 would otherwise be judged by the old gang's progress), before the new one is reconciled."""
    calls: list[tuple[Any, ...]] = []

    class Recorder:
        def add(self, key: Any) -> None:
            calls.append(("add", key))

        def forget(self, key: Any, uid: str | None = None) -> None:
            calls.append(("forget", key, uid))

    def no_api(*_: Any) -> Any:
        raise AssertionError("no I/O in this test")

    memo: Any = None
    jobs: Informer[dict[str, Any]] = Informer(
        no_api,
        no_api,
        collection=PAXJOBS.collection,
        parse=handlers.paxjob_body,
        keys=handlers.paxjob_keys,
        on_event=lambda kind, namespace, body: handlers.paxjob_event(memo, kind, namespace, body),
    )
    memo = kopf.Memo(queue=Recorder(), reconciler=Recorder(), cache=Cache(jobs=jobs, pods={}))
    jobs.apply(None, [("ADDED", ("ns", "lm"), paxjob("old", "5"))], listing=True)
    calls.clear()
    jobs.apply(None, [("ADDED", ("ns", "lm"), paxjob("new", "9"))], listing=True)  # the relist
    assert calls == [("forget", ("ns", "lm"), None), ("forget", ("ns", "lm"), "old"), ("add", ("ns", "lm"))]
    assert memo.cache.job(("ns", "lm"))["metadata"]["uid"] == "new"
    calls.clear()
    jobs.apply(None, [("MODIFIED", ("ns", "lm"), paxjob("new", "10"))])  # the same one changed: no forget
    assert calls == [("add", ("ns", "lm"))]


def test_the_operators_connections_ask_the_kernel_for_tcp_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """A watch to an apiserver that vanished without closing its connections (a lost node, a load balancer
    dropping idle flows) is otherwise noticed only by the watch's 330 s read timeout."""

    monkeypatch.setattr(kube, "load_config", lambda: None)
    monkeypatch.setattr(
        client.Configuration, "get_default_copy", lambda: client.Configuration(host="https://x")
    )
    clients = Clients.connect()
    assert isinstance(clients.transport, kube.ApiTransport)
    options = clients.transport.api.rest_client.pool_manager.connection_pool_kw["socket_options"]
    assert (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1) in options
    clients.pool.shutdown()


@pytest.mark.parametrize("workers", [1, 16, 64])
def test_the_request_pool_holds_every_workers_share(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """The pool was sized for the default 16 workers whatever --workers said: with 64, four jobs whose
    creates hang took every thread and the other 60 workers' requests queued behind their timeouts."""
    monkeypatch.setattr(kube, "load_config", lambda: None)
    monkeypatch.setattr(
        client.Configuration, "get_default_copy", lambda: client.Configuration(host="https://x")
    )
    clients = Clients.connect(workers=workers)
    assert clients.pool._max_workers == PARALLEL_REQUESTS * workers
    clients.pool.shutdown()


def test_the_workers_flag_reaches_the_request_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: dict[str, Any] = {}

    class Connected(Exception):
        pass

    def connect(**kwargs: Any) -> Clients:
        asked.update(kwargs)
        raise Connected  # the rest of start-up needs an apiserver

    monkeypatch.setattr(handlers.Clients, "connect", staticmethod(connect))
    memo = kopf.Memo(workers=64)
    with pytest.raises(Connected):
        asyncio.run(handlers.start(settings=kopf.OperatorSettings(), memo=memo, logger=logging.getLogger()))
    assert asked["workers"] == 64


def test_watches_that_end_at_once_with_nothing_back_off() -> None:
    """A gateway that ends every watch at once: 3 watches in 1.7 s (after 0.5 s, then 1 s), not thousands."""
    watches: list[float] = []

    def ends_at_once(*_: Any) -> Any:
        watches.append(0.0)
        return iter(())

    async def scenario() -> None:
        jobs: Informer[dict[str, Any]] = Informer(
            lambda *_: {"metadata": {"resourceVersion": "1"}, "items": []},
            ends_at_once,
            collection=PAXJOBS.collection,
            parse=handlers.paxjob_body,
            keys=handlers.paxjob_keys,
            on_event=lambda *_: None,
        )
        jobs.start(asyncio.get_running_loop())
        await asyncio.sleep(1.7)
        jobs.stop()

    asyncio.run(scenario())
    assert 1 <= len(watches) <= 4  # load only makes it fewer
