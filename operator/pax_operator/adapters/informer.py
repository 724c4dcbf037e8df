"""The pod cache: gang pods listed, then watched (selected server-side by label), as PodViews indexed by
controller owner UID and by (namespace, job-name label); each change wakes the pod's job.

An informer in controller-runtime's sense, not a kopf index: at four pod events per job, kopf's per-event
machinery (causes, loggers, progress state, handler invocation) was a quarter of the operator's CPU at
1,000 jobs (py-spy); here an event is a JSON line parsed in a watch thread and a dict update on the loop.
The PaxJob watch stays kopf's.

One watch thread per scope (a namespace, or the cluster): list (paged), then watch from the list's
resourceVersion with bookmarks; a 410 (the version was compacted away) lists again; any other failure
retries the watch with a capped backoff. `synced` is set once every scope has its first listing: the work
queue does not start before, so no reconcile sees a PaxJob without its pods.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pax_operator.core.observe import PodView, pod_view

log = logging.getLogger(__name__)

type JobKey = tuple[str, str]  # (namespace, name)
type PodId = tuple[str, str]  # (namespace, pod name)
type Change = tuple[PodId, PodView | None]  # None: the pod is gone
# (path, query) → one page of a LIST; (path, query, read timeout) → the watch's events
type Lister = Callable[[str, dict[str, str]], dict[str, Any]]
type Watcher = Callable[[str, dict[str, str], float], Iterator[dict[str, Any]]]

PAGE_SIZE = 500
WATCH_SECONDS = 300  # the server ends each watch after this; the client gives up on silence 30 s later
RETRY_SECONDS = (0.5, 30.0)  # a failed list/watch is retried after 0.5 s, doubling to 30 s
_GLOB = set("*?[")


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class PodInformer(Mapping[Hashable, Iterable[PodView]]):
    """Read on the event loop (the Cache's `pods`); fed by watch threads through the loop."""

    def __init__(
        self,
        lister: Lister,
        watcher: Watcher,
        *,
        selector: str,
        namespaces: Sequence[str] = (),
        on_change: Callable[[JobKey], None],
    ) -> None:
        self._lister, self._watcher, self._selector, self._on_change = lister, watcher, selector, on_change
        exact = [ns for ns in namespaces if not _GLOB & set(ns)]
        # kopf accepts namespace globs: those are watched cluster-wide and filtered here
        self._patterns = [ns for ns in namespaces if _GLOB & set(ns)]
        self._scopes: list[str | None] = [None] if self._patterns or not namespaces else list(exact)
        self._exact = set(exact)
        self._pods: dict[PodId, PodView] = {}
        self._keys: dict[PodId, tuple[Hashable, ...]] = {}
        self._index: dict[Hashable, dict[PodId, PodView]] = {}
        self._unsynced = len(self._scopes)
        self.synced = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- Mapping: what the Cache reads ---------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Iterable[PodView]:
        return list(self._index[key].values())

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        for scope in self._scopes:
            name = f"pax-pod-watch-{scope or 'cluster'}"
            threading.Thread(target=self._run, args=(scope,), name=name, daemon=True).start()

    def stop(self) -> None:
        """The watch threads end at their next event or retry (daemon threads: nothing waits for them)."""
        self._stop.set()

    # -- on the loop: apply what a watch thread read -------------------------------------------------
    def apply(self, scope: str | None, changes: Sequence[Change], *, listing: bool = False) -> None:
        """Apply changes to the index and wake their jobs; a listing replaces everything in its scope."""
        woken: set[JobKey] = set()
        if listing:
            present = {pod_id for pod_id, _ in changes}
            for pod_id in [p for p in self._pods if (scope is None or p[0] == scope) and p not in present]:
                woken |= self._put(pod_id, None)
        for pod_id, view in changes:
            woken |= self._put(pod_id, view)
        if listing and scope in self._scopes and not self.synced.is_set():
            self._unsynced -= 1
            if self._unsynced == 0:
                self.synced.set()
        for key in woken:
            self._on_change(key)

    def _put(self, pod_id: PodId, view: PodView | None) -> set[JobKey]:
        old = self._pods.pop(pod_id, None)
        for key in self._keys.pop(pod_id, ()):
            entries = self._index[key]
            entries.pop(pod_id, None)
            if not entries:
                del self._index[key]
        woken = {(pod_id[0], old.job_name)} if old is not None and old.job_name else set()
        if view is None:
            return woken
        by_name = (pod_id[0], view.job_name) if view.job_name else None
        keys = tuple(key for key in (view.controller_uid, by_name) if key)
        self._pods[pod_id], self._keys[pod_id] = view, keys
        for key in keys:
            self._index.setdefault(key, {})[pod_id] = view
        if view.job_name:
            woken.add((pod_id[0], view.job_name))
        return woken

    # -- in a watch thread ---------------------------------------------------------------------------
    def _run(self, scope: str | None) -> None:
        version: str | None = None
        delay = RETRY_SECONDS[0]
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(scope)
                version = self._watch(scope, version)
                delay = RETRY_SECONDS[0]
            except Gone:
                version = None
            except Exception as err:  # the apiserver restarting, a cut stream, a timeout: try again
                if getattr(err, "status", None) == 410:  # refused at the start, not in the stream
                    version = None
                    continue
                log.warning("pod watch %s: %s: %s; again in %.1fs", scope, type(err).__name__, err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RETRY_SECONDS[1])

    def _path(self, scope: str | None) -> str:
        return f"/api/v1/namespaces/{scope}/pods" if scope else "/api/v1/pods"

    def _list(self, scope: str | None) -> str:
        changes: list[Change] = []
        query = {"labelSelector": self._selector, "limit": str(PAGE_SIZE)}
        while True:
            page = self._lister(self._path(scope), query)
            changes += [change for pod in page.get("items") or [] if (change := self._change(pod, "ADDED"))]
            metadata = page.get("metadata") or {}
            if not metadata.get("continue"):
                break
            query = {**query, "continue": metadata["continue"]}
        self._hand_over(scope, changes, listing=True)
        return str(metadata.get("resourceVersion") or "")

    def _watch(self, scope: str | None, version: str) -> str:
        """Follow the watch until the server ends it; the last resourceVersion seen."""
        query = {
            "labelSelector": self._selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        for event in self._watcher(self._path(scope), query, WATCH_SECONDS + 30):
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(obj.get("message"))
                raise RuntimeError(f"watch error: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind != "BOOKMARK" and (change := self._change(obj, kind)):
                self._hand_over(scope, [change])
        return version

    def _change(self, pod: dict[str, Any], kind: object) -> Change | None:
        metadata = pod.get("metadata") or {}
        namespace = metadata.get("namespace", "")
        if self._patterns and not self._watched(namespace):
            return None
        return (namespace, metadata.get("name", "")), None if kind == "DELETED" else pod_view(pod)

    def _watched(self, namespace: str) -> bool:
        return namespace in self._exact or any(fnmatch.fnmatchcase(namespace, p) for p in self._patterns)

    def _hand_over(self, scope: str | None, changes: list[Change], *, listing: bool = False) -> None:
        assert self._loop is not None
        if self._loop.is_closed():  # the operator is shutting down
            self._stop.set()
            return
        self._loop.call_soon_threadsafe(lambda: self.apply(scope, changes, listing=listing))
