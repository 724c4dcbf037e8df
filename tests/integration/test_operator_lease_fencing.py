"""Fencing: a leader paused (SIGSTOP) past its lease wakes to a standby that took over meanwhile; whatever
its queue had due must not reach the apiserver before it notices and exits."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from kubernetes import client
from paxjob_harness import Pax, cpu_job, wait_for
from test_leader_election import LEASE_DURATION_S, SLACK_S, START_S, Replica, coordination  # noqa: F401

pytestmark = pytest.mark.integration


def test_a_leader_paused_past_its_lease_writes_nothing_when_it_wakes(
    pax_installed: Path,
    namespace: str,
    pax: Pax,
    coordination: client.CoordinationV1Api,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The paused leader's queue holds a gang restart whose backoff ends while it sleeps; the new leader
    creates that gang. On waking, the old leader's due pass ran on its stale view (status Restarting, no
    pods) and sent its creations and status write before its elector saw the other holder; now every
    write is refused unless the Lease was renewed within the renew deadline (monotonic clock)."""
    first = Replica(pax_installed, namespace, tmp_path / "first.log")
    second = Replica(pax_installed, namespace, tmp_path / "second.log")
    try:
        first.start(timeout_s=START_S)
        wait_for("the first replica to lead", lambda: first.role() == "leading", timeout=START_S)
        second.start(timeout_s=START_S)
        wait_for("the second replica to stand by", lambda: second.role() == "standby", timeout=START_S)
        backoff = LEASE_DURATION_S + 4
        pax.create("nap", cpu_job(2, restartPolicy={"backoffSeconds": backoff}))
        pax.wait_pods("nap", 2, 0, timeout=START_S)
        pax.run_all("nap")
        pax.wait_status("nap", "Running", lambda s: s.get("phase") == "Running", timeout=SLACK_S)
        pax.kubelet("nap-1", "Failed", exit_code=1)
        pax.wait_status("nap", "Restarting", lambda s: s.get("phase") == "Restarting", timeout=SLACK_S)
        wait_for("the old gang deleted", lambda: pax.pods("nap") == [], timeout=SLACK_S)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGSTOP)
        paused = time.monotonic()
        try:
            wait_for("the standby to lead", lambda: second.role() == "leading", timeout=SLACK_S)
            pax.wait_pods("nap", 2, 1, timeout=backoff + SLACK_S)
            pax.wait_status("nap", "gang 1 created", lambda s: s.get("gangCreated") is True, timeout=SLACK_S)
            time.sleep(max(0.0, backoff + 1 - (time.monotonic() - paused)))  # its backoff is due
            log_size = first.log_path.stat().st_size
        finally:
            os.kill(first.proc.pid, signal.SIGCONT)
        first.proc.wait(timeout=SLACK_S)  # it sees the other holder and exits
        woke = first.log_path.read_text(errors="replace")[log_size:]
        print(f"--- the old leader after waking ---\n{woke}")
        assert "GangCreated" not in woke and "changed while reconciling" not in woke
        assert "lost leadership" in woke
        status = pax.status("nap")
        assert (status["restarts"], status["failures"], status["restartAttempt"]) == (1, 1, 1)
    finally:
        for replica in (first, second):
            replica.kill()
