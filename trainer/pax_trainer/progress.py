"""Progress reporting: log lines (step, loss, steps/s, ETA) and the contract's Prometheus gauges."""

from __future__ import annotations

import datetime
import functools
import logging
import os
import socket
import threading
import time
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import pax_contract as contract
from pax_contract.serving import BoundedThreadingMixIn
from prometheus_client import CollectorRegistry, Gauge, make_wsgi_app

log = logging.getLogger(__name__)

# prometheus_client's own server starts a thread per connection and waits on a silent client forever: a
# few hundred half-sent requests kept as many threads. Ours drops a client silent for this long ...
CONNECTION_TIMEOUT_S = 5.0
# ... and closes at once any connection beyond this many in progress (a scrape takes milliseconds).
MAX_CONNECTIONS = 16


class _Handler(WSGIRequestHandler):
    """One request per connection, its socket reads bounded by CONNECTION_TIMEOUT_S; logs nothing."""

    timeout = CONNECTION_TIMEOUT_S  # StreamRequestHandler.setup sets it on the socket

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer(BoundedThreadingMixIn, WSGIServer):
    """/metrics over HTTP: a daemon thread per connection, at most MAX_CONNECTIONS at a time."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        # The address family of `host` (POD_IP may be IPv6), as prometheus_client's own server picks it.
        family, _, _, _, sockaddr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        self.address_family = family
        super().__init__((sockaddr[0], port), _Handler, max_connections=MAX_CONNECTIONS)
        self.set_app(make_wsgi_app(registry))
        self._thread = threading.Thread(target=self.serve_forever, name="pax_metrics", daemon=True)
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that timed out or went away: one debug line, not socketserver's traceback on stderr."""
        log.debug("metrics request from %s failed", client_address, exc_info=True)

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=CONNECTION_TIMEOUT_S)


class Progress:
    """Tracks throughput between log points and mirrors it to /metrics when PAX_METRICS_PORT is set."""

    def __init__(self, total_steps: int) -> None:
        self.total_steps = total_steps
        self.registry = CollectorRegistry()
        gauge = functools.partial(Gauge, registry=self.registry)
        self.step = gauge(contract.METRIC_STEP, "Last completed train step")
        self.checkpoint_step = gauge(contract.METRIC_CHECKPOINT_STEP, "Newest committed checkpoint step")
        self.loss = gauge(contract.METRIC_LOSS, "Last logged training loss")
        self.steps_per_sec = gauge(contract.METRIC_STEPS_PER_SEC, "Training steps per second")
        self.total = gauge(contract.METRIC_TOTAL_STEPS, "Target number of train steps")
        self.eval_step = gauge(contract.METRIC_EVAL_STEP, "Train step of the latest evaluation")
        self.eval_values = gauge(
            contract.METRIC_EVAL, "Latest evaluation metrics", [contract.METRIC_EVAL_LABEL]
        )
        self.total.set(total_steps)
        self.checkpoint_step.set(-1)
        self._mark: tuple[int, float] | None = None
        self.rate: float | None = None
        self.server: MetricsServer | None = None

    def serve(self) -> None:
        """Start the /metrics server on POD_IP (or 127.0.0.1) : PAX_METRICS_PORT; unset or 0 disables it."""
        # main has checked the env (exit 2 if malformed)
        port = contract.parse_int_env(os.environ, contract.ENV_METRICS_PORT, 0)
        if port <= 0:
            return
        host = os.environ.get(contract.ENV_POD_IP) or "127.0.0.1"
        try:
            self.server = MetricsServer(host, port, self.registry)
        except OSError as err:
            log.warning("metrics server not started on %s:%d: %s", host, port, err)

    def start(self, step: int) -> None:
        """Throughput is measured from here (call after the first, compiling step)."""
        self._mark = (step, time.perf_counter())
        self.step.set(step)

    def update(self, step: int, loss: float | None = None, checkpoint_step: int | None = None) -> None:
        """Record progress at `step`; logs a line when a loss is given."""
        self.step.set(step)
        if checkpoint_step is not None:
            self.checkpoint_step.set(checkpoint_step)
        if self._mark and step > self._mark[0]:
            now = time.perf_counter()
            self.rate = (step - self._mark[0]) / (now - self._mark[1])
            self._mark = (step, now)
            self.steps_per_sec.set(self.rate)
        if loss is not None:
            self.loss.set(loss)
            eta = "?"
            if self.rate:
                eta = str(datetime.timedelta(seconds=round((self.total_steps - step) / self.rate)))
            rate = f"{self.rate:.2f}" if self.rate else "?"
            log.info("step %d/%d loss %.4f steps/s %s ETA %s", step, self.total_steps, loss, rate, eta)

    def evaluated(self, step: int, metrics: dict[str, float]) -> None:
        """Publish the latest eval metrics (names like eval_test/loss) and their step: PaxSweep's
        intermediate objective values, for early stopping."""
        for name, value in metrics.items():
            self.eval_values.labels(name).set(value)
        self.eval_step.set(step)

    def close(self) -> None:
        """Stop serving /metrics."""
        if self.server is not None:
            self.server.close()
