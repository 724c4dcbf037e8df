"""Informers (controller-runtime's, in small): objects listed, then watched, selected server-side by label,
held as parsed values under index keys; every change is handed to a callback on the event loop.

The operator runs two: PaxJobs by (namespace, name), and gang pods as PodViews by controller owner UID and
by (namespace, job-name label). Not kopf indices: kopf's per-event machinery (causes, loggers, progress
state, handler invocation) was over a third of the operator's CPU at 1,000 jobs × 4 pods (py-spy); an event
is a JSON line parsed in a watch thread and a dict update on the loop. kopf keeps the PaxSweeps.

One watch thread per scope (a namespace, or the cluster): list (paged), then watch from the list's
resourceVersion with bookmarks; a 410 (the version was compacted away) lists again, at once the first time,
after the backoff while 410s follow with no watch in between (a scope whose paged LIST outlasts etcd's
compaction would otherwise LIST in a loop); any other failure retries the watch with a capped backoff (never
sooner than a 429's or 5xx's Retry-After asked), and so does a watch that ends at once with no event (not
again at once: a busy loop). `synced` is set once every scope has
its first listing: the work queue waits for it, so no reconcile sees a PaxJob without its pods.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from pax_operator.adapters.kube import retry_after

log = logging.getLogger(__name__)

type ObjectId = tuple[str, str]  # (namespace, name)
type Event[V] = tuple[str, ObjectId, V]  # (ADDED | MODIFIED | DELETED, id, parsed value)
# (path, query) → one page of a LIST; (path, query, read timeout) → the watch's events
type Lister = Callable[[str, dict[str, str]], dict[str, Any]]
type Watcher = Callable[[str, dict[str, str], float], Iterator[dict[str, Any]]]

PAGE_SIZE = 500
WATCH_SECONDS = 300  # the server ends each watch after this; the client gives up on silence 30 s later
RETRY_SECONDS = (0.5, 30.0)  # a failed list/watch is retried after 0.5 s, doubling to 30 s


SHORT_WATCH_SECONDS = 1.0  # a watch that ends sooner with no event failed (client-go's "very short watch")


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class ListExpired(Exception):
    """A paged LIST's continue token expired (410): its snapshot was compacted before the last page."""


class ShortWatch(Exception):
    """The watch ended at once with nothing in it (something between us and the apiserver cut it): retried
    after the backoff, as a failure, not again at once."""


class Informer[V](Mapping[Hashable, Iterable[V]]):
    """A cache read on the event loop (key → the values indexed under it), fed by watch threads.

    `collection(scope)` is the REST path of the objects in a namespace (None: the cluster); `parse` turns an
    API object into the value kept; `keys(namespace, value)` are the index keys it is found under;
    `on_event(kind, namespace, value)` runs on the loop for every ADDED, MODIFIED and DELETED (a relist's
    vanished objects come as DELETED with their last value, and so does an object a relist finds under the
    same name with another UID, before its ADDED).
    """

    def __init__(
        self,
        lister: Lister,
        watcher: Watcher,
        *,
        collection: Callable[[str | None], str],
        parse: Callable[[dict[str, Any]], V],
        keys: Callable[[str, V], Iterable[Hashable]],
        on_event: Callable[[str, str, V], None],
        selector: str = "",
        namespaces: Sequence[str] = (),
    ) -> None:
        self._lister, self._watcher, self._collection = lister, watcher, collection
        self._parse, self._keys_of, self._on_event, self._selector = parse, keys, on_event, selector
        self._scopes: list[str | None] = list(dict.fromkeys(namespaces)) or [None]  # -n a -n a: one watch
        self._objects: dict[ObjectId, tuple[V, tuple[Hashable, ...]]] = {}
        self._index: dict[Hashable, dict[ObjectId, V]] = {}
        self._unsynced = len(self._scopes)
        self.synced = asyncio.Event()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- Mapping: what the Cache reads ---------------------------------------------------------------
    def __getitem__(self, key: Hashable) -> Iterable[V]:
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
            name = f"pax-watch-{self._collection(scope)}"
            threading.Thread(target=self._run, args=(scope,), name=name, daemon=True).start()

    def stop(self) -> None:
        """The watch threads end at their next event or retry (daemon threads: nothing waits for them)."""
        self._stop.set()

    # -- on the loop: apply what a watch thread read -------------------------------------------------
    def apply(
        self, scope: str | None, events: Sequence[tuple[str, ObjectId, V]], *, listing: bool = False
    ) -> None:
        """Apply (kind, id, value) events to the index; a listing replaces everything in its scope."""
        if listing:
            listed = {object_id for _, object_id, _ in events}
            gone = [i for i in self._objects if (scope is None or i[0] == scope) and i not in listed]
            events = [*(("DELETED", i, self._objects[i][0]) for i in gone), *events]
        for kind, object_id, value in events:
            old = self._remove(object_id)
            if kind == "DELETED":
                if old is not None:  # its last value: what the callback knew it by
                    self._on_event(kind, object_id[0], old)
                continue
            if old is not None and _uid(old) != _uid(value):  # deleted and made again while unwatched
                self._on_event("DELETED", object_id[0], old)  # (a relist): the old one is gone too
            keys = tuple(self._keys_of(object_id[0], value))
            self._objects[object_id] = (value, keys)
            for key in keys:
                self._index.setdefault(key, {})[object_id] = value
            self._on_event(kind, object_id[0], value)
        if listing and not self.synced.is_set():
            self._unsynced -= 1
            if self._unsynced == 0:
                self.synced.set()

    def _remove(self, object_id: ObjectId) -> V | None:
        old = self._objects.pop(object_id, None)
        if old is None:
            return None
        for key in old[1]:
            entries = self._index[key]
            entries.pop(object_id, None)
            if not entries:
                del self._index[key]
        return old[0]

    # -- in a watch thread ---------------------------------------------------------------------------
    def _run(self, scope: str | None) -> None:
        version: str | None = None
        delay = RETRY_SECONDS[0]
        expired = 0  # 410s in a row with no watch followed in between: a listing too slow for compaction
        while not self._stop.is_set():
            try:
                if version is None:
                    version = self._list(scope)
                version = self._watch(scope, version)
                delay, expired = RETRY_SECONDS[0], 0
            except Gone:  # in the stream: the watch ran, and its version aged out
                version, expired = None, 0
            except Exception as err:  # the apiserver restarting, a cut stream, a timeout: try again
                if isinstance(err, ListExpired) or getattr(err, "status", None) == 410:
                    # A LIST's continue token, or the listed version at the watch's start, compacted away.
                    # The first relists at once (client-go); again means the scope takes longer to list
                    # than etcd keeps versions: back off rather than LIST everything in a loop.
                    version, expired = None, expired + 1
                    if expired == 1:
                        continue
                where, wait = self._collection(scope), max(delay, retry_after(err) or 0.0)
                log.warning("watch %s: %s: %s; again in %.1fs", where, type(err).__name__, err, wait)
                self._stop.wait(wait)
                delay = min(delay * 2, RETRY_SECONDS[1])

    def _list(self, scope: str | None) -> str:
        events: list[Event[V]] = []
        query = {"labelSelector": self._selector, "limit": str(PAGE_SIZE)}
        while True:
            try:
                page = self._lister(self._collection(scope), query)
            except Exception as err:
                if "continue" in query and getattr(err, "status", None) == 410:
                    raise ListExpired(
                        f"the LIST's continue token expired after {len(events)} objects"
                    ) from err
                raise
            events += [self._event("ADDED", obj) for obj in page.get("items") or []]
            metadata = page.get("metadata") or {}
            if not metadata.get("continue"):
                break
            query = {**query, "continue": metadata["continue"]}
        self._hand_over(scope, events, listing=True)
        return str(metadata.get("resourceVersion") or "")

    def _watch(self, scope: str | None, version: str) -> str:
        """Follow the watch until the server ends it; the last resourceVersion seen."""
        query = {
            "labelSelector": self._selector,
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        started, events = time.monotonic(), 0
        for event in self._watcher(self._collection(scope), query, WATCH_SECONDS + 30):
            events += 1
            if self._stop.is_set():
                break
            kind, obj = event.get("type"), event.get("object") or {}
            if kind == "ERROR":
                if obj.get("code") == 410:
                    raise Gone(obj.get("message"))
                raise RuntimeError(f"watch error: {obj.get('message')}")
            version = (obj.get("metadata") or {}).get("resourceVersion") or version
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                self._hand_over(scope, [self._event(kind, obj)])
        if not events and time.monotonic() - started < SHORT_WATCH_SECONDS and not self._stop.is_set():
            raise ShortWatch(f"the watch ended after {time.monotonic() - started:.2f}s with no event")
        return version

    def _event(self, kind: str, obj: dict[str, Any]) -> Event[V]:
        metadata = obj.get("metadata") or {}
        return kind, (metadata.get("namespace", ""), metadata.get("name", "")), self._parse(obj)

    def _hand_over(
        self, scope: str | None, events: list[tuple[str, ObjectId, V]], *, listing: bool = False
    ) -> None:
        assert self._loop is not None
        if self._loop.is_closed():  # the operator is shutting down
            self._stop.set()
            return
        self._loop.call_soon_threadsafe(lambda: self.apply(scope, events, listing=listing))


def _uid(value: object) -> object:
    """The UID of what an informer keeps of an object (its body, or a view with a `uid`), if it has one."""
    if isinstance(value, Mapping):
        return (value.get("metadata") or {}).get("uid")
    return getattr(value, "uid", None)
