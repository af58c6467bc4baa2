"""What the benchmarks share: the objects of one small app they create by the hundred (two Services, a VirtualService
and a Rollout with the given steps; one replica, an image that never runs: KWOK makes its pods Ready), a process's
CPU and memory from /proc, a nearest-rank percentile, and polling with a deadline."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rollout.kube import ROLLOUTS, SERVICES, VIRTUALSERVICES, Resource

RESOURCES = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}  # passes the guardrails


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
                         "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
                                                         "resources": RESOURCES}]}},
            "strategy": {"canary": {"stableService": f"{name}-stable", "canaryService": f"{name}-canary",
                                    "trafficRouting": {"istio": {"virtualService": {"name": name}}},
                                    "steps": steps}}}}),
    ]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15 of stat(5))


def memory_mb(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


async def wait_until(what: str, within: float, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {within:g}s")
        await asyncio.sleep(0.5)
