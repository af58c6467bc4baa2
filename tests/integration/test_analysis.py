"""Metric analysis end to end: the real controller, the real control plane, a real Prometheus scraping real services
whose error rate and latency each test sets, and a real web endpoint. A canary passes or fails on what the metrics
say; no data, an unreachable Prometheus and a broken condition never promote it."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from rollout.kube import ANALYSISRUNS, ANALYSISTEMPLATES, SECRETS, Body, KubeClient
from tests.integration.kit import (
    ControllerProcess,
    condition,
    create_app,
    paused_at,
    resume,
    rollout_body,
    set_image,
    status,
    wait_for,
    wait_status,
    weights,
)

pytestmark = pytest.mark.timeout(180)

SUCCESS_RATE = ('sum(rate(http_requests_total{{app="{{{{args.app}}}}",code!~"5.."}}[{window}])) / '
                'sum(rate(http_requests_total{{app="{{{{args.app}}}}"}}[{window}]))')


def success_rate(window: str = "3s") -> str:
    return SUCCESS_RATE.format(window=window)


def metric(name: str, address: str, query: str, **fields: Any) -> Body:
    return {"name": name, "provider": {"prometheus": {"address": address, "query": query, "timeout": "2s"}},
            **fields}


def template(name: str, metrics: list[Body], args: list[Body] | None = None) -> Body:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": name},
            "spec": {"args": args if args is not None else [{"name": "app"}], "metrics": metrics}}


def analysis_step(template_name: str, app: str, **extra_args: str) -> Body:
    args = [{"name": "app", "value": app}, *({"name": k, "value": v} for k, v in extra_args.items())]
    return {"analysis": {"templates": [{"templateName": template_name}], "args": args}}


async def _healthy_v1(kube: KubeClient, ns: str, rollout: Body) -> str:
    await create_app(kube, ns, rollout)
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")
    return str(st["stableHash"])


async def _runs(kube: KubeClient, ns: str) -> list[Body]:
    items, _ = await kube.list(ANALYSISRUNS, namespace=ns)
    return sorted(items, key=lambda r: r["metadata"]["creationTimestamp"])


async def _run_named(kube: KubeClient, ns: str, predicate: Callable[[Body], bool], *, what: str,
                     timeout: float = 60) -> Body:
    async def probe() -> Body | None:
        return next((r for r in await _runs(kube, ns) if predicate(r)), None)

    return await wait_for(probe, what=what, timeout=timeout)


def _phase(run: Body) -> str | None:
    phase = (run.get("status") or {}).get("phase")
    return str(phase) if phase is not None else None


def _aborted(st: Body) -> bool:
    return st.get("phase") == "Degraded" and bool(st.get("abort"))


async def test_healthy_canary_passes_its_step_analysis_and_is_promoted(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.0)
    await kube.create(ANALYSISTEMPLATES, template("success-rate", [
        metric("success-rate", prometheus.url, success_rate(), interval="1s", count=3,
               successCondition="result[0] >= 0.95"),
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, analysis_step("success-rate", app.name), {"setWeight": 60}])
    v1 = await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                           what="v2 promoted after a successful analysis", timeout=90)
    assert await weights(kube, ns) == (100, 0)
    [run] = await _runs(kube, ns)
    assert _phase(run) == "Successful"
    result = run["status"]["metricResults"][0]
    assert result["count"] == 3 and result["successful"] == 3
    assert all(m["phase"] == "Successful" for m in result["measurements"])
    # The status keeps naming the runs of the walk that promoted this revision, until a new walk starts.
    assert [(r["name"], r["kind"], r["phase"]) for r in st["analysisRuns"]] == [
        (run["metadata"]["name"], "Step", "Successful")]


async def test_rising_error_rate_aborts_through_step_analysis_within_an_interval_and_a_scrape(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.0)
    await kube.create(ANALYSISTEMPLATES, template("errors", [
        metric("error-rate", prometheus.url, success_rate(), interval="1s",
               failureCondition="result[0] < 0.9"),  # no count: measures until the step's run is decided
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 30}, analysis_step("errors", app.name), {"setWeight": 60}])
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    await _run_named(kube, ns, lambda r: _phase(r) == "Running", what="the step's analysis measuring")
    assert await weights(kube, ns) == (70, 30)

    app.set(error_rate=1.0)
    started = time.monotonic()

    async def back_on_stable() -> bool:
        return await weights(kube, ns) == (100, 0)

    # Driven by the measurements, not by a resync (300 s): interval (1 s) plus one scrape (1 s) when the machine is
    # quiet (measured: about 1.5 s, printed below). The bound leaves room for a shared, loaded CI machine (2 s there
    # under load); speed itself is not asserted in tests.
    await wait_for(back_on_stable, what="all traffic back on stable", timeout=15)
    elapsed = time.monotonic() - started
    st = await wait_status(kube, ns, _aborted, what="aborted")
    assert "error-rate" in st["message"] and "failureCondition" in st["message"], st["message"]
    assert condition(st, "Degraded")["reason"] == "RolloutAborted"
    [run] = await _runs(kube, ns)
    assert _phase(run) == "Failed"
    print(f"abort reached the router {elapsed:.2f}s after the error rate rose")


async def test_background_analysis_aborts_while_steps_are_paused(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.0)
    await kube.create(ANALYSISTEMPLATES, template("errors", [
        metric("error-rate", prometheus.url, success_rate(), interval="1s", failureCondition="result[0] < 0.9"),
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}])
    body["spec"]["strategy"]["canary"]["analysis"] = {
        "templates": [{"templateName": "errors"}], "args": [{"name": "app", "value": app.name}], "startingStep": 1}
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(1), what="paused after setWeight 20")
    run = await _run_named(kube, ns, lambda r: _phase(r) == "Running", what="background analysis measuring")
    assert run["metadata"]["labels"]["sluice.dev/analysis-step"] == "background"
    st = await status(kube, ns)
    assert [r["kind"] for r in st["analysisRuns"]] == ["Background"]

    app.set(error_rate=1.0)

    async def back_on_stable() -> bool:
        return await weights(kube, ns) == (100, 0)

    # Driven by the measurements while the steps are paused (a resync would take 300 s).
    await wait_for(back_on_stable, what="all traffic back on stable", timeout=15)
    st = await wait_status(kube, ns, _aborted, what="aborted by background analysis")
    assert run["metadata"]["name"] in st["message"]


async def test_inconclusive_result_pauses_until_a_human_resumes(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.1)
    # 90% success: not good enough to pass (>= 0.99), not bad enough to fail (< 0.5): a human decides.
    await kube.create(ANALYSISTEMPLATES, template("grey", [
        metric("success-rate", prometheus.url, success_rate("5s"), interval="1s", count=2,
               successCondition="result[0] >= 0.99", failureCondition="result[0] < 0.5"),
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, analysis_step("grey", app.name), {"setWeight": 60}])
    v1 = await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, paused_at(1), what="paused on an inconclusive analysis", timeout=60)
    assert condition(st, "Paused")["reason"] == "InconclusiveAnalysis"
    assert "inconclusive" in st["message"]
    assert await weights(kube, ns) == (80, 20)
    [run] = await _runs(kube, ns)
    assert _phase(run) == "Inconclusive"

    await resume(kube, ns)
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                           what="promoted after the human accepted the result", timeout=60)
    assert await weights(kube, ns) == (100, 0)


@pytest.mark.parametrize(("policy", "outcome"), [
    ("Inconclusive", "paused"), ("Fail", "aborted"), ("Pass", "promoted"),
])
async def test_no_data_follows_the_metrics_no_data_policy(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        policy: str, outcome: str) -> None:
    ns = namespace
    # No service has this label: the query returns an empty vector.
    query = 'sum(rate(http_requests_total{app="{{args.app}}"}[5s]))'
    await kube.create(ANALYSISTEMPLATES, template("quiet", [
        metric("traffic", prometheus.url, query, successCondition="result[0] > 0", noDataPolicy=policy),
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, analysis_step("quiet", f"nobody-{policy.lower()}")])
    v1 = await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    if outcome == "paused":
        st = await wait_status(kube, ns, paused_at(1), what="paused: no data is inconclusive")
        assert "no data" in st["message"] and "no samples" in st["message"]
        assert await weights(kube, ns) == (80, 20)
    elif outcome == "aborted":
        st = await wait_status(kube, ns, _aborted, what="aborted: no data counts as a failure")
        assert "no data" in st["message"]
        assert await weights(kube, ns) == (100, 0)
    else:
        await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                          what="promoted: the user chose to pass on no data")
    [run] = await _runs(kube, ns)
    measurement = run["status"]["metricResults"][0]["measurements"][0]
    assert "no samples" in measurement["message"]


async def test_prometheus_stopped_mid_run_errors_and_aborts_never_promotes(
        kube: KubeClient, namespace: str, controller: ControllerProcess, private_prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, prom = namespace, private_prometheus
    app = start_metrics_app(error_rate=0.0, prometheus=prom)
    await kube.create(ANALYSISTEMPLATES, template("errors", [
        metric("success-rate", prom.url, success_rate(), interval="1s", count=30, consecutiveErrorLimit=2,
               successCondition="result[0] >= 0.9"),
    ]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, analysis_step("errors", app.name), {"setWeight": 60}])
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    await _run_named(kube, ns, lambda r: (r.get("status") or {}).get("metricResults", [{}])[0].get("successful", 0)
                     >= 2, what="a few good measurements")
    prom.stop()
    st = await wait_status(kube, ns, _aborted, what="aborted after consecutive errors", timeout=30)
    assert "consecutiveErrorLimit" in st["message"] and prom.url in st["message"], st["message"]
    [run] = await _runs(kube, ns)
    assert _phase(run) == "Error"
    result = run["status"]["metricResults"][0]
    assert result["consecutiveError"] == 3
    assert result["measurements"][-1]["phase"] == "Error"
    assert await weights(kube, ns) == (100, 0)


@pytest.fixture
async def web_check() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A real HTTP endpoint for the web provider: it wants a bearer token and reports a readiness ratio."""
    seen: list[dict[str, str]] = []

    async def ready(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        if request.headers.get("Authorization") != "Bearer s3cret-token":
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response({"data": {"ready": 0.98, "checks": [{"ok": True}]}})

    application = web.Application()
    application.router.add_get("/ready", ready)
    runner = web.AppRunner(application)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/ready", seen
    finally:
        await runner.cleanup()


async def test_web_check_with_a_secret_header_gates_the_step(
        kube: KubeClient, namespace: str, controller: ControllerProcess,
        web_check: tuple[str, list[dict[str, str]]]) -> None:
    ns, (url, seen) = namespace, web_check
    await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "check-token"},
                                "data": {"token": base64.b64encode(b"Bearer s3cret-token").decode()}}, namespace=ns)
    await kube.create(ANALYSISTEMPLATES, template("ready", [{
        "name": "ready", "successCondition": "result >= 0.95",
        "provider": {"web": {"url": url, "jsonPath": "$.data.ready", "timeout": "2s", "headers": [
            {"name": "Authorization", "valueFrom": {"secretKeyRef": {"name": "check-token", "key": "token"}}}]}},
    }], args=[]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20},
                               {"analysis": {"templates": [{"templateName": "ready"}]}}, {"setWeight": 60}])
    v1 = await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                      what="promoted on the web check")
    assert seen and seen[0]["Authorization"] == "Bearer s3cret-token"
    [run] = await _runs(kube, ns)
    assert run["status"]["metricResults"][0]["measurements"][0]["value"] == "0.98"
    # The secret is read when measuring, never written into the run or the controller's log.
    assert "s3cret-token" not in str(run)
    assert "s3cret-token" not in controller.log_path.read_text()


async def test_invalid_condition_is_reported_before_any_measurement(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any) -> None:
    ns = namespace
    await kube.create(ANALYSISTEMPLATES, template("broken", [
        metric("error-rate", prometheus.url, "vector(1)", successCondition="result[0] >= "),
    ], args=[]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "broken"}]}}])
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, _aborted, what="aborted on the broken condition")
    assert "successCondition" in st["message"] and "error-rate" in st["message"], st["message"]
    [run] = await _runs(kube, ns)
    assert _phase(run) == "Error"
    assert not any(r.get("measurements") for r in run["status"].get("metricResults") or [])
    assert await weights(kube, ns) == (100, 0)


async def test_template_args_take_values_from_the_rollout(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any) -> None:
    ns = namespace
    # PromQL comments carry the args that do not change the value.
    query = 'vector({{args.one}}) # rollout={{args.rollout}} ns={{args.namespace}} hash={{args.hash}}'

    await kube.create(ANALYSISTEMPLATES, template("args", [
        metric("echo", prometheus.url, query, successCondition="result[0] == 1"),
    ], args=[{"name": "one"}, {"name": "rollout"}, {"name": "namespace"}, {"name": "hash"},
             {"name": "unused", "value": "default-is-fine"}]), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, {"analysis": {
        "templates": [{"templateName": "args"}],
        "args": [{"name": "one", "value": "1"},
                 {"name": "rollout", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                 {"name": "namespace", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                 {"name": "hash", "valueFrom": {"podTemplateHashValue": "Latest"}}]}}])
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("canaryHash")
                           == s.get("stableHash") and s.get("walk", 0) >= 2, what="promoted")
    [run] = await _runs(kube, ns)
    args = {a["name"]: a["value"] for a in run["spec"]["args"]}
    assert args == {"one": "1", "rollout": "web", "namespace": ns, "hash": st["stableHash"],
                    "unused": "default-is-fine"}
    q = run["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    assert q == f'vector(1) # rollout=web ns={ns} hash={st["stableHash"]}'


async def test_missing_template_is_reported_on_the_rollout_and_traffic_stays(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    body = rollout_body(steps=[{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "nowhere"}]}}])
    await _healthy_v1(kube, ns, body)
    await set_image(kube, ns, "registry.example/web:2")
    st = await wait_status(kube, ns, lambda s: condition(s, "ReconcileError").get("status") == "True",
                           what="the missing template reported")
    assert "AnalysisTemplate" in condition(st, "ReconcileError")["message"]
    assert "nowhere" in condition(st, "ReconcileError")["message"]
    assert await weights(kube, ns) == (80, 20)  # traffic stays where the last completed step put it
