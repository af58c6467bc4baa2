"""The objects of one small app the benchmarks create by the hundred: two Services, a VirtualService and a Rollout
with the given steps (one replica, an image that never runs: KWOK makes its pods Ready)."""

from __future__ import annotations

from typing import Any

from rollout.kube import ROLLOUTS, SERVICES, VIRTUALSERVICES, Resource


def app_objects(name: str, steps: list[dict[str, Any]]) -> list[tuple[Resource, dict[str, Any]]]:
    labels = {"app": name}
    service = {"selector": labels, "ports": [{"port": 80}]}
    return [
        (SERVICES, {"metadata": {"name": f"{name}-stable"}, "spec": service}),
        (SERVICES, {"metadata": {"name": f"{name}-canary"}, "spec": service}),
        (VIRTUALSERVICES, {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                           "metadata": {"name": name}, "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                               {"destination": {"host": f"{name}-stable"}, "weight": 100},
                               {"destination": {"host": f"{name}-canary"}, "weight": 0}]}]}}),
        (ROLLOUTS, {"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "metadata": {"name": name}, "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}},
            "strategy": {"canary": {"stableService": f"{name}-stable", "canaryService": f"{name}-canary",
                                    "trafficRouting": {"istio": {"virtualService": {"name": name}}},
                                    "steps": steps}}}}),
    ]
