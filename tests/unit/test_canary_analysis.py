"""The canary planner with analysis: step analysis gates a step, background analysis runs alongside the steps; a
Failed or Error run aborts in the same decision, an Inconclusive one pauses until a human resumes. Driven through
the in-memory Cluster of test_canary_planner.py, extended with AnalysisRuns whose phase each test sets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from strategies.canary import INCONCLUSIVE_REASON
from strategies.decision import (
    Action,
    CreateAnalysisRun,
    Decision,
    DeleteAnalysisRun,
    SetWeight,
    TerminateAnalysisRun,
)
from strategies.model import AnalysisRunState, Observed

from .test_canary_planner import Cluster, at_step, condition, event_reasons, rollout_body, walk_until

ANALYSIS = {"templates": [{"templateName": "success-rate"}], "args": [{"name": "app", "value": "demo"}]}
STEPS_WITH_ANALYSIS: list[dict[str, Any]] = [{"setWeight": 20}, {"analysis": ANALYSIS}, {"setWeight": 50}]


@dataclass
class AnalysisCluster(Cluster):
    runs: dict[str, AnalysisRunState] = field(default_factory=dict)
    created: list[CreateAnalysisRun] = field(default_factory=list)

    def observed(self) -> Observed:
        return replace(super().observed(), analysis_runs=tuple(self.runs.values()))

    def _apply(self, action: Action) -> None:
        match action:
            case CreateAnalysisRun():
                assert action.name not in self.runs, f"{action.name} created twice"
                self.created.append(action)
                self.runs[action.name] = AnalysisRunState(action.name, action.hash, action.walk, action.step,
                                                          "Pending", "", False, self.now)
            case TerminateAnalysisRun():
                run = self.runs[action.name]
                self.runs[action.name] = replace(run, terminating=True,
                                                 phase="Successful" if not run.terminal else run.phase)
            case DeleteAnalysisRun():
                del self.runs[action.name]
            case _:
                super()._apply(action)

    def set_phase(self, name: str, phase: str, message: str = "") -> None:
        self.runs[name] = replace(self.runs[name], phase=phase, message=message)

    def run_for(self, step: int | None) -> str:
        return next(a.name for a in reversed(self.created) if a.step == step)


def healthy(steps: list[dict[str, Any]] = STEPS_WITH_ANALYSIS, **spec: Any) -> AnalysisCluster:
    cluster = AnalysisCluster(rollout_body(steps=steps, replicas=10, **spec))
    cluster.reconcile()
    cluster.make_available()
    assert cluster.reconcile().summary == "Healthy"
    return cluster


def at_analysis_step() -> AnalysisCluster:
    cluster = healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: any(isinstance(a, CreateAnalysisRun) for a in d.actions))
    assert cluster.weight == 20
    return cluster


def test_step_analysis_starts_once_the_step_is_reached_and_holds_the_step() -> None:
    cluster = at_analysis_step()
    [run] = cluster.created
    assert run.step == 1 and run.hash == cluster.rollout.spec.template_hash
    assert run.analysis.templates[0].name == "success-rate"
    decision = cluster.reconcile()
    assert not decision.actions  # waiting: no second run, no traffic change
    assert decision.status["currentStepIndex"] == 1
    assert decision.status["analysisRuns"] == [
        {"name": run.name, "kind": "Step", "step": 1, "phase": "Pending", "message": ""}]


def test_successful_step_analysis_lets_the_step_proceed() -> None:
    cluster = at_analysis_step()
    cluster.set_phase(cluster.run_for(1), "Running")
    assert cluster.reconcile().status["currentStepIndex"] == 1
    cluster.set_phase(cluster.run_for(1), "Successful")
    decision = cluster.reconcile()
    assert "RolloutStepCompleted" in event_reasons(decision)
    walk_until(cluster, lambda d: d.summary == "Healthy")
    assert cluster.weight == 0 and cluster.stable_service_hash == cluster.rollout.spec.template_hash


def test_failed_step_analysis_aborts_in_the_same_decision_with_the_metric_in_the_message() -> None:
    cluster = at_analysis_step()
    cluster.set_phase(cluster.run_for(1), "Failed", "metric error-rate: value [0.3] failed successCondition")
    decision = cluster.reconcile()
    assert decision.summary == "Aborted"
    assert isinstance(decision.actions[0], SetWeight) and decision.actions[0].weight == 0
    assert cluster.weight == 0
    assert decision.status["abort"] is True and decision.status["phase"] == "Degraded"
    assert "error-rate" in decision.status["message"] and cluster.run_for(1) in decision.status["message"]
    # The abort holds on later reconciles (it is in status now), and the finished run is left as it is.
    assert cluster.reconcile().summary == "Aborted"
    assert not cluster.runs[cluster.run_for(1)].terminating


def test_error_run_aborts_like_a_failed_one() -> None:
    cluster = at_analysis_step()
    cluster.set_phase(cluster.run_for(1), "Error", "metric m: 5 consecutive errors > consecutiveErrorLimit 4")
    assert cluster.reconcile().summary == "Aborted"
    assert cluster.weight == 0


def test_inconclusive_step_analysis_pauses_until_resumed_then_proceeds() -> None:
    cluster = at_analysis_step()
    cluster.set_phase(cluster.run_for(1), "Inconclusive", "metric m: no data")
    decision = cluster.reconcile()
    assert decision.status["phase"] == "Paused"
    assert condition(decision.status, "Paused")["reason"] == INCONCLUSIVE_REASON
    assert "AnalysisInconclusive" in event_reasons(decision)
    assert cluster.weight == 20  # traffic holds where it was
    assert "AnalysisInconclusive" not in event_reasons(cluster.reconcile())  # reported once
    cluster.resume()
    decision = cluster.reconcile()
    assert decision.status["acceptedAnalysisRuns"] == [cluster.run_for(1)]
    walk_until(cluster, lambda d: d.summary == "Healthy")


def test_background_analysis_runs_from_its_starting_step_and_ends_with_promotion() -> None:
    cluster = healthy(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}])
    cluster.spec["strategy"]["canary"]["analysis"] = {**ANALYSIS, "startingStep": 1}
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    decision = cluster.reconcile()
    background = cluster.run_for(None)
    assert [r["kind"] for r in decision.status["analysisRuns"]] == ["Background"]
    cluster.set_phase(background, "Running")
    cluster.resume()
    walk_until(cluster, lambda d: d.summary == "Healthy")
    assert cluster.runs[background].terminating  # terminated once the rollout completed


def test_background_failure_aborts_even_while_the_canary_waits_for_pods() -> None:
    cluster = healthy(steps=[{"setWeight": 20}, {"setWeight": 80}, {"pause": {}}])
    cluster.spec["strategy"]["canary"]["analysis"] = ANALYSIS
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()  # scales the canary for 80%; its pods are not available yet
    cluster.set_phase(cluster.run_for(None), "Failed", "metric error-rate: value [0.5]")
    decision = cluster.reconcile()
    assert decision.summary == "Aborted" and cluster.weight == 0


def test_new_revision_terminates_the_old_walks_runs_and_starts_its_own() -> None:
    cluster = at_analysis_step()
    old = cluster.run_for(1)
    cluster.set_phase(old, "Running")
    cluster.set_image("app:3")
    decision = cluster.reconcile()
    assert TerminateAnalysisRun(old, f"superseded (revision {cluster.rollout.spec.template_hash}, walk 3)") \
        in decision.actions
    walk_until(cluster, lambda d: any(isinstance(a, CreateAnalysisRun) for a in d.actions))
    assert cluster.run_for(1) != old


def test_retry_after_an_analysis_abort_runs_a_fresh_analysis() -> None:
    cluster = at_analysis_step()
    failed = cluster.run_for(1)
    cluster.set_phase(failed, "Failed", "metric m: bad")
    cluster.reconcile()
    cluster.status["abort"] = False
    walk_until(cluster, lambda d: any(isinstance(a, CreateAnalysisRun) for a in d.actions))
    fresh = cluster.run_for(1)
    assert fresh != failed and cluster.runs[fresh].phase == "Pending"
    assert cluster.status["walk"] == 3


def test_replanning_before_the_status_is_written_creates_no_duplicate_run() -> None:
    cluster = at_analysis_step()
    cluster.set_image("app:3")
    decision: Decision = cluster.plan()
    cluster.apply(decision, crash_after=len(decision.actions))  # actions applied, status never written
    walk_until(cluster, lambda d: any(isinstance(a, CreateAnalysisRun) for a in d.actions) or
               (d.status.get("currentStepIndex") == 1 and bool(d.status.get("analysisRuns"))))
    names = [a.name for a in cluster.created]
    assert len(names) == len(set(names))


def test_finished_runs_of_old_walks_are_pruned_beyond_the_history_limit() -> None:
    cluster = healthy(analysisRunHistoryLimit=1)
    for image in ("app:2", "app:3", "app:4"):
        cluster.set_image(image)
        walk_until(cluster, lambda d: any(isinstance(a, CreateAnalysisRun) for a in d.actions))
        cluster.set_phase(cluster.run_for(1), "Successful")
        walk_until(cluster, lambda d: d.summary == "Healthy")
    cluster.reconcile()
    assert sorted(cluster.runs) == sorted(a.name for a in cluster.created[-2:])


def test_accepted_inconclusive_background_run_is_followed_by_a_fresh_one() -> None:
    cluster = healthy(steps=[{"setWeight": 20}, {"setWeight": 50}, {"pause": {}}])
    cluster.spec["strategy"]["canary"]["analysis"] = ANALYSIS
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    first = cluster.run_for(None)
    cluster.set_phase(first, "Inconclusive", "metric m: no data")
    assert cluster.reconcile().status["phase"] == "Paused"
    cluster.resume()
    decisions = walk_until(cluster, at_step(2))
    assert all(d.status.get("phase") != "Paused" for d in decisions)
    assert cluster.status["acceptedAnalysisRuns"] == [first]
    assert cluster.run_for(None) == f"{first}.2"  # background analysis goes on


def test_resuming_a_pause_step_does_not_accept_an_inconclusive_result_nobody_was_shown() -> None:
    cluster = healthy(steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 50}])
    cluster.spec["strategy"]["canary"]["analysis"] = ANALYSIS
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()  # enters the indefinite pause
    cluster.resume()
    cluster.set_phase(cluster.run_for(None), "Inconclusive", "metric m: no data")
    decision = cluster.reconcile()
    assert decision.status["phase"] == "Paused"
    assert condition(decision.status, "Paused")["reason"] == INCONCLUSIVE_REASON
    assert decision.status["acceptedAnalysisRuns"] == []


def test_accepting_an_inconclusive_result_does_not_also_end_a_pause_step() -> None:
    cluster = healthy(steps=[{"setWeight": 20}, {"pause": {"duration": "1h"}}, {"setWeight": 50}])
    cluster.spec["strategy"]["canary"]["analysis"] = ANALYSIS
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()  # enters the timed pause
    cluster.set_phase(cluster.run_for(None), "Inconclusive", "metric m: no data")
    assert condition(cluster.reconcile().status, "Paused")["reason"] == INCONCLUSIVE_REASON
    cluster.resume()
    accepted = cluster.reconcile()
    assert event_reasons(accepted).count("RolloutResumed") == 1
    decision = cluster.reconcile()
    assert decision.status["currentStepIndex"] == 1 and decision.status["phase"] == "Paused"
    assert condition(decision.status, "Paused")["reason"] == "CanaryPauseStep"


def test_a_step_run_is_kept_while_the_rollout_is_paused_and_never_passes_by_being_stopped() -> None:
    cluster = at_analysis_step()
    run = cluster.run_for(1)
    cluster.set_phase(run, "Running")
    cluster.spec["paused"] = True
    cluster.reconcile()
    assert not cluster.runs[run].terminating
    cluster.spec["paused"] = False
    assert cluster.reconcile().status["currentStepIndex"] == 1  # still waiting for the same run
    cluster.set_phase(run, "Failed", "metric m: bad")
    assert cluster.reconcile().summary == "Aborted"


def test_a_terminated_step_run_is_replaced_not_taken_as_a_pass() -> None:
    cluster = at_analysis_step()
    run = cluster.run_for(1)
    # Stopped by sluice (e.g. the template flipped away and back while the status write was lost): it ends
    # Successful with no verdict.
    cluster.runs[run] = replace(cluster.runs[run], phase="Successful", terminating=True)
    decision = cluster.reconcile()
    assert decision.status["currentStepIndex"] == 1
    assert cluster.run_for(1) == f"{run}.2"
