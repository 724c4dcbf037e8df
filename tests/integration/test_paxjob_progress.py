"""Progress and hang detection: the operator scrapes host 0's Prometheus endpoint (contract metric names)."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pax_contract as contract
import pytest
from paxjob_harness import Pax, cpu_job

pytestmark = pytest.mark.integration


class FakeTrainerMetrics:
    """What host 0's trainer serves on POD_IP:PAX_METRICS_PORT, on a loopback address of its own."""

    def __init__(self) -> None:
        self.ip = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        self.step, self.checkpoint, self.loss = 0, -1, 3.0
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (
                    f"# TYPE {contract.METRIC_STEP} gauge\n{contract.METRIC_STEP} {metrics.step}\n"
                    f"# TYPE {contract.METRIC_CHECKPOINT_STEP} gauge\n"
                    f"{contract.METRIC_CHECKPOINT_STEP} {metrics.checkpoint}\n"
                    f"# TYPE {contract.METRIC_LOSS} gauge\n{contract.METRIC_LOSS} {metrics.loss}\n"
                    f"# TYPE {contract.METRIC_STEPS_PER_SEC} gauge\n{contract.METRIC_STEPS_PER_SEC} 2.5\n"
                    f"# TYPE {contract.METRIC_TOTAL_STEPS} gauge\n{contract.METRIC_TOTAL_STEPS} 100\n"
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((self.ip, contract.METRICS_PORT), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def metrics() -> Iterator[FakeTrainerMetrics]:
    served = FakeTrainerMetrics()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_progress_is_scraped_and_a_hang_restarts_the_gang(operator, pax: Pax, metrics, kubectl):
    pax.create("prog", cpu_job(2, hangTimeoutSeconds=10))
    pax.wait_pods("prog", 2, 0)
    pax.kubelet("prog-0", "Running", ip=metrics.ip)
    pax.kubelet("prog-1", "Running")
    pax.wait_status("prog", "Running", lambda s: s.get("phase") == "Running")

    metrics.step, metrics.checkpoint, metrics.loss = 12, 10, 2.5
    status = pax.wait_status("prog", "step 12", lambda s: s.get("progress", {}).get("step") == 12)
    progress = status["progress"]
    assert progress["lastCheckpointStep"] == 10 and progress["numTrainSteps"] == 100
    assert progress["stepsPerSecond"] == 2.5 and progress["metrics"] == {"train/loss": 2.5}
    row = kubectl("get", "pj", "prog", "-n", pax.namespace, "--no-headers", check=True).stdout.split()
    assert row[:4] == ["prog", "Running", "2", "12"]

    metrics.step = 17  # then nothing more: a hang
    status = pax.wait_status("prog", "a Hang restart", lambda s: s.get("failures") == 1, timeout=40)
    assert status["lastRestart"]["reason"] == "Hang" and status.get("preemptions", 0) == 0
    pax.wait_pods("prog", 2, 1)
    metrics.step, metrics.checkpoint = 10, 10  # the new gang resumed from checkpoint 10
    pax.kubelet("prog-0", "Running", ip=metrics.ip)
    pax.kubelet("prog-1", "Running")
    status = pax.wait_status("prog", "steps lost settled", lambda s: s["progress"].get("stepsLost") == 7)
    assert status["progress"]["stepsLost"] == 7  # steps 11-17 are recomputed from checkpoint 10
