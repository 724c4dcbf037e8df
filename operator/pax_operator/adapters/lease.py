"""Leader election I/O: read and write one coordination.k8s.io/v1 Lease; the rules are core/lease.py.

Every replica runs its kopf watches (a standby's view is warm); only the holder of the Lease runs the work
queue. A holder that cannot renew within `renew_deadline` steps down by stopping the whole process (as
controller-runtime does): whatever it still had in flight is fenced by resourceVersions, and the restarted
container comes back as a standby.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from pax_operator.adapters.incluster import REQUEST_ERRORS, api_client
from pax_operator.core.lease import Action, LeaseRecord, Sighting, choose, next_record, observe, released

if TYPE_CHECKING:
    from pax_operator.adapters.install_guard import InstallGuard
    from pax_operator.adapters.kube import Clients

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 5.0  # seconds per Lease request: well inside the renew deadline


@dataclass(frozen=True)
class LeaderElectionConfig:
    """Where the Lease lives and the clocks (client-go's defaults: 15 s / 10 s / 2 s)."""

    namespace: str
    name: str = "pax-operator"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period > 0, got "
                f"{self.lease_duration} / {self.renew_deadline} / {self.retry_period}"
            )


def _connect() -> client.CoordinationV1Api:
    return client.CoordinationV1Api(api_client())


class Elector:
    """Campaigns for the Lease; calls `on_started` once leading and `on_lost` if leadership is lost."""

    def __init__(self, settings: LeaderElectionConfig, api: client.CoordinationV1Api | None = None) -> None:
        self.settings = settings
        self._api = api
        self._sighting: Sighting | None = None
        self.leading = False
        self.last_contact: float | None = None  # monotonic time of the last successful Lease read/write
        self._last_renew = 0.0

    @property
    def api(self) -> client.CoordinationV1Api:
        if self._api is None:
            self._api = _connect()
        return self._api

    def confirmed(self, now: float | None = None) -> bool:
        """Leading, and renewed within the renew deadline on this monotonic clock: a standby takes over only
        after a whole lease duration without a renewal, so until then nobody else can lead. False for a
        leader that was paused (SIGSTOP, a stalled VM) or cut off that long, before its loop notices."""
        now = time.monotonic() if now is None else now
        return self.leading and now - self._last_renew < self.settings.renew_deadline

    def healthy(self, now: float | None = None) -> bool:
        """Reached the apiserver within a lease duration (a standby that cannot is no use as one)."""
        now = time.monotonic() if now is None else now
        return self.last_contact is not None and now - self.last_contact < self.settings.lease_duration

    async def run(self, on_started: Callable[[], None], on_lost: Callable[[], None]) -> None:
        """Campaign until leading, then renew until stopped (cancelled) or leadership is lost."""
        s = self.settings
        log.info("leader election: %s campaigning for lease %s/%s", s.identity, s.namespace, s.name)
        while not self.leading:
            self.leading = await asyncio.to_thread(self.try_acquire_or_renew)
            if not self.leading:
                await asyncio.sleep(s.retry_period * random.uniform(1.0, 1.2))  # client-go's jitter
        log.info("leader election: %s is now the leader", s.identity)
        on_started()
        while True:
            await asyncio.sleep(s.retry_period)
            if await asyncio.to_thread(self.try_acquire_or_renew):
                continue
            if self._sighting is not None and self._sighting.record.holder not in (None, s.identity):
                reason = f"{self._sighting.record.holder} holds the lease"
            elif time.monotonic() - self._last_renew >= s.renew_deadline:
                reason = f"no renewal for {s.renew_deadline:.0f}s"
            else:
                continue
            self.leading = False
            log.error("leader election: %s lost leadership (%s); stopping", s.identity, reason)
            on_lost()
            return

    def try_acquire_or_renew(self) -> bool:
        """One round: read the Lease, then create / take over / renew it if the rules allow. True: leading."""
        s = self.settings
        now = time.monotonic()
        try:
            lease = self._read()
        except REQUEST_ERRORS as err:
            log.warning("leader election: reading lease %s/%s failed: %s", s.namespace, s.name, err)
            return False
        if lease is None:
            record = next_record(None, s.identity, Action.ACQUIRE, datetime.now(UTC), self._duration)
            return self._write(None, record, now)
        metadata = lease["metadata"]
        record = LeaseRecord.from_spec(lease.get("spec"))
        self._sighting = observe(self._sighting, record, metadata["resourceVersion"], now)
        self.last_contact = now
        action = choose(self._sighting, s.identity, now)
        if action is Action.WAIT:
            return False
        return self._write(
            lease, next_record(record, s.identity, action, datetime.now(UTC), self._duration), now
        )

    def release(self) -> None:
        """Hand the Lease back (clean shutdown); a standby acquires it on its next try."""
        if not self.leading:
            return
        self.leading = False
        try:
            lease = self._read()
            if lease is None:
                return
            record = released(
                LeaseRecord.from_spec(lease.get("spec")), self.settings.identity, datetime.now(UTC)
            )
            if record is not None:
                self._write(lease, record, time.monotonic())
                log.info("leader election: %s released the lease", self.settings.identity)
        except REQUEST_ERRORS as err:
            log.warning("leader election: releasing the lease failed: %s", err)

    @property
    def _duration(self) -> int:
        return max(1, round(self.settings.lease_duration))

    def _read(self) -> dict[str, Any] | None:
        s = self.settings
        try:
            response = self.api.read_namespaced_lease(
                s.name, s.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        return json.loads(response.data)

    def _write(self, lease: dict[str, Any] | None, record: LeaseRecord, now: float) -> bool:
        """Create or replace (resourceVersion-fenced); a 409 means someone else wrote first."""
        s = self.settings
        try:
            if lease is None:
                body = {"metadata": {"name": s.name, "namespace": s.namespace}, "spec": record.to_spec()}
                response = self.api.create_namespaced_lease(
                    s.namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            else:
                body = {"metadata": lease["metadata"], "spec": record.to_spec()}
                response = self.api.replace_namespaced_lease(
                    s.name, s.namespace, body, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
        except ApiException as err:
            if err.status != 409:
                log.warning(
                    "leader election: writing lease %s/%s failed: %s", s.namespace, s.name, err.reason
                )
            return False
        except REQUEST_ERRORS as err:
            log.warning("leader election: writing lease %s/%s failed: %s", s.namespace, s.name, err)
            return False
        written = json.loads(response.data)
        self._sighting = observe(None, record, written["metadata"]["resourceVersion"], now)
        self.last_contact = now
        self._last_renew = now
        return record.holder == s.identity


@dataclass
class Leadership:
    """Runs the work queue only while leading (or at once, without an elector) and, with an install guard,
    only once the guard passes (before campaigning); readiness for /readyz."""

    elector: Elector | None = None
    stop_operator: Callable[[], None] = lambda: None  # leadership lost: stop the whole process
    on_change: Callable[[bool], None] = lambda leading: None
    guard: InstallGuard | None = None
    started: bool = False
    _task: asyncio.Task[None] | None = None
    _watchdog: asyncio.Task[None] | None = None

    def start(self, start_work: Callable[[], None]) -> None:
        """Called from kopf's startup handler (inside the event loop)."""

        def begin() -> None:
            start_work()
            self.started = True
            self.on_change(True)

        if self.elector is None and self.guard is None:
            begin()
            return
        self._task = asyncio.create_task(self._run(begin), name="pax-leader-election")
        self._task.add_done_callback(self._ended)

    async def _run(self, begin: Callable[[], None]) -> None:
        if self.guard is not None:
            await self.guard.wait_until_safe()
            self._watchdog = asyncio.create_task(self.guard.watch(self._unsafe), name="pax-install-guard")
            self._watchdog.add_done_callback(self._ended)

        def lost() -> None:
            self.on_change(False)
            self.stop_operator()

        if self.elector is None:
            begin()
        else:
            await self.elector.run(begin, lost)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A campaign or guard that died of an error stops the operator (a restart campaigns again): left
        dead, it kept the process up, never leading, /readyz still 'leading'."""
        if task.cancelled() or task.exception() is None:
            return
        log.error("%s failed, stopping the operator: %r", task.get_name(), task.exception())
        self.on_change(False)
        self.stop_operator()

    def _unsafe(self, why: str) -> None:
        """The guard failed after start-up: stop (a restart waits at the guard, not ready)."""
        log.error("install guard: stopping the operator: %s", why)
        self.on_change(False)
        self.stop_operator()

    async def stop(self) -> None:
        """Stop campaigning; after the work queue has stopped, hand the Lease back."""
        for task in (self._task, self._watchdog):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.elector is not None:
            await asyncio.to_thread(self.elector.release)
        self.on_change(False)

    def may_write(self) -> bool:
        """The write fence: only while the guard (if any) passes, and the Lease (if any) is confirmed."""
        if self.guard is not None and not self.guard.safe:
            return False
        return self.elector is None or self.elector.confirmed()

    def readiness(self) -> tuple[bool, str]:
        if self.guard is not None and not self.guard.safe:
            return False, "install guard: " + "; ".join(self.guard.problems)
        if self.started:
            return True, "leading" if self.elector is not None else "running"
        if self.elector is not None and self.elector.healthy():
            return True, "standby"
        return False, "not leading and no recent contact with the lease" if self.elector else "starting"


def fence_writes(memo: Any, clients: Clients) -> None:
    """Make a `kube.Clients` refuse writes whenever the memo's Leadership cannot confirm the Lease."""
    leadership = memo.get("leadership")
    if leadership is not None:
        clients.may_write = leadership.may_write


def start_when_leading(memo: Any, start_work: Callable[[], None]) -> None:
    """Startup hook: the memo's Leadership starts the work (a memo without one starts it at once)."""
    leadership = memo.get("leadership")
    if leadership is None:
        start_work()
    else:
        leadership.start(start_work)


async def step_down(memo: Any) -> None:
    """Cleanup hook, after the work queue stopped: release the Lease if held."""
    leadership = memo.get("leadership")
    if leadership is not None:
        await leadership.stop()
