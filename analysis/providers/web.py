"""The web metric provider: one HTTP request per measurement, a JSON answer, and an optional `jsonPath` into it.

Config: `url` (http or https), `method` (GET or POST, default GET), `body` (POST only: a string sent as is, or a
JSON object sent as JSON) and `jsonPath` (analysis/jsonpath.py; without it, or empty, the whole document is the
value). All runs share one aiohttp session, created on first use inside the running loop, closed by `close()`. It
keeps no cookies, so one run's endpoint cannot set state another run's request carries.

Every problem becomes a Failure naming the URL (never the headers, which may hold tokens): unreachable, timed out,
non-2xx status with the start of the body, a body that is not JSON or is too large, a jsonPath that does not match.
A jsonPath that matches null is NoData: the endpoint answered but has nothing to judge.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp

from analysis import jsonpath
from analysis.providers import (
    Failure,
    NoData,
    Outcome,
    Value,
    check_http_url,
    clip,
    connection_error_reason,
    safe_url,
    seconds,
)

METHODS = ("GET", "POST")
MAX_BODY_BYTES = 10 * 1024 * 1024


class _TooLarge(Exception):
    pass


def _plain(value: object) -> object:
    """json.dumps fallback for the read-only Mappings and Sequences a frozen spec may hold."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def validate_config(config: Mapping[str, Any]) -> list[str]:
    problems = check_http_url(config.get("url"), "web.url")
    method = config.get("method", "GET")
    if method not in METHODS:
        problems.append(f"web.method: must be GET or POST, got {method!r}")
    body = config.get("body")
    if body is not None:
        if not isinstance(body, str | Mapping):
            problems.append(f"web.body: must be a string or a JSON object, got {type(body).__name__}")
        elif method != "POST":
            problems.append("web.body: only allowed with method POST")
        elif isinstance(body, Mapping):
            try:
                json.dumps(body, default=_plain, allow_nan=False)
            except (TypeError, ValueError) as exc:
                problems.append(f"web.body: not JSON: {exc}")
    path = config.get("jsonPath")
    if path is not None and path != "":  # empty, as the CRD documents it: the whole document
        if not isinstance(path, str):
            problems.append(f"web.jsonPath: must be a string, got {type(path).__name__}")
        else:
            try:
                jsonpath.parse(path)
            except jsonpath.JsonPathError as exc:
                problems.append(f"web.jsonPath: {exc}")
    return problems


def _snippet(body: bytes) -> str:
    text = body.decode("utf-8", "replace")
    return clip(text, 200) if text.strip() else "(empty body)"


def _compact(value: object) -> str:
    return clip(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def pick(document: object, path: str | None) -> Outcome:
    """The Outcome of a parsed JSON answer: the value at `path` (or the whole document), NoData for null."""
    if path is None:
        return NoData("the response is JSON null") if document is None else Value(document, display=_compact(document))
    try:
        value = jsonpath.extract(document, path)
    except jsonpath.JsonPathError as exc:
        return Failure(str(exc))
    if value is None:
        return NoData(f"jsonPath {path} is null")
    if isinstance(value, float) and math.isnan(value):  # json.loads accepts NaN; it must not pass a condition
        return NoData(f"jsonPath {path} is NaN")
    return Value(value, display=_compact(value))


class WebProvider:
    def __init__(self, *, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._max_body_bytes = max_body_bytes
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def _fetch(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None) -> tuple[int, bytes]:
        async with self._get_session().request(method, url, headers=dict(headers), data=data) as response:
            if response.content_length is not None and response.content_length > self._max_body_bytes:
                raise _TooLarge
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body.extend(chunk)
                if len(body) > self._max_body_bytes:
                    raise _TooLarge
            return response.status, bytes(body)

    async def measure(self, config: Mapping[str, Any], *, headers: Mapping[str, str],
                      timeout: float) -> Outcome:  # noqa: ASYNC109 - the Provider interface
        problems = validate_config(config)
        if problems:
            return Failure("; ".join(problems))
        url, method = str(config["url"]), str(config.get("method", "GET"))
        shown = safe_url(url)
        request_headers = dict(headers)
        body = config.get("body")
        data: bytes | None = None
        if isinstance(body, str):
            data = body.encode()
        elif body is not None:
            data = json.dumps(body, default=_plain).encode()
            if not any(name.lower() == "content-type" for name in request_headers):
                request_headers["Content-Type"] = "application/json"
        try:
            async with asyncio.timeout(timeout):
                status, raw = await self._fetch(method, url, request_headers, data)
        except TimeoutError:
            return Failure(f"{shown} timed out after {seconds(timeout)}")
        except _TooLarge:
            return Failure(f"{shown} answered with more than {self._max_body_bytes} bytes")
        except aiohttp.ClientConnectorDNSError:
            return Failure(f"{shown} unreachable: cannot resolve host")
        except aiohttp.ClientConnectorError as exc:
            return Failure(f"{shown} unreachable: {connection_error_reason(exc)}")
        except aiohttp.ServerDisconnectedError:
            return Failure(f"{shown} closed the connection without answering")
        except aiohttp.ClientOSError as exc:
            return Failure(f"{method} {shown} failed: {connection_error_reason(exc)}")
        except aiohttp.ClientError as exc:
            return Failure(f"{method} {shown} failed: {clip(str(exc) or type(exc).__name__, 200)}")
        except ValueError:
            # aiohttp refuses header values with newlines with a ValueError; its text is not repeated (secrets).
            return Failure(f"{method} {shown} not sent: a header value is not valid in HTTP")
        if not 200 <= status < 300:
            return Failure(f"HTTP {status} from {shown}: {_snippet(raw)}")
        try:
            document = json.loads(raw)
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            return Failure(f"invalid JSON from {shown} ({reason}): {_snippet(raw)}")
        return pick(document, config.get("jsonPath") or None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
