"""The operator HTTP API (docs/api.md): reads from the informers' caches, operations as patches on the Rollout.

Every `/api/v1` call except the signed registry webhook is authenticated (TokenReview) and authorised
(SubjectAccessReview on `rollouts.sluice.dev`) by the cluster itself (rollout/auth.py). What an operation writes is
decided by a pure function (strategies/operations.py); this module reads the Rollout fresh from the API server,
writes the patches with a resourceVersion precondition (a concurrent change is re-read and re-decided, twice at
most), and records an Event naming the user. The API keeps no state, so any controller replica can answer.

Every error is JSON `{"error": {"code", "message"}}` with a 4xx for bad input; a bug is a 500 with a generic message
and the traceback in the log only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, NoReturn

from aiohttp import web

from rollout.auth import AuthError, Reviewer, User
from rollout.kube import ROLLOUTS, ApiError, Body, Conflict, KubeClient, NotFound
from rollout.metrics import Metrics
from rollout.openapi import openapi_document
from rollout.probes import probe_routes
from rollout.queueing import ObjectKey
from rollout.reporting import Reporter
from rollout.settings import ApiSettings
from rollout.views import list_view, rollout_view
from rollout.watching import Store
from rollout.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    ReplayGuard,
    WebhookError,
    load_secret,
    parse_push,
    plan_updates,
    verify_signature,
)
from strategies.decision import Event
from strategies.operations import OPERATIONS, OperationError, plan_operation

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SECRET_TTL = 10.0  # seconds the webhook's HMAC key is reused before the Secret is read again (rotation delay)
WRITE_ATTEMPTS = 3  # a write that keeps losing resourceVersion races answers 409 after this many tries
WEBHOOK_USER = "registry webhook"
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class ApiFailure(Exception):
    """An answer other than 2xx, with its code and a message for the caller."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=code)


def _fail(code: int, message: str) -> NoReturn:
    raise ApiFailure(code, message)


class ApiServer:
    def __init__(self, client: KubeClient, *, settings: ApiSettings, rollouts: Store, replica_sets: Store,
                 analysis_runs: Store, reviewer: Reviewer, metrics: Metrics, reporter: Reporter,
                 ready: Callable[[], bool], namespaces: tuple[str, ...] = (),
                 record: Callable[[Body], None] | None = None) -> None:
        self._client = client
        self._settings = settings
        self._rollouts = rollouts
        self._replica_sets = replica_sets
        self._analysis_runs = analysis_runs
        self._reviewer = reviewer
        self._metrics = metrics
        self._reporter = reporter
        self._ready = ready
        self._namespaces = namespaces
        # A Rollout we wrote goes to its informer (Informer.record): a read right after sees it, and the controller
        # hears of it as of any change (not only at its next resync).
        self._record = record or rollouts.put
        self._replays = ReplayGuard()
        self._secret: tuple[float, bytes] | None = None  # (read at, value): unsigned floods cost one GET per TTL
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    # -- serving -------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._settings.max_body_bytes,
                              middlewares=[self._observe, self._errors])
        # The same /healthz, /readyz and /metrics as the plain-HTTP listener's (rollout/probes.py), kept here for
        # those who probe or scrape the API's port.
        app.add_routes(probe_routes(metrics=self._metrics, ready=self._ready))
        r = app.router
        r.add_get("/openapi.json", self._openapi)
        r.add_get("/api/v1/rollouts", self._list_all)
        r.add_get("/api/v1/namespaces/{ns}/rollouts", self._list)
        r.add_get("/api/v1/namespaces/{ns}/rollouts/{name}", self._get)
        for op in OPERATIONS:
            if op != "image":
                r.add_post(f"/api/v1/namespaces/{{ns}}/rollouts/{{name}}/{op}", self._operation(op))
        r.add_put("/api/v1/namespaces/{ns}/rollouts/{name}/image", self._operation("image"))
        r.add_post("/api/v1/hooks/registry", self._registry_hook)
        return app

    async def start(self) -> None:
        context = None
        if self._settings.tls_cert_file:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._settings.tls_cert_file, self._settings.tls_key_file)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.address, self._settings.port, ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        scheme = "https" if context else "http"
        log.info("operator API listening on %s://%s:%d", scheme, self._settings.address, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- middlewares ---------------------------------------------------------------------------------------------

    @web.middleware
    async def _observe(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        self._metrics.observe_request(route, response.status, time.monotonic() - started)
        return response

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiFailure as exc:
            return _error(exc.code, exc.message)
        except AuthError as exc:
            response = _error(exc.code, exc.message)
            if exc.code == 401:
                response.headers["WWW-Authenticate"] = 'Bearer realm="sluice"'
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = {404: "no such endpoint (see /openapi.json)", 405: f"method {request.method} not allowed here",
                       413: f"request body too large (at most {self._settings.max_body_bytes} bytes)"}
            response = _error(exc.status, message.get(exc.status, exc.reason))
            if "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
            return response
        except ApiError as exc:
            if exc.temporary:
                return _error(503, f"the Kubernetes API is unavailable: {exc.message}")
            if exc.status in (400, 422):
                return _error(400, f"the Kubernetes API rejected the change: {exc.message}")
            if exc.status in (404, 409):
                return _error(exc.status, exc.message)
            log.warning("Kubernetes API refused %s %s: %s", request.method, request.path, exc)
            return _error(503, f"the controller could not do this: {exc.message}")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("internal error answering %s %s", request.method, request.path)
            return _error(500, "internal error (logged by the controller)")

    # -- helpers -------------------------------------------------------------------------------------------------

    async def _user(self, request: web.Request, *, verb: str) -> tuple[User, str, str]:
        """The caller, authorised for `verb` on the path's namespace and name (which are checked, else 400).

        Authentication comes first: a caller without a valid token gets 401 whatever the path, and learns nothing
        about it, as from the Kubernetes API server itself.
        """
        user = await self._reviewer.authenticate(request.headers.get("Authorization"))
        ns, name = self._names(request) if "ns" in request.match_info else ("", "")
        await self._reviewer.authorize(user, verb=verb, namespace=ns or None, name=name or None)
        self._require_ready()
        return user, ns, name

    def _require_ready(self) -> None:
        # Before the first lists the caches are empty: a read would say "no such rollout", undo "no revision kept".
        if not self._ready():
            _fail(503, "not ready: the controller's watches have not synced yet; retry in a moment")

    @staticmethod
    def _names(request: web.Request) -> tuple[str, str]:
        """The namespace and name in the path, which must be Kubernetes names (else 400)."""
        ns, name = request.match_info["ns"], request.match_info.get("name", "")
        if not _NAMESPACE.fullmatch(ns):
            _fail(400, f"invalid namespace {ns[:80]!r}: a lowercase RFC 1123 label (at most 63 characters)")
        if "name" in request.match_info and not _NAME.fullmatch(name):
            _fail(400, f"invalid rollout name {name[:80]!r}: a lowercase RFC 1123 subdomain (at most 253 characters)")
        return ns, name

    def _served(self, namespace: str) -> bool:
        return not self._namespaces or namespace in self._namespaces

    def _view(self, body: Body) -> dict[str, Any]:
        meta = body["metadata"]
        return rollout_view(body, self._analysis_runs.by_index(ObjectKey(meta["namespace"], meta["name"])))

    async def _json_body(self, request: web.Request) -> Mapping[str, Any]:
        raw = await request.read()
        if not raw.strip():
            return {}
        value = _decode_json(raw, request.content_type)
        if not isinstance(value, dict):
            _fail(400, "the body must be a JSON object")
        return value

    # -- description ---------------------------------------------------------------------------------------------

    async def _openapi(self, request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    # -- reads ---------------------------------------------------------------------------------------------------

    async def _list_all(self, request: web.Request) -> web.Response:
        await self._user(request, verb="list")
        return web.json_response(list_view([self._view(body) for _, body in self._rollouts.items()]))

    async def _list(self, request: web.Request) -> web.Response:
        _, ns, _ = await self._user(request, verb="list")
        items = [self._view(body) for _, body in self._rollouts.items() if body["metadata"]["namespace"] == ns]
        return web.json_response(list_view(items))

    async def _get(self, request: web.Request) -> web.Response:
        _, ns, name = await self._user(request, verb="get")
        body = self._rollouts.get(ObjectKey(ns, name))
        if body is None:
            _fail(404, self._missing(ns, name))
        return web.json_response(self._view(body))

    def _missing(self, ns: str, name: str) -> str:
        if not self._served(ns):
            return f"no rollout {ns}/{name}: this controller serves namespaces {', '.join(self._namespaces)}"
        return f"no rollout {ns}/{name}"

    # -- operations ----------------------------------------------------------------------------------------------

    def _operation(self, op: str) -> Handler:
        verb = "update-image" if op == "image" else op

        async def handle(request: web.Request) -> web.Response:
            user, ns, name = await self._user(request, verb=verb)
            params = await self._json_body(request)
            if not self._served(ns):
                _fail(404, self._missing(ns, name))
            body = await self._operate(ns, name, op, params, who=user.name)
            return web.json_response(self._view(body))

        return handle

    async def _operate(self, ns: str, name: str, op: str, params: Mapping[str, Any], *, who: str) -> Body:
        for attempt in range(WRITE_ATTEMPTS):
            try:
                body = await self._client.get(ROLLOUTS, name=name, namespace=ns)
            except NotFound:
                _fail(404, self._missing(ns, name))
            replica_sets = [rs for rs in self._replica_sets.by_index(ObjectKey(ns, name)) if _owned_by(rs, body)]
            try:
                outcome = plan_operation(op, body, params, replica_sets=replica_sets, now=datetime.now(UTC))
            except OperationError as exc:
                _fail(exc.code, exc.message)
            try:
                for patch in outcome.patches:
                    # A later patch builds on the earlier one's write, not on the version it was planned at.
                    body = await self._client.patch(ROLLOUTS, name=name, namespace=ns,
                                                    patch=patch.at(body["metadata"]["resourceVersion"]).body,
                                                    subresource=patch.subresource)
            except Conflict:
                if attempt + 1 == WRITE_ATTEMPTS:
                    _fail(409, f"{ns}/{name} kept changing while {op} was applied; try again")
                continue
            if outcome.patches:
                self._record(body)
                await self._reporter.emit(body, (Event("OperationRequested",
                                                       f"{outcome.summary} requested by {who} via the sluice API"),),
                                          context={"rollout": f"{ns}/{name}", "decision": f"Operation:{op}"})
            return body
        raise AssertionError("unreachable")

    # -- the registry webhook ------------------------------------------------------------------------------------

    async def _webhook_secret(self, ref: str) -> bytes:
        now = time.monotonic()
        if self._secret is None or now - self._secret[0] > SECRET_TTL:
            self._secret = (now, await load_secret(self._client, ref))
        return self._secret[1]

    async def _registry_hook(self, request: web.Request) -> web.Response:
        if self._settings.webhook_secret is None:
            _fail(404, "the registry webhook is not enabled (sluice controller --webhook-secret NAMESPACE/NAME)")
        raw = await request.read()
        self._require_ready()
        try:
            secret = await self._webhook_secret(self._settings.webhook_secret)
            verify_signature(secret, timestamp=request.headers.get(TIMESTAMP_HEADER),
                             signature=request.headers.get(SIGNATURE_HEADER), body=raw, now=time.time(),
                             max_skew=self._settings.webhook_max_skew_seconds, seen=self._replays)
            push = parse_push(_decode_json(raw, request.content_type))
        except WebhookError as exc:
            _fail(exc.code, exc.message)
        plan = plan_updates([body for _, body in self._rollouts.items()], push)
        for ref, why in plan.ignored:
            log.debug("registry webhook: %s ignored: %s", ref, why)
        updated: list[str] = []
        ignored = len(plan.ignored)
        for update in plan.updates:
            # Each Rollout on its own: one that cannot take the image (refused, gone, odd spec) is reported and
            # skipped, never a failed request that would leave the others without the push.
            try:
                await self._operate(update.namespace, update.name, "image",
                                    {"container": update.container, "image": update.image}, who=WEBHOOK_USER)
            except (ApiFailure, ApiError) as exc:
                log.warning("registry webhook could not update %s/%s: %s", update.namespace, update.name, exc)
                ignored += 1
                continue
            updated.append(f"{update.namespace}/{update.name}")
        return web.json_response({"updated": sorted(updated), "ignored": ignored})


def _decode_json(raw: bytes, content_type: str) -> Any:
    if content_type != "application/json":
        _fail(415, f"the body must be JSON (Content-Type: application/json), not {content_type}")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        _fail(400, f"the body is not valid JSON: {exc}")
    except (ValueError, RecursionError):  # an integer beyond Python's digit limit, nesting beyond the stack
        _fail(400, "the body is not JSON sluice can read (numbers too long or nesting too deep)")


def _owned_by(replica_set: Body, rollout: Body) -> bool:
    uid = rollout["metadata"].get("uid")
    return any(o.get("uid") == uid and o.get("controller")
               for o in replica_set["metadata"].get("ownerReferences") or [])

