"""Istio host-level traffic split: weights on the stable and canary Service destinations of VirtualService routes.

The user owns the VirtualService; sluice only writes the `weight` of the two destinations in the named HTTP routes
(every HTTP route when none are named), with a JSON Patch whose `test` operations check that the route and
destination are still where we read them, so a concurrent edit makes the patch fail instead of hitting the wrong
route (the reconciler then re-reads and tries again).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollout.kube import VIRTUALSERVICES, ApiError, Body, KubeClient, NotFound
from rollout.routers import UNKNOWN_WEIGHT, RouterError


@dataclass(frozen=True)
class _RouteRef:
    index: int
    name: str
    stable: int  # index of the stable Service's destination in route[]
    canary: int


def _host_is(host: str, service: str, namespace: str) -> bool:
    forms = {service, f"{service}.{namespace}", f"{service}.{namespace}.svc",
             f"{service}.{namespace}.svc.cluster.local"}
    return host in forms


class IstioRouter:
    def __init__(self, client: KubeClient, *, namespace: str, config: Mapping[str, Any], stable_service: str,
                 canary_service: str) -> None:
        vs = config.get("virtualService") or {}
        self._client = client
        self._namespace = namespace
        self._name = str(vs.get("name", ""))
        self._routes = tuple(str(r) for r in vs.get("routes") or ())
        self._stable = stable_service
        self._canary = canary_service
        self._body: Body | None = None
        self._refs: tuple[_RouteRef, ...] = ()

    @property
    def _where(self) -> str:
        return f"VirtualService {self._namespace}/{self._name}"

    async def verify(self) -> None:
        try:
            self._body = await self._client.get(VIRTUALSERVICES, name=self._name, namespace=self._namespace)
        except NotFound as exc:
            raise RouterError(f"{self._where} not found") from exc
        self._refs = self._resolve(self._body)

    def _resolve(self, body: Body) -> tuple[_RouteRef, ...]:
        http = (body.get("spec") or {}).get("http") or []
        by_name = {str(r.get("name", "")): i for i, r in enumerate(http)}
        if self._routes:
            missing = [r for r in self._routes if r not in by_name]
            if missing:
                raise RouterError(f"{self._where} has no HTTP route named {', '.join(map(repr, missing))} "
                                  f"(routes: {sorted(n for n in by_name if n)})")
            indices = [by_name[r] for r in self._routes]
        else:
            indices = list(range(len(http)))
            if not indices:
                raise RouterError(f"{self._where} has no HTTP routes")
        return tuple(self._route_ref(http[i], i) for i in indices)

    def _route_ref(self, route: Mapping[str, Any], index: int) -> _RouteRef:
        name = str(route.get("name", "")) or f"#{index}"
        found: dict[str, int] = {}
        for j, dest in enumerate(route.get("route") or []):
            host = str((dest.get("destination") or {}).get("host", ""))
            for service in (self._stable, self._canary):
                if _host_is(host, service, self._namespace):
                    found.setdefault(service, j)
        for service in (self._stable, self._canary):
            if service not in found:
                raise RouterError(f"route {name!r} of {self._where} has no destination for Service {service!r}")
        return _RouteRef(index, str(route.get("name", "")), found[self._stable], found[self._canary])

    async def current_weight(self) -> int:
        if self._body is None:
            await self.verify()
        assert self._body is not None
        http = self._body["spec"]["http"]
        seen: set[tuple[int, int]] = set()
        for ref in self._refs:
            dests = http[ref.index]["route"]
            seen.add((int(dests[ref.stable].get("weight", 0)), int(dests[ref.canary].get("weight", 0))))
        if len(seen) != 1:
            return UNKNOWN_WEIGHT
        stable, canary = seen.pop()
        if stable + canary != 100 or not 0 <= canary <= 100:
            return UNKNOWN_WEIGHT
        return canary

    async def set_weight(self, weight: int) -> None:
        for attempt in range(3):
            if self._body is None or attempt:
                await self.verify()
            try:
                patched = await self._client.patch(VIRTUALSERVICES, name=self._name, namespace=self._namespace,
                                                   patch=self._patch(weight), patch_type="json")
                # The response is the VirtualService as now stored: the next write in this decision (weight to 0,
                # then up once the canary Service has moved) patches against it without reading it again.
                self._body, self._refs = patched, self._resolve(patched)
                return
            except ApiError as exc:
                if exc.status not in (409, 422) or attempt == 2:
                    raise

    def _patch(self, weight: int) -> list[dict[str, Any]]:
        assert self._body is not None
        http = self._body["spec"]["http"]
        ops: list[dict[str, Any]] = []
        for ref in self._refs:
            base = f"/spec/http/{ref.index}"
            dests = http[ref.index]["route"]
            if ref.name:
                ops.append({"op": "test", "path": f"{base}/name", "value": ref.name})
            for j, value in ((ref.stable, 100 - weight), (ref.canary, weight)):
                host = dests[j]["destination"]["host"]
                ops.append({"op": "test", "path": f"{base}/route/{j}/destination/host", "value": host})
                ops.append({"op": "add", "path": f"{base}/route/{j}/weight", "value": value})
        return ops

    async def reset(self) -> None:
        await self.set_weight(0)
