"""Traffic routers: one module per mesh or gateway behind the small `TrafficRouter` Protocol.

A router is built per reconcile for one Rollout (`ROUTERS[name](client, namespace=..., config=..., ...)`), reads
its object once in `verify()`, and then answers `current_weight()` from that read. `set_weight` writes the canary
weight (stable gets the rest); `reset` sends everything to stable. Problems with the user's routing objects (missing,
no route of that name, no destination for our Services) raise `RouterError`, which the reconciler reports as the
InvalidSpec condition. Adding a router is one module and one registry entry, never an if-chain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from rollout.kube import KubeClient


class RouterError(Exception):
    """The routing configuration cannot be used; the message names the object and what is wrong."""


# Returned by current_weight() when the routes disagree or do not add up to 100: the planner then writes its
# weight again, which is how drift (a GitOps tool or a hand edit) gets corrected.
UNKNOWN_WEIGHT = -1


class TrafficRouter(Protocol):
    async def verify(self) -> None: ...

    async def current_weight(self) -> int: ...

    async def set_weight(self, weight: int) -> None: ...

    async def reset(self) -> None: ...


RouterFactory = Callable[..., TrafficRouter]


def make_router(name: str, client: KubeClient, *, namespace: str, config: Mapping[str, Any],
                stable_service: str, canary_service: str) -> TrafficRouter:
    from rollout.routers.istio import IstioRouter

    routers: dict[str, RouterFactory] = {"istio": IstioRouter}
    if name not in routers:
        raise RouterError(f"spec.strategy.canary.trafficRouting: unknown router {name!r} (known: {sorted(routers)})")
    return routers[name](client, namespace=namespace, config=config, stable_service=stable_service,
                         canary_service=canary_service)
