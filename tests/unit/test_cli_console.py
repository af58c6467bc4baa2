"""rollout/console.py renders what a newer or older API sends: missing fields show as "-", unknown step actions by
name and fields, timed pauses with their duration, aborted Rollouts flagged."""

from __future__ import annotations

from typing import Any

from rollout import console


def test_a_sparse_view_renders_with_dashes() -> None:
    view = {"namespace": "shop", "name": "web", "phase": "Healthy"}
    assert console.render_table([view]) == (
        "NAME   PHASE     STEP   WEIGHT   STABLE   CANARY   MESSAGE\n"
        "web    Healthy   -      -        -        -"
    )
    assert console.render_detail(view) == (
        "Name:       shop/web\n"
        "Phase:      Healthy\n"
        "Revisions:  stable -, canary -\n"
        "Images:     -\n"
        "Weights:    -\n"
        "Replicas:   -"
    )


def test_steps_show_durations_unknown_actions_and_completion() -> None:
    steps: list[dict[str, Any]] = [
        {"index": 0, "action": "pause", "duration": 30, "state": "done"},
        {"index": 1, "action": "pause", "duration": "5m", "state": "done"},
        {"index": 2, "action": "pause", "duration": "45", "state": "done"},
        {"index": 3, "action": "setCanaryScale", "replicas": 3, "state": "done"},
    ]
    assert console.render_steps(steps) == [
        "  ✓ 1 pause (30s)",
        "  ✓ 2 pause (5m)",
        "  ✓ 3 pause (45s)",
        "  ✓ 4 setCanaryScale replicas=3",
    ]
    assert console.step_progress({"steps": steps, "currentStep": None}) == "4/4"
    assert console.step_progress({"steps": steps, "currentStep": 4}) == "4/4"
    pending = [{**step, "state": "pending"} for step in steps]
    assert console.step_progress({"steps": pending, "currentStep": None}) == "0/4"


def test_an_aborted_rollout_is_flagged_and_its_analysis_failure_shown() -> None:
    view = {
        "namespace": "shop", "name": "web", "phase": "Degraded", "aborted": True,
        "analysisRuns": [{"name": "web-1", "kind": "Background", "phase": "Failed", "message": "error rate too high",
                          "metrics": [{"name": "errors", "phase": "Failed", "count": 3, "failed": 2,
                                       "inconclusive": 0, "error": 0,
                                       "latest": {"phase": "Failed", "value": "0.2", "message": ""}}]}],
    }
    detail = console.render_detail(view)
    assert "Phase:      Degraded (aborted)\n" in detail
    assert detail.endswith(
        "Analysis runs:\n"
        "  web-1 (Background): Failed: error rate too high\n"
        "    errors: Failed (3 measured, 2 failed, 0 inconclusive, 0 error); latest Failed 0.2"
    )


def test_the_weights_bar_fills_from_the_canary_side() -> None:
    detail = console.render_detail({"weights": {"stable": 50, "canary": 50}})
    assert "Weights:    stable 50% [░░░░░░░░░░██████████] canary 50%" in detail
