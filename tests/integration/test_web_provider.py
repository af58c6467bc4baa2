"""The web and Prometheus providers against real HTTP servers on 127.0.0.1 (no Kubernetes needed).

A small aiohttp app, started per test on a free port, answers like the endpoints metrics meet in practice: JSON,
HTTP 500, slow answers, bodies that are not JSON, and a Prometheus that is broken in the ways Prometheus breaks
(HTTP 400/422/503 with its error JSON, HTML from a proxy, JSON without data.result). A bound socket that is not
listening stands for a Prometheus that is down. Successful Prometheus queries are tested against a real
Prometheus elsewhere, never against this stand-in.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDictProxy

from analysis.providers import Failure, NoData, Value
from analysis.providers.prometheus import PrometheusProvider
from analysis.providers.web import WebProvider

SECRET = "Bearer s3cret-token"


@dataclass
class Endpoint:
    url: str
    release: asyncio.Event  # lets the slow handlers finish, so the server can stop
    seen_headers: list[CIMultiDictProxy[str]] = field(default_factory=list)
    hits: dict[str, int] = field(default_factory=dict)


def prometheus_error(status: int, error_type: str, error: str) -> web.Response:
    return web.json_response({"status": "error", "errorType": error_type, "error": error}, status=status)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    release = asyncio.Event()
    app = web.Application()
    ep = Endpoint(url="", release=release)

    def record(request: web.Request) -> None:
        ep.seen_headers.append(request.headers)
        ep.hits[request.path] = ep.hits.get(request.path, 0) + 1

    async def metrics(request: web.Request) -> web.Response:
        record(request)
        return web.json_response({"data": {"ratio": 0.99, "ok": True, "none": None, "pods": [3, 4]}})

    async def echo(request: web.Request) -> web.Response:
        record(request)
        return web.json_response({"method": request.method, "body": await request.text(),
                                  "contentType": request.headers.get("Content-Type"),
                                  "authorization": request.headers.get("Authorization")})

    async def slow(request: web.Request) -> web.Response:
        record(request)
        await release.wait()
        return web.json_response({"late": True})

    async def fixed(request: web.Request) -> web.StreamResponse:
        record(request)
        answers: dict[str, web.Response] = {
            "/fail": web.Response(status=500, text="database is down\n" + "x" * 500),
            "/unavailable": web.Response(status=503),
            "/html": web.Response(text="<html>maintenance</html>", content_type="text/html"),
            "/null": web.json_response(None),
            "/bad-query/api/v1/query": prometheus_error(400, "bad_data", 'invalid parameter "query": 1:6: parse '
                                                        "error: unexpected end of input"),
            "/too-many-samples/api/v1/query": prometheus_error(422, "execution", "query processing would load too "
                                                               "many samples into memory in query execution"),
            "/broken/api/v1/query": prometheus_error(500, "internal", "storage is corrupt"),
            "/proxy/api/v1/query": web.Response(status=502, text="<html>Bad Gateway</html>"),
            "/not-json/api/v1/query": web.Response(text="<html>login page</html>"),
            "/no-result/api/v1/query": web.json_response({"status": "success"}),
        }
        return answers[request.path]

    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    app.router.add_get("/slow/api/v1/query", slow)
    app.router.add_get("/{tail:.*}", fixed)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    ep.url = f"http://{host}:{port}"
    try:
        yield ep
    finally:
        release.set()
        await runner.cleanup()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on: bound (so nothing else takes it) but not listening, so connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def hang_up_port() -> AsyncIterator[int]:
    """A port whose server reads a request and closes the connection without answering."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # closing before reading would be a reset, not a hang-up
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
async def web_provider() -> AsyncIterator[WebProvider]:
    provider = WebProvider()
    try:
        yield provider
    finally:
        await provider.close()


@pytest.fixture
async def prometheus() -> AsyncIterator[PrometheusProvider]:
    provider = PrometheusProvider(max_workers=4)
    try:
        yield provider
    finally:
        await provider.close()


# -- web ----------------------------------------------------------------------------------------------------------


async def test_web_value_at_json_path(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics", "jsonPath": "$.data.ratio"},
                                         headers={}, timeout=5)
    assert outcome == Value(0.99, display="0.99")


async def test_web_argo_style_json_path_picks_a_list(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics", "jsonPath": "{$.data.pods}"},
                                         headers={}, timeout=5)
    assert outcome == Value([3, 4], display="[3,4]")


async def test_web_without_json_path_the_whole_document_is_the_value(endpoint: Endpoint,
                                                                     web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics", "jsonPath": ""}, headers={}, timeout=5)
    assert isinstance(outcome, Value)
    assert outcome.value == {"data": {"ratio": 0.99, "ok": True, "none": None, "pods": [3, 4]}}
    assert outcome.display == '{"data":{"ratio":0.99,"ok":true,"none":null,"pods":[3,4]}}'


async def test_web_sends_the_headers(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/echo", "jsonPath": "$.authorization"},
                                         headers={"Authorization": SECRET, "X-Team": "payments"}, timeout=5)
    assert outcome == Value(SECRET, display=json.dumps(SECRET))
    assert endpoint.seen_headers[0]["X-Team"] == "payments"


async def test_web_post_sends_a_json_object_as_json(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure(
        {"url": f"{endpoint.url}/echo", "method": "POST", "body": {"service": "web", "window": [5, "m"]}},
        headers={}, timeout=5)
    assert isinstance(outcome, Value) and isinstance(outcome.value, dict)
    assert outcome.value["method"] == "POST" and outcome.value["contentType"] == "application/json"
    assert json.loads(outcome.value["body"]) == {"service": "web", "window": [5, "m"]}


async def test_web_post_sends_a_string_body_as_is_with_the_callers_content_type(
        endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure(
        {"url": f"{endpoint.url}/echo", "method": "POST", "body": "query=up&time=now"},
        headers={"content-type": "application/x-www-form-urlencoded"}, timeout=5)
    assert isinstance(outcome, Value) and isinstance(outcome.value, dict)
    assert outcome.value["body"] == "query=up&time=now"
    assert outcome.value["contentType"] == "application/x-www-form-urlencoded"


async def test_web_null_at_json_path_is_no_data(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics", "jsonPath": "$.data.none"},
                                         headers={}, timeout=5)
    assert outcome == NoData("jsonPath $.data.none is null")


async def test_web_null_document_is_no_data(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/null"}, headers={}, timeout=5)
    assert outcome == NoData("the response is JSON null")


async def test_web_json_path_matching_nothing_fails_naming_the_segment(endpoint: Endpoint,
                                                                      web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics", "jsonPath": "$.data.latency.p99"},
                                         headers={}, timeout=5)
    assert outcome == Failure("jsonPath $.data.latency.p99: no key 'latency' at $.data")


async def test_web_http_error_fails_with_status_and_start_of_body(endpoint: Endpoint,
                                                                  web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/fail"}, headers={}, timeout=5)
    assert isinstance(outcome, Failure)
    assert outcome.message.startswith(f"HTTP 500 from {endpoint.url}/fail: database is down xxx")
    assert len(outcome.message) < 260


async def test_web_http_error_with_an_empty_body_says_so(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/unavailable"}, headers={}, timeout=5)
    assert outcome == Failure(f"HTTP 503 from {endpoint.url}/unavailable: (empty body)")


async def test_web_body_that_is_not_json_fails(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/html"}, headers={}, timeout=5)
    assert outcome == Failure(f"invalid JSON from {endpoint.url}/html (Expecting value): <html>maintenance</html>")


async def test_web_slow_endpoint_times_out(endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/slow"}, headers={}, timeout=0.2)
    assert outcome == Failure(f"{endpoint.url}/slow timed out after 0.2s")


async def test_web_refused_connection_fails_naming_the_url(closed_port: int, web_provider: WebProvider) -> None:
    url = f"http://127.0.0.1:{closed_port}/metrics"
    outcome = await web_provider.measure({"url": url}, headers={}, timeout=5)
    assert outcome == Failure(f"{url} unreachable: connection refused")


async def test_web_server_hanging_up_fails(hang_up_port: int, web_provider: WebProvider) -> None:
    url = f"http://127.0.0.1:{hang_up_port}/metrics"
    outcome = await web_provider.measure({"url": url}, headers={}, timeout=5)
    assert outcome == Failure(f"{url} closed the connection without answering")


async def test_web_header_value_that_is_not_valid_http_fails_without_showing_it(
        endpoint: Endpoint, web_provider: WebProvider) -> None:
    outcome = await web_provider.measure({"url": f"{endpoint.url}/metrics"},
                                         headers={"Authorization": SECRET + "\r\nX-Injected: 1"}, timeout=5)
    assert outcome == Failure(f"GET {endpoint.url}/metrics not sent: a header value is not valid in HTTP")
    assert endpoint.hits == {}


async def test_web_provider_measures_again_after_close(endpoint: Endpoint, web_provider: WebProvider) -> None:
    config = {"url": f"{endpoint.url}/metrics", "jsonPath": "$.data.ok"}
    assert await web_provider.measure(config, headers={}, timeout=5) == Value(True, display="true")
    await web_provider.close()
    assert await web_provider.measure(config, headers={}, timeout=5) == Value(True, display="true")


async def test_web_concurrent_measurements_share_the_provider(endpoint: Endpoint, web_provider: WebProvider) -> None:
    config = {"url": f"{endpoint.url}/metrics", "jsonPath": "$.data.ratio"}
    outcomes = await asyncio.gather(*(web_provider.measure(config, headers={}, timeout=5) for _ in range(50)))
    assert set(outcomes) == {Value(0.99, display="0.99")}
    assert endpoint.hits["/metrics"] == 50


# -- Prometheus failures --------------------------------------------------------------------------------------------


async def test_prometheus_refused_connection_fails_naming_the_address(closed_port: int,
                                                                      prometheus: PrometheusProvider) -> None:
    address = f"http://127.0.0.1:{closed_port}"
    # A timeout far longer than a refusal takes: "connection refused", not "timed out", shows it did not wait.
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=30)
    assert outcome == Failure(f"Prometheus at {address} unreachable: connection refused")


async def test_prometheus_hanging_up_fails(hang_up_port: int, prometheus: PrometheusProvider) -> None:
    address = f"http://127.0.0.1:{hang_up_port}"
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {address} closed the connection without answering")


async def test_prometheus_bad_query_shows_prometheus_error(endpoint: Endpoint, prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/bad-query"
    outcome = await prometheus.measure({"address": address, "query": "rate("}, headers={"Authorization": SECRET},
                                       timeout=5)
    assert outcome == Failure(f'Prometheus at {address} answered HTTP 400: bad_data: invalid parameter "query": '
                              "1:6: parse error: unexpected end of input")
    assert endpoint.seen_headers[0]["Authorization"] == SECRET


async def test_prometheus_execution_error_shows_prometheus_error(endpoint: Endpoint,
                                                                 prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/too-many-samples"
    outcome = await prometheus.measure({"address": address, "query": "sum(x)"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {address} answered HTTP 422: execution: query processing would load "
                              "too many samples into memory in query execution")


async def test_prometheus_server_error_is_reported_at_once_without_retries(endpoint: Endpoint,
                                                                           prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/broken/"  # a trailing slash is tolerated
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {endpoint.url}/broken answered HTTP 500: internal: storage is corrupt")
    assert endpoint.hits["/broken/api/v1/query"] == 1


async def test_prometheus_behind_a_failing_proxy_shows_the_body(endpoint: Endpoint,
                                                                prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/proxy"
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {address} answered HTTP 502: <html>Bad Gateway</html>")
    assert endpoint.hits["/proxy/api/v1/query"] == 1


async def test_prometheus_answer_that_is_not_json_fails(endpoint: Endpoint, prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/not-json"
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {address} answered with invalid JSON (Expecting value): "
                              "<html>login page</html>")


async def test_prometheus_answer_without_a_result_fails(endpoint: Endpoint, prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/no-result"
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=5)
    assert outcome == Failure(f"Prometheus at {address} answered without data.result "
                              "(is this the Prometheus HTTP API?)")


async def test_prometheus_slow_answer_times_out(endpoint: Endpoint, prometheus: PrometheusProvider) -> None:
    address = f"{endpoint.url}/slow"
    outcome = await prometheus.measure({"address": address, "query": "up"}, headers={}, timeout=0.2)
    assert outcome == Failure(f"Prometheus at {address} timed out after 0.2s")


async def test_prometheus_with_an_invalid_block_fails_without_asking(prometheus: PrometheusProvider) -> None:
    outcome = await prometheus.measure({"address": "http://127.0.0.1:1"}, headers={}, timeout=5)
    assert outcome == Failure("prometheus.query: required")


async def test_prometheus_failure_messages_never_show_header_values(endpoint: Endpoint,
                                                                   prometheus: PrometheusProvider) -> None:
    outcome = await prometheus.measure({"address": f"{endpoint.url}/broken", "query": "up"},
                                       headers={"Authorization": SECRET + "\n"}, timeout=5)
    assert isinstance(outcome, Failure) and "s3cret" not in outcome.message
    assert "a header value is not valid in HTTP" in outcome.message
