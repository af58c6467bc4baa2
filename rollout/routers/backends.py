"""What the routers share: finding the stable and canary backends in a user's routes, reading their weights, writing
them with a guarded JSON Patch, and retrying a write whose object moved under it.

The Istio router (VirtualService `spec.http[].route[]`) and the Gateway API router (HTTPRoute
`spec.rules[].backendRefs[]`) both split traffic with a list of routes, each holding a weighted list of backends;
`Layout` says where those lists are in one kind, and a `Backend` says how one side is recognised (a Service host, a
DestinationRule subset, a Service backendRef); `RoutedWeights` is the router part both build on (read the object,
judge and write the weights). The SMI router owns its whole object and only needs `agreed_weight` and
`write_optimistically`. The functions are pure except `write_optimistically`, which only calls what it is given.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollout.kube import ApiError, Body, KubeClient, NotFound, Resource
from rollout.routers import UNKNOWN_WEIGHT, RouterError

# A write is tried this often: the first against what verify() read, the others after reading again.
ATTEMPTS = 3
JsonPatch = list[dict[str, Any]]


@dataclass(frozen=True)
class Layout:
    """Where one kind keeps its routes and each route's weighted backends, and how messages name them."""

    routes: tuple[str, ...]  # the path of the route list: ("spec", "http")
    backends: str  # the key of the weighted list in each route: "route", "backendRefs"
    route_kind: str  # how a missing name is reported: "HTTP route", "rule"
    route_noun: str  # how one route is named in a message: "route", "rule"
    backend_noun: str  # "destination", "backendRef"
    default_weight: int  # what an absent weight means (Gateway API: 1)


@dataclass(frozen=True)
class Backend:
    """How one side (stable or canary) is recognised among a route's backends, and how a message names it."""

    description: str  # "Service 'web-stable'"
    matches: Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True)
class SplitRef:
    """One route sluice splits: its index in the route list, its name ("" when unnamed) and the indices of the
    stable and canary backends in its weighted list."""

    index: int
    name: str
    stable: int
    canary: int


def pointer(*parts: str | int) -> str:
    """A JSON Pointer (RFC 6901) with `~` and `/` in a part escaped: `.../labels/sluice.dev~1pod-template-hash`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def routes_of(body: Mapping[str, Any], layout: Layout) -> list[Any]:
    node: Any = body
    for key in layout.routes:
        node = (node or {}).get(key) if isinstance(node, Mapping) else None
    return node if isinstance(node, list) else []


def resolve(body: Mapping[str, Any], layout: Layout, *, names: Sequence[str], stable: Backend, canary: Backend,
            where: str) -> tuple[SplitRef, ...]:
    """The routes to split (those named, or all) with the position of each side's backend; RouterError naming the
    route and the backend when one is missing."""
    routes = routes_of(body, layout)
    by_name = {str(r.get("name", "")): i for i, r in enumerate(routes) if isinstance(r, Mapping)}
    if names:
        missing = [n for n in names if n not in by_name]
        if missing:
            raise RouterError(f"{where} has no {layout.route_kind} named {', '.join(map(repr, missing))} "
                              f"({layout.route_noun}s: {sorted(n for n in by_name if n)})")
        indices = [by_name[n] for n in names]
    else:
        indices = list(range(len(routes)))
        if not indices:
            raise RouterError(f"{where} has no {layout.route_kind}s")
    return tuple(_split_ref(routes[i], i, layout, stable=stable, canary=canary, where=where) for i in indices)


def _split_ref(route: Any, index: int, layout: Layout, *, stable: Backend, canary: Backend,
               where: str) -> SplitRef:
    route = route if isinstance(route, Mapping) else {}
    name = str(route.get("name", ""))
    label = repr(name) if name else f"#{index}"
    entries = route.get(layout.backends) or []
    found: list[int] = []
    for side in (stable, canary):
        position = next((j for j, e in enumerate(entries) if isinstance(e, Mapping) and side.matches(e)), None)
        if position is None:
            raise RouterError(f"{layout.route_noun} {label} of {where} has no {layout.backend_noun} "
                              f"for {side.description}")
        found.append(position)
    if found[0] == found[1]:
        raise RouterError(f"{layout.route_noun} {label} of {where}: the stable and canary sides are the "
                          f"same {layout.backend_noun} ({stable.description}, {canary.description})")
    return SplitRef(index, name, found[0], found[1])


def agreed_weight(pairs: Iterable[tuple[int, int]]) -> int:
    """The canary weight when every (stable, canary) pair is the same and adds up to 100; else UNKNOWN_WEIGHT, so
    the planner writes its weight again."""
    seen = set(pairs)
    if len(seen) != 1:
        return UNKNOWN_WEIGHT
    stable, canary = seen.pop()
    if stable + canary != 100 or not 0 <= canary <= 100:
        return UNKNOWN_WEIGHT
    return canary


def _weight(entry: Mapping[str, Any], layout: Layout) -> int:
    value = entry.get("weight")
    try:
        return layout.default_weight if value is None else int(value)
    except (TypeError, ValueError):
        return UNKNOWN_WEIGHT


def current_weight(body: Mapping[str, Any], layout: Layout, refs: Sequence[SplitRef]) -> int:
    routes = routes_of(body, layout)
    pairs = []
    for ref in refs:
        entries = routes[ref.index][layout.backends]
        pairs.append((_weight(entries[ref.stable], layout), _weight(entries[ref.canary], layout)))
    return agreed_weight(pairs)


def weight_patch(body: Mapping[str, Any], layout: Layout, refs: Sequence[SplitRef], weight: int) -> JsonPatch:
    """Set canary=weight, stable=100-weight in every split route, nothing else. `test` operations check that each
    route (by name) and each backend (whole, as read) is still where we read it: after a concurrent edit the patch
    fails (422) instead of writing the wrong backend."""
    routes = routes_of(body, layout)
    ops: JsonPatch = []
    for ref in refs:
        route = routes[ref.index]
        if ref.name:
            ops.append({"op": "test", "path": pointer(*layout.routes, ref.index, "name"), "value": ref.name})
        for j, value in ((ref.stable, 100 - weight), (ref.canary, weight)):
            entry = route[layout.backends][j]
            ops.append({"op": "test", "path": pointer(*layout.routes, ref.index, layout.backends, j), "value": entry})
            ops.append({"op": "add", "path": pointer(*layout.routes, ref.index, layout.backends, j, "weight"),
                        "value": value})
    return ops


async def write_optimistically(*, read: Callable[[], Awaitable[None]], write: Callable[[], Awaitable[Body]],
                               keep: Callable[[Body], None], fresh: bool) -> None:
    """`write` against the last read (`fresh`: verify() has run), reading again first when not, and after a 409
    (resourceVersion moved) or 422 (a `test` failed), up to ATTEMPTS times. The written object goes to `keep`: a
    second write in the same reconcile (weight to 0, then up once the canary has moved) needs no read."""
    for attempt in range(ATTEMPTS):
        if attempt or not fresh:
            await read()
        try:
            written = await write()
        except ApiError as exc:
            if exc.status not in (409, 422) or attempt == ATTEMPTS - 1:
                raise
            continue
        keep(written)
        return


class RoutedWeights:
    """A router over a user-owned object whose routes hold the two weights: `verify` reads it and finds the routes,
    `current_weight` judges them, `set_weight` writes a guarded patch. Subclasses say which object (`resource`,
    `layout`) and how each side is recognised (`_sides`)."""

    resource: Resource
    layout: Layout

    def __init__(self, client: KubeClient, *, name: str, namespace: str, routes: Sequence[str]) -> None:
        self._client = client
        self._name = name
        self._object_namespace = namespace
        self._route_names = tuple(routes)
        self._body: Body | None = None
        self._refs: tuple[SplitRef, ...] = ()

    @property
    def _where(self) -> str:
        return f"{self.resource.kind} {self._object_namespace}/{self._name}"

    def _sides(self) -> tuple[Backend, Backend]:
        raise NotImplementedError

    async def verify(self) -> None:
        try:
            body = await self._client.get(self.resource, name=self._name, namespace=self._object_namespace)
        except NotFound as exc:
            raise RouterError(f"{self._where} not found") from exc
        self._keep(body)

    def _keep(self, body: Body) -> None:
        stable, canary = self._sides()
        self._refs = resolve(body, self.layout, names=self._route_names, stable=stable, canary=canary,
                             where=self._where)
        self._body = body

    async def current_weight(self) -> int:
        if self._body is None:
            await self.verify()
        assert self._body is not None
        return current_weight(self._body, self.layout, self._refs)

    async def set_weight(self, weight: int) -> None:
        async def write() -> Body:
            assert self._body is not None
            return await self._client.patch(self.resource, name=self._name, namespace=self._object_namespace,
                                            patch=weight_patch(self._body, self.layout, self._refs, weight),
                                            patch_type="json")

        await write_optimistically(read=self.verify, write=write, keep=self._keep, fresh=self._body is not None)

    async def reset(self) -> None:
        await self.set_weight(0)
