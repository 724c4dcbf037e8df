"""One bad job cannot stall the others (issue 7, must-show 4): with four jobs whose host 0 trickles its
/metrics a byte a second and one serving +Inf/NaN, a healthy job still goes from creation through Pending to
Running as fast (±2 s) as it does alone, measured in the same test against the same operator."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator

import pax_contract as contract
import pytest
from paxjob_harness import OperatorProcess, Pax, cpu_job, wait_for

from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.integration
BAD_METRICS = (
    f"# TYPE {contract.METRIC_STEP} gauge\n{contract.METRIC_STEP} +Inf\n"
    f"# TYPE {contract.METRIC_LOSS} gauge\n{contract.METRIC_LOSS} NaN\n"
    f"# TYPE {contract.METRIC_CHECKPOINT_STEP} gauge\n{contract.METRIC_CHECKPOINT_STEP} 1e30\n"
)


class BadTrainerMetrics(ThreadedServer):
    """What a broken trainer serves on POD_IP:PAX_METRICS_PORT (a loopback address of its own): a body that
    trickles one byte a second and never ends, or non-finite values."""

    def __init__(self, *, trickle: bool) -> None:
        self.trickle = trickle
        self.ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        super().__init__((self.ip, contract.METRICS_PORT))

    def answer(self, conn: socket.socket) -> None:
        conn.recv(4096)
        if not self.trickle:
            body = BAD_METRICS.encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")
        while not self.stopped.wait(1.0):  # one byte a second, forever
            conn.sendall(b"#")


@pytest.fixture
def bad_metrics() -> Iterator[list[BadTrainerMetrics]]:
    servers = [BadTrainerMetrics(trickle=True) for _ in range(4)] + [BadTrainerMetrics(trickle=False)]
    yield servers
    for server in servers:
        server.close()


def _pending_to_running(pax: Pax, name: str) -> float:
    """Seconds from creating a 2-host job until its status says Running, playing kubelet as soon as the
    pods exist."""
    started = time.monotonic()
    pax.create(name, cpu_job(2))
    pax.wait_pods(name, 2, 0)
    pax.run_all(name)
    pax.wait_status(name, "Running", lambda s: s.get("phase") == "Running")
    return time.monotonic() - started


def test_trickling_and_non_finite_metrics_do_not_slow_a_healthy_job(
    operator: OperatorProcess, pax: Pax, bad_metrics: list[BadTrainerMetrics]
) -> None:
    alone = _pending_to_running(pax, "alone")

    for index, server in enumerate(bad_metrics):
        name = f"bad-{index}"
        pax.create(name, cpu_job(1))
        pax.wait_pods(name, 1, 0)
        pax.kubelet(f"{name}-0", "Running", ip=server.ip)
    for index in range(len(bad_metrics)):
        pax.wait_status(f"bad-{index}", "Running", lambda s: s.get("phase") == "Running")
    # Every trickling host is being scraped (and held open) before the healthy job arrives.
    wait_for("scrapes of every bad host", lambda: all(s.connections >= 2 for s in bad_metrics), timeout=30)

    beside = _pending_to_running(pax, "beside")
    print(f"Pending → Running: alone {alone:.2f} s, beside 4 trickling + 1 non-finite {beside:.2f} s")
    assert beside <= alone + 2.0, (alone, beside)

    # The non-finite job is still Running, with nothing unusable written (no 422 loop), and was warned about.
    status = pax.status("bad-4")
    assert status["phase"] == "Running" and "step" not in status.get("progress", {}), status
    assert "ignoring unusable metric values" in operator.log_path.read_text(), operator.log_tail()
    assert all(pax.status(f"bad-{i}")["phase"] == "Running" for i in range(4))
