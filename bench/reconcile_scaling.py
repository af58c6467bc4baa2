"""Does a reconcile cost the same with 10 Rollouts as with many? (issue: design for thousands, no full LIST per
reconcile)

Runs the real controller in-process against the local control plane, creates a small fleet (the baseline) and a
fleet ten times larger in separate namespaces, and for each measures:
- API requests per reconcile (GETs of Services/VirtualService, patches, status writes): should stay flat;
- wall time for the whole fleet to reach Healthy, then to walk to the first pause after a new image, per Rollout.

Prints ratios large/baseline measured in the same run (machines are shared and noisy: compare ratios, not seconds).
Usage: `.venv/bin/python bench/reconcile_scaling.py [--small 10] [--factor 10]`.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import aiohttp
from fleet import app_objects

from devcluster.controlplane import ControlPlane
from rollout.controller import Controller
from rollout.kube import NAMESPACES, ROLLOUTS, KubeClient
from rollout.settings import Settings


class CountingClient(KubeClient):
    """Counts requests by method; everything else is the real client."""

    requests: Counter[str]

    async def _send(self, method: str, path: str, **kwargs: Any) -> aiohttp.ClientResponse:
        self.requests[method] += 1
        return await super()._send(method, path, **kwargs)


async def _until(kube: KubeClient, ns: str, count: int, check: Any) -> None:
    while True:
        items, _ = await kube.list(ROLLOUTS, namespace=ns)
        if sum(1 for ro in items if check(ro.get("status") or {})) == count:
            return
        await asyncio.sleep(0.5)


async def _fleet(admin: KubeClient, kubeconfig: str, ns: str, size: int) -> dict[str, float]:
    await admin.create(NAMESPACES, {"metadata": {"name": ns}})
    client = await CountingClient.connect(kubeconfig=kubeconfig)
    assert isinstance(client, CountingClient)
    client.requests = Counter()
    settings = Settings(namespaces=(ns,))
    controller = Controller(client, replace(settings, queue=replace(settings.queue, workers=4)))
    task = asyncio.create_task(controller.run())
    reconciles = 0
    original = controller._reconciler.reconcile

    async def counted(key: Any) -> Any:
        nonlocal reconciles
        reconciles += 1
        return await original(key)

    controller._reconciler.reconcile = counted  # type: ignore[method-assign]
    try:
        started = time.monotonic()
        for i in range(size):
            for resource, body in app_objects(f"app{i}", [{"setWeight": 50}, {"pause": {}}]):
                await admin.create(resource, body, namespace=ns)
        await _until(admin, ns, size, lambda st: st.get("phase") == "Healthy")
        healthy = time.monotonic() - started
        started = time.monotonic()
        for i in range(size):
            await admin.patch(ROLLOUTS, name=f"app{i}", namespace=ns, patch_type="json", patch=[
                {"op": "replace", "path": "/spec/template/spec/containers/0/image",
                 "value": "registry.example/app:2"}])
        await _until(admin, ns, size, lambda st: st.get("currentStepIndex") == 1 and st.get("phase") == "Paused")
        walked = time.monotonic() - started
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await admin.delete(NAMESPACES, name=ns)
    total = sum(client.requests.values())
    return {"rollouts": size, "reconciles": reconciles, "requests": total,
            "requests_per_reconcile": total / max(reconciles, 1),
            "healthy_s_per_rollout": healthy / size, "walk_s_per_rollout": walked / size}


async def main(small: int, factor: int) -> None:
    with ControlPlane() as control_plane:
        admin = await KubeClient.connect(kubeconfig=str(control_plane.kubeconfig))
        try:
            base = await _fleet(admin, str(control_plane.kubeconfig), "bench-small", small)
            large = await _fleet(admin, str(control_plane.kubeconfig), "bench-large", small * factor)
        finally:
            await admin.close()
    print(f"{'metric':<26}{'baseline':>12}{'large':>12}{'ratio':>8}")
    for key in ("rollouts", "reconciles", "requests", "requests_per_reconcile", "healthy_s_per_rollout",
                "walk_s_per_rollout"):
        ratio = large[key] / base[key] if base[key] else float("nan")
        print(f"{key:<26}{base[key]:>12.3f}{large[key]:>12.3f}{ratio:>8.2f}")
    print("requests_per_reconcile ratio ~1.0 means no per-reconcile cost grows with the number of Rollouts")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--factor", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(main(args.small, args.factor))
