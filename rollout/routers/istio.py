"""Istio traffic split: weights on the stable and canary destinations of VirtualService routes, chosen by host
(`IstioRouter`: the stable and canary Services) or by DestinationRule subset (`IstioSubsetRouter`).

The user owns the VirtualService; sluice only writes the `weight` of the two destinations in the named HTTP routes
(every HTTP route when none are named), with a JSON Patch whose `test` operations check that the route and
destinations are still where we read them, so a concurrent edit makes the patch fail instead of hitting the wrong
route (the router then re-reads and tries again; see rollout/routers/backends.py, shared with Gateway API).

With `destinationRule`, the pods of each side are chosen by the DestinationRule's two subsets rather than by
Services: sluice writes the `sluice.dev/pod-template-hash` label into each subset's `labels` (the planner asks for it
only once that revision's pods are available) and matches VirtualService destinations by `subset` and the
DestinationRule's host. That router is a `SubsetRouter`; `istio_router` picks the class, so the host-level router
never claims to be one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout.kube import DESTINATIONRULES, VIRTUALSERVICES, Body, KubeClient, NotFound, Resource
from rollout.routers import Role, RouterError, RouterTarget, TrafficRouter
from rollout.routers.backends import Backend, JsonPatch, Layout, RoutedWeights, pointer, write_optimistically
from strategies.model import HASH_LABEL

LAYOUT = Layout(routes=("spec", "http"), backends="route", route_kind="HTTP route", route_noun="route",
                backend_noun="destination", default_weight=0)


def service_fqdn(host: str, namespace: str) -> str:
    """A Service host in its long form, as Istio reads short names (relative to the object's namespace)."""
    parts = host.split(".")
    if len(parts) == 1:
        return f"{host}.{namespace}.svc.cluster.local"
    if len(parts) == 2:
        return f"{host}.svc.cluster.local"
    if len(parts) == 3 and parts[2] == "svc":
        return f"{host}.cluster.local"
    return host


def _destination(entry: Mapping[str, Any]) -> Mapping[str, Any]:
    dest = entry.get("destination")
    return dest if isinstance(dest, Mapping) else {}


def service_backend(service: str, namespace: str) -> Backend:
    """A destination whose host is `service` (in any short or long form)."""
    wanted = service_fqdn(service, namespace)
    return Backend(f"Service {service!r}",
                   lambda e: service_fqdn(str(_destination(e).get("host", "")), namespace) == wanted)


def subset_backend(subset: str, host: str, namespace: str) -> Backend:
    """A destination to `subset` of the DestinationRule's `host` (in any short or long form)."""
    wanted = service_fqdn(host, namespace)
    return Backend(f"subset {subset!r} of host {host!r}",
                   lambda e: (str(_destination(e).get("subset", "")) == subset
                              and service_fqdn(str(_destination(e).get("host", "")), namespace) == wanted))


def subset_hash_patch(rule: Mapping[str, Any], index: int, hash_: str) -> JsonPatch:
    """Set the hash label of the subset at `index`, testing that it is still that subset; a subset without labels
    gets them (tested whole, so labels someone added meanwhile are not replaced)."""
    subset = rule["spec"]["subsets"][index]
    ops: JsonPatch = [{"op": "test", "path": pointer("spec", "subsets", index, "name"), "value": subset["name"]}]
    if isinstance(subset.get("labels"), Mapping):
        ops.append({"op": "add", "path": pointer("spec", "subsets", index, "labels", HASH_LABEL), "value": hash_})
    else:
        ops.append({"op": "test", "path": pointer("spec", "subsets", index), "value": subset})
        ops.append({"op": "add", "path": pointer("spec", "subsets", index, "labels"), "value": {HASH_LABEL: hash_}})
    return ops


class IstioRouter(RoutedWeights):
    """Host-level split: destinations are the stable and canary Services."""

    resource = VIRTUALSERVICES
    layout = LAYOUT

    def __init__(self, client: KubeClient, target: RouterTarget) -> None:
        vs = target.config.get("virtualService") or {}
        super().__init__(client, name=str(vs.get("name", "")), namespace=target.namespace,
                         routes=[str(r) for r in vs.get("routes") or ()])
        self._namespace = target.namespace
        self._stable = target.stable_service or ""
        self._canary = target.canary_service or ""

    async def _get(self, resource: Resource, name: str) -> Body:
        try:
            return await self._client.get(resource, name=name, namespace=self._namespace)
        except NotFound as exc:
            raise RouterError(f"{resource.kind} {self._namespace}/{name} not found") from exc

    def _sides(self) -> tuple[Backend, Backend]:
        return service_backend(self._stable, self._namespace), service_backend(self._canary, self._namespace)


class IstioSubsetRouter(IstioRouter):
    """Subset-level split: destinations are two subsets of a DestinationRule whose labels sluice sets."""

    def __init__(self, client: KubeClient, target: RouterTarget) -> None:
        super().__init__(client, target)
        rule = target.config.get("destinationRule") or {}
        self._rule_name = str(rule.get("name", ""))
        self._subsets: dict[Role, str] = {"stable": str(rule.get("stableSubsetName", "")),
                                          "canary": str(rule.get("canarySubsetName", ""))}
        self._rule: Body | None = None
        self._index: dict[Role, int] = {}

    @property
    def _rule_where(self) -> str:
        return f"DestinationRule {self._namespace}/{self._rule_name}"

    async def verify(self) -> None:
        # The DestinationRule first: its host is what the VirtualService's destinations must name.
        await self._read_rule()
        await super().verify()

    async def _read_rule(self) -> None:
        self._keep_rule(await self._get(DESTINATIONRULES, self._rule_name))

    def _keep_rule(self, body: Body) -> None:
        spec = body.get("spec") or {}
        if not spec.get("host"):
            raise RouterError(f"{self._rule_where} has no spec.host")
        subsets = spec.get("subsets") or []
        by_name = {str(s.get("name", "")): i for i, s in enumerate(subsets) if isinstance(s, Mapping)}
        if self._subsets["stable"] == self._subsets["canary"]:
            raise RouterError(f"{self._rule_where}: stableSubsetName and canarySubsetName are both "
                              f"{self._subsets['stable']!r}; they need two subsets")
        missing = [name for name in self._subsets.values() if name not in by_name]
        if missing:
            raise RouterError(f"{self._rule_where} has no subset named {', '.join(map(repr, missing))} "
                              f"(subsets: {sorted(n for n in by_name if n)})")
        self._index = {role: by_name[name] for role, name in self._subsets.items()}
        self._rule = body

    def _sides(self) -> tuple[Backend, Backend]:
        assert self._rule is not None
        host = str(self._rule["spec"]["host"])
        return (subset_backend(self._subsets["stable"], host, self._namespace),
                subset_backend(self._subsets["canary"], host, self._namespace))

    def selected_hash(self, role: Role) -> str | None:
        if self._rule is None:
            return None
        labels = self._rule["spec"]["subsets"][self._index[role]].get("labels")
        value = labels.get(HASH_LABEL) if isinstance(labels, Mapping) else None
        return str(value) if value is not None else None

    async def set_hash(self, role: Role, hash_: str) -> None:
        async def write() -> Body:
            assert self._rule is not None
            return await self._client.patch(DESTINATIONRULES, name=self._rule_name, namespace=self._namespace,
                                            patch=subset_hash_patch(self._rule, self._index[role], hash_),
                                            patch_type="json")

        await write_optimistically(read=self._read_rule, write=write, keep=self._keep_rule,
                                   fresh=self._rule is not None)


def istio_router(client: KubeClient, target: RouterTarget) -> TrafficRouter:
    """The registry's "istio" entry: subset-level with a destinationRule, host-level without."""
    if target.config.get("destinationRule"):
        return IstioSubsetRouter(client, target)
    return IstioRouter(client, target)
