"""Operator telemetry: verbs of API requests, jobs by phase, restart counters, the HTTP endpoints."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from pax_operator import telemetry
from prometheus_client import REGISTRY


@pytest.mark.parametrize(
    ("method", "url", "verb"),
    [
        ("GET", "https://h/api/v1/namespaces/ns/pods?labelSelector=a%3Db", "list"),
        ("GET", "https://h/api/v1/namespaces/ns/pods/p-0", "get"),
        ("GET", "https://h/apis/pax.dev/v1alpha1/namespaces/ns/paxjobs/j", "get"),
        ("GET", "https://h/apis/pax.dev/v1alpha1/paxjobs", "list"),
        ("GET", "https://h/api/v1/namespaces/ns/pods?watch=true", "watch"),
        ("PUT", "https://h/apis/pax.dev/v1alpha1/namespaces/ns/paxjobs/j/status", "update"),
        ("POST", "https://h/api/v1/namespaces/ns/pods", "create"),
        ("DELETE", "https://h/api/v1/namespaces/ns/pods/p", "delete"),
        ("GET", "https://h/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", "get"),
    ],
)
def test_verb_of(method: str, url: str, verb: str) -> None:
    assert telemetry.verb_of(method, url) == verb


def _job(uid: str, phase: str, restarts: int = 0, preemptions: int = 0, failures: int = 0) -> dict:
    status = {"phase": phase, "restarts": restarts, "preemptions": preemptions, "failures": failures}
    status["lastRestart"] = {"outcome": "Preempted", "reason": "Evicted"}
    return {"metadata": {"uid": uid}, "status": status}


def _value(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_job_book_counts_phases_and_only_increases_seen_while_leading() -> None:
    book = telemetry.JobBook()
    book.observe("ns", "a", _job("u1", "Running", restarts=5, preemptions=5))  # baseline, not counted
    book.observe("ns", "b", _job("u2", "Pending"))
    phases = {s.labels["phase"]: s.value for f in book.collect() for s in f.samples}
    assert (phases["Running"], phases["Pending"], phases["Failed"]) == (1, 1, 0)
    before = _value("pax_operator_preemptions_total", {"reason": "Evicted"})
    book.observe("ns", "a", _job("u1", "Running", restarts=6, preemptions=6))  # standby: baseline only
    book.leading = True
    book.observe("ns", "a", _job("u1", "Running", restarts=8, preemptions=8))
    assert _value("pax_operator_preemptions_total", {"reason": "Evicted"}) == before + 2
    book.observe("ns", "a", None)
    assert "a" not in {name for _, name in book.jobs}


def test_endpoints_serve_metrics_health_and_readiness() -> None:
    health = telemetry.Health(readiness=lambda: (False, "standby without lease contact"))
    server = telemetry.serve("127.0.0.1:0", health)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{base}/metrics", timeout=5) as response:
            assert b"pax_operator_reconcile_seconds_bucket" in response.read()
        with opener.open(f"{base}/healthz", timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as err:
            opener.open(f"{base}/readyz", timeout=5)
        assert err.value.code == 503
    finally:
        server.shutdown()


def test_idle_connections_are_dropped_and_bounded() -> None:
    """The port is reachable from pods: an idle client is closed after the timeout, and connections beyond
    the cap are closed at once, so they cannot pile up threads in the operator."""
    server = telemetry.serve("127.0.0.1:0", telemetry.Health(), timeout_s=0.5, max_connections=2)
    address = ("127.0.0.1", server.server_address[1])
    idle = [socket.create_connection(address, timeout=5) for _ in range(3)]
    try:
        assert idle[2].recv(1) == b""  # over the cap: closed unanswered, at once
        assert idle[0].recv(1) == b"" and idle[1].recv(1) == b""  # idle: closed by the timeout (not 5 s)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(f"http://127.0.0.1:{address[1]}/healthz", timeout=5) as response:
            assert response.status == 200  # the slots came back
    finally:
        for sock in idle:
            sock.close()
        server.shutdown()


def _finished(uid: str, phase: str, reason: str) -> dict:
    body = _job(uid, phase)
    body["status"]["conditions"] = [
        {"type": "Created", "status": "True", "reason": "GangCreated"},
        {"type": phase, "status": "True", "reason": reason},
    ]
    return body


def test_jobs_finished_are_counted_once_by_phase_and_terminal_reason() -> None:
    book = telemetry.JobBook(leading=True)
    labels = {"phase": "Failed", "reason": "DeadlineExceeded"}
    before = _value("pax_operator_jobs_finished_total", labels)
    book.observe("ns", "a", _job("u1", "Running"))
    book.observe("ns", "a", _finished("u1", "Failed", "DeadlineExceeded"))
    book.observe("ns", "a", _finished("u1", "Failed", "DeadlineExceeded"))  # seen again: not a new end
    book.observe("ns", "b", _finished("u2", "Failed", "DeadlineExceeded"))  # first sight: a baseline
    assert _value("pax_operator_jobs_finished_total", labels) == before + 1
    done = {"phase": "Succeeded", "reason": "Completed"}
    before_done = _value("pax_operator_jobs_finished_total", done)
    book.observe("ns", "c", _job("u3", "Running"))
    book.observe("ns", "c", _finished("u3", "Succeeded", "Completed"))
    assert _value("pax_operator_jobs_finished_total", done) == before_done + 1


def test_reason_labels_stay_few_whatever_pods_report() -> None:
    """A pod's status.reason is anyone's with pods/status rights: 1,000 jobs restarting for 1,000 made-up
    reasons add at most MAX_REASON_LABELS label values, the rest count as Other."""
    book = telemetry.JobBook(leading=True)
    others = _value("pax_operator_failures_total", {"reason": telemetry.OTHER_REASON})
    for index in range(1000):
        body = _job(f"u{index}", "Running")
        book.observe("ns", f"j{index}", body)
        body = _job(f"u{index}", "Restarting", restarts=1, failures=1)
        body["status"]["lastRestart"] = {"outcome": "Failed", "reason": f"Reason{index}"}
        book.observe("ns", f"j{index}", body)
    assert len(book.reasons) == telemetry.MAX_REASON_LABELS
    assert book.reason_label("Reason0") == "Reason0"
    assert book.reason_label("not an identifier: a message") == telemetry.OTHER_REASON
    assert book.reason_label("X" * 65) == telemetry.OTHER_REASON
    assert _value("pax_operator_failures_total", {"reason": telemetry.OTHER_REASON}) == others + 1000 - (
        telemetry.MAX_REASON_LABELS
    )


def test_jobs_whose_pods_cannot_start_are_counted_by_reason() -> None:
    """A job stuck on ImagePullBackOff is Pending like a healthy new one; this gauge tells them apart."""
    book = telemetry.JobBook()
    stuck = _job("u1", "Pending")
    stuck["status"]["conditions"] = [
        {"type": "StartupBlocked", "status": "True", "reason": "ImagePullBackOff"}
    ]
    cleared = _job("u2", "Running")
    cleared["status"]["conditions"] = [{"type": "StartupBlocked", "status": "False", "reason": "Running"}]
    book.observe("ns", "a", stuck)
    book.observe("ns", "b", cleared)
    book.observe("ns", "c", _job("u3", "Pending"))
    families = {family.name: family for family in book.collect()}
    samples = families["pax_operator_jobs_startup_blocked"].samples
    assert [(sample.labels, sample.value) for sample in samples] == [({"reason": "ImagePullBackOff"}, 1)]
