"""A listening socket answered on daemon threads: the fake trainers' /metrics servers of the tests."""

from __future__ import annotations

import socket
import threading


class ThreadedServer:
    """Accepts on `address` until `close()`; each connection is handed to `answer` on its own thread."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_server(address)
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.answer(conn)
            except OSError:
                return

    def answer(self, conn: socket.socket) -> None:
        """Read the request from `conn` and reply (the connection is closed afterwards)."""
        raise NotImplementedError

    def close(self) -> None:
        self.stopped.set()
        self.sock.close()
