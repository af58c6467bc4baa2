"""The controller's own Prometheus metrics, served at `GET /metrics` (docs/operations.md, docs/api.md).

`Metrics` owns a private `CollectorRegistry`, never prometheus_client's global one, so several controllers (or
tests) in one process do not clash. The pieces that do the work report into it through small methods: the reconciler
(`observe_reconcile`, `count_kube_error`), the analysis runner (`count_measurement`), the API server
(`observe_request`) and its reviewer (`count_review`). Each of them takes `metrics: Metrics | None` and does nothing
without one.

What the Rollouts look like (`sluice_rollouts` by phase, `sluice_rollout_canary_weight` per Rollout, and
`sluice_rollout_condition_since_timestamp_seconds`, since when a condition that alerts care about has been True) is
not counted as it happens but read from the informer's Rollout store at scrape time, so it is never stale and a
deleted Rollout's series goes with it. Every label is bounded: routes are templates, never raw paths with names in
them; condition types are a fixed list and reasons are the controller's own words (or a Kubernetes status reason).

`sluice_leader` is 1 while this process reconciles: always without leader election, and with it only while it holds
the Lease (the elector calls `set_leader`). Alerts sum it over the replicas: 0 means nobody reconciles.

The controller serves the registry on its plain-HTTP listener (rollout/probes.py) and on the operator API.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from rollout.watching import Store

# The phases of the Rollout CRD's status.phase enum (charts/sluice/crds/rollouts.sluice.dev.yaml), and Unknown for a
# Rollout the controller has not written a status for yet. Each is exported, at 0 when empty, so no series vanishes.
ROLLOUT_PHASES = ("Healthy", "Progressing", "Paused", "Degraded")
UNKNOWN_PHASE = "Unknown"
RECONCILE_OUTCOMES = ("ok", "requeue", "backoff", "error")
# Conditions that alerts watch (docs/runbooks/): exported while True, with the moment they turned True. Progressing
# and Available are True on every healthy Rollout, and InvalidSpec comes with Degraded (reason InvalidSpec).
ALERTING_CONDITIONS = ("Degraded", "Paused", "ReconcileError")


class RolloutCollector(Collector):
    """Reads the Rollout store at scrape time: how many Rollouts are in each phase, each one's canary weight, and
    since when its alerting conditions have been True."""

    def __init__(self, rollouts: Store) -> None:
        self._rollouts = rollouts

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        phases, weights, since = self._families()
        tally: Tally[str] = Tally()
        for key, body in self._rollouts.items():
            status = body.get("status") or {}
            phase = status.get("phase")
            tally[phase if phase in ROLLOUT_PHASES else UNKNOWN_PHASE] += 1
            weight = status.get("canaryWeight")
            if isinstance(weight, int | float) and not isinstance(weight, bool):
                weights.add_metric([key.namespace, key.name], weight)
            for type_, reason, seconds in alerting_conditions(status):
                since.add_metric([key.namespace, key.name, type_, reason], seconds)
        for phase in (*ROLLOUT_PHASES, UNKNOWN_PHASE):
            phases.add_metric([phase], tally[phase])
        return [phases, weights, since]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily("sluice_rollouts", "Rollouts by status.phase (Unknown: no status yet).",
                              labels=["phase"]),
            GaugeMetricFamily("sluice_rollout_canary_weight",
                              "The percentage of traffic on the canary (status.canaryWeight), per Rollout.",
                              labels=["namespace", "rollout"]),
            GaugeMetricFamily("sluice_rollout_condition_since_timestamp_seconds",
                              "When a Rollout's condition (Degraded, Paused, ReconcileError) turned True, as Unix "
                              "seconds (its lastTransitionTime, which a change of reason alone keeps); no series "
                              "while the condition is not True.",
                              labels=["namespace", "rollout", "type", "reason"]),
        ]


def alerting_conditions(status: Mapping[str, Any]) -> list[tuple[str, str, float]]:
    """(type, reason, lastTransitionTime as Unix seconds) of the status's True conditions that alerts watch.

    A condition without a readable transition time is left out rather than exported as 0 (which would look like an
    age of decades to `time() - ...`)."""
    found = []
    for cond in status.get("conditions") or []:
        if not isinstance(cond, Mapping) or cond.get("type") not in ALERTING_CONDITIONS or cond.get("status") != "True":
            continue
        try:
            since = datetime.fromisoformat(str(cond.get("lastTransitionTime", "")).replace("Z", "+00:00"))
        except ValueError:
            continue
        if since.tzinfo is None:
            continue
        found.append((str(cond["type"]), str(cond.get("reason") or ""), since.timestamp()))
    return found


class Metrics:
    """The controller's metrics in their own registry; `rollouts` (the informer's store) adds the Rollout gauges.

    `leader` is where `sluice_leader` starts: True without leader election; with it, False until the Lease is won.
    """

    def __init__(self, rollouts: Store | None = None, *, leader: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._reconcile = Histogram(
            "sluice_reconcile_duration_seconds", "Time taken by one reconcile of one Rollout, by outcome.",
            ["outcome"], registry=self.registry,
        )
        self._requests = Counter(
            "sluice_api_requests", "Operator API requests, by route template and status code.",
            ["route", "code"], registry=self.registry,
        )
        self._request_duration = Histogram(
            "sluice_api_request_duration_seconds", "Time taken to answer an operator API request, by route template.",
            ["route"], registry=self.registry,
        )
        self._kube_errors = Counter(
            "sluice_kube_api_errors", "Errors answered by the Kubernetes API while reconciling, by reason.",
            ["reason"], registry=self.registry,
        )
        self._reviews = Counter(
            "sluice_auth_reviews", "TokenReviews and SubjectAccessReviews sent to the API server (cache misses).",
            ["kind"], registry=self.registry,
        )
        self._measurements = Counter(
            "sluice_analysis_measurements", "Analysis measurements taken, by provider and measurement phase.",
            ["provider", "phase"], registry=self.registry,
        )
        self._leader = Gauge(
            "sluice_leader", "1 while this process reconciles (holds the leader Lease; always 1 without election).",
            registry=self.registry,
        )
        self.set_leader(leader)
        for outcome in RECONCILE_OUTCOMES:
            self._reconcile.labels(outcome)  # present from the start, so rate() sees the first one
        if rollouts is not None:
            self.registry.register(RolloutCollector(rollouts))

    def set_leader(self, leader: bool) -> None:
        """Called by the leader elector when this process gains or loses the Lease."""
        self._leader.set(1 if leader else 0)

    def observe_reconcile(self, seconds: float, outcome: str) -> None:
        self._reconcile.labels(outcome).observe(seconds)

    def observe_request(self, route: str, code: int, seconds: float) -> None:
        """`route` is the route's template ("/api/v1/namespaces/{ns}/rollouts/{name}"), never the raw path."""
        self._requests.labels(route, str(code)).inc()
        self._request_duration.labels(route).observe(seconds)

    def count_kube_error(self, reason: str) -> None:
        self._kube_errors.labels(reason or "Unknown").inc()

    def count_review(self, kind: str) -> None:
        self._reviews.labels(kind).inc()

    def count_measurement(self, provider: str, phase: str) -> None:
        self._measurements.labels(provider, phase).inc()

    def exposition(self) -> tuple[bytes, str]:
        """The body and Content-Type of a scrape, in the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

