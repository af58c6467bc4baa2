"""The only module that talks to the Kubernetes API.

Everything else in sluice receives plain dicts (Kubernetes bodies as the API server sends them) and calls the small
verb set here: get, list, create, patch, delete, watch. Bodies stay dicts on purpose: a Rollout's pod template is the
user's YAML, and converting it into generated model classes and back would lose unknown fields.

Errors come out typed (`ApiError` and its subclasses) so callers can tell temporary failures (429, 5xx, connection
errors: retried here with the backoff from `Settings`, honouring Retry-After) from permanent ones (404, 422, 403)
and from optimistic-concurrency conflicts (409, which the reconciler answers by re-reading).

kubernetes-asyncio provides configuration loading (kubeconfig, in-cluster, exec plugins, token refresh) and the
aiohttp session; requests go through `ApiClient.call_api` with `_preload_content=False` so we read the raw JSON.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NewType, cast
from urllib.parse import quote

import aiohttp
import yaml
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from rollout.settings import RetrySettings

log = logging.getLogger(__name__)

Body = dict[str, Any]
ResourceVersion = NewType("ResourceVersion", str)
PatchType = Literal["merge", "json", "strategic", "apply"]

_PATCH_CONTENT_TYPES: dict[PatchType, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "apply": "application/apply-patch+yaml",
}


@dataclass(frozen=True)
class Resource:
    """A Kubernetes resource type: where it lives in the API."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, *, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace is not None and self.namespaced:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        if name is not None:
            base += f"/{quote(name, safe='')}"
        if subresource is not None:
            base += f"/{subresource}"
        return base


ROLLOUTS = Resource("sluice.dev", "v1alpha1", "rollouts", "Rollout")
REPLICASETS = Resource("apps", "v1", "replicasets", "ReplicaSet")
SERVICES = Resource("", "v1", "services", "Service")
PODDISRUPTIONBUDGETS = Resource("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
EVENTS = Resource("", "v1", "events", "Event")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
VIRTUALSERVICES = Resource("networking.istio.io", "v1", "virtualservices", "VirtualService")
DESTINATIONRULES = Resource("networking.istio.io", "v1", "destinationrules", "DestinationRule")
HTTPROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
# The newest SMI version; a cluster may serve an older one, so the SMI router asks discovery and swaps the version.
TRAFFICSPLITS = Resource("split.smi-spec.io", "v1alpha4", "trafficsplits", "TrafficSplit")
ANALYSISRUNS = Resource("sluice.dev", "v1alpha1", "analysisruns", "AnalysisRun")
ANALYSISTEMPLATES = Resource("sluice.dev", "v1alpha1", "analysistemplates", "AnalysisTemplate")
CLUSTERANALYSISTEMPLATES = Resource("sluice.dev", "v1alpha1", "clusteranalysistemplates", "ClusterAnalysisTemplate",
                                    namespaced=False)
SECRETS = Resource("", "v1", "secrets", "Secret")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
TOKENREVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", namespaced=False)
SUBJECTACCESSREVIEWS = Resource("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview",
                                namespaced=False)


class ApiError(Exception):
    """A request the API server answered with an error status (or could not be sent: status 0)."""

    def __init__(self, *, status: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    @property
    def temporary(self) -> bool:
        return self.status in (0, 429) or self.status >= 500


class NotFound(ApiError):
    pass


class ConfigError(Exception):
    """No usable credentials: the kubeconfig is missing or broken, and we are not inside a cluster."""


class Conflict(ApiError):
    pass


class Gone(ApiError):
    """410: the resourceVersion a watch asked for is too old; re-list."""


def _error_for(status: int, body: bytes, headers: Mapping[str, str]) -> ApiError:
    reason, message = "", body.decode("utf-8", "replace")[:500]
    try:
        status_obj = json.loads(body)
        reason = str(status_obj.get("reason", ""))
        message = str(status_obj.get("message", message))
    except (ValueError, AttributeError):
        pass
    retry_after: float | None = None
    if "Retry-After" in headers:
        try:
            retry_after = float(headers["Retry-After"])
        except ValueError:
            retry_after = None
    cls: type[ApiError] = {404: NotFound, 409: Conflict, 410: Gone}.get(status, ApiError)
    return cls(status=status, reason=reason, message=message, retry_after=retry_after)


def _is_temporary(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.temporary


class KubeClient:
    """A thin async client over one `kubernetes_asyncio` ApiClient. Create with `KubeClient.connect`."""

    def __init__(self, api: k8s_client.ApiClient, *, retry: RetrySettings) -> None:
        self._api = api
        self._retry = retry

    @classmethod
    async def connect(cls, *, kubeconfig: str | None = None, context: str | None = None,
                      retry: RetrySettings | None = None) -> KubeClient:
        """Load a kubeconfig file if one is given (or found by the usual rules), else the in-cluster config."""
        configuration = k8s_client.Configuration()
        if kubeconfig and not os.path.exists(kubeconfig):  # noqa: ASYNC240 (once, at start-up)
            raise ConfigError(f"kubeconfig {kubeconfig} does not exist")
        try:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, context=context, client_configuration=configuration
            )
        except (k8s_config.ConfigException, OSError, TypeError, ValueError, yaml.YAMLError) as exc:
            if kubeconfig or context:
                raise ConfigError(f"cannot use kubeconfig {kubeconfig or '(default)'}: {exc}") from exc
            try:
                k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            except k8s_config.ConfigException as in_cluster:
                raise ConfigError(f"no kubeconfig found ({exc}) and not running in a cluster ({in_cluster}); "
                                  "pass --kubeconfig or set KUBECONFIG") from in_cluster
        return cls(k8s_client.ApiClient(configuration), retry=retry or RetrySettings())

    async def close(self) -> None:
        await self._api.close()

    # -- raw requests --------------------------------------------------------------------------------------------

    async def _send(self, method: str, path: str, *, query: Mapping[str, str | int | bool] | None = None,
                    body: Any = None, content_type: str = "application/json",
                    timeout: float | aiohttp.ClientTimeout | None = None,  # noqa: ASYNC109 (per-request HTTP timeout)
                    ) -> aiohttp.ClientResponse:
        query_params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
        try:
            response = await self._api.call_api(
                path, method, query_params=query_params,
                header_params={"Content-Type": content_type, "Accept": "application/json"},
                body=body, auth_settings=["BearerToken"], _preload_content=False,
                _request_timeout=timeout if timeout is not None else self._retry.request_timeout,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise ApiError(status=0, reason="ConnectionError", message=f"{type(exc).__name__}: {exc}") from exc
        return cast(aiohttp.ClientResponse, response)

    async def _request(self, method: str, path: str, *, query: Mapping[str, str | int | bool] | None = None,
                       body: Any = None, content_type: str = "application/json") -> Body:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(_is_temporary),
            stop=stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            reraise=True,
        ):
            with attempt:
                response = await self._send(method, path, query=query, body=body, content_type=content_type)
                async with response:
                    data = await response.read()
                    if not 200 <= response.status < 300:
                        raise _error_for(response.status, data, response.headers)
                    return cast(Body, json.loads(data)) if data else {}
        raise AssertionError("unreachable: tenacity reraises")

    def _wait(self, state: RetryCallState) -> float:
        """Backoff from settings; a Retry-After from the server wins when it asks for longer."""
        delays = self._retry.backoff
        delay = delays[min(state.attempt_number - 1, len(delays) - 1)]
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiError) and exc.retry_after is not None:
            delay = max(delay, min(exc.retry_after, self._retry.max_retry_after))
        log.debug("retrying after %.2fs: %s", delay, exc)
        return delay

    # -- verbs -----------------------------------------------------------------------------------------------------

    async def get(self, resource: Resource, *, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> Body:
        return await self._request("GET", resource.path(namespace=namespace, name=name, subresource=subresource))

    async def get_path(self, path: str) -> Body:
        """GET an API path that is not an object, such as a discovery document (`/apis/split.smi-spec.io`)."""
        return await self._request("GET", path)

    async def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
                   limit: int = 500) -> tuple[list[Body], ResourceVersion]:
        """All objects (paginated), and the list's resourceVersion to start a watch from."""
        items: list[Body] = []
        query: dict[str, str | int | bool] = {"limit": limit}
        if label_selector:
            query["labelSelector"] = label_selector
        while True:
            page = await self._request("GET", resource.path(namespace=namespace), query=query)
            for item in page.get("items") or []:
                item.setdefault("apiVersion", resource.api_version)
                item.setdefault("kind", resource.kind)
                items.append(item)
            meta = page.get("metadata") or {}
            if not meta.get("continue"):
                return items, ResourceVersion(str(meta.get("resourceVersion", "")))
            query["continue"] = meta["continue"]

    async def create(self, resource: Resource, body: Body, *, namespace: str | None = None, name: str | None = None,
                     subresource: str | None = None) -> Body:
        """POST a new object; with `name` and `subresource`, POST to an object's subresource (a TokenRequest)."""
        return await self._request("POST", resource.path(namespace=namespace, name=name, subresource=subresource),
                                   body=body)

    async def patch(self, resource: Resource, *, name: str, namespace: str | None = None, patch: Any,
                    patch_type: PatchType = "merge", subresource: str | None = None,
                    field_manager: str | None = None, force: bool = False) -> Body:
        query: dict[str, str | int | bool] = {}
        if field_manager:
            query["fieldManager"] = field_manager
        if force:
            query["force"] = True
        return await self._request(
            "PATCH", resource.path(namespace=namespace, name=name, subresource=subresource),
            query=query, body=patch, content_type=_PATCH_CONTENT_TYPES[patch_type],
        )

    async def replace(self, resource: Resource, body: Body, *, name: str, namespace: str | None = None,
                      subresource: str | None = None) -> Body:
        return await self._request(
            "PUT", resource.path(namespace=namespace, name=name, subresource=subresource), body=body
        )

    async def delete(self, resource: Resource, *, name: str, namespace: str | None = None,
                     preconditions: Mapping[str, str] | None = None) -> None:
        body: Body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if preconditions:
            body["preconditions"] = dict(preconditions)
        with contextlib.suppress(NotFound):
            await self._request("DELETE", resource.path(namespace=namespace, name=name), body=body)

    async def watch(self, resource: Resource, *, resource_version: ResourceVersion,
                    namespace: str | None = None, label_selector: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[tuple[str, Body]]:
        """Stream (type, object) watch events from a resourceVersion, bookmarks included.

        Raises `Gone` when the version is too old (from the HTTP status or from an ERROR event), `ApiError` for
        anything else; ends normally when the server closes the stream after `timeout_seconds`.
        """
        query: dict[str, str | int | bool] = {
            "watch": True, "allowWatchBookmarks": True, "resourceVersion": resource_version,
            "timeoutSeconds": timeout_seconds,
        }
        if label_selector:
            query["labelSelector"] = label_selector
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self._retry.request_timeout,
                                        sock_read=timeout_seconds + 30)
        response = await self._send("GET", resource.path(namespace=namespace), query=query, timeout=timeout)
        async with response:
            if not 200 <= response.status < 300:
                raise _error_for(response.status, await response.read(), response.headers)
            try:
                while line := await response.content.readline():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = str(event.get("type", "")), cast(Body, event.get("object") or {})
                    if kind == "ERROR":
                        code = int(obj.get("code", 0) or 0)
                        raise _error_for(code, json.dumps(obj).encode(), {})
                    yield kind, obj
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise ApiError(status=0, reason="ConnectionError", message=f"watch stream: {exc}") from exc


def owner_reference(owner: Body, *, controller: bool = True) -> Body:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
        "controller": controller, "blockOwnerDeletion": True,
    }


def label_selector_string(match_labels: Mapping[str, str], expressions: Sequence[Mapping[str, Any]] = ()) -> str:
    """Render a LabelSelector as the `labelSelector` query string (and `status.selector` for the scale subresource)."""
    parts = [f"{k}={v}" for k, v in sorted(match_labels.items())]
    for expr in expressions:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


async def kubeconfig_bearer_token(kubeconfig: str | None, context: str | None) -> str | None:
    """The bearer token of a kubeconfig context's user (`token`, `tokenFile`, an exec plugin, OIDC), for the `sluice`
    CLI to present to the operator API. None when the user has no token (client certificates, basic auth).

    Async because kubernetes-asyncio runs exec plugins asynchronously. A missing or broken kubeconfig is a ConfigError.
    """
    configuration = k8s_client.Configuration()
    # Once, at start-up: blocking path calls are fine here.
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")  # noqa: ASYNC240
    if os.pathsep not in path and not os.path.exists(path):  # noqa: ASYNC240
        raise ConfigError(f"kubeconfig {path} does not exist")
    try:
        await k8s_config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                          persist_config=False)
    except (k8s_config.ConfigException, OSError, TypeError, ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot use kubeconfig {path}: {exc}") from exc
    value = configuration.api_key.get("BearerToken")
    if not isinstance(value, str) or not value.startswith("Bearer "):
        return None
    return value.removeprefix("Bearer ").strip() or None
