"""Parsing a Rollout body into the planner's frozen data: what is accepted, what is refused with a SpecError naming
the field, and the pod-template hash that names ReplicaSets."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.model import (
    HASH_LABEL,
    PauseStep,
    SetWeightStep,
    SpecError,
    parse_duration,
    parse_rollout,
    parse_spec,
    parse_status,
    template_hash,
)


def spec_body(**changes: Any) -> dict[str, Any]:
    """A valid Rollout spec; keyword arguments replace top-level spec fields, or canary ones with a `canary_` prefix."""
    spec: dict[str, Any] = {
        "replicas": 3,
        "selector": {"matchLabels": {"app": "demo"}},
        "template": {
            "metadata": {"labels": {"app": "demo", "tier": "web"}},
            "spec": {"containers": [{"name": "app", "image": "app:1", "ports": [{"containerPort": 8080}]}]},
        },
        "strategy": {"canary": {
            "stableService": "demo-stable",
            "canaryService": "demo-canary",
            "trafficRouting": {"istio": {"virtualService": {"name": "demo"}}},
            "steps": [{"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1m30s"}}],
        }},
    }
    for key, value in changes.items():
        if key.startswith("canary_"):
            spec["strategy"]["canary"][key.removeprefix("canary_")] = value
        else:
            spec[key] = value
    return spec


def spec_error(raw: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return str(caught.value)


# -- durations -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("0s", 0.0), ("5m", 300.0), ("2h", 7200.0), ("500ms", 0.5), ("1m30s", 90.0),
    ("1h30m", 5400.0), ("1h0m1s", 3601.0), ("10ms", 0.01),
])
def test_duration_adds_its_parts(text: str, seconds: float) -> None:
    assert parse_duration(text, field_name="f") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1.5s", "30 s", " 30s", "30s ", "-1s", "1d", "30sx", "1m 30s",
                                  "m5", "1h30", "30S"])
def test_unreadable_duration_is_refused_naming_the_field(text: str) -> None:
    with pytest.raises(SpecError, match=r"^spec\.thing\.duration: cannot read duration"):
        parse_duration(text, field_name="spec.thing.duration")


@given(st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "h"])), min_size=1, max_size=4))
def test_any_sequence_of_parts_parses_to_their_sum(parts: list[tuple[int, str]]) -> None:
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text, field_name="f") == pytest.approx(sum(n * unit[u] for n, u in parts))


def test_bad_pause_duration_names_the_step() -> None:
    message = spec_error(spec_body(canary_steps=[{"setWeight": 10}, {"pause": {"duration": "ten minutes"}}]))
    assert message.startswith("spec.strategy.canary.steps[1].pause.duration:")


# -- steps ---------------------------------------------------------------------------------------------------------


def test_steps_parse_into_weights_and_pauses() -> None:
    steps = parse_spec(spec_body()).canary.steps
    assert steps == (SetWeightStep(10), PauseStep(None), SetWeightStep(50), PauseStep(90.0))


def test_pause_with_null_body_waits_for_a_human() -> None:
    assert parse_spec(spec_body(canary_steps=[{"pause": None}])).canary.steps == (PauseStep(None),)


def test_no_steps_is_allowed() -> None:
    assert parse_spec(spec_body(canary_steps=[])).canary.steps == ()
    raw = spec_body()
    del raw["strategy"]["canary"]["steps"]
    assert parse_spec(raw).canary.steps == ()


def test_step_with_two_actions_is_refused_naming_the_step() -> None:
    message = spec_error(spec_body(canary_steps=[{"setWeight": 10}, {"setWeight": 20, "pause": {}}]))
    assert message.startswith("spec.strategy.canary.steps[1]:")
    assert "exactly one of setWeight, pause" in message


def test_step_without_action_is_refused_naming_the_step() -> None:
    message = spec_error(spec_body(canary_steps=[{}]))
    assert message.startswith("spec.strategy.canary.steps[0]:")


@pytest.mark.parametrize("weight", [-1, 101, "10", 10.0, None])
def test_weight_outside_0_to_100_or_not_an_integer_is_refused(weight: object) -> None:
    message = spec_error(spec_body(canary_steps=[{"setWeight": weight}]))
    assert message.startswith("spec.strategy.canary.steps[0].setWeight:")


def test_decreasing_set_weight_is_refused_naming_both_steps() -> None:
    message = spec_error(spec_body(canary_steps=[{"setWeight": 20}, {"pause": {}}, {"setWeight": 50},
                                                 {"setWeight": 30}]))
    assert message.startswith("spec.strategy.canary.steps[3].setWeight:")
    assert "lower than step 2's 50" in message


def test_repeated_and_zero_weights_are_allowed() -> None:
    steps = parse_spec(spec_body(canary_steps=[{"setWeight": 0}, {"setWeight": 20}, {"setWeight": 20},
                                               {"setWeight": 100}])).canary.steps
    assert [s.weight for s in steps if isinstance(s, SetWeightStep)] == [0, 20, 20, 100]


# -- selector, services, routing -----------------------------------------------------------------------------------


def test_selector_not_matching_template_labels_is_refused() -> None:
    message = spec_error(spec_body(selector={"matchLabels": {"app": "other"}}))
    assert message.startswith("spec.selector: does not match spec.template.metadata.labels")


@pytest.mark.parametrize("expression", [
    {"key": "tier", "operator": "In", "values": ["db"]},
    {"key": "tier", "operator": "NotIn", "values": ["web"]},
    {"key": "zone", "operator": "Exists"},
    {"key": "tier", "operator": "DoesNotExist"},
])
def test_selector_expression_not_matching_template_labels_is_refused(expression: dict[str, Any]) -> None:
    message = spec_error(spec_body(selector={"matchLabels": {"app": "demo"}, "matchExpressions": [expression]}))
    assert message.startswith("spec.selector:")


def test_selector_expressions_matching_template_labels_are_accepted() -> None:
    expressions = [{"key": "tier", "operator": "In", "values": ["web", "api"]},
                   {"key": "zone", "operator": "DoesNotExist"}, {"key": "app", "operator": "Exists"}]
    spec = parse_spec(spec_body(selector={"matchExpressions": expressions}))
    assert spec.match_labels == {}
    assert len(spec.match_expressions) == 3


def test_empty_selector_is_refused() -> None:
    assert spec_error(spec_body(selector={})).startswith("spec.selector: must not be empty")


def test_template_carrying_the_hash_label_is_refused() -> None:
    raw = spec_body()
    raw["template"]["metadata"]["labels"][HASH_LABEL] = "abc"
    assert spec_error(raw).startswith("spec.template.metadata.labels:")


def test_same_stable_and_canary_service_is_refused() -> None:
    message = spec_error(spec_body(canary_canaryService="demo-stable"))
    assert message == "spec.strategy.canary: stableService and canaryService must be different Services"


def test_missing_service_is_refused() -> None:
    raw = spec_body()
    del raw["strategy"]["canary"]["canaryService"]
    assert "stableService and canaryService are required" in spec_error(raw)


@pytest.mark.parametrize("routing", [{}, {"istio": None}, {"istio": {}, "smi": {}}])
def test_traffic_routing_needs_exactly_one_router(routing: dict[str, Any]) -> None:
    assert spec_error(spec_body(canary_trafficRouting=routing)).startswith("spec.strategy.canary.trafficRouting:")


@pytest.mark.parametrize("strategy", [{}, {"canary": None}, {"canary": {}, "blueGreen": {}}])
def test_strategy_needs_exactly_one_of_canary_and_blue_green(strategy: dict[str, Any]) -> None:
    assert spec_error(spec_body(strategy=strategy)).startswith("spec.strategy: needs exactly one of canary, blueGreen")


def test_blue_green_is_parsed_with_the_crd_defaults() -> None:
    spec = parse_spec(spec_body(strategy={"blueGreen": {"activeService": "web", "previewService": "web-preview"}}))
    assert spec.blue_green is not None and spec.steps == ()
    assert spec.services == ("web", "web-preview")
    bg = spec.blue_green
    assert (bg.auto_promotion, bg.auto_promotion_seconds, bg.preview_replicas, bg.pre_promotion, bg.post_promotion,
            bg.scale_down_delay, bg.abort_scale_down_delay) == (True, 0.0, None, None, None, 30.0, 30.0)
    with pytest.raises(TypeError):
        _ = spec.canary


@pytest.mark.parametrize(("blue_green", "message"), [
    ({}, "spec.strategy.blueGreen.activeService: required"),
    ({"activeService": "web", "previewService": "web"}, "activeService and previewService must be different"),
    ({"activeService": "web", "steps": [{"setWeight": 10}]}, "steps and trafficRouting belong to the canary"),
    ({"activeService": "web", "previewReplicaCount": 0}, "previewReplicaCount: must be an integer of at least 1"),
    ({"activeService": "web", "previewReplicaCount": 4}, "previewReplicaCount: 4 is more than spec.replicas (3)"),
    ({"activeService": "web", "prePromotionAnalysis": {"templates": []}}, "prePromotionAnalysis.templates: at least"),
])
def test_invalid_blue_green_combinations_are_refused(blue_green: dict[str, Any], message: str) -> None:
    assert message in spec_error(spec_body(strategy={"blueGreen": blue_green}))


def test_services_are_optional_only_with_destination_rule_subsets() -> None:
    subsets = {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}
    routing = {"istio": {"virtualService": {"name": "web"}, "destinationRule": subsets}}
    raw = spec_body(canary_trafficRouting=routing)
    del raw["strategy"]["canary"]["stableService"], raw["strategy"]["canary"]["canaryService"]
    assert parse_spec(raw).services == (None, None)
    raw["strategy"]["canary"]["stableService"] = "web-stable"
    assert "stableService and canaryService are required" in spec_error(raw)


def test_defaults_follow_the_crd() -> None:
    raw = spec_body()
    del raw["replicas"]
    spec = parse_spec(raw)
    assert (spec.replicas, spec.revision_history_limit, spec.progress_deadline, spec.progress_deadline_abort,
            spec.paused, spec.min_ready_seconds) == (1, 10, 600.0, False, False, 0)
    assert (spec.canary.scale_down_delay, spec.canary.abort_scale_down_delay) == (30.0, 30.0)
    assert spec.canary.traffic_routing.router == "istio"
    assert spec.canary.traffic_routing.config == {"virtualService": {"name": "demo"}}


# -- status and the whole body -------------------------------------------------------------------------------------


def test_status_times_parse_as_utc() -> None:
    status = parse_status({
        "abort": True, "abortedAt": "2024-05-01T12:00:00Z", "currentStepIndex": 2, "canaryWeight": 50,
        "pauseConditions": [{"reason": "CanaryPauseStep", "startTime": "2024-05-01T11:59:00Z"}],
        "conditions": [{"type": "Degraded", "status": "True", "reason": "RolloutAborted",
                        "lastTransitionTime": "2024-05-01T12:00:00Z"}],
    })
    assert status.aborted_at == datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert status.pause_conditions[0].start_time == datetime(2024, 5, 1, 11, 59, tzinfo=UTC)
    degraded = status.condition("Degraded")
    assert degraded is not None
    assert degraded.reason == "RolloutAborted"
    assert (status.abort, status.current_step_index, status.canary_weight) == (True, 2, 50)


def test_missing_status_is_the_empty_status() -> None:
    assert parse_status(None) == parse_status({})
    assert parse_status(None).stable_hash is None


def test_rollout_body_parses_metadata_spec_and_status() -> None:
    rollout = parse_rollout({"metadata": {"namespace": "ns", "name": "demo", "generation": 4}, "spec": spec_body(),
                             "status": {"stableHash": "abc", "canaryHash": ""}})
    assert (rollout.namespace, rollout.name, rollout.generation) == ("ns", "demo", 4)
    assert rollout.status.stable_hash == "abc"
    assert rollout.status.canary_hash is None
    assert rollout.spec.template_hash == template_hash(spec_body()["template"])


# -- template hash -------------------------------------------------------------------------------------------------


def _reversed_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reversed_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reversed_keys(v) for v in value]
    return value


def test_template_hash_is_stable_across_key_order() -> None:
    template = spec_body()["template"]
    reordered = _reversed_keys(template)
    assert list(reordered) != list(template)
    assert template_hash(reordered) == template_hash(template)


def test_template_hash_differs_for_different_templates() -> None:
    template = spec_body()["template"]
    changed = copy.deepcopy(template)
    changed["spec"]["containers"][0]["image"] = "app:2"
    assert template_hash(changed) != template_hash(template)


def test_template_hash_is_a_short_label_value() -> None:
    value = template_hash(spec_body()["template"])
    assert len(value) == 10
    assert int(value, 16) >= 0


@given(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6),
       st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=6))
def test_template_hash_depends_only_on_content(first: dict[str, Any], second: dict[str, Any]) -> None:
    assert (template_hash(first) == template_hash(second)) == (first == second)
