"""The plain-HTTP probe and metrics listener: what /healthz, /readyz and /metrics answer, that liveness is answered by
the event loop itself (a blocked loop fails it), that the controller serves it without the operator API, that the API
keeps the same three paths, and the `sluice controller` flags that configure it."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from rollout.api import ApiServer
from rollout.auth import Reviewer
from rollout.cli import UsageError, _parser, controller_settings, main
from rollout.controller import Controller
from rollout.kube import KubeClient
from rollout.metrics import Metrics
from rollout.probes import ProbeServer
from rollout.reporting import Reporter
from rollout.settings import ApiSettings, MetricsSettings, Settings
from rollout.watching import Store
from tests.unit.polling import eventually

LOOPBACK = MetricsSettings(address="127.0.0.1", port=0)




@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def fetch(http: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with http.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def test_the_listener_answers_liveness_readiness_and_metrics(http: aiohttp.ClientSession) -> None:
    synced = False
    metrics = Metrics(Store())
    server = ProbeServer(LOOPBACK, metrics=metrics, ready=lambda: synced)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert await fetch(http, f"{base}/healthz") == (200, "application/json; charset=utf-8", '{"status": "ok"}')
        status, _, body = await fetch(http, f"{base}/readyz")
        assert (status, json.loads(body)) == (503, {"error": {
            "code": 503, "message": "not ready: the watches have not synced yet"}})
        synced = True
        assert (await fetch(http, f"{base}/readyz"))[0] == 200
        status, content_type, body = await fetch(http, f"{base}/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        assert "sluice_leader 1.0" in body and "# TYPE sluice_rollouts gauge" in body
        assert "sluice_api_requests_total{" not in body  # probes and scrapes are not API requests
        assert (await fetch(http, f"{base}/api/v1/rollouts"))[0] == 404  # nothing else is served here
    finally:
        await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(http, f"http://127.0.0.1:{server.port}/healthz")


def _status_within(url: str, seconds: float) -> int | str:
    try:
        with urllib.request.urlopen(url, timeout=seconds) as response:
            return int(response.status)
    except TimeoutError:
        return "timeout"
    except urllib.error.URLError as exc:
        return "timeout" if isinstance(exc.reason, TimeoutError) else str(exc)


async def test_liveness_is_answered_by_the_event_loop_so_a_blocked_loop_fails_it() -> None:
    server = ProbeServer(LOOPBACK, metrics=Metrics(), ready=lambda: True)
    await server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/healthz"
        assert await asyncio.to_thread(_status_within, url, 5.0) == 200
        probe = asyncio.get_running_loop().run_in_executor(None, _status_within, url, 0.5)
        time.sleep(1.5)  # noqa: ASYNC251 - the point: a synchronous call that holds the event loop
        assert await probe == "timeout"
        assert await asyncio.to_thread(_status_within, url, 5.0) == 200  # and answers again once it is free
    finally:
        await server.stop()


class UnsyncedClient:
    """Lists never return: the informers never sync, and nothing else is asked."""

    async def list(self, *args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()


async def test_the_controller_serves_probes_without_the_operator_api(http: aiohttp.ClientSession) -> None:
    controller = Controller(cast(KubeClient, UnsyncedClient()), Settings(metrics=LOOPBACK))
    assert controller.api is None and controller.probes is not None
    run = asyncio.create_task(controller.run())
    try:
        await eventually(lambda: controller.probes is not None and controller.probes.port is not None, within=5)
        assert controller.probes is not None
        port = controller.probes.port
        assert (await fetch(http, f"http://127.0.0.1:{port}/healthz"))[0] == 200
        assert (await fetch(http, f"http://127.0.0.1:{port}/readyz"))[0] == 503  # not synced
    finally:
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch(http, f"http://127.0.0.1:{port}/healthz")


def test_the_operator_api_keeps_its_own_probe_and_metrics_paths() -> None:
    client = cast(KubeClient, object())
    api = ApiServer(client, settings=ApiSettings(address="127.0.0.1"), rollouts=Store(), replica_sets=Store(),
                    analysis_runs=Store(), reviewer=Reviewer(client), metrics=Metrics(),
                    reporter=Reporter(client, component="test"), ready=lambda: False)
    routes = {(route.method, route.resource.canonical) for route in api.app().router.routes()
              if route.resource is not None}
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")} <= routes


# -- flags -----------------------------------------------------------------------------------------------------


def _metrics(*flags: str) -> MetricsSettings:
    settings = controller_settings(_parser().parse_args(["controller", "--api-address", "127.0.0.1", *flags]))
    assert settings.metrics is not None  # `sluice controller` always has the listener
    return settings.metrics


def test_metrics_flags_land_in_the_settings() -> None:
    assert _metrics() == MetricsSettings(address="0.0.0.0", port=9090)
    assert _metrics("--metrics-address", "127.0.0.1", "--metrics-port", "0") == LOOPBACK
    assert _metrics("--metrics-port", "8080", "--metrics-address", "127.0.0.1", "--api-address", "10.0.0.7",
                    "--api-allow-plain-http").port == 8080  # the same port on other addresses is fine


@pytest.mark.parametrize(("flags", "message"), [
    (["--metrics-port", "65536"], "--metrics-port wants 0..65535"),
    (["--metrics-port", "-1"], "--metrics-port wants 0..65535"),
    (["--metrics-port", "8080"], "--metrics-port and --api-port are both 8080"),
    (["--api-port", "9090", "--metrics-address", "127.0.0.1"], "both 9090"),
])
def test_metrics_flags_that_cannot_work_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _metrics(*flags)


def test_a_metrics_port_in_use_stops_the_controller_with_one_line(
        kubeconfig: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["controller", "--kubeconfig", str(kubeconfig), "--api-address", "127.0.0.1", "--api-port", "0",
                     "--metrics-address", "127.0.0.1", "--metrics-port", str(port)])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"sluice: cannot listen for metrics and probes on 127.0.0.1:{port}: ")
    assert err.endswith("(--metrics-port 0 takes a free port)")
