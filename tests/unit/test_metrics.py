"""The controller's metrics: every family of docs/api.md in the exposition, a private registry per Metrics, bounded
labels, the Rollout gauges read from the store at scrape time (phases, weights, and since when the conditions that
alerts watch have been True), the leader gauge, and the reconciler's and analysis runner's hooks (over fake clients,
no Kubernetes)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.analyzing import AnalysisRunner
from rollout.kube import ApiError, Body, KubeClient, Resource
from rollout.metrics import Metrics
from rollout.queueing import ObjectKey
from rollout.reconciler import Backoff, Reconciler
from rollout.reporting import Reporter
from rollout.settings import AnalysisSettings
from rollout.watching import Store

FAMILIES = (
    "sluice_reconcile_duration_seconds", "sluice_api_requests", "sluice_api_request_duration_seconds",
    "sluice_kube_api_errors", "sluice_auth_reviews", "sluice_analysis_measurements", "sluice_rollouts",
    "sluice_rollout_canary_weight", "sluice_rollout_condition_since_timestamp_seconds", "sluice_leader",
)
SINCE = "sluice_rollout_condition_since_timestamp_seconds"
ROUTE = "/api/v1/namespaces/{ns}/rollouts/{name}/pause"


def rollout(name: str, *, namespace: str = "shop", phase: str | None = None, weight: int | None = None,
            conditions: list[dict[str, str]] | None = None) -> Body:
    status: dict[str, Any] = {}
    if phase is not None:
        status["phase"] = phase
    if weight is not None:
        status["canaryWeight"] = weight
    if conditions is not None:
        status["conditions"] = conditions
    return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"}, "spec": {},
            "status": status}


def scrape(metrics: Metrics) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Parse the exposition as Prometheus would: family name -> samples (labels, value)."""
    body, _ = metrics.exposition()
    return {family.name: [(s.labels, s.value) for s in family.samples]
            for family in text_string_to_metric_families(body.decode())}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_exposition_has_every_family_in_the_text_format() -> None:
    metrics = Metrics(Store())
    metrics.observe_reconcile(0.1, "ok")
    metrics.observe_request(ROUTE, 200, 0.01)
    metrics.count_kube_error("Forbidden")
    metrics.count_review("TokenReview")
    metrics.count_measurement("prometheus", "Successful")
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    families = scrape(metrics)
    assert set(FAMILIES) <= set(families)
    assert b"sluice_api_requests_total{" in body and b"sluice_kube_api_errors_total{" in body


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.count_review("SubjectAccessReview")
    assert value(first, "sluice_auth_reviews_total", kind="SubjectAccessReview") == 1
    assert value(second, "sluice_auth_reviews_total", kind="SubjectAccessReview") is None


def test_requests_are_counted_by_route_template_and_code_not_by_path() -> None:
    metrics = Metrics()
    for i in range(50):
        metrics.observe_request(ROUTE, 200, 0.01 * i)
    metrics.observe_request(ROUTE, 409, 0.02)
    series = [labels for labels, _ in scrape(metrics)["sluice_api_requests"] if "code" in labels]
    assert sorted(s["code"] for s in series) == ["200", "409"]
    assert value(metrics, "sluice_api_requests_total", route=ROUTE, code="200") == 50
    assert value(metrics, "sluice_api_request_duration_seconds_count", route=ROUTE) == 51


def test_every_reconcile_outcome_is_exported_before_it_happens() -> None:
    metrics = Metrics()
    metrics.observe_reconcile(0.5, "backoff")
    for outcome in ("ok", "requeue", "error"):
        assert value(metrics, "sluice_reconcile_duration_seconds_count", outcome=outcome) == 0
    assert value(metrics, "sluice_reconcile_duration_seconds_count", outcome="backoff") == 1


def test_rollouts_are_counted_by_phase_with_every_phase_present() -> None:
    store = Store()
    for body in (rollout("a", phase="Healthy"), rollout("b", phase="Healthy"), rollout("c", phase="Paused"),
                 rollout("d")):
        store.put(body)
    metrics = Metrics(store)
    phases = {labels["phase"]: v for labels, v in scrape(metrics)["sluice_rollouts"]}
    assert phases == {"Healthy": 2, "Progressing": 0, "Paused": 1, "Degraded": 0, "Unknown": 1}


def test_canary_weight_is_read_from_the_store_at_scrape_time() -> None:
    store = Store()
    store.put(rollout("web", weight=10, phase="Progressing"))
    store.put(rollout("api", namespace="pay", weight=0, phase="Healthy"))
    store.put(rollout("new"))  # no status yet: no weight to show
    metrics = Metrics(store)
    assert value(metrics, "sluice_rollout_canary_weight", namespace="shop", rollout="web") == 10
    assert value(metrics, "sluice_rollout_canary_weight", namespace="pay", rollout="api") == 0
    assert value(metrics, "sluice_rollout_canary_weight", namespace="shop", rollout="new") is None

    store.put({**rollout("web", weight=50, phase="Progressing"), "metadata": {
        "name": "web", "namespace": "shop", "resourceVersion": "2"}})
    store.delete(rollout("api", namespace="pay"))
    assert value(metrics, "sluice_rollout_canary_weight", namespace="shop", rollout="web") == 50
    assert value(metrics, "sluice_rollout_canary_weight", namespace="pay", rollout="api") is None
    assert value(metrics, "sluice_rollouts", phase="Healthy") == 0


def cond(type_: str, reason: str, *, status: str = "True", since: str = "2026-03-01T12:00:00Z") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": "", "lastTransitionTime": since}


@pytest.mark.parametrize(("type_", "reason"), [
    ("Degraded", "RolloutAborted"), ("Degraded", "ProgressDeadlineExceeded"), ("Degraded", "InvalidSpec"),
    ("Paused", "CanaryPauseStep"), ("Paused", "InconclusiveAnalysis"), ("Paused", "BlueGreenPause"),
    ("Paused", "PausedByUser"), ("ReconcileError", "Forbidden"),
])
def test_a_true_condition_is_exported_with_its_transition_time(type_: str, reason: str) -> None:
    store = Store()
    store.put(rollout("web", phase="Degraded", conditions=[cond(type_, reason)]))
    metrics = Metrics(store)
    assert value(metrics, SINCE, namespace="shop", rollout="web", type=type_, reason=reason) == datetime(
        2026, 3, 1, 12, tzinfo=UTC).timestamp()


def test_only_true_conditions_that_alerts_watch_are_exported() -> None:
    store = Store()
    store.put(rollout("web", phase="Healthy", conditions=[
        cond("Progressing", "RolloutCompleted"), cond("Available", "AvailableReplicas"),  # True on every Rollout
        cond("Degraded", "RolloutAborted", status="False"), cond("ReconcileError", "Reconciled", status="False"),
        cond("Paused", "CanaryPauseStep", since="not a time"), cond("Paused", "PausedByUser", since=""),
    ]))
    store.put(rollout("new"))  # no status yet
    assert scrape(Metrics(store))[SINCE] == []


def test_condition_series_follow_the_store_at_scrape_time() -> None:
    store = Store()
    store.put(rollout("web", conditions=[cond("Paused", "CanaryPauseStep"),
                                         cond("ReconcileError", "Forbidden", since="2026-03-01T12:00:30.250Z")]))
    metrics = Metrics(store)
    assert {labels["type"] for labels, _ in scrape(metrics)[SINCE]} == {"Paused", "ReconcileError"}
    assert value(metrics, SINCE, namespace="shop", rollout="web", type="ReconcileError",
                 reason="Forbidden") == datetime(2026, 3, 1, 12, 0, 30, 250000, tzinfo=UTC).timestamp()

    resumed = rollout("web", conditions=[cond("Paused", "CanaryPauseStep", status="False")])
    resumed["metadata"]["resourceVersion"] = "2"
    store.put(resumed)
    assert scrape(metrics)[SINCE] == []


def test_leader_is_one_without_election_and_follows_the_elector() -> None:
    metrics = Metrics()
    assert value(metrics, "sluice_leader") == 1
    metrics.set_leader(False)
    assert value(metrics, "sluice_leader") == 0
    metrics.set_leader(True)
    assert value(metrics, "sluice_leader") == 1
    assert value(Metrics(leader=False), "sluice_leader") == 0  # with election: not the leader until it wins


# -- hooks -----------------------------------------------------------------------------------------------------


class FailingClient:
    """Every write fails with one ApiError."""

    def __init__(self, error: ApiError) -> None:
        self.error = error

    async def patch(self, resource: Resource, **_: Any) -> Body:
        raise self.error

    async def create(self, resource: Resource, body: Body, **_: Any) -> Body:
        raise self.error


def reconciler(error: ApiError, metrics: Metrics) -> tuple[Reconciler, Store]:
    client = cast(KubeClient, FailingClient(error))
    store = Store()
    store.put(rollout("web"))  # no spec to act on: the reconciler writes an InvalidSpec status, which fails
    return Reconciler(client, rollouts=store, replica_sets=Store(), analysis_runs=Store(),
                      reporter=Reporter(client, component="test"), resync=300.0, metrics=metrics), store


async def test_reconcile_records_its_outcome_and_the_kube_error_reason() -> None:
    metrics = Metrics()
    rec, _ = reconciler(ApiError(status=403, reason="Forbidden", message="no"), metrics)
    assert isinstance(await rec.reconcile(ObjectKey("shop", "web")), Backoff)
    assert await rec.reconcile(ObjectKey("shop", "gone")) is None
    assert value(metrics, "sluice_reconcile_duration_seconds_count", outcome="backoff") == 1
    assert value(metrics, "sluice_reconcile_duration_seconds_count", outcome="ok") == 1
    assert value(metrics, "sluice_kube_api_errors_total", reason="Forbidden") == 1


async def test_a_temporary_kube_error_is_an_error_outcome() -> None:
    metrics = Metrics()
    rec, _ = reconciler(ApiError(status=0, reason="ConnectionError", message="refused"), metrics)
    with pytest.raises(ApiError):  # a temporary error goes back to the work queue, which retries
        await rec.reconcile(ObjectKey("shop", "web"))
    assert value(metrics, "sluice_reconcile_duration_seconds_count", outcome="error") == 1
    assert value(metrics, "sluice_kube_api_errors_total", reason="ConnectionError") == 1


class StatusClient:
    async def patch(self, resource: Resource, *, name: str, namespace: str, subresource: str,
                    patch: Body) -> Body:
        return {"metadata": {"name": name, "namespace": namespace, "resourceVersion": "2"}, **patch}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_analysis_measurements_are_counted_by_provider_and_phase() -> None:
    metrics = Metrics()
    runs = Store()
    runs.put({
        "metadata": {"name": "web-1", "namespace": "shop", "resourceVersion": "1"},
        "spec": {"metrics": [{"name": "up", "interval": "1m", "successCondition": "result == 1",
                              "provider": {"web": {"url": f"http://127.0.0.1:{free_port()}/", "timeout": "2s"}}}]},
    })
    runner = AnalysisRunner(cast(KubeClient, StatusClient()), runs=runs, settings=AnalysisSettings(provider_threads=1),
                            metrics=metrics)
    try:
        await runner.reconcile(ObjectKey("shop", "web-1"))
    finally:
        await runner.close()
    assert value(metrics, "sluice_analysis_measurements_total", provider="web", phase="Error") == 1
