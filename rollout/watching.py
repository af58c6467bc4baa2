"""Informers: keep a local cache of one resource type in step with the API server, and report what changed.

An `Informer` lists the objects (per namespace, or cluster-wide), then watches from the list's resourceVersion, the
way kopf's `_cogs/clients/watching.py` and client-go's reflector do (STYLE point 7). Each change lands in a `Store`
and is passed to `on_change`, which the controller wires to `WorkQueue.add` (`rollout/queueing.py`). When the server
ends a watch (it does every `WatchSettings.timeout_seconds`), the informer re-watches from the last resourceVersion it
saw, bookmarks included, so nothing is missed and nothing is listed again; only 410 Gone forces a re-list, which is
diffed against the store so objects deleted meanwhile are still reported. Errors back off along
`WatchSettings.error_backoff` and the informer carries on: a watcher never dies while the controller runs.

Some resources are only there on some clusters: the traffic routers' objects (Istio, SMI, Gateway API) need their
CRDs, and the controller's role may not cover them. An `optional` informer treats 404 and 403 as "not here": it logs
once, counts as synced so it never holds up readiness, and looks again every `WatchSettings.unavailable_retry_seconds`,
so installing the CRD later starts the watch. A `transform` shrinks objects before they are stored, for informers
that only need to know that something changed (`metadata_only`).

The reconciler reads Rollouts and their ReplicaSets from stores instead of the API server, and puts the objects its
own writes return, so its next look does not see its own change as missing. `rollout/kube.py` stays the only module
that speaks HTTP; the informer gets it through the small `WatchClient` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Protocol

from rollout.kube import ApiError, Body, Gone, NotFound, Resource, ResourceVersion
from rollout.queueing import ObjectKey
from rollout.settings import WatchSettings

log = logging.getLogger(__name__)

IndexFunc = Callable[[Body], Iterable[ObjectKey]]


def _resource_version(obj: Body) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _newer(candidate: str, current: str) -> bool:
    """Whether resourceVersion `candidate` is newer than `current`.

    Kubernetes calls resourceVersions opaque, but every API server backed by etcd hands out integers that grow, and
    comparing them is the only way to tell a stale event from a fresh write. When either does not parse as an integer
    the candidate wins if it differs: watch events arrive in order, so the latest one is the best guess.
    """
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


class Store:
    """Objects of one resource type by `ObjectKey`, never rolled back to an older resourceVersion.

    `put` keeps an object only if it is newer than the stored one. Two writers feed a store: the informer with watch
    events, and the reconciler with the objects its own writes returned. A watch event for an older version can
    arrive after the reconciler stored the result of its write; taking it would roll the cache back and make the
    next reconcile act on stale state (scale a ReplicaSet twice, write a status again).

    `index` optionally maps an object to the keys it is filed under, for `by_index` lookups: `controller_index`
    files ReplicaSets under the Rollout that controls them.
    """

    def __init__(self, *, index: IndexFunc | None = None) -> None:
        self._objects: dict[ObjectKey, Body] = {}
        self._index_func = index
        self._index: dict[ObjectKey, set[ObjectKey]] = {}
        self._filed_under: dict[ObjectKey, tuple[ObjectKey, ...]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def get(self, key: ObjectKey) -> Body | None:
        return self._objects.get(key)

    def items(self) -> list[tuple[ObjectKey, Body]]:
        return list(self._objects.items())

    def put(self, obj: Body) -> bool:
        """Store `obj` unless the stored version is as new or newer; returns whether the store changed."""
        key = ObjectKey.of(obj)
        current = self._objects.get(key)
        if current is not None and not _newer(_resource_version(obj), _resource_version(current)):
            return False
        self._objects[key] = obj
        self._reindex(key, obj)
        return True

    def delete(self, obj: Body) -> Body | None:
        """Forget the object `obj` names; returns what was stored, or None if nothing (or something newer) was.

        A stored version newer than `obj` is kept: it is an object re-created under the same name after the
        deletion, already stored by the reconciler before the DELETED event for the old one arrived. A body without
        a resourceVersion (the reconciler forgetting what it just deleted) always deletes.
        """
        key = ObjectKey.of(obj)
        current, version = self._objects.get(key), _resource_version(obj)
        if current is None or (version and _newer(_resource_version(current), version)):
            return None
        del self._objects[key]
        self._reindex(key, None)
        return current

    def by_index(self, key: ObjectKey) -> list[Body]:
        """The objects filed under `key` by the index function, sorted by key."""
        return [self._objects[k] for k in sorted(self._index.get(key, ()))]

    def _reindex(self, key: ObjectKey, obj: Body | None) -> None:
        if self._index_func is None:
            return
        for old in self._filed_under.pop(key, ()):
            members = self._index[old]
            members.discard(key)
            if not members:
                del self._index[old]
        if obj is None:
            return
        filed = tuple(dict.fromkeys(self._index_func(obj)))
        if filed:
            self._filed_under[key] = filed
        for index_key in filed:
            self._index.setdefault(index_key, set()).add(key)


def controller_index(kind: str) -> IndexFunc:
    """An index function filing objects under the (namespace, name) of their controller owner of `kind`."""

    def index(obj: Body) -> list[ObjectKey]:
        meta = obj.get("metadata") or {}
        return [
            ObjectKey(namespace=str(meta.get("namespace") or ""), name=str(ref["name"]))
            for ref in meta.get("ownerReferences") or []
            if ref.get("controller") and ref.get("kind") == kind
        ]

    return index


def metadata_only(obj: Body) -> Body:
    """An object cut down to what an informer needs to follow it and name it: apiVersion, kind, and the name,
    namespace, uid and resourceVersion of its metadata (not its labels, annotations or managedFields, which can be
    most of its size)."""
    meta = obj.get("metadata") or {}
    kept: Body = {k: obj[k] for k in ("apiVersion", "kind") if k in obj}
    kept["metadata"] = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion") if k in meta}
    return kept


class WatchClient(Protocol):
    """The part of `rollout.kube.KubeClient` an informer uses."""

    async def list(self, resource: Resource, *, namespace: str | None = None,
                   label_selector: str | None = None) -> tuple[list[Body], ResourceVersion]: ...

    def watch(self, resource: Resource, *, resource_version: ResourceVersion, namespace: str | None = None,
              label_selector: str | None = None, timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Body]]: ...


class Informer:
    """List-then-watch one resource type into a `Store`, per namespace or cluster-wide, until cancelled.

    `optional`: a 404 (not served) or 403 (not allowed) from the list or the watch is logged once (info, warning),
    marks the namespace synced and is retried every `WatchSettings.unavailable_retry_seconds` instead of along the
    error backoff. `fallbacks`: other versions of the same kind, listed in turn when `resource` is not served (the
    first served one is watched). `transform`: applied to every object before it is stored and reported.
    """

    def __init__(self, client: WatchClient, resource: Resource, *, namespaces: tuple[str, ...] = (),
                 label_selector: str | None = None, settings: WatchSettings, store: Store,
                 on_change: Callable[[str, Body], None], optional: bool = False,
                 fallbacks: tuple[Resource, ...] = (), transform: Callable[[Body], Body] | None = None) -> None:
        self.resource = resource
        self.store = store
        self.synced = asyncio.Event()  # set once every namespace has been listed for the first time
        self._client = client
        self._scopes: tuple[str | None, ...] = namespaces if namespaces and resource.namespaced else (None,)
        self._label_selector = label_selector
        self._settings = settings
        self._on_change = on_change
        self._unsynced: set[str | None] = set(self._scopes)
        self._optional = optional
        self._versions = (resource, *fallbacks)
        self._served: dict[str | None, Resource] = {}  # per namespace: the version its last list succeeded with
        # Per namespace, while an optional resource is missing: the status (403, 404) and the verb that met it.
        self._unavailable: dict[str | None, tuple[int, str]] = {}
        self._transform = transform

    async def run(self) -> None:
        """Watch every namespace in its own named task; cancelling `run` stops them all."""
        async with asyncio.TaskGroup() as group:
            for scope in self._scopes:
                group.create_task(self._run_scope(scope), name=f"watch:{self.resource.plural}:{scope or '*'}")

    async def _run_scope(self, namespace: str | None) -> None:
        version: ResourceVersion | None = None
        failures = 0
        while True:
            verb = "list"
            try:
                if version is None:
                    version = await self.relist(namespace)
                    failures = 0
                verb = "watch"
                stream = self._client.watch(
                    self._served.get(namespace, self.resource), resource_version=version, namespace=namespace,
                    label_selector=self._label_selector, timeout_seconds=self._settings.timeout_seconds,
                )
                try:
                    async for event_type, obj in stream:
                        version = self._apply(event_type, obj) or version
                        failures = 0
                        self._available(namespace, "watch")
                finally:
                    await _close(stream)
                self._available(namespace, "watch")
                # The server ended the watch (timeoutSeconds): go on from the last version seen.
            except Gone as exc:
                log.info("watch of %s in %s expired (%s); listing again", self.resource.plural, namespace or "*", exc)
                version = None
            except Exception as exc:  # a watcher must never die: it logs, backs off and retries
                if self._optional and isinstance(exc, ApiError) and exc.status in (403, 404):
                    self._absent(namespace, exc, verb)
                    version, delay = None, self._settings.unavailable_retry_seconds
                else:
                    delay = self._settings.error_backoff[min(failures, len(self._settings.error_backoff) - 1)]
                    failures += 1
                    self._log_failure(exc, namespace, delay)
                    if not isinstance(exc, ApiError):
                        version = None  # something unexpected: do not trust the cache, list again
                await asyncio.sleep(delay)

    def _absent(self, namespace: str | None, exc: ApiError, verb: str) -> None:
        """An optional resource is not served (404) or not allowed (403) in `namespace`: nothing to wait for.

        Logged when the namespace's state changes, and a 404 only once for all namespaces (the resource is missing
        from the whole API server); the retries that find the same are logged at debug level. The state is kept until
        the verb that failed succeeds, so a role that may list but not watch is not reported at every retry.
        """
        before = self._unavailable.get(namespace)
        self._unavailable[namespace] = (exc.status, verb)
        self._mark_synced(namespace)
        retry = self._settings.unavailable_retry_seconds
        elsewhere = any(s == 404 for ns, (s, _) in self._unavailable.items() if ns != namespace)
        if before == (exc.status, verb) or (exc.status == 404 and elsewhere):
            log.debug("%s still unavailable in %s (%s)", self.resource.plural, namespace or "*", exc)
        elif exc.status == 404:
            log.info("the API server does not serve %s (%s; CRD not installed?): not watching them; looking again "
                     "every %gs", self.resource.plural, ", ".join(r.api_version for r in self._versions), retry)
        else:
            log.warning("not allowed to %s %s in %s (%s): not watching them; asking again every %gs", verb,
                        self.resource.plural, namespace or "all namespaces", exc.message, retry)

    def _available(self, namespace: str | None, verb: str) -> None:
        """`verb` worked in `namespace`: if that is what an optional resource was missing for, say it is back."""
        if self._unavailable and self._unavailable.get(namespace, (0, ""))[1] == verb:
            del self._unavailable[namespace]
            log.info("%s in %s can be %sed now: watching them", self.resource.plural,
                     namespace or "all namespaces", verb)

    def _log_failure(self, exc: Exception, namespace: str | None, delay: float) -> None:
        where = f"{self.resource.plural} in {namespace or '*'}"
        if isinstance(exc, NotFound):
            log.error("the API server does not serve %s/%s %s (is its CRD installed?); retrying in %.1fs",
                      self.resource.group or "core", self.resource.version, self.resource.plural, delay)
        elif isinstance(exc, ApiError) and exc.temporary:
            log.warning("watching %s failed (%s); retrying in %.1fs", where, exc, delay)
        elif isinstance(exc, ApiError):
            log.error("watching %s failed (%s); retrying in %.1fs", where, exc, delay)
        else:
            log.exception("watching %s failed unexpectedly; retrying in %.1fs", where, delay)

    async def relist(self, namespace: str | None) -> ResourceVersion:
        """List `namespace` (None: all), make the store match it, report the differences; returns the list's version.

        Run before the first watch and after 410 Gone. Stored objects of that namespace missing from the list are
        deleted and reported as DELETED, unless they are newer than the list (the reconciler stored them after the
        list was taken).
        """
        items, version = await self._list(namespace)
        listed: set[ObjectKey] = set()
        for obj in items:
            key = ObjectKey.of(obj)
            listed.add(key)
            self._apply("MODIFIED" if key in self.store else "ADDED", obj)
        for key, obj in self.store.items():
            if (namespace is not None and key.namespace != namespace) or key in listed:
                continue
            if not _newer(_resource_version(obj), version):
                self._apply("DELETED", obj)
        self._mark_synced(namespace)
        self._available(namespace, "list")
        return version

    async def _list(self, namespace: str | None) -> tuple[list[Body], ResourceVersion]:
        """List the first served of the versions, remembering which one to watch."""
        for resource in self._versions[:-1]:
            with contextlib.suppress(NotFound):
                return await self._list_as(resource, namespace)
        return await self._list_as(self._versions[-1], namespace)

    async def _list_as(self, resource: Resource, namespace: str | None) -> tuple[list[Body], ResourceVersion]:
        listed = await self._client.list(resource, namespace=namespace, label_selector=self._label_selector)
        if resource != self._served.get(namespace, self.resource):
            log.info("%s are served as %s: watching that version", resource.plural, resource.api_version)
        self._served[namespace] = resource
        return listed

    def _mark_synced(self, namespace: str | None) -> None:
        self._unsynced.discard(namespace)
        if not self._unsynced:
            self.synced.set()

    def record(self, obj: Body) -> None:
        """An object as one of our own writes returned it: into the store at once (the next read sees it) and
        reported as the watch event it is, which then arrives to an up-to-date store and reports nothing. A writer
        whose change others must act on (the API's operations, new runs, run results) calls this rather than
        `store.put`, so it reaches `on_change` as anyone else's change would; the reconciler's writes about the
        Rollout it is reconciling use `store.put`, since it is the one that acts on them."""
        self._apply("MODIFIED" if ObjectKey.of(obj) in self.store else "ADDED", obj)

    def _apply(self, event_type: str, obj: Body) -> ResourceVersion | None:
        """Apply one event to the store and report it if the store changed; returns the version to resume from."""
        version = _resource_version(obj)
        if event_type in ("ADDED", "MODIFIED"):
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
        if self._transform is not None and event_type in ("ADDED", "MODIFIED", "DELETED"):
            obj = self._transform(obj)
        if event_type in ("ADDED", "MODIFIED"):
            changed = self.store.put(obj)
        elif event_type == "DELETED":
            changed = self.store.delete(obj) is not None
        else:  # BOOKMARK only moves the version on; anything else is unknown and ignored
            changed = False
            if event_type != "BOOKMARK":
                log.warning("ignoring %s watch event for %s", event_type, self.resource.plural)
        if changed:
            self._report(event_type, obj)
        return ResourceVersion(version) if version else None

    def _report(self, event_type: str, obj: Body) -> None:
        try:
            self._on_change(event_type, obj)
        except Exception:
            log.exception("on_change failed for %s %s", event_type, ObjectKey.of(obj))


async def _close(stream: AsyncIterator[tuple[str, Body]]) -> None:
    """Close a watch stream left early, so its HTTP response is released now rather than when collected."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
