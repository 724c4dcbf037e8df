"""A fault-injecting HTTP proxy in front of the kube-apiserver (test code only, binds 127.0.0.1).

The operator talks plain HTTP to the proxy (its ServiceAccount token in the kubeconfig, as it would send it
to the apiserver); the proxy forwards every request over TLS to the real apiserver and streams the answer
back (watches included), except those a `Fault` rule matches: answered 429 with Retry-After (API Priority and
Fairness), 5xx, or held without an answer (a hanging apiserver or admission webhook) until released.
`cut()` drops every open connection and refuses new requests until `heal()` (the apiserver unreachable).
"""

from __future__ import annotations

import asyncio
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import aiohttp
import yaml
from aiohttp import web
from pax_cluster.procs import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}
HOLD_LIMIT_S = 120.0  # a held request is answered 504 after this, released or not (every wait bounded)


@dataclass
class Fault:
    """Requests whose method is `method` and whose path (with query) and body match the regexes `path` and
    `body` get `status` (with Retry-After when `retry_after` is set); status 0 holds them unanswered instead.
    At most `times` requests are faulted (None: all, until the rule is removed)."""

    method: str
    path: str
    status: int
    retry_after: int | None = None
    times: int | None = None
    body: str = ""
    hits: int = 0

    def matches(self, method: str, path: str, body: bytes) -> bool:
        if method != self.method or not re.search(self.path, path):
            return False
        if self.body and not re.search(self.body, body.decode(errors="replace")):
            return False
        return self.times is None or self.hits < self.times


@dataclass
class Seen:
    """One request the proxy answered: when (monotonic), what, the status it answered, and how many
    requests it held unanswered at that moment."""

    at: float
    method: str
    path: str
    status: int
    held: int = 0
    body: bytes = b""


@dataclass
class FaultProxy:
    upstream: str  # https://127.0.0.1:port
    ca_file: Path
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    held: int = 0  # requests being held right now
    port: int = field(default_factory=free_port)
    _loop: asyncio.AbstractEventLoop | None = None
    _release: asyncio.Event | None = None
    _cut: bool = False
    _session: aiohttp.ClientSession | None = None
    _open: set[asyncio.BaseTransport] = field(default_factory=set)  # connections of forwarded requests

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle (the proxy runs its own event loop in a daemon thread) --------------------------------
    def start(self) -> Self:
        started = threading.Event()
        threading.Thread(target=self._serve, args=(started,), name="fault-proxy", daemon=True).start()
        if not started.wait(30):
            raise RuntimeError("fault proxy did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)

    def kubeconfig(self, source: Path, target: Path) -> Path:
        """`source` (a token kubeconfig) pointed at the proxy instead of the apiserver."""
        config = yaml.safe_load(source.read_text())
        for cluster in config["clusters"]:
            cluster["cluster"] = {"server": self.url}
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        target.chmod(0o600)
        return target

    # -- faults, from the test's thread --------------------------------------------------------------
    def add(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault

    def release(self) -> None:
        """Answer every held request (forwarded now) and hold no more."""
        self.faults = [f for f in self.faults if f.status != 0]
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def cut(self) -> None:
        """Drop every open connection (watches included) and refuse new requests until `heal`."""
        self._cut = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop_open)

    def heal(self) -> None:
        self._cut = False

    def answered(self, method: str, pattern: str, body: str = "") -> list[Seen]:
        """The requests answered so far whose path (and body) match the regexes."""
        return [
            s
            for s in list(self.seen)
            if s.method == method
            and re.search(pattern, s.path)
            and (not body or re.search(body, s.body.decode(errors="replace")))
        ]

    # -- in the proxy's loop ---------------------------------------------------------------------------
    def _drop_open(self) -> None:
        for transport in list(self._open):
            transport.close()
        self._open.clear()

    def _serve(self, started: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(self._setup())
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            if self._session is not None:
                loop.run_until_complete(self._session.close())
            loop.close()

    async def _setup(self) -> web.AppRunner:
        self._release = asyncio.Event()
        context = ssl.create_default_context(cafile=str(self.ca_file))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
            auto_decompress=False,
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port).start()
        return runner

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path_qs
        if self._cut:
            assert request.transport is not None
            request.transport.close()  # as a dead apiserver: no answer at all
            return web.Response(status=503)
        body = await request.read()
        fault = next((f for f in self.faults if f.matches(method, path, body)), None)
        if fault is not None:
            fault.hits += 1
            if fault.status:
                headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
                answer = f'{{"kind":"Status","apiVersion":"v1","status":"Failure","code":{fault.status}}}'
                self.seen.append(Seen(time.monotonic(), method, path, fault.status, self.held, body))
                return web.Response(
                    status=fault.status, headers=headers, text=answer, content_type="application/json"
                )
            await self._hold()
        return await self._forward(request, body)

    async def _hold(self) -> None:
        assert self._release is not None
        self.held += 1
        try:
            await asyncio.wait_for(self._release.wait(), HOLD_LIMIT_S)
        except TimeoutError:
            pass
        finally:
            self.held -= 1

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self._session is not None and request.transport is not None
        transport = request.transport
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        self._open.add(transport)
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body or None
            ) as upstream:
                seen = Seen(
                    time.monotonic(), request.method, request.path_qs, upstream.status, self.held, body
                )
                self.seen.append(seen)
                response = web.StreamResponse(
                    status=upstream.status,
                    headers={k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP},
                )
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        finally:
            self._open.discard(transport)
