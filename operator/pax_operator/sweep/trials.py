"""A sweep's trial PaxJobs as the operator's PaxJob informer holds them (indexed under their controller),
and the sweep's expectations of its own trial writes that the watch has not delivered yet
(controller-runtime's "expectations", as the PaxJob cache keeps them for pods).

A pass that created or patched trials expects the watch to show each of those writes (the trial at the
resourceVersion written, or later, or deleted) before the next pass acts on the informer's view: a view
without a trial just created would count its slot free and create another trial in it, and one without a
result just recorded would record (and feed back) that result again. Unmet for EXPECTATIONS_TIMEOUT_SECONDS
(a deletion the watch delivered before the write's answer came back, a stuck watch), the pass LISTs the
trials from the apiserver instead and the expectations start afresh. The wait is event-driven: the watch
event that shows the last write a waiting pass expects names its sweep (`observe`), which is queued at once;
the pass's own requeue is only a safety net.

A sweep's first pass in this process LISTs its trials too: expectations live in memory, so a new leader
knows nothing of the writes its predecessor made just before it stopped, which its watch may not show yet
(a trial beyond parallelTrials, a result recorded twice). One LIST per sweep per leadership.

The informer's maps live on the event loop; the sweep workers are threads and read through `on_loop`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import enum
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pax_operator.adapters.cache import controller_key, resource_version
from pax_operator.core.observe import controller_uid
from pax_operator.sweep.spec import LABEL_SWEEP_NAME, SWEEP_KIND

EXPECTATIONS_TIMEOUT_SECONDS = 10.0
LOOP_READ_TIMEOUT_SECONDS = 30.0  # a worker waits this long for the event loop to answer a read


class Unsettled(enum.Enum):
    """Why a sweep's trials cannot be read from the informer now."""

    WAIT = "the watch has yet to deliver this sweep's own trial writes"
    RELIST = "the watch has not delivered them for too long: LIST the trials"
    FIRST = "this process has not read the sweep's trials yet: LIST them once"


def trial_index_keys(namespace: str, body: dict[str, Any]) -> list[Hashable]:
    """The PaxJob informer's extra index key of a trial: its controller (namespace and UID)."""
    uid = controller_uid(body)
    return [controller_key(namespace, uid)] if uid else []


def sweeps_of(body: dict[str, Any]) -> set[str]:
    """The sweeps a PaxJob is a trial of, by name: its sweep label's, and its controller's when that is a
    PaxSweep (so a trial whose label or owner reference was edited away still wakes its sweep)."""
    metadata = body.get("metadata") or {}
    names = {(metadata.get("labels") or {}).get(LABEL_SWEEP_NAME)}
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("controller") and owner.get("kind") == SWEEP_KIND:
            names.add(owner.get("name"))
    return {name for name in names if name}


@dataclass
class _Expected:
    versions: dict[str, int | None]  # trial name → resourceVersion written (None: only that it exists)
    since: float
    waiting: tuple[str, str] | None = None  # the sweep (namespace, name) once a pass waits for these


@dataclass
class TrialCache:
    """`jobs`: the PaxJob informer (its keys: (namespace, name) and `trial_index_keys`). `loop`: the event
    loop it lives on (None: the caller is on it, as in unit tests)."""

    jobs: Mapping[Hashable, Iterable[dict[str, Any]]]
    loop: asyncio.AbstractEventLoop | None = None
    clock: Callable[[], float] = time.monotonic
    timeout: float = EXPECTATIONS_TIMEOUT_SECONDS
    _expected: dict[str, _Expected] = field(default_factory=dict)  # sweep uid → its unmet writes
    _listed: set[str] = field(default_factory=set)  # sweep uids whose trials this process has LISTed

    # -- called from the sweep workers' threads ----------------------------------------------------
    def read(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]] | Unsettled:
        """The trials of sweep `name` (uid): PaxJobs it controls that carry its name label, as the LIST
        selected them; or why they cannot be read now."""
        return self._on_loop(lambda: self._read(namespace, name, uid))

    def expect(self, uid: str, namespace: str, written: Iterable[tuple[str, dict[str, Any] | None]]) -> None:
        """Our trial writes: (name, the apiserver's answer; None: the name exists, created by an earlier
        pass or leader)."""
        writes = {name: resource_version(body) for name, body in written}
        if writes:
            self._later(lambda: self._expect(uid, namespace, writes))

    def listed(self, uid: str) -> None:
        """The sweep's trials were LISTed (a first pass): the informer's view is read from now on."""
        self._later(lambda: self._listed.add(uid))

    def reset(self, uid: str) -> None:
        """The sweep is gone: nothing is expected any more, and a namesake is LISTed first."""

        def forget() -> None:
            self._expected.pop(uid, None)
            self._listed.discard(uid)

        self._later(forget)

    # -- on the loop -------------------------------------------------------------------------------
    def observe(self, kind: str, body: dict[str, Any]) -> tuple[str, str] | None:
        """The informer's callback, after it applied the event: a trial shown at the version written or
        later, or deleted (the watch will show no more), meets its expectation. Returns the sweep (namespace,
        name) to reconcile now: one whose pass waits and whose last unmet write this event meets."""
        expected = self._expected.get(controller_uid(body) or "")
        name = body["metadata"]["name"]
        if expected is None or name not in expected.versions:
            return None
        if kind != "DELETED" and not _at_least(resource_version(body), expected.versions[name]):
            return None
        del expected.versions[name]
        return None if expected.versions else expected.waiting

    def _read(self, namespace: str, name: str, uid: str) -> list[dict[str, Any]] | Unsettled:
        if uid not in self._listed:
            return Unsettled.FIRST
        expected = self._expected.get(uid)
        if expected is not None:
            expected.versions = {
                trial: version
                for trial, version in expected.versions.items()
                if not self._shown(namespace, trial, version)
            }
            if expected.versions:
                if self.clock() - expected.since < self.timeout:
                    expected.waiting = (namespace, name)  # the event meeting the last one queues it
                    return Unsettled.WAIT
                del self._expected[uid]
                return Unsettled.RELIST
            del self._expected[uid]
        key = controller_key(namespace, uid)
        owned = self.jobs.get(key, [])
        return [job for job in owned if (job["metadata"].get("labels") or {}).get(LABEL_SWEEP_NAME) == name]

    def _shown(self, namespace: str, trial: str, version: int | None) -> bool:
        """The informer holds the trial at `version` or later (None, or not a number: at all)."""
        key = (namespace, trial)
        job = next(iter(self.jobs[key]), None) if key in self.jobs else None
        return job is not None and _at_least(resource_version(job), version)

    def _expect(self, uid: str, namespace: str, writes: dict[str, int | None]) -> None:
        """Writes the informer shows already (their events came before the answers) are not expected:
        `observe` meets only those whose events are still to come."""
        expected = self._expected.setdefault(uid, _Expected({}, self.clock()))
        for trial, version in writes.items():
            versions = [v for v in (expected.versions.get(trial), version) if v is not None]
            wanted = max(versions, default=None)
            if self._shown(namespace, trial, wanted):
                expected.versions.pop(trial, None)
            else:
                expected.versions[trial] = wanted
        expected.since = self.clock()
        expected.waiting = None  # a pass that wrote is not waiting: the next one says when it does
        if not expected.versions:
            del self._expected[uid]

    def _on_loop[T](self, read: Callable[[], T]) -> T:
        if self.loop is None:
            return read()
        answer: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                answer.set_result(read())
            except Exception as err:
                answer.set_exception(err)

        self.loop.call_soon_threadsafe(run)
        return answer.result(timeout=LOOP_READ_TIMEOUT_SECONDS)

    def _later(self, change: Callable[[], object]) -> None:
        """On the loop, after what it has queued already (before any later read from this thread)."""
        if self.loop is None:
            change()
        else:
            self.loop.call_soon_threadsafe(change)


def _at_least(shown: int | None, written: int | None) -> bool:
    """A copy at resourceVersion `shown` shows the write answered with `written` (None, or not a number:
    any copy does)."""
    return written is None or shown is None or shown >= written
