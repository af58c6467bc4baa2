"""The blue-green planner, one behaviour per test, on the in-memory cluster of test_canary_planner.py (with the
AnalysisRuns of test_canary_analysis.py): the stable Service is the active one, the canary Service the preview one,
and there is no router. A property test at the end drives it with random events and checks the invariants on every
reconcile.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.bluegreen import PAUSE_REASON, plan
from strategies.decision import (
    Action,
    CreateAnalysisRun,
    CreateReplicaSet,
    Decision,
    MarkScaleDown,
    ScaleReplicaSet,
    SetBackend,
    SetWeight,
    TerminateAnalysisRun,
)
from strategies.model import POST_PROMOTION, PRE_PROMOTION, Observed, Rollout, RunSlot, parse_time
from strategies.runs import INCONCLUSIVE_REASON

from .test_canary_analysis import AnalysisCluster
from .test_canary_planner import NAME, START, condition, event_reasons, hash_of, pod_template, rs_name
from .test_canary_properties import check_status_fits_the_crd

ACTIVE, PREVIEW = "demo-active", "demo-preview"
ANALYSIS = {"templates": [{"templateName": "smoke"}], "args": [{"name": "app", "value": "demo"}]}
H1, H2, H3 = hash_of("app:1"), hash_of("app:2"), hash_of("app:3")


def bg_body(*, replicas: int = 4, preview: bool = True, spec: dict[str, Any] | None = None,
            **strategy: Any) -> dict[str, Any]:
    """A blue-green Rollout on app:1; keyword arguments are blueGreen fields, `spec` other spec fields."""
    blue_green = {"activeService": ACTIVE, "scaleDownDelaySeconds": 30, "abortScaleDownDelaySeconds": 20, **strategy}
    if preview:
        blue_green["previewService"] = PREVIEW
    return {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
        "metadata": {"namespace": "default", "name": NAME, "generation": 1},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": NAME}}, "template": pod_template("app:1"),
                 "strategy": {"blueGreen": blue_green}, **(spec or {})},
        "status": {},
    }


@dataclass
class BlueGreenCluster(AnalysisCluster):
    """The stable Service is the active one, the canary Service the preview one; no router."""

    def plan(self) -> Decision:
        return plan(self.rollout, self.observed())

    def _apply(self, action: Action) -> None:
        match action:
            case SetBackend(role="stable"):
                assert action.service == ACTIVE, action
                self.stable_service_hash = action.hash
            case SetBackend():
                assert action.service == PREVIEW, action
                self.canary_service_hash = action.hash
            case SetWeight():
                raise AssertionError(f"{action} on a blue-green Rollout")
            case _:
                super()._apply(action)

    def run_for(self, step: RunSlot) -> str:
        """The latest run created for pre- or post-promotion analysis."""
        return next(a.name for a in reversed(self.created) if a.step == step)

    @property
    def active(self) -> str | None:
        return self.stable_service_hash

    @property
    def preview(self) -> str | None:
        return self.canary_service_hash

    def settle(self) -> Decision:
        """Reconcile with every pod available, as long as decisions change something."""
        for _ in range(10):
            self.make_available()
            decision = self.reconcile()
            if not decision.actions and decision.requeue_after != 0.0:
                return decision
        raise AssertionError("no steady decision after 10 reconciles")


def healthy(**strategy: Any) -> BlueGreenCluster:
    cluster = BlueGreenCluster(bg_body(**strategy))
    assert cluster.settle().summary == "Healthy"
    return cluster


def in_preview(**strategy: Any) -> BlueGreenCluster:
    """app:1 Healthy, app:2 shipped and its preview pods all available."""
    cluster = healthy(**strategy)
    cluster.set_image("app:2")
    cluster.settle()
    return cluster


def ran(cluster: BlueGreenCluster, slot: RunSlot, phase: str, message: str = "") -> str:
    name = cluster.run_for(slot)
    cluster.set_phase(name, phase, message)
    return name


# -- stable --------------------------------------------------------------------------------------------------------


def test_first_version_points_both_services_at_it_once_all_pods_are_available() -> None:
    cluster = BlueGreenCluster(bg_body())
    first = cluster.reconcile()
    assert first.actions == (CreateReplicaSet(H1, 1, 4),)
    assert (first.status["phase"], first.status["stableHash"], first.status["canaryWeight"]) == ("Progressing", H1, 0)
    cluster.make_available()
    second = cluster.reconcile()
    assert second.actions == (SetBackend("stable", ACTIVE, H1), SetBackend("canary", PREVIEW, H1))
    assert second.summary == "Healthy" and second.status["stepDisplay"] == "stable"
    quiet = cluster.reconcile()
    assert (quiet.actions, quiet.events, quiet.requeue_after) == ((), (), cluster.resync)


# -- preview and promotion -----------------------------------------------------------------------------------------


def test_new_revision_comes_up_behind_the_preview_service_while_active_stays_on_stable() -> None:
    cluster = healthy(previewReplicaCount=2, autoPromotionEnabled=False)
    cluster.set_image("app:2")
    first = cluster.reconcile()
    assert first.actions == (CreateReplicaSet(H2, 2, 2),)
    assert first.status["stepDisplay"] == "preview" and "0/2" in first.status["message"]
    cluster.make_available(count=1)
    assert cluster.reconcile().actions == ()  # 1/2: the preview Service waits for all of them
    cluster.make_available()
    assert cluster.reconcile().actions == (SetBackend("canary", PREVIEW, H2),)
    assert (cluster.active, cluster.preview) == (H1, H2)
    assert (cluster.rs("app:1").replicas, cluster.rs("app:2").replicas) == (4, 2)


def test_auto_promotion_at_once_scales_to_full_size_then_switches_then_completes() -> None:
    cluster = healthy(previewReplicaCount=2)
    cluster.set_image("app:2")
    cluster.reconcile()
    cluster.make_available()
    scaled = cluster.reconcile()
    assert scaled.actions == (ScaleReplicaSet(rs_name("app:2"), 4, 2), SetBackend("canary", PREVIEW, H2))
    assert scaled.status["stepDisplay"] == "promoting" and cluster.active == H1
    cluster.make_available(count=1)
    assert cluster.reconcile().actions == ()  # 3 of 4: the active Service waits for all of them
    cluster.make_available()
    switch = cluster.reconcile()
    assert switch.summary == "Promoted"
    assert switch.actions == (SetBackend("stable", ACTIVE, H2),)
    assert "RolloutPromoted" in event_reasons(switch)
    assert (switch.status["stableHash"], switch.status["stepDisplay"]) == (H1, "promoted")
    done = cluster.reconcile()
    assert done.summary == "Completed"
    assert done.actions == (MarkScaleDown(rs_name("app:1"), START + timedelta(seconds=30)),)
    assert "RolloutCompleted" in event_reasons(done)
    assert (cluster.status["stableHash"], cluster.status["phase"]) == (H2, "Healthy")
    cluster.pass_time(30)
    assert cluster.reconcile().actions == (ScaleReplicaSet(rs_name("app:1"), 0, 4),)


def test_the_old_revision_keeps_every_pod_until_the_rollout_completes() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS)
    assert cluster.active == H2 and cluster.status["stableHash"] == H1
    cluster.pass_time(3600)
    cluster.reconcile()
    old = cluster.rs("app:1")
    assert (old.replicas, old.available, old.scale_down_at) == (4, 4, None)


def test_auto_promotion_waits_its_seconds_from_a_start_time_kept_in_status() -> None:
    cluster = in_preview(autoPromotionSeconds=60)
    assert cluster.active == H1 and cluster.status["phase"] == "Paused"
    assert cluster.status["pauseConditions"] == [{"reason": PAUSE_REASON, "startTime": "2024-05-01T12:00:00Z"}]
    assert condition(cluster.status, "Paused")["reason"] == PAUSE_REASON
    cluster.pass_time(45)
    waiting = cluster.reconcile()
    assert waiting.actions == () and waiting.requeue_after == 15
    assert cluster.status["pauseConditions"][0]["startTime"] == "2024-05-01T12:00:00Z"
    cluster.pass_time(15)
    promoted = cluster.reconcile()
    assert promoted.actions == (SetBackend("stable", ACTIVE, H2),)
    assert (promoted.status["controllerPause"], promoted.status["pauseConditions"]) == (False, [])


def test_auto_promotion_may_be_promoted_earlier_by_a_human() -> None:
    cluster = in_preview(autoPromotionSeconds=600)
    cluster.resume()  # what `sluice promote` writes: the pause conditions removed
    decision = cluster.reconcile()
    assert decision.actions == (SetBackend("stable", ACTIVE, H2),)
    assert event_reasons(decision) == ["RolloutResumed", "RolloutPromoted"]


def test_manual_promotion_waits_for_a_human_however_long_it_takes() -> None:
    cluster = in_preview(autoPromotionEnabled=False)
    paused = cluster.status
    assert (paused["phase"], paused["controllerPause"], paused["pauseConditions"][0]["reason"]) == (
        "Paused", True, PAUSE_REASON)
    cluster.pass_time(7 * 24 * 3600)
    assert cluster.reconcile().actions == ()
    assert cluster.active == H1
    cluster.resume()
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_a_granted_promotion_survives_while_the_new_revision_scales_up() -> None:
    cluster = in_preview(autoPromotionEnabled=False, previewReplicaCount=1)
    cluster.resume()
    granted = cluster.reconcile()
    assert granted.actions == (ScaleReplicaSet(rs_name("app:2"), 4, 1),)
    assert cluster.status["controllerPause"] is True and cluster.status["pauseConditions"] == []
    assert cluster.status["stepDisplay"] == "promoting"
    cluster.make_available(count=2)
    assert cluster.reconcile().actions == ()  # 3/4: still promoting, not paused again
    assert cluster.status["phase"] == "Progressing"
    cluster.make_available()
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_expired_auto_promotion_is_kept_as_granted_while_scaling() -> None:
    cluster = in_preview(autoPromotionSeconds=5, previewReplicaCount=1)
    cluster.pass_time(5)
    assert cluster.reconcile().actions == (ScaleReplicaSet(rs_name("app:2"), 4, 1),)
    assert (cluster.status["controllerPause"], cluster.status["pauseConditions"]) == (True, [])
    cluster.make_available()
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_promote_full_skips_the_pause() -> None:
    cluster = in_preview(autoPromotionEnabled=False)
    cluster.status["promoteFull"] = True
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_promote_full_never_skips_pre_promotion_analysis_and_spec_paused_holds_it() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS, autoPromotionEnabled=False)
    cluster.status["promoteFull"] = True
    assert cluster.reconcile().actions == ()  # the analysis is still Pending
    ran(cluster, PRE_PROMOTION, "Successful")
    cluster.spec["paused"] = True
    assert cluster.reconcile().actions == () and cluster.status["phase"] == "Paused"
    cluster.spec["paused"] = False
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_spec_paused_holds_completion_after_the_switch() -> None:
    cluster = in_preview(autoPromotionEnabled=False)
    cluster.spec["paused"] = True
    cluster.resume()
    cluster.reconcile()
    assert cluster.active == H1  # held before the switch
    cluster.spec["paused"] = False
    cluster.reconcile()
    cluster.spec["paused"] = True
    held = cluster.reconcile()
    assert (held.summary, cluster.active, cluster.status["stableHash"]) == ("Paused", H2, H1)
    cluster.spec["paused"] = False
    assert cluster.reconcile().summary == "Completed"


def test_spec_paused_holds_the_promotion_and_keeps_the_pause_start() -> None:
    cluster = in_preview(autoPromotionSeconds=30)
    cluster.spec["paused"] = True
    cluster.pass_time(60)
    held = cluster.reconcile()
    assert held.actions == () and condition(held.status, "Paused")["reason"] == "PausedByUser"
    assert cluster.status["pauseConditions"][0]["startTime"] == "2024-05-01T12:00:00Z"
    cluster.spec["paused"] = False
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_a_revision_shipped_before_the_first_was_available_leaves_active_to_the_first() -> None:
    cluster = BlueGreenCluster(bg_body(autoPromotionEnabled=False))
    cluster.reconcile()
    cluster.set_image("app:2")
    cluster.reconcile()
    assert cluster.active is None  # selects what it selected before sluice (no pods of ours yet)
    cluster.make_available()
    decision = cluster.reconcile()
    assert decision.actions == (SetBackend("stable", ACTIVE, H1), SetBackend("canary", PREVIEW, H2))
    assert cluster.status["stableHash"] == H1


def test_without_a_preview_service_the_new_pods_wait_unexposed() -> None:
    cluster = BlueGreenCluster(bg_body(preview=False, autoPromotionEnabled=False))
    cluster.settle()
    cluster.set_image("app:2")
    cluster.settle()
    assert (cluster.active, cluster.preview, cluster.status["phase"]) == (H1, None, "Paused")
    cluster.resume()
    cluster.settle()
    assert (cluster.active, cluster.status["stableHash"]) == (H2, H2)


# -- pre-promotion analysis ----------------------------------------------------------------------------------------


def test_pre_promotion_analysis_starts_after_the_preview_switch_and_gates_the_promotion() -> None:
    cluster = healthy(prePromotionAnalysis=ANALYSIS)
    cluster.set_image("app:2")
    cluster.reconcile()
    cluster.make_available()
    start = cluster.reconcile()
    assert [type(a) for a in start.actions] == [SetBackend, CreateAnalysisRun]
    [run] = cluster.created
    assert (run.name, run.step, run.hash, run.stable_hash) == (f"{NAME}-{H2}-2-pre", PRE_PROMOTION, H2, H1)
    assert start.status["analysisRuns"] == [{"name": run.name, "kind": "PrePromotion", "phase": "Pending",
                                             "message": ""}]
    ran(cluster, PRE_PROMOTION, "Running")
    cluster.pass_time(3600)
    assert cluster.reconcile().actions == () and cluster.active == H1
    ran(cluster, PRE_PROMOTION, "Successful")
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


def test_failing_pre_promotion_analysis_aborts_without_ever_switching() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS)
    name = ran(cluster, PRE_PROMOTION, "Failed", "error rate 30%")
    aborted = cluster.reconcile()
    assert aborted.summary == "Aborted"
    assert aborted.actions == (SetBackend("canary", PREVIEW, H1), MarkScaleDown(rs_name("app:2"),
                                                                                START + timedelta(seconds=20)))
    assert (cluster.active, cluster.preview) == (H1, H1)
    assert name in cluster.status["message"] and cluster.status["phase"] == "Degraded"
    assert condition(cluster.status, "Degraded")["reason"] == "RolloutAborted"
    assert "RolloutAborted" in event_reasons(aborted)
    cluster.pass_time(20)
    assert cluster.reconcile().actions == (ScaleReplicaSet(rs_name("app:2"), 0, 4),)


def test_inconclusive_pre_promotion_pauses_and_a_resume_accepts_it() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS)
    name = ran(cluster, PRE_PROMOTION, "Inconclusive", "90% success")
    paused = cluster.reconcile()
    assert condition(paused.status, "Paused")["reason"] == INCONCLUSIVE_REASON
    assert "AnalysisInconclusive" in event_reasons(paused)
    cluster.resume()
    accepted = cluster.reconcile()
    assert accepted.status["acceptedAnalysisRuns"] == [name] and accepted.actions == ()
    assert cluster.reconcile().actions == (SetBackend("stable", ACTIVE, H2),)


# -- post-promotion analysis ---------------------------------------------------------------------------------------


def test_post_promotion_analysis_runs_after_the_switch_and_completes_the_rollout() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS)
    [run] = cluster.created
    assert (run.name, run.step) == (f"{NAME}-{H2}-2-post", POST_PROMOTION)
    assert cluster.active == H2 and cluster.status["stableHash"] == H1
    assert cluster.status["message"].startswith(f"revision {H2} is active: waiting for post-promotion analysis")
    ran(cluster, POST_PROMOTION, "Successful")
    assert cluster.reconcile().summary == "Completed"
    assert cluster.status["stableHash"] == H2
    assert [r["kind"] for r in cluster.status["analysisRuns"]] == ["PostPromotion"]


def test_failing_post_promotion_analysis_switches_back_to_the_old_revision_at_once() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS, postPromotionAnalysis=ANALYSIS)
    ran(cluster, PRE_PROMOTION, "Successful")
    cluster.settle()
    assert cluster.active == H2
    ran(cluster, POST_PROMOTION, "Error", "prometheus unreachable")
    aborted = cluster.reconcile()
    assert aborted.actions[:2] == (SetBackend("stable", ACTIVE, H1), SetBackend("canary", PREVIEW, H1))
    assert cluster.rs("app:1").available == 4  # the switch back found every old pod
    assert (cluster.status["stableHash"], cluster.status["abort"]) == (H1, True)
    kinds = [(r["kind"], r["phase"]) for r in cluster.status["analysisRuns"]]
    assert kinds == [("PrePromotion", "Successful"), ("PostPromotion", "Error")]


def test_inconclusive_post_promotion_pauses_with_both_revisions_kept() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS)
    ran(cluster, POST_PROMOTION, "Inconclusive")
    cluster.reconcile()
    assert cluster.status["phase"] == "Paused" and cluster.active == H2
    assert cluster.rs("app:1").replicas == 4
    cluster.resume()
    cluster.reconcile()
    assert cluster.reconcile().summary == "Completed"


# -- abort, retry, rollback, supersede -----------------------------------------------------------------------------


def test_user_abort_in_post_promotion_switches_back_and_retry_starts_a_new_walk() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS, prePromotionAnalysis=ANALYSIS)
    ran(cluster, PRE_PROMOTION, "Successful")
    cluster.settle()
    post = cluster.run_for(POST_PROMOTION)
    cluster.status["abort"] = True
    aborted = cluster.reconcile()
    assert aborted.actions[0] == SetBackend("stable", ACTIVE, H1)
    assert TerminateAnalysisRun(post, "the rollout was aborted") in aborted.actions
    cluster.status["abort"] = False
    cluster.settle()
    assert cluster.status["walk"] == 3 and cluster.active == H1
    assert cluster.run_for(PRE_PROMOTION) == f"{NAME}-{H2}-3-pre"


def test_template_back_to_stable_during_post_promotion_is_a_fast_rollback() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS)
    cluster.set_image("app:1")
    rollback = cluster.reconcile()
    assert rollback.summary == "FastRollback"
    assert [a for a in rollback.actions if isinstance(a, SetBackend)] == [
        SetBackend("stable", ACTIVE, H1), SetBackend("canary", PREVIEW, H1)]
    assert TerminateAnalysisRun(cluster.run_for(POST_PROMOTION), f"superseded (revision {H1}, walk 3)") \
        in rollback.actions
    assert cluster.status["phase"] == "Healthy"


def test_newer_revision_in_preview_supersedes_it_without_touching_active() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS)
    old_run = cluster.run_for(PRE_PROMOTION)
    cluster.set_image("app:3")
    decision = cluster.reconcile()
    assert TerminateAnalysisRun(old_run, f"superseded (revision {H3}, walk 3)") in decision.actions
    assert MarkScaleDown(rs_name("app:2"), START + timedelta(seconds=20)) in decision.actions
    assert cluster.active == H1
    cluster.settle()
    assert cluster.preview == H3 and cluster.active == H1


def test_newer_revision_in_post_promotion_keeps_serving_until_it_is_promoted() -> None:
    cluster = in_preview(postPromotionAnalysis=ANALYSIS, autoPromotionEnabled=False)
    cluster.resume()
    cluster.settle()
    assert cluster.active == H2
    cluster.set_image("app:3")
    cluster.settle()
    assert (cluster.active, cluster.preview, cluster.status["phase"]) == (H2, H3, "Paused")
    assert cluster.rs("app:2").replicas == 4 and cluster.rs("app:2").scale_down_at is None
    cluster.resume()
    cluster.settle()
    assert cluster.active == H3
    ran(cluster, POST_PROMOTION, "Successful")
    cluster.settle()
    assert cluster.status["stableHash"] == H3 and cluster.rs("app:2").scale_down_at is not None


def test_preview_pods_past_the_progress_deadline_degrade_or_abort() -> None:
    for abort in (False, True):
        cluster = BlueGreenCluster(bg_body(spec={"progressDeadlineSeconds": 60, "progressDeadlineAbort": abort}))
        cluster.settle()
        cluster.set_image("app:2")
        assert cluster.reconcile().requeue_after == 60
        cluster.pass_time(60)
        decision = cluster.reconcile()
        assert "ProgressDeadlineExceeded" in event_reasons(decision)
        assert decision.summary == ("Aborted" if abort else "Degraded")
        assert cluster.active == H1


# -- restarts ------------------------------------------------------------------------------------------------------


def test_a_restarted_controller_decides_the_same_from_the_same_state() -> None:
    cluster = in_preview(prePromotionAnalysis=ANALYSIS, autoPromotionSeconds=60)
    ran(cluster, PRE_PROMOTION, "Successful")
    rollout, observed = cluster.rollout, cluster.observed()
    assert plan(rollout, observed) == plan(rollout, observed)
    cluster.reconcile()
    started = cluster.status["pauseConditions"][0]["startTime"]
    cluster.pass_time(30)
    again = cluster.reconcile()  # a new process: nothing but the status and the cluster
    assert again.events == () and cluster.status["pauseConditions"][0]["startTime"] == started


def test_a_crash_after_the_switch_neither_switches_twice_nor_loses_the_promotion() -> None:
    cluster = in_preview(autoPromotionEnabled=False, postPromotionAnalysis=ANALYSIS)
    cluster.resume()
    switch = cluster.plan()
    cluster.apply(switch, crash_after=1)  # the active Service moved, the status was never written
    assert cluster.active == H2 and cluster.status["stepDisplay"] == "preview"
    after = cluster.reconcile()
    assert not any(isinstance(a, SetBackend) for a in after.actions)
    assert [a.step for a in after.actions if isinstance(a, CreateAnalysisRun)] == [POST_PROMOTION]
    assert cluster.status["stepDisplay"] == "promoted"


def test_a_crash_after_starting_an_analysis_does_not_start_it_twice() -> None:
    cluster = healthy(prePromotionAnalysis=ANALYSIS)
    cluster.set_image("app:2")
    cluster.reconcile()
    cluster.make_available()
    cluster.apply(cluster.plan(), crash_after=2)
    cluster.reconcile()  # AnalysisCluster refuses a run created twice
    assert len(cluster.created) == 1 and cluster.status["walk"] == 2


# -- properties ----------------------------------------------------------------------------------------------------

PHASES = ("Running", "Successful", "Failed", "Inconclusive", "Error")
# (what happens, a number for it): the things that move a rollout along are listed more than once.
events = st.lists(st.tuples(st.sampled_from([
    "reconcile", "wake", "wake", "pods", "pods", "pods", "time", "scale", "resume", "resume", "abort", "retry",
    "promote_full", "pause", "unpause", "image", "crash", "run", "run", "run",
]), st.integers(0, 20)), min_size=20, max_size=60)


@st.composite
def blue_green_bodies(draw: st.DrawFn) -> dict[str, Any]:
    strategy: dict[str, Any] = {
        "autoPromotionEnabled": draw(st.booleans()), "autoPromotionSeconds": draw(st.sampled_from([0, 0, 5, 120])),
        "scaleDownDelaySeconds": draw(st.integers(0, 60)), "abortScaleDownDelaySeconds": draw(st.integers(0, 60)),
    }
    replicas = draw(st.integers(1, 6))
    if draw(st.booleans()):
        strategy["previewReplicaCount"] = draw(st.integers(1, replicas))
    for key in ("prePromotionAnalysis", "postPromotionAnalysis"):
        if draw(st.booleans()):
            strategy[key] = ANALYSIS
    spec = {"progressDeadlineSeconds": draw(st.integers(1, 900)), "progressDeadlineAbort": draw(st.booleans()),
            "revisionHistoryLimit": draw(st.integers(0, 3))}
    return bg_body(replicas=replicas, preview=draw(st.booleans()), spec=spec, **strategy)


@dataclass
class Checked:
    """Reconciles a BlueGreenCluster, checking every decision."""

    cluster: BlueGreenCluster
    last: Decision | None = None
    seen: list[str] = field(default_factory=list)

    def reconcile(self, crash_after: int | None = None) -> None:
        rollout, observed = self.cluster.rollout, self.cluster.observed()
        decision = plan(rollout, observed)
        assert plan(rollout, observed) == decision, "the same state must give the same decision"
        check_active_moves_only_to_ready_analysed_pods(rollout, observed, decision)
        check_replicas_bounded_and_stable_kept(rollout, observed, decision)
        check_status_fits_the_crd(decision)
        self.cluster.apply(decision, crash_after=crash_after)
        if crash_after is None:
            check_abort_leaves_both_services_on_stable(self.cluster, decision)
        self.last = decision

    def handle(self, what: str, number: int) -> None:
        cluster, status = self.cluster, self.cluster.status
        if what == "crash":
            self.reconcile(crash_after=number % 4)
        elif what == "wake":
            cluster.pass_time(self.last.requeue_after or 0.0 if self.last else 0.0)
        elif what in ("pods", "time", "scale", "image", "run"):
            self._world(what, number)
        elif what in ("pause", "unpause"):
            cluster.spec["paused"] = what == "pause"
        elif what in ("abort", "retry", "promote_full"):
            status[{"abort": "abort", "retry": "abort", "promote_full": "promoteFull"}[what]] = what != "retry"
        elif what == "resume":
            cluster.resume()
        self.reconcile()

    def _world(self, what: str, number: int) -> None:
        cluster = self.cluster
        if what == "pods":
            cluster.make_available(count=number % 5 + 1)
        elif what == "time":
            cluster.pass_time(number * 7)
        elif what == "scale":
            preview = cluster.spec["strategy"]["blueGreen"].get("previewReplicaCount", 1)
            cluster.spec["replicas"] = max(preview, number % 6 + 1)
        elif what == "image":
            cluster.set_image(("app:1", "app:2", "app:3")[number % 3])
        elif cluster.runs:
            names = sorted(cluster.runs)
            cluster.set_phase(names[number % len(names)], PHASES[number % len(PHASES)], "measured")


def planner_stable(rollout: Rollout, observed: Observed) -> str:
    """The revision the planner takes as stable: status.stableHash, else the active Service's, while it has a
    ReplicaSet; else the template's."""
    candidates = (rollout.status.stable_hash, observed.stable_service_hash)
    return next((h for h in candidates if h and h in observed.by_hash), rollout.spec.template_hash)


def check_active_moves_only_to_ready_analysed_pods(rollout: Rollout, observed: Observed, decision: Decision) -> None:
    """The active Service moves only to a revision with all spec.replicas pods available (or away from pods that are
    gone), and to a new revision only when neither paused nor aborted, and after its pre-promotion analysis passed
    in this walk."""
    accepted = set(decision.status.get("acceptedAnalysisRuns", rollout.status.accepted_runs))
    bg = rollout.spec.blue_green
    assert bg is not None
    for action in decision.actions:
        if not (isinstance(action, SetBackend) and action.role == "stable"):
            continue
        target = observed.by_hash[action.hash]
        orphaned = observed.stable_service_hash not in observed.by_hash
        assert target.available >= rollout.spec.replicas or orphaned, (action, target)
        if action.hash == planner_stable(rollout, observed):
            continue
        assert action.hash == rollout.spec.template_hash, action
        assert not rollout.spec.paused and not rollout.status.abort, action
        if bg.pre_promotion is not None:
            walk = decision.status["walk"]
            assert any(r.step == PRE_PROMOTION and r.hash == action.hash and r.walk == walk
                       and (r.phase == "Successful" or r.name in accepted) for r in observed.analysis_runs), action


def check_replicas_bounded_and_stable_kept(rollout: Rollout, observed: Observed, decision: Decision) -> None:
    """Nothing scales above spec.replicas; the stable ReplicaSet never shrinks below it while it is stable."""
    stable = rollout.status.stable_hash
    names = {rs.name: rs.hash for rs in observed.replica_sets}
    for action in decision.actions:
        if isinstance(action, CreateReplicaSet | ScaleReplicaSet):
            assert action.replicas <= rollout.spec.replicas, action
        if isinstance(action, ScaleReplicaSet) and names[action.name] == stable:
            assert action.replicas >= rollout.spec.replicas or decision.status.get("stableHash") != stable, action


def check_abort_leaves_both_services_on_stable(cluster: BlueGreenCluster, decision: Decision) -> None:
    stable = cluster.status.get("stableHash")
    rs = cluster.observed().by_hash.get(stable or "")
    if decision.summary == "Aborted" and rs is not None and rs.available >= cluster.spec["replicas"]:
        assert cluster.active == stable, (cluster.active, stable)
        assert cluster.preview in (stable, None), (cluster.preview, stable)


@settings(max_examples=300, deadline=None)
@given(body=blue_green_bodies(), happenings=events)
def test_planner_invariants_hold_under_any_sequence_of_events(body: dict[str, Any],
                                                              happenings: list[tuple[str, int]]) -> None:
    checked = Checked(BlueGreenCluster(body))
    checked.cluster.settle()
    checked.handle("image", 1)
    for what, number in happenings:
        checked.handle(what, number)


@settings(max_examples=100, deadline=None)
@given(body=blue_green_bodies())
def test_every_rollout_completes_when_pods_come_up_analysis_passes_and_humans_promote(body: dict[str, Any]) -> None:
    body["spec"]["progressDeadlineSeconds"] = 600
    checked = Checked(BlueGreenCluster(body))
    cluster = checked.cluster
    cluster.settle()
    cluster.set_image("app:2")
    for _ in range(20):
        cluster.make_available()
        for name, run in cluster.runs.items():
            if not run.terminal:
                cluster.set_phase(name, "Successful")
        if cluster.status.get("pauseConditions"):
            cluster.resume()
        checked.reconcile()
        cluster.pass_time(checked.last.requeue_after or 0.0 if checked.last else 0.0)
        if cluster.status.get("stableHash") == H2 and cluster.status["phase"] == "Healthy":
            break
    else:
        raise AssertionError(f"not Healthy on {H2}: {cluster.status.get('message')}")
    assert cluster.active == H2 and cluster.preview in (H2, None)
    assert parse_time(cluster.status["lastProgressTime"]) is not None
