"""The AnalysisRun state machine: judging measurements, limits, terminal phases, termination, scheduling, status."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.cel import compile_condition
from analysis.providers import Failure, NoData, Outcome, Value
from analysis.run import (
    RETRY_DELAY,
    TERMINAL,
    Measurement,
    MetricResult,
    RunState,
    assess,
    classify,
    errored,
    parse_run_status,
    preflight,
    record,
    schedule,
    start,
)
from analysis.spec import MetricSpec

T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)

GOOD = Value([0.01], "[0.01]")
BAD = Value([0.3], "[0.3]")
DOWN = Failure("Prometheus at http://prometheus:9090 unreachable: connection refused")
EMPTY = NoData("query returned an empty vector")


@pytest.fixture(autouse=True, scope="module")
def cel_parser_built() -> None:
    """cel-python raises the recursion limit when it first builds its parser; hypothesis warns if that happens
    inside one of its tests, so build it before any test runs."""
    compile_condition("result")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def metric(name: str = "error-rate", **overrides: Any) -> MetricSpec:
    fields: dict[str, Any] = {"name": name, "provider": "prometheus",
                              "provider_config": {"address": "http://prometheus:9090", "query": "q"},
                              "success_condition": "result[0] < 0.05"}
    fields.update(overrides)
    return MetricSpec(**fields)


def measured(m: MetricSpec, outcome: Outcome, seconds: float = 0.0) -> Measurement:
    return classify(m, outcome, started_at=at(seconds), finished_at=at(seconds + 1))


def feed(metrics: Sequence[MetricSpec], outcomes: Sequence[tuple[str, Outcome]], *,
         state: RunState | None = None, interval: float = 30.0) -> RunState:
    """Measure in turn (metric name, outcome), assessing after each measurement as the runner does."""
    by_name = {m.name: m for m in metrics}
    state = state or start(metrics, now=T0)
    for i, (name, outcome) in enumerate(outcomes):
        state = record(by_name[name], state, measured(by_name[name], outcome, i * interval))
        state = assess(metrics, state, now=at(i * interval + 1))
    return state


def feed_one(m: MetricSpec, *outcomes: Outcome) -> RunState:
    return feed([m], [(m.name, o) for o in outcomes])


# -- classify --------------------------------------------------------------------------------------------------------


def test_provider_failure_is_an_error_measurement_with_the_cause() -> None:
    assert measured(metric(), DOWN) == Measurement("Error", "", at(0), at(1), DOWN.message)


@pytest.mark.parametrize(("policy", "phase"), [("Inconclusive", "Inconclusive"), ("Fail", "Failed"),
                                                ("Pass", "Successful")])
def test_no_data_follows_the_no_data_policy(policy: str, phase: str) -> None:
    m = measured(metric(no_data_policy=policy), EMPTY)
    assert (m.phase, m.value) == (phase, "")
    assert m.message == f"no data: query returned an empty vector (noDataPolicy {policy})"


@pytest.mark.parametrize(("policy", "phase"), [("Inconclusive", "Inconclusive"), ("Fail", "Failed"),
                                                ("Pass", "Successful")])
def test_a_single_no_data_measurement_decides_the_run_by_policy(policy: str, phase: str) -> None:
    state = feed_one(metric(no_data_policy=policy), EMPTY)
    assert state.phase == phase
    if phase != "Successful":
        assert state.message.endswith(f"last: no data: query returned an empty vector (noDataPolicy {policy})")


def test_success_condition_that_holds_is_successful() -> None:
    assert measured(metric(), GOOD) == Measurement("Successful", "[0.01]", at(0), at(1), "")


def test_success_condition_that_fails_without_failure_condition_fails_naming_value_and_condition() -> None:
    m = measured(metric(), BAD)
    assert (m.phase, m.value) == ("Failed", "[0.3]")
    assert m.message == 'value [0.3] failed successCondition "result[0] < 0.05"'


def test_failure_condition_that_holds_fails_even_when_success_condition_holds() -> None:
    m = measured(metric(success_condition="result[0] < 0.5", failure_condition="result[0] > 0.2"), BAD)
    assert m.phase == "Failed"
    assert m.message == 'value [0.3] met failureCondition "result[0] > 0.2"'


def test_neither_condition_holding_is_inconclusive() -> None:
    m = measured(metric(success_condition="result[0] < 0.05", failure_condition="result[0] > 0.5"), BAD)
    assert m.phase == "Inconclusive"
    assert m.message == ('value [0.3] met neither successCondition "result[0] < 0.05" '
                         'nor failureCondition "result[0] > 0.5"')


def test_success_condition_holding_with_failure_condition_not_holding_is_successful() -> None:
    m = measured(metric(success_condition="result[0] < 0.05", failure_condition="result[0] > 0.5"), GOOD)
    assert m.phase == "Successful"


def test_only_failure_condition_that_does_not_hold_is_successful() -> None:
    assert measured(metric(success_condition=None, failure_condition="result[0] > 0.2"), GOOD).phase == "Successful"


def test_metric_without_conditions_is_successful() -> None:
    assert measured(metric(success_condition=None), BAD).phase == "Successful"


def test_condition_that_cannot_be_evaluated_is_an_error_naming_the_field() -> None:
    m = measured(metric(success_condition="result >= 0.99"), GOOD)
    assert m.phase == "Error"
    assert m.message == ('cannot evaluate successCondition "result >= 0.99" on value [0.01]: '
                         "cannot compare list with double (result is a list: use result[0])")


def test_condition_that_does_not_compile_is_an_error_measurement() -> None:
    m = measured(metric(failure_condition="result >= "), GOOD)
    assert m.phase == "Error"
    assert m.message.startswith('failureCondition "result >= ": syntax error at column 10')


def test_value_kept_in_the_status_is_truncated() -> None:
    m = measured(metric(success_condition="size(result) > 0"), Value("x" * 1000, "x" * 1000))
    assert m.value == "x" * 256


def test_long_values_are_shortened_in_messages() -> None:
    m = measured(metric(success_condition="size(result) == 0"), Value("x" * 1000, "x" * 1000))
    assert m.message == f'value {"x" * 61}... failed successCondition "size(result) == 0"'


def test_measurement_times_are_kept_in_milliseconds_like_the_status() -> None:
    m = classify(metric(), GOOD, started_at=at(0.4004), finished_at=at(2.7))
    assert (m.started_at, m.finished_at) == (at(0.4), at(2.7))


def test_runs_started_within_one_second_keep_their_own_schedule() -> None:
    m = metric(interval=5.0)
    first, second = start([m], now=at(0.1)), start([m], now=at(0.9))
    assert schedule([m], first, now=at(0.1)).due == schedule([m], second, now=at(0.9)).due == ("error-rate",)
    first = record(m, first, classify(m, GOOD, started_at=at(0.1), finished_at=at(0.2)))
    second = record(m, second, classify(m, GOOD, started_at=at(0.9), finished_at=at(1.0)))
    assert schedule([m], first, now=at(1.0)).wake_after == pytest.approx(4.1)
    assert schedule([m], second, now=at(1.0)).wake_after == pytest.approx(4.9)


# -- record --------------------------------------------------------------------------------------------------------


def test_error_measurements_count_as_errors_and_never_toward_count() -> None:
    r = feed_one(metric(interval=30.0, count=3), GOOD, DOWN, DOWN).result("error-rate")
    assert (r.count, r.successful, r.error, r.consecutive_error) == (1, 1, 2, 2)


def test_a_non_error_measurement_resets_consecutive_errors() -> None:
    r = feed_one(metric(interval=30.0, count=5, failure_limit=1), DOWN, DOWN, BAD, DOWN).result("error-rate")
    assert (r.count, r.failed, r.error, r.consecutive_error) == (1, 1, 3, 1)


def test_only_the_last_measurements_are_kept() -> None:
    m = metric(interval=30.0)
    state = start([m], now=T0)
    for i in range(5):
        state = record(m, state, measured(m, GOOD, i * 30), retention=3)
    r = state.result("error-rate")
    assert [x.started_at for x in r.measurements] == [at(60), at(90), at(120)]
    assert r.count == 5


def test_a_terminal_metric_takes_no_more_measurements() -> None:
    m = metric(interval=30.0)
    state = feed_one(m, BAD)
    assert state.phase == "Failed"
    assert record(m, state, measured(m, GOOD, 60)) == state


def test_a_measurement_phase_must_be_a_measurement_outcome() -> None:
    with pytest.raises(ValueError, match="not 'Running'"):
        record(metric(), start([metric()], now=T0), Measurement("Running", "", T0, T0))


# -- assess: limits ------------------------------------------------------------------------------------------------


def test_failed_measurements_beyond_failure_limit_fail_the_metric_and_the_run() -> None:
    m = metric(interval=30.0, failure_limit=1)
    assert feed_one(m, BAD).phase == "Running"
    state = feed_one(m, BAD, GOOD, BAD)
    assert state.phase == "Failed"
    assert state.result("error-rate").message == (
        '2 failed measurements > failureLimit 1; last: value [0.3] failed successCondition "result[0] < 0.05"'
    )
    assert state.message == "metric error-rate: " + state.result("error-rate").message


def test_inconclusive_measurements_beyond_inconclusive_limit_make_the_run_inconclusive() -> None:
    m = metric(interval=30.0, inconclusive_limit=1)
    state = feed_one(m, EMPTY, GOOD, EMPTY)
    assert state.phase == "Inconclusive"
    assert state.message == ("metric error-rate: 2 inconclusive measurements > inconclusiveLimit 1; last: no data: "
                             "query returned an empty vector (noDataPolicy Inconclusive)")


def test_consecutive_errors_beyond_the_limit_make_the_run_error() -> None:
    m = metric(interval=30.0, consecutive_error_limit=4)
    assert feed_one(m, *[DOWN] * 4).phase == "Running"
    state = feed_one(m, *[DOWN] * 5)
    assert state.phase == "Error"
    assert state.message == ("metric error-rate: 5 consecutive errors > consecutiveErrorLimit 4; "
                             f"last: {DOWN.message}")


def test_errors_interleaved_with_successes_never_reach_the_error_limit() -> None:
    m = metric(interval=30.0, consecutive_error_limit=1)
    state = feed_one(m, DOWN, GOOD, DOWN, GOOD, DOWN, GOOD, DOWN)
    assert state.phase == "Running"
    assert state.result("error-rate").error == 4


@pytest.mark.parametrize(("outcomes", "phase"), [
    ((BAD, EMPTY, DOWN, DOWN), "Failed"),  # all three limits crossed: Failed wins
    ((BAD, EMPTY), "Failed"),  # failed and inconclusive: Failed
    ((BAD, DOWN, DOWN), "Failed"),  # failed and errors: Failed
    ((EMPTY, DOWN, DOWN), "Error"),  # inconclusive and errors: Error
])
def test_crossed_limits_decide_failed_before_error_before_inconclusive(outcomes: tuple[Outcome, ...],
                                                                       phase: str) -> None:
    m = metric(interval=30.0, consecutive_error_limit=1)
    state = RunState(started_at=T0, metrics=(MetricResult("error-rate", phase="Running"),))
    for i, outcome in enumerate(outcomes):
        state = record(m, state, measured(m, outcome, i * 30))
    assert assess([m], state, now=at(200)).phase == phase


def test_count_reached_with_failures_within_the_limit_is_successful() -> None:
    state = feed_one(metric(interval=30.0, count=3, failure_limit=1), GOOD, BAD, GOOD)
    assert state.phase == "Successful"
    assert state.message == ""


def test_errors_never_fill_the_count() -> None:
    m = metric(interval=30.0, count=2, consecutive_error_limit=10)
    state = feed_one(m, GOOD, DOWN, DOWN, DOWN, DOWN)
    assert state.phase == "Running"
    assert feed_one(m, GOOD, DOWN, DOWN, GOOD).phase == "Successful"


def test_single_shot_metric_is_successful_after_one_good_measurement() -> None:
    assert feed_one(metric(), GOOD).phase == "Successful"


def test_single_shot_metric_keeps_running_after_an_error() -> None:
    state = feed_one(metric(), DOWN)
    assert (state.phase, state.result("error-rate").phase) == ("Running", "Running")


def test_a_run_is_pending_until_its_first_measurement() -> None:
    metrics = [metric("a"), metric("b", initial_delay=60.0)]
    state = assess(metrics, start(metrics, now=T0), now=at(1))
    assert (state.phase, [r.phase for r in state.metrics]) == ("Pending", ["Pending", "Pending"])
    state = feed(metrics, [("a", DOWN)])
    assert (state.phase, [r.phase for r in state.metrics]) == ("Running", ["Running", "Pending"])


def test_the_run_takes_the_worst_metric_phase_and_names_the_first_such_metric() -> None:
    metrics = [metric("a", interval=30.0), metric("b", interval=30.0), metric("c", interval=30.0)]
    state = start(metrics, now=T0)
    outcomes: tuple[Outcome, ...] = (EMPTY, BAD, BAD)
    for m, outcome in zip(metrics, outcomes, strict=True):  # measured concurrently, assessed once
        state = record(m, state, measured(m, outcome))
    state = assess(metrics, state, now=at(1))
    assert [r.phase for r in state.metrics] == ["Inconclusive", "Failed", "Failed"]
    assert state.phase == "Failed"
    assert state.message.startswith("metric b: 1 failed measurement > failureLimit 0")


def test_the_run_is_successful_only_when_every_metric_is() -> None:
    metrics = [metric("a"), metric("b")]
    assert feed(metrics, [("a", GOOD)]).phase == "Running"
    assert feed(metrics, [("a", GOOD), ("b", GOOD)]).phase == "Successful"


def test_results_follow_the_spec_order_even_for_a_state_without_them() -> None:
    metrics = [metric("a"), metric("b")]
    state = assess(metrics, RunState(), now=T0)
    assert [r.name for r in state.metrics] == ["a", "b"]
    assert state.started_at == T0


# -- terminal states and termination -------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [GOOD, BAD, EMPTY])
def test_a_terminal_run_never_changes(outcome: Outcome) -> None:
    m = metric()
    state = feed_one(m, outcome)
    assert state.phase in TERMINAL
    later = record(m, state, measured(m, GOOD, 60))
    assert assess([m], later, now=at(120)) == state
    assert assess([m], state, now=at(120), terminate=True) == state
    assert errored(state, "boom", at(120)) == state


def test_terminating_a_pending_run_makes_it_successful() -> None:
    m = metric(interval=30.0)
    state = assess([m], start([m], now=T0), now=at(5), terminate=True)
    assert (state.phase, state.message) == ("Successful", "terminated: metric error-rate after 0 measurements")
    assert state.result("error-rate").message == "terminated after 0 measurements"


def test_terminating_a_running_run_makes_it_successful() -> None:
    m = metric(interval=30.0, failure_limit=2)
    state = feed_one(m, GOOD, BAD)
    state = assess([m], state, now=at(100), terminate=True)
    assert (state.phase, state.message) == ("Successful", "terminated: metric error-rate after 2 measurements")


def test_terminating_keeps_a_crossed_limit() -> None:
    m = metric(interval=30.0, consecutive_error_limit=0)
    state = RunState(started_at=T0, metrics=(MetricResult("error-rate", phase="Running"),))
    state = record(m, state, measured(m, DOWN))
    state = assess([m], state, now=at(1), terminate=True)
    assert state.phase == "Error"


def test_terminating_keeps_metrics_that_already_finished() -> None:
    metrics = [metric("once"), metric("forever", interval=30.0)]
    state = feed(metrics, [("once", GOOD), ("forever", GOOD)])
    state = assess(metrics, state, now=at(100), terminate=True)
    assert [r.message for r in state.metrics] == ["", "terminated after 1 measurement"]
    assert state.message == "terminated: metric forever after 1 measurement"


# -- preflight and errored -------------------------------------------------------------------------------------------


def test_preflight_names_metric_field_and_syntax_error() -> None:
    problem = preflight([metric("latency"), metric("error-rate", success_condition="result >= ")])
    assert problem == ('metric error-rate: successCondition "result >= ": syntax error at column 10: '
                       "unexpected end of condition (expected a value)")


def test_preflight_names_unknown_names_in_failure_conditions() -> None:
    assert preflight([metric(failure_condition="reslt > 1")]) == (
        "metric error-rate: failureCondition \"reslt > 1\": unknown name 'reslt' (a condition sees only 'result')"
    )


@pytest.mark.parametrize(("overrides", "problem"), [
    ({"no_data_policy": "Ignore"}, "noDataPolicy 'Ignore' is not one of Inconclusive, Fail, Pass"),
    ({"count": 0}, "count 0 must be at least 1"),
    ({"failure_limit": -1}, "failureLimit -1 must not be negative"),
    ({"inconclusive_limit": -2}, "inconclusiveLimit -2 must not be negative"),
    ({"consecutive_error_limit": -1}, "consecutiveErrorLimit -1 must not be negative"),
    ({"interval": 0.0}, "interval 0s must be positive"),
    ({"initial_delay": -5.0}, "initialDelay -5s must not be negative"),
])
def test_preflight_rejects_settings_that_cannot_run(overrides: dict[str, Any], problem: str) -> None:
    assert preflight([metric(**overrides)]) == f"metric error-rate: {problem}"


def test_preflight_rejects_duplicate_names_and_no_metrics() -> None:
    assert preflight([metric("a"), metric("a")]) == "metric a: metric names must be unique"
    assert preflight([]) == "an analysis needs at least one metric"


def test_preflight_accepts_runnable_metrics() -> None:
    assert preflight([metric("a"), metric("b", failure_condition="result[0] > 0.5", interval=60.0, count=5)]) is None


def test_errored_ends_a_run_before_any_measurement() -> None:
    state = errored(None, "metric a: boom", at(3.5))
    assert state == RunState(phase="Error", message="metric a: boom", started_at=at(3.5))
    assert schedule([metric("a")], state, now=at(4)).due == ()


# -- schedule ------------------------------------------------------------------------------------------------------


def test_first_measurement_waits_for_the_initial_delay() -> None:
    m = metric(interval=30.0, initial_delay=60.0)
    state = start([m], now=T0)
    assert schedule([m], state, now=at(10)) == schedule([m], state, now=at(10))
    assert (schedule([m], state, now=at(10)).due, schedule([m], state, now=at(10)).wake_after) == ((), 50.0)
    assert schedule([m], state, now=at(60)).due == ("error-rate",)


def test_next_measurement_is_anchored_on_the_previous_start_not_its_end() -> None:
    m = metric(interval=30.0)
    state = start([m], now=T0)
    slow = classify(m, GOOD, started_at=at(0), finished_at=at(20))
    state = assess([m], record(m, state, slow), now=at(20))
    assert schedule([m], state, now=at(20)).wake_after == 10.0
    assert schedule([m], state, now=at(30)).due == ("error-rate",)


def test_single_shot_metric_is_retried_after_an_error() -> None:
    m = metric()
    state = feed_one(m, DOWN)
    assert schedule([m], state, now=at(1)).wake_after == RETRY_DELAY - 1
    assert schedule([m], state, now=at(RETRY_DELAY)).due == ("error-rate",)


def test_nothing_is_due_once_a_metric_or_the_run_has_finished() -> None:
    once, forever = metric("once"), metric("forever", interval=30.0)
    state = feed([once, forever], [("once", GOOD)])
    assert schedule([once, forever], state, now=at(100)).due == ("forever",)
    failed = feed([once, forever], [("forever", BAD)])
    assert schedule([once, forever], failed, now=at(100)) == schedule([once, forever], failed, now=at(0))
    assert schedule([once, forever], failed, now=at(100)).due == ()
    assert schedule([once, forever], failed, now=at(100)).wake_after is None


def test_a_metric_that_reached_its_count_is_not_due() -> None:
    m = metric(interval=10.0, count=2)
    state = RunState(started_at=T0)
    for i in range(2):
        state = record(m, state, measured(m, GOOD, i * 10))
    assert schedule([m], state, now=at(100)).due == ()


def test_wake_after_is_the_earliest_next_measurement() -> None:
    fast, slow = metric("fast", interval=10.0), metric("slow", interval=60.0, initial_delay=5.0)
    state = feed([fast, slow], [("fast", GOOD)], interval=0.0)
    due = schedule([fast, slow], state, now=at(2))
    assert (due.due, due.wake_after) == ((), 3.0)
    assert schedule([fast, slow], state, now=at(5)).due == ("slow",)
    assert schedule([fast, slow], state, now=at(10)).due == ("fast", "slow")


# -- status --------------------------------------------------------------------------------------------------------


def test_status_uses_the_crd_field_names() -> None:
    m = metric(interval=30.0)
    state = feed_one(m, GOOD, DOWN)
    assert state.to_status() == {
        "phase": "Running", "message": "", "startedAt": "2025-03-01T12:00:00.000Z",
        "metricResults": [{
            "name": "error-rate", "phase": "Running", "message": "", "count": 1, "successful": 1, "failed": 0,
            "inconclusive": 0, "error": 1, "consecutiveError": 1,
            "measurements": [
                {"phase": "Successful", "value": "[0.01]", "startedAt": "2025-03-01T12:00:00.000Z",
                 "finishedAt": "2025-03-01T12:00:01.000Z", "message": ""},
                {"phase": "Error", "value": "", "startedAt": "2025-03-01T12:00:30.000Z",
                 "finishedAt": "2025-03-01T12:00:31.000Z", "message": DOWN.message},
            ],
        }],
    }


def test_status_round_trips_exactly() -> None:
    metrics = [metric("a", interval=30.0, failure_limit=1), metric("b", interval=30.0, inconclusive_limit=1)]
    state = feed(metrics, [("a", GOOD), ("b", DOWN), ("a", BAD), ("b", EMPTY), ("a", BAD)])
    assert state.phase == "Failed"
    assert parse_run_status(state.to_status()) == state
    assert parse_run_status(state.to_status()).to_status() == state.to_status()


def test_a_missing_status_is_a_run_that_has_not_started() -> None:
    assert parse_run_status(None) == parse_run_status({}) == RunState()
    assert RunState().to_status() == {"phase": "Pending", "message": "", "metricResults": []}


# -- properties ----------------------------------------------------------------------------------------------------

OUTCOMES = st.sampled_from([GOOD, BAD, Value([0.1], "[0.1]"), EMPTY, DOWN, Value("x", "x")])


@st.composite
def metric_specs(draw: st.DrawFn) -> MetricSpec:
    return metric(
        interval=draw(st.sampled_from([None, 30.0])),
        count=draw(st.sampled_from([None, 1, 3])),
        failure_condition=draw(st.sampled_from([None, "result[0] > 0.2"])),
        failure_limit=draw(st.integers(0, 2)),
        inconclusive_limit=draw(st.integers(0, 2)),
        consecutive_error_limit=draw(st.integers(0, 3)),
        no_data_policy=draw(st.sampled_from(["Inconclusive", "Fail", "Pass"])),
    )


@settings(max_examples=300, deadline=None)
@given(m=metric_specs(), outcomes=st.lists(OUTCOMES, max_size=12), terminate_at=st.none() | st.integers(0, 12))
def test_runs_never_leave_a_terminal_phase_and_errors_never_promote(m: MetricSpec, outcomes: list[Outcome],
                                                                     terminate_at: int | None) -> None:
    state = start([m], now=T0)
    terminal: RunState | None = None
    for i, outcome in enumerate(outcomes):
        state = record(m, state, measured(m, outcome, i * 30))
        state = assess([m], state, now=at(i * 30 + 1), terminate=i == terminate_at)
        assert parse_run_status(state.to_status()) == state  # a restarted controller reads the same state
        if terminal is not None:
            assert state == terminal
        elif state.phase in TERMINAL:
            terminal = state
        r = state.result(m.name)
        assert r.count == r.successful + r.failed + r.inconclusive
        if state.phase == "Successful" and terminate_at is None:
            # Only non-Error measurements fill the count; errors never make a run Successful.
            assert m.wanted is not None and r.count >= m.wanted
            if m.failure_limit == 0 and m.inconclusive_limit == 0:
                # Nothing tolerated: a run without a Successful measurement is never Successful.
                assert r.successful > 0


@settings(max_examples=100, deadline=None)
@given(m=metric_specs(), errors=st.integers(1, 10))
def test_a_run_of_only_errors_is_never_successful(m: MetricSpec, errors: int) -> None:
    state = feed_one(m, *[DOWN] * errors)
    assert state.phase in ("Running", "Error")
    assert state.phase == "Error" or errors <= m.consecutive_error_limit


def test_retention_zero_still_keeps_the_last_measurement() -> None:
    m = metric(interval=30.0)
    state = record(m, start([m], now=T0), measured(m, GOOD), retention=0)
    assert len(state.result("error-rate").measurements) == 1
