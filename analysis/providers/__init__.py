"""Metric providers: one module per data source behind the small `Provider` Protocol, chosen through a registry.

A provider only measures: `measure(config, headers=..., timeout=...)` returns a `Value` (what the metric's
conditions see as `result`), `NoData` (the source answered but had nothing to judge) or a `Failure` (the source could
not be asked, or answered something unusable). Judging the value against successCondition/failureCondition, and
what NoData counts as, is the pure evaluator's job in analysis/run.py. `measure` never raises for problems with the
source, the network or the data, so one broken endpoint becomes an Error measurement and never a crashed worker; only
programming errors (and cancellation) propagate.

The caller substitutes args into the provider block and resolves header values (which may come from Secrets) before
calling; providers never put header values into messages. One provider instance per kind is meant to be shared by
all runs and closed once at shutdown: each keeps its connections (and, for Prometheus, its threads) to itself.
`validate_config` checks a provider block when a run is created, before anything is measured.

Adding a provider is one module and one registry entry, never an if-chain.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias
from urllib.parse import urlsplit, urlunsplit

DISPLAY_LIMIT = 256


@dataclass(frozen=True)
class Value:
    """The measurement has data."""

    value: object  # what conditions see as `result`: a float, a list of floats, or a JSON value
    display: str  # short human text for the AnalysisRun status, at most DISPLAY_LIMIT characters


@dataclass(frozen=True)
class NoData:
    """The source answered, but with nothing to judge (no samples, NaN, null)."""

    message: str


@dataclass(frozen=True)
class Failure:
    """The source could not be asked or answered something unusable; the message names the endpoint and the cause."""

    message: str


Outcome: TypeAlias = Value | NoData | Failure


class Provider(Protocol):
    # `timeout` (seconds) is the budget of one measurement, which the provider applies to its own I/O.
    async def measure(self, config: Mapping[str, Any], *, headers: Mapping[str, str],
                      timeout: float) -> Outcome: ...  # noqa: ASYNC109 - the budget is applied inside

    async def close(self) -> None: ...


@dataclass(frozen=True)
class ProviderOptions:
    threads: int = 32  # threads for providers whose client library blocks (prometheus-api-client)


@dataclass(frozen=True)
class ProviderKind:
    make: Callable[[ProviderOptions], Provider]
    validate: Callable[[Mapping[str, Any]], list[str]]


def _registry() -> dict[str, ProviderKind]:
    # Imported here: the provider modules import the outcome types above.
    from analysis.providers import prometheus, web

    return {
        "prometheus": ProviderKind(make=lambda options: prometheus.PrometheusProvider(max_workers=options.threads),
                                   validate=prometheus.validate_config),
        "web": ProviderKind(make=lambda _options: web.WebProvider(), validate=web.validate_config),
    }


def provider_names() -> tuple[str, ...]:
    return tuple(sorted(_registry()))


def make_provider(kind: str, options: ProviderOptions | None = None) -> Provider:
    registry = _registry()
    if kind not in registry:
        raise ValueError(f"unknown metric provider {kind!r} (known: {', '.join(sorted(registry))})")
    return registry[kind].make(options or ProviderOptions())


def validate_config(kind: str, config: Mapping[str, Any]) -> list[str]:
    """Problems in a provider block, each prefixed with its field (`prometheus.query: required`); empty when usable."""
    registry = _registry()
    if kind not in registry:
        return [f"unknown metric provider {kind!r} (known: {', '.join(sorted(registry))})"]
    return registry[kind].validate(config)


# -- helpers shared by the provider modules -----------------------------------------------------------------------


def clip(text: str, limit: int = DISPLAY_LIMIT) -> str:
    """`text` on one line, cut to `limit` characters with an ellipsis when longer."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def seconds(value: float) -> str:
    return f"{value:g}s"


def safe_url(url: str) -> str:
    """`url` without a password, for messages: `http://user:secret@host/` becomes `http://user:***@host/`."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    except ValueError:
        return url


def check_http_url(value: object, field: str) -> list[str]:
    if value is None:
        return [f"{field}: required"]
    if not isinstance(value, str):
        return [f"{field}: must be a string, got {type(value).__name__}"]
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number or out of range
    except ValueError as exc:
        return [f"{field}: not a valid URL ({exc})"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"{field}: must be an http:// or https:// URL with a host, got {safe_url(value)!r}"]
    return []


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and what it wraps: causes, contexts, and the exceptions urllib3 and requests keep in attributes/args."""
    seen: set[int] = set()
    pending = [exc]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        wrapped = [current.__cause__, current.__context__, getattr(current, "reason", None),
                   getattr(current, "os_error", None), *current.args]
        pending.extend(item for item in wrapped if isinstance(item, BaseException))


def connection_error_reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words ("connection refused", "cannot resolve host"), from the innermost
    OS or TLS error that requests/urllib3 or aiohttp wrapped; the exception's own text when there is none."""
    causes = list(exception_chain(exc))
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return "cannot resolve host"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by peer"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS certificate not accepted: {cause.verify_message or cause.reason}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or cause}"
    for cause in causes:
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[0].lower() + cause.strerror[1:]
    return clip(str(exc) or type(exc).__name__, 200)
