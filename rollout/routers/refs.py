"""Which traffic-router objects a Rollout points at, so a change to one of them wakes the Rollouts that use it.

The controller (rollout/controller.py) files every Rollout in its store under the keys `rollout_index` returns, and
runs one optional informer per kind in `WATCHED`; when one of those objects changes (a GitOps tool or a hand edit
moves a weight, or deletes the object), `Store.by_index(ref_key(kind, obj))` finds the Rollouts to reconcile, which
put sluice's weights back at once instead of at the next resync. Each router reads its own object again when it
runs: these keys only say *who* to wake.

Pure functions over the Rollout body as written: it may not have been validated yet (the index runs on every
Rollout the informer sees), so anything missing or of the wrong type names no object rather than raising. Reading the
spec is one small function per router, chosen through a dict like the routers themselves (routers/__init__.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rollout.kube import DESTINATIONRULES, HTTPROUTES, TRAFFICSPLITS, VIRTUALSERVICES, Body, Resource
from rollout.queueing import ObjectKey


@dataclass(frozen=True, order=True)
class RouterRef:
    """A router object a Rollout uses: its kind ("VirtualService"), namespace and name."""

    kind: str
    namespace: str
    name: str

    @property
    def key(self) -> ObjectKey:
        """The key the Rollout is filed under in the Rollout store's index."""
        return ref_key(self.kind, namespace=self.namespace, name=self.name)


def ref_key(kind: str, *, namespace: str, name: str) -> ObjectKey:
    """Index key of a router object: its namespace, and `Kind/name` (kinds are told apart, names may repeat)."""
    return ObjectKey(namespace=namespace, name=f"{kind}/{name}")


def object_key(kind: str, obj: Body) -> ObjectKey:
    """Index key of a router object body as a watch event brings it."""
    meta = obj.get("metadata") or {}
    return ref_key(kind, namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""))


# The resources watched for each kind, the preferred version first: SMI's TrafficSplit is served as v1alpha1 to
# v1alpha4 depending on the mesh and its version; the informer watches the first one the API server serves.
WATCHED: Mapping[str, tuple[Resource, ...]] = {
    VIRTUALSERVICES.kind: (VIRTUALSERVICES,),
    DESTINATIONRULES.kind: (DESTINATIONRULES,),
    TRAFFICSPLITS.kind: tuple(dataclasses.replace(TRAFFICSPLITS, version=f"v1alpha{n}") for n in (4, 3, 2, 1)),
    HTTPROUTES.kind: (HTTPROUTES,),
}


def _at(value: Any, *path: str) -> Any:
    """What is at `path` in nested mappings, or None when something on the way is missing or not a mapping."""
    for part in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _name(config: Any, *path: str) -> str | None:
    """The non-empty string at `path` in `config`, or None."""
    value = _at(config, *path)
    return value if isinstance(value, str) and value else None


def _istio(config: Mapping[str, Any], namespace: str) -> list[RouterRef]:
    refs = [RouterRef(VIRTUALSERVICES.kind, namespace, _name(config, "virtualService", "name") or ""),
            RouterRef(DESTINATIONRULES.kind, namespace, _name(config, "destinationRule", "name") or "")]
    return [ref for ref in refs if ref.name]


def _smi(config: Mapping[str, Any], namespace: str) -> list[RouterRef]:
    name = _name(config, "trafficSplitName")
    return [RouterRef(TRAFFICSPLITS.kind, namespace, name)] if name else []


def _gateway_api(config: Mapping[str, Any], namespace: str) -> list[RouterRef]:
    name = _name(config, "httpRoute")
    return [RouterRef(HTTPROUTES.kind, _name(config, "namespace") or namespace, name)] if name else []


_REFERENCES: dict[str, Callable[[Mapping[str, Any], str], list[RouterRef]]] = {
    "istio": _istio,
    "smi": _smi,
    "gatewayAPI": _gateway_api,
}


def router_refs(rollout: Body) -> tuple[RouterRef, ...]:
    """The router objects `rollout` names under spec.strategy.canary.trafficRouting, sorted, without duplicates."""
    namespace = _name(rollout, "metadata", "namespace") or ""
    routing = _at(rollout, "spec", "strategy", "canary", "trafficRouting")
    if not isinstance(routing, Mapping):
        return ()
    refs: set[RouterRef] = set()
    for router, config in routing.items():
        references = _REFERENCES.get(router)
        if references is not None and isinstance(config, Mapping):
            refs.update(references(config, namespace))
    return tuple(sorted(refs))


def rollout_index(rollout: Body) -> list[ObjectKey]:
    """The index function of the Rollout store: a Rollout is filed under each router object it uses."""
    return [ref.key for ref in router_refs(rollout)]
