"""The kubelet's container-log endpoint, over TLS, for `kubectl logs` (through the apiserver).

    GET /containerLogs/{namespace}/{pod}/{container}?follow=&previous=&tailLines=&limitBytes=

Served with a certificate from the local PKI; only clients presenting a certificate signed by the
cluster CA for the apiserver's kubelet-client identity are answered.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pax_cluster.kubelet import runlog
from pax_cluster.kubelet.common import container_log

log = logging.getLogger("pax_cluster.kubelet.logs")
KUBELET_CLIENT_CN = "kube-apiserver-kubelet-client"
FOLLOW_POLL_S = 0.2
CHUNK = 64 * 1024

IsRunning = Callable[[str, str, str], bool]  # (namespace, pod, container) -> its process runs


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("true", "1")


def _int(query: dict[str, list[str]], name: str) -> int | None:
    value = query.get(name, [""])[-1]
    return int(value) if value.lstrip("-").isdigit() else None


def _client_cn(cert: dict[str, Any] | None) -> str | None:
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class LogServer:
    """HTTPS server for container logs under `root` (the kubelet's), on 127.0.0.1:`port` (0: any)."""

    def __init__(
        self,
        root: Path,
        is_running: IsRunning,
        *,
        cert_file: Path,
        key_file: Path,
        client_ca_file: Path,
        port: int = 0,
        allowed_clients: frozenset[str] = frozenset({KUBELET_CLIENT_CN}),
    ) -> None:
        self.root = root
        self.is_running = is_running
        self.allowed_clients = allowed_clients
        self.stopping = threading.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> LogServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="log-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug("%s " + format, self.address_string(), *args)

            def do_GET(self) -> None:
                cn = _client_cn(self.connection.getpeercert())  # type: ignore[attr-defined]
                if cn not in server.allowed_clients:
                    self._error(403, f"client {cn!r} may not read container logs")
                    return
                url = urllib.parse.urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                if len(parts) != 4 or parts[0] != "containerLogs":
                    self._error(404, f"no such endpoint {url.path}")
                    return
                server.serve_logs(self, *parts[1:], urllib.parse.parse_qs(url.query))

            def _error(self, code: int, message: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(message.encode())

        return Handler

    def serve_logs(
        self,
        handler: BaseHTTPRequestHandler,
        namespace: str,
        pod: str,
        container: str,
        query: dict[str, list[str]],
    ) -> None:
        """Write one run's log (the current, or `previous`), optionally following it while it runs."""
        log_file = container_log(self.root, namespace, pod, container)
        previous = _flag(query, "previous")
        try:
            run = runlog.find_run(log_file, previous)
        except runlog.NoSuchRun as err:
            handler.send_response(400 if previous else 404)
            handler.send_header("Content-Type", "text/plain")
            handler.end_headers()
            handler.wfile.write(f"{err}: container {container!r} in pod {namespace}/{pod}".encode())
            return
        end = runlog.run_end(log_file, run)  # streamed, never read whole: a pod may print gigabytes
        start = runlog.tail_offset(log_file, run.start, end, _int(query, "tailLines"))
        limit = _int(query, "limitBytes")
        stop = end if limit is None or limit < 0 else min(end, start + limit)
        handler.send_response(200)
        handler.send_header("Content-Type", "text/plain")
        handler.end_headers()
        try:
            for block in runlog.read_range(log_file, start, stop):
                handler.wfile.write(block)
            handler.wfile.flush()
            if _flag(query, "follow") and run.end is None and limit is None:
                self._follow(handler, log_file, run, end, (namespace, pod, container))
        except (BrokenPipeError, ConnectionResetError):
            return

    def _follow(
        self,
        handler: BaseHTTPRequestHandler,
        log_file: Path,
        run: runlog.Run,
        position: int,
        container: tuple[str, str, str],
    ) -> None:
        """Stream what the run appends until its process ends (or a newer run starts, or we stop)."""
        while not self.stopping.is_set():
            running = self.is_running(*container)
            latest = runlog.find_run(log_file, previous=False)
            if position > log_file.stat().st_size:  # cut over its limit (runlog.bound): its end goes on
                run, position = latest, latest.start
            end = latest.start if latest.start != run.start else None
            with log_file.open("rb") as f:
                f.seek(position)
                chunk = f.read(CHUNK if end is None else max(0, min(CHUNK, end - position)))
            if chunk:
                handler.wfile.write(chunk)
                handler.wfile.flush()
                position += len(chunk)
                continue
            if end is not None or not running:
                return
            time.sleep(FOLLOW_POLL_S)
