"""Gateway API traffic split: the weights of the stable and canary Service backendRefs of an HTTPRoute.

The user owns the HTTPRoute (`gateway.networking.k8s.io/v1`), in the Rollout's namespace or in `namespace`; sluice
only writes `weight` on the two backendRefs in the named rules (every rule when none are named), with a guarded JSON
Patch like the Istio router's (rollout/routers/backends.py), touching nothing else. Who the route's parent is does not
matter to sluice: a Gateway (north-south) and a Service (GAMMA mesh mode, as Linkerd uses it) are split the same way.

A backendRef is one of ours when it names the Service (group "" and kind Service, both the API's defaults) in the
Rollout's namespace: its own `namespace`, or the route's when it has none. Gateway API weights are proportions and an
absent weight means 1, so a route written without weights reads as UNKNOWN_WEIGHT and gets sluice's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollout.kube import HTTPROUTES, KubeClient
from rollout.routers import RouterTarget
from rollout.routers.backends import Backend, Layout, RoutedWeights

LAYOUT = Layout(routes=("spec", "rules"), backends="backendRefs", route_kind="rule", route_noun="rule",
                backend_noun="backendRef", default_weight=1)


def is_service_ref(ref: Mapping[str, Any], service: str, *, namespace: str, route_namespace: str) -> bool:
    """Whether a backendRef points at `service` in `namespace` (a ref without namespace is in the route's)."""
    return (str(ref.get("group") or "") == ""
            and str(ref.get("kind") or "Service") == "Service"
            and ref.get("name") == service
            and str(ref.get("namespace") or route_namespace) == namespace)


def service_ref(service: str, *, namespace: str, route_namespace: str) -> Backend:
    return Backend(f"Service {service!r}" if namespace == route_namespace else f"Service {namespace}/{service}",
                   lambda ref: is_service_ref(ref, service, namespace=namespace, route_namespace=route_namespace))


class GatewayApiRouter(RoutedWeights):
    resource = HTTPROUTES
    layout = LAYOUT

    def __init__(self, client: KubeClient, target: RouterTarget) -> None:
        route_namespace = str(target.config.get("namespace") or target.namespace)
        super().__init__(client, name=str(target.config.get("httpRoute", "")), namespace=route_namespace,
                         routes=[str(r) for r in target.config.get("rules") or ()])
        self._stable = service_ref(target.stable_service or "", namespace=target.namespace,
                                   route_namespace=route_namespace)
        self._canary = service_ref(target.canary_service or "", namespace=target.namespace,
                                   route_namespace=route_namespace)

    def _sides(self) -> tuple[Backend, Backend]:
        return self._stable, self._canary
