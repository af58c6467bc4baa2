"""Traffic routers: one module per mesh or gateway behind the small `TrafficRouter` Protocol.

A router is built per reconcile for one Rollout (`make_router(name, client, target)`), reads its object once in
`verify()`, and then answers `current_weight()` from that read. `set_weight` writes the canary weight (stable gets the
rest); `reset` sends everything to stable. Problems with the user's routing objects (missing, no route of that name,
no backend for our Services) raise `RouterError`, which the reconciler reports as the InvalidSpec condition. Adding a
router is one module and one registry entry, never an if-chain.

Routers that choose pods themselves rather than through the stable and canary Services (Istio DestinationRule
subsets) also implement `SubsetRouter`: the planner then reads which pod-template hash each side selects from the
router, and its `SetBackend` actions write the hash into the router as well as into any Service given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from rollout.kube import Body, KubeClient


class RouterError(Exception):
    """The routing configuration cannot be used; the message names the object and what is wrong."""


# Returned by current_weight() when the routes disagree, do not add up to 100, or the object sluice owns is missing:
# the planner then writes its weight again, which is how drift (a GitOps tool or a hand edit) gets corrected.
UNKNOWN_WEIGHT = -1

Role = Literal["stable", "canary"]


@dataclass(frozen=True)
class RouterTarget:
    """What a router works for: the Rollout (its body, for ownerReferences), its namespace, its Services (None when
    subsets choose the pods) and the router's own part of `spec.strategy.canary.trafficRouting`."""

    rollout: Body
    namespace: str
    config: Mapping[str, Any]
    stable_service: str | None
    canary_service: str | None


class TrafficRouter(Protocol):
    async def verify(self) -> None: ...

    async def current_weight(self) -> int: ...

    async def set_weight(self, weight: int) -> None: ...

    async def reset(self) -> None: ...


@runtime_checkable
class SubsetRouter(Protocol):
    """A router whose own object selects the pods of each side (by the `sluice.dev/pod-template-hash` label)."""

    def selected_hash(self, role: Role) -> str | None:
        """The hash the `role` side selects, as read by verify(); None when it selects no revision yet."""
        ...

    async def set_hash(self, role: Role, hash_: str) -> None: ...


RouterFactory = Callable[[KubeClient, RouterTarget], TrafficRouter]


def _registry() -> dict[str, RouterFactory]:
    from rollout.routers.gateway_api import GatewayApiRouter
    from rollout.routers.istio import istio_router
    from rollout.routers.smi import SmiRouter

    return {"istio": istio_router, "smi": SmiRouter, "gatewayAPI": GatewayApiRouter}


def make_router(name: str, client: KubeClient, target: RouterTarget) -> TrafficRouter:
    routers = _registry()
    if name not in routers:
        raise RouterError(f"spec.strategy.canary.trafficRouting: unknown router {name!r} (known: {sorted(routers)})")
    return routers[name](client, target)
