"""The Kubernetes client edge against a real HTTP server on loopback that answers like an overloaded or failing API
server: temporary errors are retried (Retry-After honoured), permanent ones are not, and errors come out typed."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable

import pytest
from aiohttp import web
from kubernetes_asyncio import client as k8s_client

from rollout.kube import SERVICES, ApiError, Conflict, KubeClient, NotFound
from rollout.settings import RetrySettings

Script = list[Callable[[], web.Response]]


def _status(code: int, reason: str, headers: dict[str, str] | None = None) -> Callable[[], web.Response]:
    body = {"kind": "Status", "status": "Failure", "reason": reason, "message": f"{reason} from the test server",
            "code": code}
    return lambda: web.json_response(body, status=code, headers=headers)


def _ok() -> web.Response:
    return web.json_response({"kind": "Service", "metadata": {"name": "web"}})


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, Script, list[float]]]:
    script: Script = []
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return script.pop(0)() if script else _ok()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", script, arrivals
    await runner.cleanup()


def _client(host: str, *, attempts: int = 4) -> KubeClient:
    configuration = k8s_client.Configuration(host=host)
    return KubeClient(k8s_client.ApiClient(configuration),
                      retry=RetrySettings(attempts=attempts, backoff=(0.01,), request_timeout=5))


async def test_retry_after_from_a_429_is_honoured(server: tuple[str, Script, list[float]]) -> None:
    host, script, arrivals = server
    script.append(_status(429, "TooManyRequests", {"Retry-After": "1"}))
    client = _client(host)
    try:
        body = await client.get(SERVICES, name="web", namespace="default")
    finally:
        await client.close()
    assert body["metadata"]["name"] == "web"
    assert len(arrivals) == 2
    assert arrivals[1] - arrivals[0] >= 0.9  # waited what the server asked for, not the 10 ms backoff


async def test_server_errors_are_retried_until_success(server: tuple[str, Script, list[float]]) -> None:
    host, script, arrivals = server
    script.extend([_status(500, "InternalError"), _status(503, "ServiceUnavailable")])
    client = _client(host)
    try:
        await client.get(SERVICES, name="web", namespace="default")
    finally:
        await client.close()
    assert len(arrivals) == 3


async def test_retries_stop_after_the_configured_attempts(server: tuple[str, Script, list[float]]) -> None:
    host, script, arrivals = server
    script.extend([_status(503, "ServiceUnavailable")] * 5)
    client = _client(host, attempts=3)
    try:
        with pytest.raises(ApiError) as info:
            await client.get(SERVICES, name="web", namespace="default")
    finally:
        await client.close()
    assert info.value.status == 503
    assert info.value.temporary
    assert len(arrivals) == 3


@pytest.mark.parametrize(("code", "reason", "error"), [(404, "NotFound", NotFound), (409, "Conflict", Conflict),
                                                       (403, "Forbidden", ApiError), (422, "Invalid", ApiError)])
async def test_permanent_errors_are_not_retried(server: tuple[str, Script, list[float]], code: int, reason: str,
                                                error: type[ApiError]) -> None:
    host, script, arrivals = server
    script.append(_status(code, reason))
    client = _client(host)
    try:
        with pytest.raises(error) as info:
            await client.get(SERVICES, name="web", namespace="default")
    finally:
        await client.close()
    assert len(arrivals) == 1
    assert info.value.status == code
    assert info.value.reason == reason
    assert "from the test server" in info.value.message
    assert not info.value.temporary


async def test_unreachable_server_is_a_temporary_error() -> None:
    client = _client("http://127.0.0.1:9", attempts=2)  # discard port: nothing listens
    try:
        with pytest.raises(ApiError) as info:
            await client.get(SERVICES, name="web", namespace="default")
    finally:
        await client.close()
    assert info.value.status == 0
    assert info.value.temporary
