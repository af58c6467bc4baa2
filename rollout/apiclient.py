"""Client of the operator HTTP API (docs/api.md), used by the `sluice` CLI (rollout/cli.py).

It speaks only HTTP to a sluice controller, never to Kubernetes: the controller authenticates the bearer token and
authorises each verb with the cluster. Views come back as the API's JSON (dicts); rollout/console.py renders them.

Every failure is an `ApiClientError`: `code` is the HTTP status of the API's JSON error body
(`{"error": {"code", "message"}}`), or 0 when the API could not be reached or answered something that is not the API.
"""

from __future__ import annotations

import json
import ssl
from types import TracebackType
from typing import Any, Final, cast
from urllib.parse import quote

import aiohttp

View = dict[str, Any]  # one Rollout view, as docs/api.md shows it

OPERATIONS: Final = frozenset({"pause", "resume", "promote", "abort", "retry", "restart", "undo"})


class ApiClientError(Exception):
    """The API said no (`code` is its HTTP status), or could not be reached (`code` 0)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _segment(value: str) -> str:
    return quote(value, safe="")


class ApiClient:
    """One aiohttp session to one sluice API. Use as `async with ApiClient(...) as api:` (or call `close()`)."""

    def __init__(self, server: str, token: str | None, *, ca_file: str | None = None, insecure: bool = False,
                 timeout: float = 10) -> None:
        self.server = server.rstrip("/")
        self._token = token
        self._ssl: ssl.SSLContext | bool = True
        if insecure:
            self._ssl = False
        elif ca_file is not None:
            self._ssl = ssl.create_default_context(cafile=ca_file)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ApiClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- endpoints -------------------------------------------------------------------------------------------------

    async def list_rollouts(self, namespace: str | None) -> list[View]:
        """Views sorted by namespace and name; `namespace=None` lists every namespace."""
        path = "/api/v1/rollouts" if namespace is None else f"/api/v1/namespaces/{_segment(namespace)}/rollouts"
        body = await self._call("GET", path)
        items = body.get("items")
        if not isinstance(items, list):
            raise ApiClientError(0, f"unexpected answer from the sluice API at {self.server}: no items in the list")
        return [cast(View, item) for item in items]

    async def get_rollout(self, ns: str, name: str) -> View:
        return await self._call("GET", self._rollout_path(ns, name))

    async def operate(self, ns: str, name: str, op: str, body: dict[str, Any] | None = None) -> View:
        """POST one of `OPERATIONS`; returns the view after the patch."""
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}: one of {', '.join(sorted(OPERATIONS))}")
        return await self._call("POST", f"{self._rollout_path(ns, name)}/{op}", body=body)

    async def set_image(self, ns: str, name: str, container: str, image: str) -> View:
        return await self._call("PUT", f"{self._rollout_path(ns, name)}/image",
                                body={"container": container, "image": image})

    # -- transport -------------------------------------------------------------------------------------------------

    @staticmethod
    def _rollout_path(ns: str, name: str) -> str:
        return f"/api/v1/namespaces/{_segment(ns)}/rollouts/{_segment(name)}"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _call(self, method: str, path: str, *, body: dict[str, Any] | None = None) -> View:
        url = self.server + path
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.request(method, url, json=body, headers=self._headers(),
                                             ssl=self._ssl) as response:
                data = await response.read()
                status, reason = response.status, response.reason or ""
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiClientError(0, f"cannot reach the sluice API at {self.server}: {reason}") from exc
        if 200 <= status < 300:
            try:
                return cast(View, json.loads(data))
            except ValueError as exc:
                raise ApiClientError(0, f"unexpected answer from the sluice API at {self.server}: not JSON") from exc
        raise _error_from(status, reason, data)


def _error_from(status: int, reason: str, data: bytes) -> ApiClientError:
    """The API's JSON error body; anything else (a proxy's HTML page) becomes its status line."""
    try:
        error = json.loads(data)["error"]
        code, message = int(error.get("code", status)), str(error["message"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiClientError(status, f"HTTP {status} {reason}".strip())
    return ApiClientError(code, " ".join(message.split()))
