"""Who is calling the operator API, and may they do this? Answered by the cluster, not by sluice.

The API (rollout/api.py) hands us the `Authorization` header and the verb an endpoint needs (docs/api.md,
"Authentication and authorisation"). A TokenReview turns the bearer token into a `User`; a SubjectAccessReview asks
RBAC whether that user may use the verb on `rollouts.sluice.dev` in a namespace. Custom verbs (`promote`, `abort`,
`update-image`) work because RBAC matches verbs as plain strings.

Both reviews are cached for a few seconds and coalesced: while one review for a key is in flight, identical requests
await it instead of sending their own. A dashboard polling at 200 requests/s then costs the API server a handful of
reviews per user, not one per request. Tokens are kept only as SHA-256 digests and never logged or echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from rollout.kube import SUBJECTACCESSREVIEWS, TOKENREVIEWS, ApiError, KubeClient

log = logging.getLogger(__name__)

GROUP = "sluice.dev"
RESOURCE = "rollouts"
# A failed token is remembered this long at most: a flood of bad tokens costs one review each per second, while
# a token that has just become valid (a fresh ServiceAccount) is not refused for long.
NEGATIVE_CACHE_SECONDS = 1.0
MAX_TOKEN_LENGTH = 16 * 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class User:
    """An authenticated caller, as the TokenReview described them."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class AuthError(Exception):
    """401 (who are you?), 403 (not allowed) or 503 (the API server could not be asked)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Decision:
    allowed: bool
    reason: str


class _ReviewCache(Generic[K, V]):
    """Results by key until they expire, at most `max_entries` (oldest evicted first); one review in flight per key."""

    def __init__(self, *, max_entries: int, clock: Callable[[], float], name: str) -> None:
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._pending: dict[K, asyncio.Task[V]] = {}
        self._max_entries = max_entries
        self._clock = clock
        self._name = name

    async def get(self, key: K, review: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        """The cached value, else the in-flight review's, else a new review's (`review` returns value and TTL)."""
        hit = self._entries.get(key)
        if hit is not None:
            if hit[0] > self._clock():
                self._entries.move_to_end(key)  # least recently used goes first: junk tokens cannot evict users
                return hit[1]
            del self._entries[key]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(key, review), name=f"{self._name}-review")
            self._pending[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        # shield: a caller that gives up (client disconnected) must not cancel the review others are waiting for.
        return await asyncio.shield(task)

    async def _fill(self, key: K, review: Callable[[], Awaitable[tuple[V, float]]]) -> V:
        value, ttl = await review()
        if ttl > 0:
            self._entries[key] = (self._clock() + ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return value

    def _settled(self, key: K, task: asyncio.Task[V]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited any more is not reported as lost


class Reviewer:
    """Authenticates bearer tokens and authorises verbs on Rollouts through the API server, with a short cache."""

    def __init__(self, client: KubeClient, *, cache_seconds: float = 5.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic,
                 on_review: Callable[[str], None] = lambda kind: None) -> None:
        self._client = client
        self._cache_seconds = cache_seconds
        self._on_review = on_review
        self._tokens: _ReviewCache[str, User | None] = _ReviewCache(
            max_entries=max_entries, clock=clock, name="token")
        self._access: _ReviewCache[tuple[Any, ...], _Decision] = _ReviewCache(
            max_entries=max_entries, clock=clock, name="access")

    # -- authentication ------------------------------------------------------------------------------------------

    async def authenticate(self, authorization_header: str | None) -> User:
        token = bearer_token(authorization_header)
        key = hashlib.sha256(token.encode()).hexdigest()
        user = await self._tokens.get(key, lambda: self._review_token(token))
        if user is None:
            raise AuthError(401, "the bearer token is not valid (expired, revoked or unknown to the cluster)")
        return user

    async def _review_token(self, token: str) -> tuple[User | None, float]:
        body = {"apiVersion": TOKENREVIEWS.api_version, "kind": TOKENREVIEWS.kind, "spec": {"token": token}}
        self._on_review(TOKENREVIEWS.kind)
        try:
            answer = await self._client.create(TOKENREVIEWS, body)
        except ApiError as exc:
            # The API server should never repeat the token; redact it anyway before the message reaches a log.
            log.warning("TokenReview failed: %s %s: %s", exc.status, exc.reason, exc.message.replace(token, "<token>"))
            raise AuthError(503, _unavailable(exc, "the token")) from None
        status = answer.get("status") or {}
        if not status.get("authenticated"):
            log.debug("token not authenticated: %s", status.get("error", ""))
            return None, min(NEGATIVE_CACHE_SECONDS, self._cache_seconds)
        return _user(status.get("user") or {}), self._cache_seconds

    # -- authorisation -------------------------------------------------------------------------------------------

    async def authorize(self, user: User, *, verb: str, namespace: str | None, name: str | None = None) -> None:
        # Ask for the whole namespace first: allowed there means allowed for every name (an RBAC rule without
        # resourceNames), and that answer is shared by all names, so a dashboard reading 100 Rollouts costs one
        # review per user and verb, not one per Rollout. Only a user limited to some names needs the named review.
        decision = await self._decision(user, verb=verb, namespace=namespace, name=None)
        if not decision.allowed and name is not None:
            decision = await self._decision(user, verb=verb, namespace=namespace, name=name)
        if not decision.allowed:
            raise AuthError(403, denied_message(user, verb=verb, namespace=namespace, name=name,
                                                reason=decision.reason))

    async def _decision(self, user: User, *, verb: str, namespace: str | None, name: str | None) -> _Decision:
        extra = tuple(sorted((k, tuple(v)) for k, v in user.extra.items()))
        key = (user.name, user.uid, user.groups, extra, verb, namespace, name)
        return await self._access.get(
            key, lambda: self._review_access(user, verb=verb, namespace=namespace, name=name))

    async def _review_access(self, user: User, *, verb: str, namespace: str | None,
                             name: str | None) -> tuple[_Decision, float]:
        attributes: dict[str, str] = {"group": GROUP, "resource": RESOURCE, "verb": verb}
        if namespace is not None:
            attributes["namespace"] = namespace
        if name is not None:
            attributes["name"] = name
        body = {
            "apiVersion": SUBJECTACCESSREVIEWS.api_version, "kind": SUBJECTACCESSREVIEWS.kind,
            "spec": {"user": user.name, "uid": user.uid, "groups": list(user.groups),
                     "extra": {k: list(v) for k, v in user.extra.items()}, "resourceAttributes": attributes},
        }
        self._on_review(SUBJECTACCESSREVIEWS.kind)
        try:
            answer = await self._client.create(SUBJECTACCESSREVIEWS, body)
        except ApiError as exc:
            log.warning("SubjectAccessReview for %s failed: %s", user.name, exc)
            raise AuthError(503, _unavailable(exc, "permissions")) from None
        status = answer.get("status") or {}
        allowed = bool(status.get("allowed")) and not status.get("denied")
        reason = str(status.get("reason") or status.get("evaluationError") or "")
        return _Decision(allowed, reason), self._cache_seconds


def bearer_token(authorization_header: str | None) -> str:
    """The token from `Authorization: Bearer <token>`; AuthError 401 saying what is wrong (never what was sent)."""
    if not authorization_header:
        raise AuthError(401, "missing Authorization header: send 'Authorization: Bearer <token>'")
    scheme, _, token = authorization_header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthError(401, "malformed Authorization header: expected 'Bearer <token>'")
    if len(token) > MAX_TOKEN_LENGTH or not token.isascii() or any(c.isspace() for c in token):
        raise AuthError(401, "malformed bearer token")
    return token


def denied_message(user: User, *, verb: str, namespace: str | None, name: str | None, reason: str) -> str:
    target = f'{RESOURCE}.{GROUP} "{name}"' if name else f"{RESOURCE}.{GROUP}"
    where = f"in namespace {namespace}" if namespace is not None else "in all namespaces"
    message = f"{user.name} may not {verb} {target} {where}"
    return f"{message}: {reason}" if reason else message


def _unavailable(exc: ApiError, what: str) -> str:
    if exc.temporary:
        return f"cannot reach the Kubernetes API to check {what}"
    # 401/403 here are the controller's own credentials or RBAC (it needs create on tokenreviews and
    # subjectaccessreviews), not the caller's: still "unavailable" to the caller.
    return f"the Kubernetes API would not check {what} ({exc.status} {exc.reason or 'error'})"


def _user(info: Mapping[str, Any]) -> User:
    extra = info.get("extra") or {}
    return User(
        name=str(info.get("username", "")),
        uid=str(info.get("uid", "")),
        groups=tuple(str(g) for g in info.get("groups") or ()),
        extra={str(k): tuple(str(v) for v in values or ()) for k, values in extra.items()},
    )
