"""Lifecycle timers and crash windows against a real apiserver: activeDeadlineSeconds bounds a job whose pods
are refused for ever, and a resume cut between its pod creations and its status write keeps the gang it
made. The operator runs as a subprocess under deploy/'s RBAC; no kubelet runs in this tier."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from kubernetes import client
from pax_operator.core.render import JobRef, render_gang
from pax_operator.spec import PaxJobSpec
from paxjob_harness import OperatorProcess, Pax, cpu_job, wait_for

pytestmark = pytest.mark.integration


def _condition(status: dict, kind: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == kind), {})


def _no_pods_allowed(core: client.CoreV1Api, namespace: str) -> None:
    """A ResourceQuota of 0 pods: every pod creation is refused 403 (exceeded quota)."""
    hard = {"pods": "0"}
    quota = client.V1ResourceQuota(metadata=client.V1ObjectMeta(name="nopods"), spec={"hard": hard})
    core.create_namespaced_resource_quota(namespace, quota)
    core.patch_namespaced_resource_quota_status(
        "nopods", namespace, {"status": {"hard": hard, "used": {"pods": "0"}}}
    )


def test_active_deadline_bounds_a_job_whose_pods_are_refused_for_ever(operator, pax: Pax, core, namespace):
    """A ResourceQuota of 0 pods refuses every gang pod (403 exceeded quota): the gang is never created.
    The deadline's clock started only at gang creation, so such a job stayed Pending for ever; as for a
    batch/v1 Job it now starts when the job first tries to start."""
    _no_pods_allowed(core, namespace)
    pax.create("starved", cpu_job(2, activeDeadlineSeconds=3))
    status = pax.wait_status(
        "starved", "Created=False", lambda s: _condition(s, "Created").get("reason") == "FailedCreatePod"
    )
    assert "exceeded quota" in _condition(status, "Created")["message"]
    status = pax.wait_status("starved", "Failed", lambda s: s.get("phase") == "Failed", timeout=30)
    assert _condition(status, "Failed")["reason"] == "DeadlineExceeded"
    assert status.get("startTime") and pax.pods("starved") == []
    pax.wait_events("starved", "DeadlineExceeded", timeout=10)


def test_a_resume_cut_between_its_pod_creations_and_its_status_write_keeps_its_gang(
    operator_factory, pax: Pax, core, namespace
):
    """The operator dies right after creating a resumed job's gang (attempt 1), before the status says so:
    the status still reads Suspended at attempt 0. The next operator resumes again from that status and
    arrives at the same attempt, so it keeps the gang it finds (no pod deleted or made twice, no restart
    counted). The state such a crash leaves is built here exactly: the pods the resume renders, created
    while no operator runs."""
    first = operator_factory(namespace)
    pax.create("nap", cpu_job(2))
    pax.wait_pods("nap", 2, 0)
    pax.wait_status("nap", "gang 0 created", lambda s: s.get("gangCreated") is True)
    pax.patch_spec("nap", {"suspend": True})
    pax.wait_status("nap", "Suspended", lambda s: s.get("phase") == "Suspended")
    wait_for("the gang deleted", lambda: pax.pods("nap") == [], timeout=30)
    first.kill()

    pax.patch_spec("nap", {"suspend": False})
    job = pax.get("nap")
    assert job is not None and job["status"]["restartAttempt"] == 0
    ref = JobRef(name="nap", namespace=namespace, uid=job["metadata"]["uid"])
    for pod in render_gang(ref, PaxJobSpec.model_validate(job["spec"]), 1):
        core.create_namespaced_pod(namespace, pod)
    made = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pax.pods("nap")}

    operator_factory(namespace)
    status = pax.wait_status("nap", "gang created", lambda s: s.get("gangCreated") is True)
    pods = pax.pods("nap")
    assert status["restartAttempt"] == 1, status
    assert {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods} == made  # the very same pods
    assert (status.get("restarts", 0), status["phase"]) == (0, "Pending")


def test_a_ttl_extended_while_the_operator_lagged_is_honoured(operator, pax: Pax, core, namespace):
    """A finished job's ttlSecondsAfterFinished raised while the operator's view lags (here: the operator
    paused with SIGSTOP past the old expiry, as a stalled leader is) is honoured: the deletion carries the
    resourceVersion it was decided on (a changed job is read again). Here the watch's event usually reaches
    the cache before the due TTL pass runs, so this passed on the old code too (a UID precondition only);
    the unit test test_a_ttl_deletion_is_fenced_by_the_version_it_was_decided_on pins the precondition."""
    _no_pods_allowed(core, namespace)  # a finished job without pods: no status write fences the deletion
    pax.create("keep", cpu_job(2, activeDeadlineSeconds=1, ttlSecondsAfterFinished=8))
    status = pax.wait_status("keep", "Failed", lambda s: s.get("phase") == "Failed", timeout=60)
    assert operator.proc is not None
    os.kill(operator.proc.pid, signal.SIGSTOP)
    try:
        pax.patch_spec("keep", {"ttlSecondsAfterFinished": 3600})
        wait_for("the old TTL to pass", lambda: pax.get("keep") and _expired(status, 8 + 2), timeout=30)
    finally:
        os.kill(operator.proc.pid, signal.SIGCONT)
    time.sleep(5)  # the operator wakes with the old expiry due and catches up with the watch
    assert pax.get("keep") is not None, "the PaxJob was deleted on a stale TTL"
    pax.patch_spec("keep", {"ttlSecondsAfterFinished": 1})  # the fenced DELETE, on the real apiserver
    wait_for("the PaxJob deleted at its TTL", lambda: pax.get("keep") is None, timeout=30)


def _expired(status: dict, seconds: float) -> bool:
    finished = time.mktime(time.strptime(status["completionTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    return time.time() > finished + seconds


def test_a_hang_timeout_shorter_than_the_scrape_interval_restarts_no_healthy_gang(
    pax_installed, pax: Pax, namespace, tmp_path
):
    """hangTimeoutSeconds may be as short as 10 s; the operator scrapes every --scrape-interval (10 s by
    default; here 12 s). A healthy trainer's step is seen to advance only at scrapes, so the hang clock
    (looked at hangTimeoutSeconds after the last advance seen) ran out before the next scrape could show
    progress: a Hang restart of a gang that was training. A hang now needs a scrape taken at least
    hangTimeoutSeconds after the last progress that still shows none."""
    from test_paxjob_progress import FakeTrainerMetrics

    metrics = FakeTrainerMetrics()
    ticking = threading.Event()

    def train() -> None:  # one step a second, as long as the test runs
        while not ticking.wait(1.0):
            metrics.step += 1

    threading.Thread(target=train, daemon=True).start()
    operator = OperatorProcess(
        pax_installed, namespace, tmp_path / "operator.log", extra_args=["--scrape-interval=12"]
    ).start()
    try:
        pax.create("steady", cpu_job(2, hangTimeoutSeconds=10))
        pax.wait_pods("steady", 2, 0)
        pax.kubelet("steady-0", "Running", ip=metrics.ip)
        pax.kubelet("steady-1", "Running")
        pax.wait_status("steady", "a step", lambda s: (s.get("progress") or {}).get("step"), timeout=40)
        time.sleep(30)  # two and a half scrape intervals, three hang timeouts
        status = pax.status("steady")
        assert status.get("failures", 0) == 0 and status["phase"] == "Running", status.get("lastRestart")

        ticking.set()  # a real hang is still found: a scrape 10 s after the last step shows no progress
        status = pax.wait_status("steady", "a Hang", lambda s: s.get("failures") == 1, timeout=60)
        assert status["lastRestart"]["reason"] == "Hang"
    finally:
        ticking.set()
        operator.kill()
        metrics.server.shutdown()
        metrics.server.server_close()
