"""The reconciler's reads: PaxJobs and their pods as the watch streams delivered them (the
informers), plus the operator's own latest writes, and expectations about pods it created or deleted that
the watch has not shown yet (controller-runtime's "expectations").

Reads never go to the apiserver; the reconciler does so only to recover (a conflict, or expectations that
stay unmet). Lives on the event loop: call it only from there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pax_operator.core.observe import PodView

type JobKey = tuple[str, str]  # (namespace, name)
EXPECTATIONS_TIMEOUT_SECONDS = 10.0  # unmet this long: read the pods from the apiserver instead


def resource_version(body: Mapping[str, Any] | None) -> int | None:
    """The resourceVersion as a number when it is one (etcd's revision; only used to order two copies of
    one object, falling back to the watch's copy when it is not a number)."""
    try:
        return int(((body or {}).get("metadata") or {}).get("resourceVersion"))
    except (TypeError, ValueError):
        return None


@dataclass
class _Expected:
    present: set[str]  # pod UIDs we created
    gone: set[str]  # pod UIDs we deleted: absent or being deleted
    since: float


@dataclass
class Cache:
    """`jobs` maps (namespace, name) → the PaxJob body; `pods` maps a controller UID and a
    (namespace, job-name label) pair → PodViews (two Informers in the operator)."""

    jobs: Mapping[Hashable, Iterable[dict[str, Any]]]
    pods: Mapping[Hashable, Iterable[PodView]]
    clock: Callable[[], float] = time.monotonic
    expectations_timeout: float = EXPECTATIONS_TIMEOUT_SECONDS
    _written: dict[JobKey, dict[str, Any]] = field(default_factory=dict)
    _expected: dict[str, _Expected] = field(default_factory=dict)

    # -- PaxJobs ----------------------------------------------------------------------------------
    def job(self, key: JobKey) -> dict[str, Any] | None:
        """The newest copy of the PaxJob: the watch's, or our own later write of it."""
        indexed = next(iter(self.jobs[key]), None) if key in self.jobs else None
        if indexed is None:
            return None  # the watch says it does not exist (any more)
        written = self._written.get(key)
        if written is None or written["metadata"].get("uid") != indexed["metadata"].get("uid"):
            return indexed
        ours, theirs = resource_version(written), resource_version(indexed)
        if ours is not None and theirs is not None and ours > theirs:
            return written
        del self._written[key]  # the watch caught up
        return indexed

    def remember(self, body: dict[str, Any]) -> None:
        """Our write's response (or a recovery read): newer than what the watch delivered so far."""
        metadata = body["metadata"]
        self._written[(metadata["namespace"], metadata["name"])] = body

    def is_own_write(self, body: Mapping[str, Any]) -> bool:
        """This watch event only echoes our own write (the response of which we already hold)."""
        metadata = body.get("metadata") or {}
        written = self._written.get((metadata.get("namespace"), metadata.get("name")))
        ours = resource_version(written)
        return ours is not None and ours == resource_version(body)

    def forget(self, key: JobKey, uid: str | None = None) -> None:
        self._written.pop(key, None)
        if uid is not None:
            self._expected.pop(uid, None)

    # -- pods -------------------------------------------------------------------------------------
    def owned_pods(self, namespace: str, uid: str) -> list[PodView]:
        """Pods of the PaxJob's namespace whose controller owner reference is this PaxJob UID."""
        key = controller_key(namespace, uid)
        return sorted(self.pods[key], key=_order) if key in self.pods else []

    def foreign_pods(self, namespace: str, name: str, uid: str) -> list[PodView]:
        """Pods carrying the job's name label that this PaxJob does not control."""
        key = (namespace, name)
        labelled = self.pods.get(key, [])
        return sorted((pod for pod in labelled if pod.controller_uid != uid), key=_order)

    # -- expectations -----------------------------------------------------------------------------
    def expect(self, uid: str, created: Iterable[str], deleted: Iterable[str]) -> None:
        created, deleted = set(created), set(deleted)
        if not created and not deleted:
            return
        expected = self._expected.setdefault(uid, _Expected(set(), set(), self.clock()))
        expected.present |= created
        expected.gone |= deleted
        expected.present -= deleted
        expected.since = self.clock()

    def settled(self, uid: str, pods: list[PodView]) -> bool | None:
        """True when the cached pods reflect our own creations and deletions (or nothing is expected);
        False while the watch has yet to deliver them; None when it has not for too long (read the pods
        from the apiserver, then call `reset`)."""
        expected = self._expected.get(uid)
        if expected is None:
            return True
        seen = {pod.uid: pod for pod in pods}
        expected.present -= seen.keys()
        expected.gone = {pod for pod in expected.gone if pod in seen and not seen[pod].deleting}
        if not expected.present and not expected.gone:
            del self._expected[uid]
            return True
        return False if self.clock() - expected.since < self.expectations_timeout else None

    def reset(self, uid: str) -> None:
        self._expected.pop(uid, None)


def controller_key(namespace: str, uid: str) -> tuple[str, str, str]:
    """The pod index key of a controller. The namespace is part of it: anyone may name any UID in an
    ownerReference, and a pod in another namespace must never count as one of the job's hosts."""
    return ("controller", namespace, uid)


def _order(pod: PodView) -> tuple[int, int, str]:
    return pod.attempt, pod.host, pod.name
