"""Blue-green on the real control plane: the controller process brings the new revision up behind the preview
Service while the real ReplicaSet controller, scheduler and KWOK make pods available, promotes by switching the
active Service's selector, and switches back when post-promotion analysis (against the real Prometheus scraping a
metrics app whose error rate each test sets) fails. Tests read the Services, ReplicaSets, AnalysisRuns and Events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rollout.kube import ANALYSISRUNS, ANALYSISTEMPLATES, EVENTS, ROLLOUTS, ApiError, Body, KubeClient
from strategies.model import STEP_LABEL, parse_time
from strategies.operations import plan_operation
from tests.integration.kit import (
    ControllerProcess,
    blue_green_body,
    blue_green_selectors,
    condition,
    create_blue_green_app,
    replica_sets,
    set_image,
    wait_for,
    wait_status,
)
from tests.integration.test_analysis import metric, success_rate, template

pytestmark = pytest.mark.timeout(180)

V2 = "registry.example/web:2"


# -- reading what the controller did -------------------------------------------------------------------------------


async def _healthy(kube: KubeClient, ns: str, *, stable: str | None = None, timeout: float = 60) -> Body:
    return await wait_status(
        kube, ns, lambda st: st.get("phase") == "Healthy" and (stable is None or st.get("stableHash") == stable),
        what=f"Healthy{' on ' + stable if stable else ''}", timeout=timeout)


def _paused_in_preview(st: Body) -> bool:
    return st.get("phase") == "Paused" and [p["reason"] for p in st.get("pauseConditions") or []] == ["BlueGreenPause"]


def _aborted(st: Body) -> bool:
    return st.get("phase") == "Degraded" and bool(st.get("abort"))


async def _sizes(kube: KubeClient, ns: str) -> dict[str, int]:
    """spec.replicas of each revision's ReplicaSet."""
    return {hash_: int(rs["spec"]["replicas"]) for hash_, rs in (await replica_sets(kube, ns)).items()}


async def _scaled_to_zero(kube: KubeClient, ns: str, hash_: str, *, what: str) -> None:
    async def scaled() -> bool:
        return (await _sizes(kube, ns)).get(hash_) == 0

    await wait_for(scaled, what=what, timeout=30)


async def _events(kube: KubeClient, ns: str, *wanted: str) -> list[Body]:
    """The namespace's Events, oldest first, once every `wanted` reason is among them (Rollout-level Events are
    written just after the status patch, so a test that has seen the status polls for them)."""
    async def listed() -> list[Body] | None:
        items, _ = await kube.list(EVENTS, namespace=ns)
        found = sorted(items, key=lambda e: e["metadata"]["creationTimestamp"])
        reasons = {e["reason"] for e in found}
        return found if all(w in reasons for w in wanted) else None

    return await wait_for(listed, what=f"Events {', '.join(wanted)}", timeout=15)


def _when(event: Body) -> datetime:
    moment = parse_time(event["firstTimestamp"])
    assert moment is not None
    return moment


async def _runs(kube: KubeClient, ns: str) -> list[Body]:
    items, _ = await kube.list(ANALYSISRUNS, namespace=ns)
    return sorted(items, key=lambda r: r["metadata"]["creationTimestamp"])


async def _success_rate_analysis(kube: KubeClient, ns: str, prometheus_url: str, app: str, **fields: Any) -> Body:
    """An AnalysisTemplate measuring `app`'s success rate every second (with `fields`: the conditions, count), and
    the blueGreen analysis field that uses it."""
    await kube.create(ANALYSISTEMPLATES, template("success-rate", [
        metric("success-rate", prometheus_url, success_rate(), interval="1s", **fields)]), namespace=ns)
    return {"templates": [{"templateName": "success-rate"}], "args": [{"name": "app", "value": app}]}


@dataclass
class Watched:
    """What a poller saw while a test ran: the active Service's revision, and the available pods of `revision`."""

    revision: str
    active: list[str | None] = field(default_factory=list)
    available: list[int] = field(default_factory=list)

    @property
    def switches(self) -> list[str | None]:
        """The active Service's revisions in the order it selected them."""
        return [a for i, a in enumerate(self.active) if i == 0 or a != self.active[i - 1]]


@contextlib.asynccontextmanager
async def _watching(kube: KubeClient, ns: str, revision: str) -> AsyncIterator[Watched]:
    seen, stop = Watched(revision), asyncio.Event()

    async def sample() -> None:
        with contextlib.suppress(ApiError):
            active, _ = await blue_green_selectors(kube, ns)
            rs = (await replica_sets(kube, ns)).get(revision)
            seen.active.append(active)
            seen.available.append(int((rs or {}).get("status", {}).get("availableReplicas") or 0))

    async def poll() -> None:
        while not stop.is_set():
            await sample()
            await asyncio.sleep(0.05)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        stop.set()
        await task
        # A last look once the body is done: a switch in the final interval would otherwise go unseen.
        await sample()


async def _start_v2(kube: KubeClient, ns: str, body: Body) -> str:
    """v1 Healthy behind both Services, then v2 shipped; returns v1's hash."""
    await create_blue_green_app(kube, ns, body)
    v1 = str((await _healthy(kube, ns))["stableHash"])
    assert await blue_green_selectors(kube, ns) == (v1, v1)
    await set_image(kube, ns, V2)
    return v1


async def _ship_v2_until_aborted(kube: KubeClient, ns: str, **analysis: Any) -> tuple[str, Body, Watched]:
    """v1 Healthy with `analysis` (pre- or postPromotionAnalysis), v2 shipped, aborted, and scaled down after
    abortScaleDownDelaySeconds: v1's hash, the aborted status, and what the active Service and v1 did meanwhile."""
    await create_blue_green_app(kube, ns, blue_green_body(**analysis))
    v1 = str((await _healthy(kube, ns))["stableHash"])
    async with _watching(kube, ns, v1) as seen:
        await set_image(kube, ns, V2)
        st = await wait_status(kube, ns, _aborted, what=f"aborted by {', '.join(analysis)}", timeout=60)
        await _scaled_to_zero(kube, ns, str(st["canaryHash"]), what="the aborted revision scaled down")
    return v1, st, seen


# -- the tests -----------------------------------------------------------------------------------------------------


async def test_auto_promotion_switches_active_after_the_preview_was_kept_its_seconds(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    v1 = await _start_v2(kube, ns, blue_green_body(previewReplicaCount=2, autoPromotionSeconds=6))
    st = await wait_status(kube, ns, _paused_in_preview, what="the preview kept before auto-promotion")
    v2 = str(st["canaryHash"])
    assert st["stepDisplay"] == "preview" and st["stableHash"] == v1
    assert await blue_green_selectors(kube, ns) == (v1, v2)
    assert await _sizes(kube, ns) == {v1: 4, v2: 2}
    started = parse_time(st["pauseConditions"][0]["startTime"])
    assert started is not None
    async with _watching(kube, ns, v2) as seen:
        await _healthy(kube, ns, stable=v2)
    assert await blue_green_selectors(kube, ns) == (v2, v2)
    # The active Service moved once, and only to a revision with all its pods available.
    assert seen.switches == [v1, v2]
    assert all(n == 4 for a, n in zip(seen.active, seen.available, strict=True) if a == v2)
    events = await _events(kube, ns, "RolloutPaused", "RolloutPromoted", "RolloutCompleted")
    promoted = next(e for e in events if e["reason"] == "RolloutPromoted")
    assert _when(promoted) >= started + timedelta(seconds=6)
    await _scaled_to_zero(kube, ns, v1, what="the previous revision scaled down after scaleDownDelaySeconds")


async def test_manual_promotion_waits_for_promote_then_switches(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    ns = namespace
    v1 = await _start_v2(kube, ns, blue_green_body(autoPromotionEnabled=False))
    st = await wait_status(kube, ns, _paused_in_preview, what="paused until promoted")
    v2 = str(st["canaryHash"])
    assert condition(st, "Paused")["reason"] == "BlueGreenPause"
    assert await blue_green_selectors(kube, ns) == (v1, v2)
    assert await _sizes(kube, ns) == {v1: 4, v2: 4}
    # `sluice promote`, as the API decides it: the pause conditions removed.
    rollout = await kube.get(ROLLOUTS, name="web", namespace=ns)
    outcome = plan_operation("promote", rollout, {}, now=datetime.now(UTC))
    assert [(p.subresource, p.body["status"]) for p in outcome.patches] == [("status", {"pauseConditions": None})]
    for patch in outcome.patches:
        await kube.patch(ROLLOUTS, name="web", namespace=ns, subresource=patch.subresource, patch=patch.body)
    st = await _healthy(kube, ns, stable=v2)
    assert st["stepDisplay"] == "stable" and st["controllerPause"] is False
    assert await blue_green_selectors(kube, ns) == (v2, v2)
    await _events(kube, ns, "RolloutPaused", "RolloutResumed", "RolloutPromoted", "RolloutCompleted")
    await _scaled_to_zero(kube, ns, v1, what="the previous revision scaled down after scaleDownDelaySeconds")


async def test_failing_pre_promotion_analysis_never_switches_active_and_aborts(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=1.0)
    analysis = await _success_rate_analysis(kube, ns, prometheus.url, app.name, failureCondition="result[0] < 0.9")
    v1, st, seen = await _ship_v2_until_aborted(kube, ns, prePromotionAnalysis=analysis)
    v2 = str(st["canaryHash"])
    assert set(seen.active) == {v1}, "the active Service must never leave the stable revision"
    assert await blue_green_selectors(kube, ns) == (v1, v1)  # the preview Service is back on stable too
    assert condition(st, "Degraded")["reason"] == "RolloutAborted" and st["stableHash"] == v1
    [run] = await _runs(kube, ns)
    assert run["metadata"]["name"] == f"web-{v2}-{st['walk']}-pre" and run["status"]["phase"] == "Failed"
    assert run["metadata"]["labels"][STEP_LABEL] == "prePromotion"
    assert run["metadata"]["name"] in st["message"]
    assert [(r["kind"], r["phase"]) for r in st["analysisRuns"]] == [("PrePromotion", "Failed")]
    await _events(kube, ns, "RolloutAborted")


async def test_failing_post_promotion_analysis_switches_back_to_the_old_pods(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=1.0)
    analysis = await _success_rate_analysis(kube, ns, prometheus.url, app.name, initialDelay="1s",
                                            failureCondition="result[0] < 0.9")
    v1, st, seen = await _ship_v2_until_aborted(kube, ns, postPromotionAnalysis=analysis)
    v2 = str(st["canaryHash"])
    assert await blue_green_selectors(kube, ns) == (v1, v1)
    assert st["stableHash"] == v1
    # The switch back found every old pod: v1 never lost one while the new revision served.
    assert min(seen.available) == 4, seen.available
    await _events(kube, ns, "RolloutPromoted", "RolloutAborted")
    # Every Event is also a log line, in order (Events' timestamps have whole seconds, too coarse for that).
    lines = [json.loads(line) for line in controller.log_path.read_text().splitlines() if line.startswith("{")]
    switches = [line["msg"].rsplit(" ", 1)[-1] for line in lines
                if line.get("reason") == "ServiceSelectorUpdated" and "Service web-active " in line["msg"]]
    assert switches == [v1, v2, v1], switches
    [run] = await _runs(kube, ns)
    assert run["metadata"]["name"].endswith("-post") and run["status"]["phase"] == "Failed"
    assert [(r["kind"], r["phase"]) for r in st["analysisRuns"]] == [("PostPromotion", "Failed")]


async def test_controller_killed_in_preview_continues_without_repeating_or_skipping(
        kube: KubeClient, namespace: str, controller: ControllerProcess, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.0)
    analysis = await _success_rate_analysis(kube, ns, prometheus.url, app.name, count=3,
                                            successCondition="result[0] >= 0.95")
    body = blue_green_body(prePromotionAnalysis=analysis, autoPromotionSeconds=8)
    v1 = await _start_v2(kube, ns, body)

    async def measuring() -> Body | None:
        return next((r for r in await _runs(kube, ns) if (r.get("status") or {}).get("phase") == "Running"), None)

    await wait_for(measuring, what="the pre-promotion analysis measuring")
    await _events(kube, ns, "AnalysisRunCreated")  # written just after the run: a kill before it would lose it
    controller.kill()  # during the analysis: the run and the walk are in the cluster, not in memory
    controller.start()
    st = await wait_status(kube, ns, _paused_in_preview, what="paused after the analysis passed", timeout=60)
    started = st["pauseConditions"][0]["startTime"]
    # RolloutPaused is written just after that status: a kill before it would lose it (a restart does not repeat it).
    await _events(kube, ns, "RolloutPaused")
    controller.kill()  # during the pause: its start time is in the status
    assert await blue_green_selectors(kube, ns) == (v1, st["canaryHash"])
    controller.start()
    st = await _healthy(kube, ns, stable=str(st["canaryHash"]))
    v2 = str(st["stableHash"])
    assert await blue_green_selectors(kube, ns) == (v2, v2)
    events = await _events(kube, ns, "RolloutPaused", "RolloutPromoted", "RolloutCompleted")
    reasons = [e["reason"] for e in events]
    for once in ("AnalysisRunCreated", "RolloutPaused", "RolloutPromoted", "RolloutCompleted"):
        assert reasons.count(once) == 1, (once, reasons)
    promoted = next(e for e in events if e["reason"] == "RolloutPromoted")
    begun = parse_time(started)
    assert begun is not None and _when(promoted) >= begun + timedelta(seconds=8)
    [run] = await _runs(kube, ns)
    assert run["status"]["phase"] == "Successful" and run["metadata"]["name"].endswith("-pre")
    assert st["analysisRuns"] == [{"name": run["metadata"]["name"], "kind": "PrePromotion", "phase": "Successful",
                                   "message": run["status"].get("message", "")}]


async def test_both_strategies_at_once_are_refused_by_the_api_server(kube: KubeClient, namespace: str) -> None:
    body = blue_green_body()
    body["spec"]["strategy"]["canary"] = {"stableService": "web-active", "canaryService": "web-preview",
                                          "trafficRouting": {"istio": {"virtualService": {"name": "web"}}}}
    with pytest.raises(ApiError) as refused:
        await kube.create(ROLLOUTS, body, namespace=namespace)
    assert refused.value.status == 422
    assert "strategy needs exactly one of canary, blueGreen" in refused.value.message


async def test_invalid_blue_green_spec_is_reported_and_nothing_is_created(
        kube: KubeClient, namespace: str, controller: ControllerProcess) -> None:
    # The API server cannot tell: previewReplicaCount above replicas, and a preview Service that does not exist.
    await create_blue_green_app(kube, namespace, blue_green_body(replicas=2, previewReplicaCount=3))
    st = await wait_status(kube, namespace, lambda s: condition(s, "InvalidSpec").get("status") == "True",
                           what="InvalidSpec for previewReplicaCount")
    assert "previewReplicaCount: 3 is more than spec.replicas (2)" in condition(st, "InvalidSpec")["message"]
    assert await replica_sets(kube, namespace) == {}
    await kube.patch(ROLLOUTS, name="web", namespace=namespace,
                     patch={"spec": {"strategy": {"blueGreen": {"previewReplicaCount": None,
                                                                "previewService": "web-missing"}}}})
    st = await wait_status(kube, namespace, lambda s: "web-missing" in condition(s, "InvalidSpec").get("message", ""),
                           what="InvalidSpec naming the missing preview Service")
    assert f"Service {namespace}/web-missing not found" in condition(st, "InvalidSpec")["message"]
    assert controller.alive
