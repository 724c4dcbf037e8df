"""How both images serve HTTP on a port other pods can reach (the trainer's /metrics, the operator's probes
and /metrics): a daemon thread per connection, and at most `max_connections` of them at once. Beyond that a
connection is closed unanswered, so idle or trickling clients cannot pile up threads until the process can
start none of its own (a scrape or probe takes milliseconds)."""

from __future__ import annotations

import threading
from socketserver import ThreadingMixIn
from typing import Any


class BoundedThreadingMixIn(ThreadingMixIn):
    """`ThreadingMixIn` with a cap on connections in progress; pass `max_connections=` to the server."""

    daemon_threads = True

    def __init__(self, *args: Any, max_connections: int, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # type: ignore[attr-defined]
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: it would have released the slot
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()
