"""The real controller's plain-HTTP listener: it announces its URL, is ready once the caches are synced, and its
/metrics carries the alerting gauges (a Rollout paused at a step shows since when, and this process is the leader);
the operator API keeps answering its own /healthz, /readyz and /metrics."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from rollout.kube import KubeClient
from strategies.model import parse_time
from tests.integration.kit import ControllerProcess, condition, create_app, paused_at, set_image, wait_for, wait_status

_ANNOUNCED = re.compile(r"metrics listening on (http://[\d.]+:\d+)")


async def _metrics_url(proc: ControllerProcess) -> str:
    async def announced() -> str | None:
        found = _ANNOUNCED.findall(proc.log_path.read_text(errors="replace")) if proc.log_path.exists() else []
        return found[-1] if found else None

    return await wait_for(announced, timeout=30, what="the metrics listener to be announced")


async def _samples(http: aiohttp.ClientSession, url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    async with http.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


async def test_probes_and_alerting_metrics_on_the_plain_http_listener(
        kube: KubeClient, namespace: str, control_plane: Any, tmp_path: Path) -> None:
    proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                             log_path=tmp_path / "controller.log",
                             extra_args=["--metrics-address", "127.0.0.1", "--metrics-port", "0"])
    proc.start()
    try:
        url = await _metrics_url(proc)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def status(path: str, base: str = url) -> int:
                async with http.get(f"{base}{path}") as response:
                    return response.status

            assert await status("/healthz") == 200
            await wait_for(lambda: _is(status("/readyz"), 200), timeout=30, what="/readyz to answer 200")

            await create_app(kube, namespace)
            await wait_status(kube, namespace, lambda st: st.get("phase") == "Healthy", what="the first version")
            await set_image(kube, namespace, "registry.example/web:2")
            st = await wait_status(kube, namespace, paused_at(1), what="the canary at its first pause")
            paused_since = parse_time(condition(st, "Paused")["lastTransitionTime"])
            assert paused_since is not None

            metrics = await _samples(http, url)
            assert metrics["sluice_leader"] == [({}, 1.0)]
            assert ({"namespace": namespace, "rollout": "web", "type": "Paused", "reason": "CanaryPauseStep"},
                    paused_since.timestamp()) in metrics["sluice_rollout_condition_since_timestamp_seconds"]

            api = await proc.api_url()  # the operator API's own paths still answer
            assert [await status(p, api) for p in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]
    finally:
        proc.stop()


async def _is(code: Any, expected: int) -> bool:
    return bool(await code == expected)
