"""The API's view of a Rollout: the docs/api.md shape from bodies the in-memory Cluster produced, the AnalysisRuns
enriched from their own status, and any body at all (no status, an invalid spec, junk) viewed without raising."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from rollout.views import list_view, rollout_view
from strategies.canary import INCONCLUSIVE_REASON

from .test_canary_planner import (
    NAME,
    at_step,
    canary_at_weight_50,
    hash_of,
    healthy_cluster,
    rollout_body,
    walk_until,
)

EXPECTED_KEYS = ["namespace", "name", "strategy", "phase", "message", "paused", "aborted", "revision", "images",
                 "weights", "replicas", "currentStep", "steps", "analysisRuns", "conditions"]


def states(view: dict[str, Any]) -> list[str]:
    return [s["state"] for s in view["steps"]]


def test_paused_canary_shows_its_step_weights_and_revisions() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()  # the indefinite pause
    view = rollout_view(cluster.body, [])
    assert list(view) == EXPECTED_KEYS
    assert (view["namespace"], view["name"], view["phase"]) == ("default", NAME, "Paused")
    assert view["message"].startswith("paused at step 2/4 until resumed")
    assert (view["paused"], view["aborted"]) == (True, False)
    assert view["revision"] == {"stable": hash_of("app:1"), "canary": hash_of("app:2")}
    assert view["images"] == {"app": "app:2"}
    assert view["weights"] == {"stable": 90, "canary": 10}
    assert view["replicas"] == {"desired": 10, "stable": 10, "stableAvailable": 10, "canary": 1,
                                "canaryAvailable": 1}
    assert view["currentStep"] == 1
    assert view["steps"] == [
        {"index": 0, "action": "setWeight", "weight": 10, "state": "done"},
        {"index": 1, "action": "pause", "duration": None, "state": "current"},
        {"index": 2, "action": "setWeight", "weight": 50, "state": "pending"},
        {"index": 3, "action": "pause", "duration": "60s", "state": "pending"},
    ]
    paused = next(c for c in view["conditions"] if c["type"] == "Paused")
    assert set(paused) == {"type", "status", "reason", "message"}
    assert (paused["status"], paused["reason"]) == ("True", "CanaryPauseStep")


def test_released_pause_is_no_longer_shown_as_paused() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()
    cluster.resume()  # pauseConditions removed; the controller has not acted yet
    assert rollout_view(cluster.body, [])["paused"] is False


def test_healthy_rollout_has_every_step_done() -> None:
    view = rollout_view(healthy_cluster().body, [])
    assert view["phase"] == "Healthy"
    assert states(view) == ["done"] * 4
    assert view["currentStep"] is None
    assert view["weights"] == {"stable": 100, "canary": 0}
    assert view["paused"] is False


def test_user_pause_is_shown_as_paused() -> None:
    cluster = healthy_cluster()
    cluster.spec["paused"] = True
    assert rollout_view(cluster.body, [])["paused"] is True


def test_aborted_rollout_has_every_step_pending() -> None:
    cluster = canary_at_weight_50()
    cluster.status["abort"] = True
    cluster.reconcile()
    view = rollout_view(cluster.body, [])
    assert view["aborted"] is True
    assert view["phase"] == "Degraded"
    assert states(view) == ["pending"] * 4
    assert view["weights"]["canary"] == 0


def test_new_template_not_yet_picked_up_starts_at_the_first_step() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    view = rollout_view(cluster.body, [])
    assert view["currentStep"] == 0
    assert states(view) == ["current", "pending", "pending", "pending"]


def test_rollout_without_status_is_viewed_as_pending() -> None:
    view = rollout_view(rollout_body(), [])
    assert view["phase"] == "Pending"
    assert view["revision"] == {"stable": None, "canary": None}
    assert states(view) == ["pending"] * 4
    assert view["currentStep"] is None
    assert (view["analysisRuns"], view["conditions"]) == ([], [])
    assert view["replicas"]["desired"] == 10


def test_analysis_runs_are_enriched_from_their_own_status() -> None:
    body = rollout_body(steps=[{"setWeight": 10}, {"analysis": {"templates": [{"templateName": "success-rate"}]}}])
    body["status"] = {
        "stableHash": hash_of("app:0"), "canaryHash": hash_of("app:1"), "currentStepIndex": 1, "controllerPause": True,
        "pauseConditions": [{"reason": INCONCLUSIVE_REASON, "startTime": "2024-05-01T12:00:00Z"}],
        "analysisRuns": [
            {"name": "demo-c-1-bg", "kind": "Background", "phase": "Running", "message": ""},
            {"name": "demo-c-1-1", "kind": "Step", "step": 1, "phase": "Running", "message": ""},
        ],
    }
    run = {"metadata": {"namespace": "default", "name": "demo-c-1-1"}, "status": {
        "phase": "Inconclusive", "message": "no data",
        "metricResults": [{
            "name": "success-rate", "phase": "Inconclusive", "count": 2, "successful": 1, "failed": 0,
            "inconclusive": 1, "error": 3, "consecutiveError": 0,
            "measurements": [
                {"phase": "Successful", "value": "[1]", "startedAt": "2024-05-01T12:00:00Z",
                 "finishedAt": "2024-05-01T12:00:01Z", "message": ""},
                {"phase": "Inconclusive", "value": "", "startedAt": "2024-05-01T12:01:00Z",
                 "finishedAt": "2024-05-01T12:01:02Z", "message": "the query returned no samples"},
            ],
        }],
    }}
    elsewhere = {"metadata": {"namespace": "other", "name": "demo-c-1-bg"}, "status": {"phase": "Failed"}}
    view = rollout_view(body, [run, elsewhere])
    assert view["paused"] is True
    background, step = view["analysisRuns"]
    assert background == {"name": "demo-c-1-bg", "kind": "Background", "phase": "Running", "message": "",
                          "metrics": []}
    assert step["step"] == 1
    assert (step["phase"], step["message"]) == ("Inconclusive", "no data")
    assert step["metrics"] == [{
        "name": "success-rate", "phase": "Inconclusive", "count": 2, "failed": 0, "inconclusive": 1, "error": 3,
        "latest": {"phase": "Inconclusive", "value": "", "finishedAt": "2024-05-01T12:01:02Z",
                   "message": "the query returned no samples"},
    }]
    assert view["steps"][1] == {"index": 1, "action": "analysis", "templates": ["success-rate"], "state": "current"}


def test_invalid_steps_are_shown_as_written() -> None:
    body = rollout_body(steps=[{"setWeight": 10, "pause": {}}, {"pause": {"duration": "soon"}}])
    del body["spec"]["strategy"]["canary"]["stableService"]
    view = rollout_view(body, [])
    assert [s["action"] for s in view["steps"]] == ["invalid", "pause"]
    assert view["steps"][1]["duration"] == "soon"


def test_list_is_sorted_by_namespace_then_name() -> None:
    views = [{"namespace": "b", "name": "a"}, {"namespace": "a", "name": "z"}, {"namespace": "a", "name": "b"}]
    assert [(v["namespace"], v["name"]) for v in list_view(views)["items"]] == [("a", "b"), ("a", "z"), ("b", "a")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
fields = st.sampled_from(["metadata", "spec", "status", "template", "strategy", "canary", "steps", "containers",
                          "analysisRuns", "conditions", "pauseConditions", "stableHash", "canaryHash",
                          "currentStepIndex", "canaryWeight", "replicas", "name", "phase", "setWeight", "pause"])
bodies = st.recursive(json_values, lambda children: st.dictionaries(fields, children, max_size=5), max_leaves=20)


@given(body=st.dictionaries(fields, bodies, max_size=4), runs=st.lists(st.dictionaries(fields, bodies), max_size=2))
def test_any_body_is_viewed_without_raising(body: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    view = rollout_view(body, runs)
    assert list(view) == EXPECTED_KEYS
