"""The Prometheus metric provider: one instant query per measurement, through prometheus-api-client.

prometheus-api-client is synchronous (requests), so queries run in a bounded thread pool owned by the provider,
never on the event loop and never in the loop's default executor (which other code shares). Clients are cached per
(address, headers), so a few hundred concurrent runs against one Prometheus share one connection pool instead of
building a session per measurement. The library's own retries (3, with back-off, on 5xx) are replaced by none:
a failed query should become an Error measurement now, and the run's state machine measures again at the metric's
interval, counting consecutive errors.

`interpret` turns the query's `data.result` into an Outcome and is pure; `measure` adds the I/O and turns every
transport and HTTP problem into a Failure naming the address.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import http.client
import json
import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from prometheus_api_client.exceptions import PrometheusApiClientException
from prometheus_api_client.prometheus_connect import PrometheusConnect
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from analysis.providers import (
    Failure,
    NoData,
    Outcome,
    Value,
    check_http_url,
    clip,
    connection_error_reason,
    exception_chain,
    safe_url,
    seconds,
)

NO_SAMPLES = "the query returned no samples"
NOT_A_NUMBER = "the query returned NaN (e.g. 0/0: no traffic)"
RANGE_VECTOR = ("the query returned a range vector (matrix), which is not supported: use an instant query, "
                "e.g. rate(metric[5m]) instead of metric[5m]")
NATIVE_HISTOGRAM = ("the query returned a native histogram, which is not supported: reduce it to a number, "
                    "e.g. with histogram_quantile")

# Never retry inside the library; see the module docstring. read=False: a read error is raised, not retried.
_NO_RETRIES = Retry(total=0, read=False, redirect=False)


# -- interpreting a result ----------------------------------------------------------------------------------------


def format_number(value: float) -> str:
    """A float as Prometheus writes it (`NaN`, `+Inf`), integers without `.0`, otherwise the shortest round-trip."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _sample_value(pair: object) -> float | None:
    """The float of a `[timestamp, "value"]` pair; None when the pair is not one."""
    if not (isinstance(pair, list) and len(pair) == 2 and _is_number(pair[0]) and isinstance(pair[1], str)):
        return None
    try:
        return float(pair[1])
    except ValueError:
        return None


def _unexpected(result: object) -> Failure:
    return Failure(f"unexpected result from Prometheus: {clip(json.dumps(result, default=repr), 200)}")


def _labels(sample: Mapping[str, Any]) -> list[tuple[str, str]]:
    metric = sample.get("metric")
    return sorted((str(k), str(v)) for k, v in metric.items()) if isinstance(metric, Mapping) else []


def _vector(samples: list[Mapping[str, Any]]) -> Outcome:
    if any("values" in sample and "value" not in sample for sample in samples):
        return Failure(RANGE_VECTOR)
    if any("histogram" in sample and "value" not in sample for sample in samples):
        return Failure(NATIVE_HISTOGRAM)
    values: list[float] = []
    for sample in sorted(samples, key=_labels):
        value = _sample_value(sample.get("value"))
        if value is None:
            return Failure(f"unexpected sample from Prometheus: {clip(json.dumps(sample, default=repr), 200)}")
        values.append(value)
    # Any NaN makes the whole result no data: a NaN compares false with everything, so `failureCondition:
    # result[0] > 0.05` would pass a NaN ratio (no traffic) as healthy.
    if any(math.isnan(value) for value in values):
        return NoData(NOT_A_NUMBER)
    return Value(values, display=clip("[" + ", ".join(format_number(v) for v in values) + "]"))


def interpret(result: object) -> Outcome:
    """The Outcome of an instant query's `data.result` (what prometheus-api-client's custom_query returns).

    The library drops `resultType`, so the shape decides: a list of objects is an instant vector (a list of floats,
    ordered by label set so that the same series give the same list), `[timestamp, "v"]` is a scalar (a float), or
    a string when "v" is not a number. An empty vector is NoData, and so is NaN everywhere; ±Inf are values.
    """
    if not isinstance(result, list):
        return _unexpected(result)
    if not result:
        return NoData(NO_SAMPLES)
    if all(isinstance(item, Mapping) for item in result):
        return _vector(result)
    if len(result) == 2 and _is_number(result[0]) and isinstance(result[1], str):
        value = _sample_value(result)
        if value is None:
            return Failure(f"unsupported result type string (the query returned the text {clip(result[1], 60)!r})")
        if math.isnan(value):
            return NoData(NOT_A_NUMBER)
        return Value(value, display=format_number(value))
    return _unexpected(result)


# -- describing errors --------------------------------------------------------------------------------------------

# prometheus-api-client keeps only this text of a non-200 answer: "HTTP Status Code 400 (b'{...}')".
_STATUS_TEXT = re.compile(r"HTTP Status Code (\d+) \((b(['\"]).*\3)\)\Z", re.DOTALL)


def _error_body(body: bytes) -> str:
    """Prometheus's own error (`errorType: error`) from an error answer's body, else the body's beginning."""
    text = body.decode("utf-8", "replace")
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict) and isinstance(document.get("error"), str):
        kind = document.get("errorType")
        return clip(f"{kind}: {document['error']}" if isinstance(kind, str) and kind else document["error"], 300)
    return clip(text, 200) if text.strip() else "(empty body)"


def describe_status_error(exc: Exception) -> str:
    """`answered HTTP 422: execution: ...` from the library's PrometheusApiClientException."""
    match = _STATUS_TEXT.match(str(exc))
    if match is None:
        return f"answered with an error: {clip(str(exc), 200)}"
    try:
        body = ast.literal_eval(match.group(2))
    except (ValueError, SyntaxError):
        body = b""
    return f"answered HTTP {match.group(1)}: {_error_body(body if isinstance(body, bytes) else b'')}"


class _MalformedAnswer(Exception):
    """HTTP 200 with JSON that has no data.result: not a Prometheus query API."""


def _query(client: PrometheusConnect, query: str, timeout: float) -> object:
    try:
        # Annotated `int`, but handed to requests, which takes float seconds.
        result: object = client.custom_query(query, timeout=timeout)  # type: ignore[arg-type]
        return result
    except (KeyError, TypeError) as exc:  # the library indexes response.json()["data"]["result"] unchecked
        raise _MalformedAnswer from exc


def _describe_exception(exc: Exception, timeout: float) -> str:
    if isinstance(exc, PrometheusApiClientException):
        return describe_status_error(exc)
    if isinstance(exc, requests.exceptions.Timeout):
        return f"timed out after {seconds(timeout)}"
    if isinstance(exc, requests.exceptions.InvalidHeader):
        # Its text quotes the header value, which may be a secret.
        return "not asked: a header value is not valid in HTTP (e.g. it contains a newline)"
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return f"answered with invalid JSON ({exc.msg}): {clip(exc.doc, 200) if exc.doc.strip() else '(empty body)'}"
    if isinstance(exc, _MalformedAnswer):
        return "answered without data.result (is this the Prometheus HTTP API?)"
    if isinstance(exc, requests.exceptions.ConnectionError):
        if any(isinstance(cause, http.client.RemoteDisconnected) for cause in exception_chain(exc)):
            return "closed the connection without answering"
        return f"unreachable: {connection_error_reason(exc)}"
    return f"request failed: {clip(str(exc) or type(exc).__name__, 200)}"


# -- the provider -------------------------------------------------------------------------------------------------


def validate_config(config: Mapping[str, Any]) -> list[str]:
    problems = check_http_url(config.get("address"), "prometheus.address")
    query = config.get("query")
    if query is None:
        problems.append("prometheus.query: required")
    elif not isinstance(query, str):
        problems.append(f"prometheus.query: must be a string, got {type(query).__name__}")
    elif not query.strip():
        problems.append("prometheus.query: must not be empty")
    return problems


_ClientKey = tuple[str, tuple[tuple[str, str], ...]]  # (address, sorted headers)


class PrometheusProvider:
    def __init__(self, *, max_workers: int = 32, max_clients: int = 64) -> None:
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sluice-prometheus")
        self._pool_size = max_workers
        self._max_clients = max_clients
        # Touched only from the event loop thread, so it needs no lock; the worker threads only use the clients.
        self._clients: OrderedDict[_ClientKey, PrometheusConnect] = OrderedDict()

    def _client(self, address: str, headers: Mapping[str, str]) -> PrometheusConnect:
        key = (address, tuple(sorted(headers.items())))
        client = self._clients.get(key)
        if client is not None:
            self._clients.move_to_end(key)
            return client
        session = requests.Session()
        client = PrometheusConnect(url=address, headers=dict(headers), session=session, retry=_NO_RETRIES)
        # The library mounts an adapter with urllib3's default pool of 10 connections at `address`; with more worker
        # threads than that, urllib3 would open and discard extra connections. Replace it (same prefix) with one
        # that can keep a connection per worker.
        session.mount(address, HTTPAdapter(pool_maxsize=self._pool_size, max_retries=_NO_RETRIES))
        self._clients[key] = client
        if len(self._clients) > self._max_clients:
            # Not closed: a worker thread may still be using it. Its pooled connections close when it is collected.
            self._clients.popitem(last=False)
        return client

    async def measure(self, config: Mapping[str, Any], *, headers: Mapping[str, str],
                      timeout: float) -> Outcome:  # noqa: ASYNC109 - the Provider interface
        problems = validate_config(config)
        if problems:
            return Failure("; ".join(problems))
        address = str(config["address"]).rstrip("/")
        where = f"Prometheus at {safe_url(address)}"
        client = self._client(address, headers)
        work = functools.partial(_query, client, str(config["query"]), timeout)
        try:
            # The requests timeout bounds each connect and read; wait_for bounds the whole, queueing included.
            result = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._executor, work), timeout)
        except TimeoutError:
            return Failure(f"{where} timed out after {seconds(timeout)}")
        except (PrometheusApiClientException, requests.exceptions.RequestException, _MalformedAnswer) as exc:
            return Failure(f"{where} {_describe_exception(exc, timeout)}")
        outcome = interpret(result)
        return Failure(f"{where}: {outcome.message}") if isinstance(outcome, Failure) else outcome

    async def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        # Not waiting: a thread blocked on a slow Prometheus ends at its requests timeout on its own.
        self._executor.shutdown(wait=False, cancel_futures=True)
