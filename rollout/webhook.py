"""The registry webhook's decisions: is the request genuine, what was pushed, and which Rollouts want it.

`POST /api/v1/hooks/registry` (docs/api.md, "The registry webhook") is the one API route without a bearer token: it is
signed instead, HMAC-SHA256 over `<timestamp>.<body>` with a key from a Kubernetes Secret. Everything here is pure
except `load_secret`; the route in rollout/api.py reads the body and headers, calls `verify_signature`, `parse_push`
and `plan_updates`, and patches the images through the same code path as `PUT .../image`.

Rollouts opt in with annotations; a Rollout without them is never touched, whatever is pushed:

    sluice.dev/image-repository: registry.example/web   # without tag; docker.io forms are normalised
    sluice.dev/image-tag-pattern: '^1\\.4\\.\\d+$'        # must match the pushed tag in full, RE2 syntax
    sluice.dev/image-container: web                     # optional
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import re2

from rollout.kube import SECRETS, ApiError, KubeClient, NotFound

TIMESTAMP_HEADER = "X-Sluice-Timestamp"
SIGNATURE_HEADER = "X-Sluice-Signature"
SECRET_KEY = "hmac"

REPOSITORY_ANNOTATION = "sluice.dev/image-repository"
TAG_PATTERN_ANNOTATION = "sluice.dev/image-tag-pattern"
CONTAINER_ANNOTATION = "sluice.dev/image-container"

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # an invalid pattern is reported as the reason a Rollout is skipped, not logged
_SIGNATURE = re.compile(r"sha256=([0-9a-fA-F]{64})")
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the OCI distribution spec's tag grammar
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
_DOCKER_HUB = "docker.io"
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"})


class WebhookError(Exception):
    """400 (a payload we cannot read), 401 (not signed by the holder of the secret), 503 (no secret to check with)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- signatures --------------------------------------------------------------------------------------------------


class ReplayGuard:
    """Signatures already accepted, each remembered until its timestamp is too old to be accepted again anyway.

    Memory is bounded by `max_entries`; filling it takes that many validly signed requests within the skew window,
    i.e. the secret, and even then only the soonest-expiring signatures are forgotten early.
    """

    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._expiries: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._max_entries = max_entries

    def __len__(self) -> int:
        return len(self._expiries)

    def seen(self, signature: str, *, now: float) -> bool:
        expiry = self._expiries.get(signature)
        return expiry is not None and expiry >= now

    def remember(self, signature: str, *, until: float, now: float) -> None:
        while self._heap and (self._heap[0][0] < now or len(self._heap) >= self._max_entries):
            expiry, old = heapq.heappop(self._heap)
            if self._expiries.get(old) == expiry:
                del self._expiries[old]
        self._expiries[signature] = until
        heapq.heappush(self._heap, (until, signature))


def sign(secret: bytes, timestamp: str | int, body: bytes) -> str:
    """The `X-Sluice-Signature` value for a body sent at `timestamp` (Unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: bytes, *, timestamp: str | None, signature: str | None, body: bytes, now: float,
                     max_skew: float, seen: ReplayGuard) -> None:
    """Accept a request once: signed with `secret`, sent within `max_skew` seconds of `now`, not seen before."""
    if not timestamp or not signature:
        missing = [h for h, v in ((TIMESTAMP_HEADER, timestamp), (SIGNATURE_HEADER, signature)) if not v]
        raise WebhookError(401, f"missing header {' and '.join(missing)}")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise WebhookError(401, f"{TIMESTAMP_HEADER} must be Unix seconds (an integer)")
    sent = int(timestamp)
    if abs(now - sent) > max_skew:
        raise WebhookError(401, f"{TIMESTAMP_HEADER} is more than {max_skew:g}s away from the server's clock")
    match = _SIGNATURE.fullmatch(signature)
    if match is None:
        raise WebhookError(401, f"{SIGNATURE_HEADER} must be sha256=<64 hex digits>")
    given = match.group(1).lower()
    expected = sign(secret, timestamp, body).removeprefix("sha256=")
    if not hmac.compare_digest(given, expected):
        raise WebhookError(401, "signature does not match the body and timestamp")
    # Checked only after the MAC: unsigned junk never reaches (or fills) the guard.
    if seen.seen(given, now=now):
        raise WebhookError(401, "this request was already received (replay)")
    seen.remember(given, until=sent + max_skew, now=now)


async def load_secret(client: KubeClient, ref: str) -> bytes:
    """The HMAC key: key `hmac` of the Secret `namespace/name`. Errors never include the value."""
    namespace, _, name = ref.partition("/")
    if not namespace or not name or "/" in name:
        raise WebhookError(503, f"webhook secret reference {ref!r} is not namespace/name")
    try:
        secret = await client.get(SECRETS, name=name, namespace=namespace)
    except NotFound:
        raise WebhookError(503, f"webhook secret {ref} does not exist") from None
    except ApiError as exc:
        raise WebhookError(503, f"cannot read webhook secret {ref}: {exc.status} {exc.reason}") from None
    encoded = (secret.get("data") or {}).get(SECRET_KEY)
    if not encoded:
        raise WebhookError(503, f"webhook secret {ref} has no key {SECRET_KEY!r}")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookError(503, f"webhook secret {ref}: key {SECRET_KEY!r} is not valid base64") from None


# -- payloads ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    repository: str  # normalised, without tag or digest: "docker.io/org/web", "harbor.example/proj/web"
    tag: str
    digest: str | None = None


def parse_push(payload: object) -> Push:
    """Read a generic, Docker Hub or Harbor (PUSH_ARTIFACT) push notification."""
    if not isinstance(payload, Mapping):
        raise WebhookError(400, f"unrecognised payload: expected a JSON object, got {type(payload).__name__}")
    if isinstance(payload.get("push_data"), Mapping) and isinstance(payload.get("repository"), Mapping):
        return _docker_hub(payload)
    if "event_data" in payload:
        return _harbor(payload)
    if isinstance(payload.get("repository"), str):
        return _generic(payload)
    if "type" in payload:
        return _harbor(payload)
    raise WebhookError(400, "unrecognised payload: expected a generic {repository, tag}, a Docker Hub push "
                            "or a Harbor PUSH_ARTIFACT event")


def _generic(payload: Mapping[str, Any]) -> Push:
    repository, tag, digest = payload.get("repository"), payload.get("tag"), payload.get("digest")
    if not isinstance(repository, str) or not repository.strip():
        raise WebhookError(400, "unrecognised payload: repository must be a non-empty string")
    if not isinstance(tag, str) or not tag:
        raise WebhookError(400, "unrecognised payload: tag must be a non-empty string")
    if digest is not None and not isinstance(digest, str):
        raise WebhookError(400, "unrecognised payload: digest must be a string")
    return _push(repository, tag, digest or None)


def _push(repository: str, tag: str, digest: str | None) -> Push:
    """A Push whose tag and digest can go into an image reference as they are (they end up in a pod spec)."""
    if not _TAG.fullmatch(tag):
        raise WebhookError(400, f"{tag[:140]!r} is not a valid image tag")
    if digest is not None and not _DIGEST.fullmatch(digest):
        raise WebhookError(400, f"{digest[:140]!r} is not a valid image digest")
    return Push(normalise_repository(repository), tag, digest)


def _docker_hub(payload: Mapping[str, Any]) -> Push:
    tag = payload["push_data"].get("tag")
    repo_name = payload["repository"].get("repo_name")
    if not isinstance(repo_name, str) or not repo_name:
        raise WebhookError(400, "unrecognised payload: Docker Hub push without repository.repo_name")
    if not isinstance(tag, str) or not tag:
        raise WebhookError(400, "unrecognised payload: Docker Hub push without push_data.tag")
    return _push(f"{_DOCKER_HUB}/{repo_name}", tag, None)


def _harbor(payload: Mapping[str, Any]) -> Push:
    kind = payload.get("type")
    if kind != "PUSH_ARTIFACT":
        raise WebhookError(400, f"unrecognised payload: Harbor event type {kind!r} (only PUSH_ARTIFACT)")
    data = payload.get("event_data")
    resources = data.get("resources") if isinstance(data, Mapping) else None
    if not isinstance(resources, list):
        raise WebhookError(400, "unrecognised payload: Harbor event without event_data.resources")
    for resource in resources:
        if not isinstance(resource, Mapping):
            continue
        tag, url, digest = resource.get("tag"), resource.get("resource_url"), resource.get("digest")
        if isinstance(tag, str) and tag and isinstance(url, str) and url:
            return _push(url, tag, digest if isinstance(digest, str) and digest else None)
    raise WebhookError(400, "unrecognised payload: Harbor PUSH_ARTIFACT without a tagged resource_url")


# -- matching ----------------------------------------------------------------------------------------------------


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """`host/repo:tag@digest` → (repository, tag, digest); a port in the host is not a tag."""
    name, _, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1:] or None, digest or None
    return name, None, digest or None


def normalise_repository(reference: str) -> str:
    """The repository of an image reference, as one string per repository: Docker Hub's forms become
    `docker.io/<namespace>/<name>` (`nginx`, `library/nginx`, `index.docker.io/library/nginx`, ... are the same)."""
    repository = split_image(reference.strip())[0]
    first, sep, rest = repository.partition("/")
    is_host = sep and ("." in first or ":" in first or first == "localhost")
    if is_host and first.lower() not in _DOCKER_HUB_ALIASES:
        return f"{first.lower()}/{rest}"
    path = rest if is_host else repository
    if "/" not in path:
        path = f"library/{path}"
    return f"{_DOCKER_HUB}/{path}"


def target_container(rollout: Mapping[str, Any], push: Push) -> tuple[str, str] | None:
    """(container, new image) when the Rollout opted in for this repository and the tag matches; else None.

    An invalid tag pattern matches nothing (`plan_updates` reports it as the reason the Rollout was skipped).
    """
    annotations = (rollout.get("metadata") or {}).get("annotations") or {}
    wanted, pattern = annotations.get(REPOSITORY_ANNOTATION), annotations.get(TAG_PATTERN_ANNOTATION)
    if not wanted or pattern is None or normalise_repository(wanted) != push.repository:
        return None
    compiled = _tag_pattern(pattern)
    if compiled is None or compiled.fullmatch(push.tag) is None:
        return None
    containers = ((((rollout.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers")) or []
    named = annotations.get(CONTAINER_ANNOTATION)
    if named:
        chosen = [c for c in containers if c.get("name") == named]
    else:
        chosen = [c for c in containers if normalise_repository(str(c.get("image", ""))) == push.repository]
    if len(chosen) != 1:
        return None
    # Keep the spelling the Rollout already uses (`org/web` stays `org/web`, not `docker.io/org/web`).
    current = split_image(str(chosen[0].get("image", "")))[0]
    repository = current if current and normalise_repository(current) == push.repository else wanted.strip()
    return str(chosen[0]["name"]), f"{split_image(repository)[0]}:{push.tag}"


@dataclass(frozen=True)
class Update:
    namespace: str
    name: str
    container: str
    image: str


@dataclass(frozen=True)
class Plan:
    updates: tuple[Update, ...]
    ignored: tuple[tuple[str, str], ...]  # ("ns/name", why): counted in the answer, logged


def plan_updates(rollouts: Iterable[Mapping[str, Any]], push: Push) -> Plan:
    """Which Rollouts get which image for this push; the rest are ignored, each with a reason."""
    updates: list[Update] = []
    ignored: list[tuple[str, str]] = []
    for rollout in rollouts:
        meta = rollout.get("metadata") or {}
        ref = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        try:
            target = target_container(rollout, push)
        except (AttributeError, KeyError, TypeError):  # a pod template the CRD let through but no container reads
            ignored.append((ref, "its pod template's containers are not readable"))
            continue
        if target is None:
            ignored.append((ref, _why_not(rollout, push)))
            continue
        updates.append(Update(str(meta.get("namespace", "")), str(meta.get("name", "")), *target))
    return Plan(tuple(updates), tuple(ignored))


def _why_not(rollout: Mapping[str, Any], push: Push) -> str:
    annotations = (rollout.get("metadata") or {}).get("annotations") or {}
    if not annotations.get(REPOSITORY_ANNOTATION) or annotations.get(TAG_PATTERN_ANNOTATION) is None:
        return "not opted in"
    if normalise_repository(annotations[REPOSITORY_ANNOTATION]) != push.repository:
        return "another repository"
    if (error := _pattern_error(annotations[TAG_PATTERN_ANNOTATION])) is not None:
        return f"invalid {TAG_PATTERN_ANNOTATION}: {error}"
    compiled = _tag_pattern(annotations[TAG_PATTERN_ANNOTATION])
    if compiled is None or compiled.fullmatch(push.tag) is None:
        return f"tag {push.tag} does not match {TAG_PATTERN_ANNOTATION}"
    if annotations.get(CONTAINER_ANNOTATION):
        return f"no container {annotations[CONTAINER_ANNOTATION]}"
    return f"not exactly one container uses {push.repository}"


def _pattern_error(pattern: str) -> str | None:
    try:
        re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        return str(exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc)
    return None


def _tag_pattern(pattern: object) -> Any:
    """The compiled tag pattern, or None when it is not a valid RE2 expression.

    RE2 (linear time, no backtracking) rather than `re`: the pattern comes from a Rollout's annotation, so anyone
    who may edit a Rollout could otherwise stall the whole controller with `(a+)+` and a long tag. RE2 refuses
    backreferences and lookaround; such a pattern is reported as invalid."""
    if not isinstance(pattern, str):
        return None
    try:
        return re2.compile(pattern, _RE2_OPTIONS)
    except re2.error:
        return None
