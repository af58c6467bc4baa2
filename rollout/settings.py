"""Controller settings: every tunable number in one place, as data.

Retry and backoff sequences live here rather than in the code that retries (kopf's `settings` did this well), so
operators change them from the command line or the chart and tests can shorten them without test-only hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from strategies.policy import Mode


@dataclass(frozen=True)
class RetrySettings:
    """How the Kubernetes client retries temporary failures (429, 5xx, connection errors)."""

    attempts: int = 5
    backoff: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 5.0)
    max_retry_after: float = 30.0
    request_timeout: float = 30.0


@dataclass(frozen=True)
class QueueSettings:
    """How failed reconciles are retried per Rollout: exponential backoff, reset after a success."""

    workers: int = 4
    error_backoff: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0)
    # Even without events, every Rollout is looked at this often: traffic weights are re-verified, timed
    # pauses and scale-down deadlines are re-checked if a delayed requeue was lost.
    resync_seconds: float = 300.0


@dataclass(frozen=True)
class WatchSettings:
    timeout_seconds: int = 300
    error_backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    # An optional informer (traffic routers' objects) whose resource is not served (no CRD: 404) or not allowed
    # (403) looks again this often, so installing the CRD or granting the verbs later starts the watch.
    unavailable_retry_seconds: float = 60.0


@dataclass(frozen=True)
class AnalysisSettings:
    """How AnalysisRuns are measured: their own worker pool, so slow providers never hold up Rollout reconciles."""

    workers: int = 64
    # prometheus-api-client is synchronous: its queries run on this many threads (as many as workers, so a
    # measurement's timeout is not spent waiting for a thread).
    provider_threads: int = 64
    measurement_retention: int = 10  # measurements kept per metric in a run's status (all are counted)
    error_backoff: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class ApiSettings:
    """The operator API (docs/api.md) served by the controller process."""

    address: str = "0.0.0.0"
    port: int = 8080  # 0: pick a free port (tests)
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # Bearer tokens in clear text: refused on a non-loopback address without TLS unless asked for explicitly.
    allow_plain_http: bool = False
    webhook_secret: str | None = None  # "namespace/name" of the Secret holding the registry webhook's HMAC key
    review_cache_seconds: float = 5.0
    max_body_bytes: int = 64 * 1024
    webhook_max_skew_seconds: float = 300.0


@dataclass(frozen=True)
class LeaderElectionSettings:
    """Which replica reconciles when several run: the holder of one coordination.k8s.io Lease (rollout/leader.py).

    As in client-go: the leader renews every `retry_period` and stops reconciling when it has not renewed for
    `renew_deadline`; the others take over once the Lease has not changed for `lease_duration` (by their own clocks).
    `renew_deadline < lease_duration` is what keeps two replicas from ever reconciling at once.
    """

    namespace: str = "default"
    name: str = "sluice-controller"
    lease_duration: float = 15.0  # written to the Lease rounded up to whole seconds
    renew_deadline: float = 10.0
    retry_period: float = 2.0


@dataclass(frozen=True)
class MetricsSettings:
    """The plain-HTTP listener for the kubelet's probes and Prometheus (rollout/probes.py): no TLS, no tokens.

    All interfaces by default, because the kubelet probes the pod's IP and Prometheus scrapes it; it carries no
    credentials and takes no input, so what it exposes is read-only: whether the process runs, whether its caches are
    synced, and the metrics (which name Rollouts: keep the port to the cluster with a NetworkPolicy).
    """

    address: str = "0.0.0.0"
    port: int = 9090  # 0: pick a free port (tests)


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    retry: RetrySettings = field(default_factory=RetrySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    analysis: AnalysisSettings = field(default_factory=AnalysisSettings)
    api: ApiSettings | None = None  # None: no operator API (embedded uses); `sluice controller` always serves it
    metrics: MetricsSettings | None = None  # None: no probe and metrics listener (embedded uses); the CLI has one
    field_manager: str = "sluice"
    controller_name: str = "sluice-controller"
    # None: no election, this process reconciles (local runs); with several replicas every one of them needs it.
    leader_election: LeaderElectionSettings | None = None
    # The cluster's guardrail modes by rule (strategies/policy.py); rules not named keep the table's default.
    policy: Mapping[str, Mode] = field(default_factory=dict)
