"""The AnalysisRun state machine: pure functions from (metrics, state, outcome, now) to the next state.

A run measures each metric (analysis/spec.py `MetricSpec`) repeatedly and judges every measurement:

- **Successful / Failed / Inconclusive** come from the metric's conditions (analysis/cel.py): `failureCondition` true
  fails; `successCondition` true succeeds, false fails when there is no failureCondition; with both conditions and
  neither holding, the measurement is Inconclusive.
- **No data** (an empty Prometheus vector, a missing JSON field) is neither a success nor an error: `noDataPolicy`
  makes it Inconclusive (the default), Failed or Successful.
- **Error** means the value could not be obtained or judged (provider unreachable, a condition that cannot be
  evaluated on the value). Errors are retried; they never count toward `count` and never make a metric Successful.
  Only more than `consecutiveErrorLimit` errors in a row end the metric, in phase Error.

A metric ends Failed when more than `failureLimit` measurements failed, Error after more than
`consecutiveErrorLimit` consecutive errors, Inconclusive after more than `inconclusiveLimit` inconclusive ones (in
that priority), and Successful once `count` non-Error measurements were taken without crossing a limit. The run takes
the worst phase among its metrics (Failed > Error > Inconclusive), is Successful when every metric is, and otherwise
Pending until the first measurement, then Running. Terminal phases (Successful, Failed, Inconclusive, Error) are
final. A run terminated because its rollout finished, aborted or was superseded ends Successful, unless a metric had
already crossed a limit.

The shell (rollout/analyzing.py) reads the run's status, asks `schedule` what is due, measures through the providers
(whose answer is an `Outcome`: a Value, NoData or a Failure, see analysis/providers), then calls `classify`,
`record`, `assess`, and writes `to_status()` once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from analysis.cel import Condition, ConditionError, EvaluationError, compile_condition
from analysis.providers import Failure, NoData, Outcome, Value, validate_config
from analysis.spec import NO_DATA_POLICIES, MetricSpec
from strategies.model import TERMINAL_RUN_PHASES, parse_time

PENDING, RUNNING = "Pending", "Running"
SUCCESSFUL, FAILED, INCONCLUSIVE, ERROR = "Successful", "Failed", "Inconclusive", "Error"
TERMINAL = frozenset(TERMINAL_RUN_PHASES)  # Successful, Failed, Inconclusive, Error

RETRY_DELAY = 5.0  # seconds before a single-shot metric (no interval) retries after an Error measurement
DEFAULT_RETENTION = 10  # measurements kept per metric in the status
MAX_VALUE_LENGTH = 256  # characters of a measured value kept in the status
_SHOWN_VALUE_LENGTH = 64  # characters of a value quoted in a message


# -- data ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    phase: str  # Successful | Failed | Inconclusive | Error
    value: str  # the value as displayed, at most MAX_VALUE_LENGTH characters; "" when there was none
    started_at: datetime
    finished_at: datetime
    message: str = ""


@dataclass(frozen=True)
class MetricResult:
    name: str
    phase: str = PENDING
    message: str = ""
    count: int = 0  # non-Error measurements
    successful: int = 0
    failed: int = 0
    inconclusive: int = 0
    error: int = 0
    consecutive_error: int = 0
    measurements: tuple[Measurement, ...] = ()  # the last `retention` ones, oldest first

    @property
    def taken(self) -> int:
        return self.count + self.error


@dataclass(frozen=True)
class RunState:
    phase: str = PENDING
    message: str = ""
    started_at: datetime | None = None  # None: the run has not started
    metrics: tuple[MetricResult, ...] = ()

    def result(self, name: str) -> MetricResult:
        return next((r for r in self.metrics if r.name == name), MetricResult(name))

    def to_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"phase": self.phase, "message": self.message}
        if self.started_at is not None:
            status["startedAt"] = _format_time(self.started_at)
        status["metricResults"] = [_result_to_status(r) for r in self.metrics]
        return status


@dataclass(frozen=True)
class Schedule:
    due: tuple[str, ...]  # metrics to measure now, in spec order
    wake_after: float | None  # seconds until the next measurement is due (0.0 if one is due now); None: nothing left


# -- status conversion ---------------------------------------------------------------------------------------------


def _result_to_status(r: MetricResult) -> dict[str, Any]:
    return {
        "name": r.name, "phase": r.phase, "message": r.message, "count": r.count, "successful": r.successful,
        "failed": r.failed, "inconclusive": r.inconclusive, "error": r.error,
        "consecutiveError": r.consecutive_error,
        "measurements": [
            {"phase": m.phase, "value": m.value, "startedAt": _format_time(m.started_at),
             "finishedAt": _format_time(m.finished_at), "message": m.message}
            for m in r.measurements
        ],
    }


def _time(raw: Any, fallback: datetime) -> datetime:
    return parse_time(raw if isinstance(raw, str) else None) or fallback


def _parse_result(raw: Mapping[str, Any]) -> MetricResult:
    epoch = datetime.fromtimestamp(0, UTC)
    measurements = tuple(
        Measurement(
            phase=str(m.get("phase", ERROR)), value=str(m.get("value", "")),
            started_at=_time(m.get("startedAt"), epoch),
            finished_at=_time(m.get("finishedAt"), _time(m.get("startedAt"), epoch)),
            message=str(m.get("message", "")),
        )
        for m in raw.get("measurements") or ()
    )
    counters = {key: int(raw.get(key) or 0)
                for key in ("count", "successful", "failed", "inconclusive", "error", "consecutiveError")}
    return MetricResult(
        name=str(raw.get("name", "")), phase=str(raw.get("phase", PENDING)), message=str(raw.get("message", "")),
        count=counters["count"], successful=counters["successful"], failed=counters["failed"],
        inconclusive=counters["inconclusive"], error=counters["error"],
        consecutive_error=counters["consecutiveError"], measurements=measurements,
    )


def parse_run_status(raw: Mapping[str, Any] | None) -> RunState:
    """The AnalysisRun's `status` as written by `RunState.to_status` (None or {}: a run that has not started)."""
    if not raw:
        return RunState()
    return RunState(
        phase=str(raw.get("phase") or PENDING), message=str(raw.get("message", "")),
        started_at=parse_time(raw.get("startedAt")),
        metrics=tuple(_parse_result(r) for r in raw.get("metricResults") or ()),
    )


# -- starting --------------------------------------------------------------------------------------------------------


def _to_millisecond(moment: datetime) -> datetime:
    """The status keeps milliseconds (_format_time); the state does too, so a re-read state equals the written one.

    Not whole seconds: measurements are scheduled from the previous one's start, and whole seconds would pull every
    run measured within the same second onto the same instant forever (bench/analysis_lag.py showed 100 runs due
    at once, and the lag that follows)."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def _format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def preflight(metrics: Sequence[MetricSpec]) -> str | None:
    """Why these metrics cannot be run (naming metric and field), or None. Checked once, before measuring."""
    if not metrics:
        return "an analysis needs at least one metric"
    seen: set[str] = set()
    for metric in metrics:
        if metric.name in seen:
            return f"metric {metric.name}: metric names must be unique"
        seen.add(metric.name)
        problem = _metric_problem(metric)
        if problem is not None:
            return f"metric {metric.name}: {problem}"
    return None


def _metric_problem(metric: MetricSpec) -> str | None:
    problems = validate_config(metric.provider, metric.provider_config)
    if problems:
        return "; ".join(problems)
    for field, source in (("successCondition", metric.success_condition),
                          ("failureCondition", metric.failure_condition)):
        if source is not None:
            try:
                compile_condition(source, field=field)
            except ConditionError as error:
                return str(error)
    if metric.no_data_policy not in NO_DATA_POLICIES:
        return f"noDataPolicy {metric.no_data_policy!r} is not one of {', '.join(NO_DATA_POLICIES)}"
    if metric.count is not None and metric.count < 1:
        return f"count {metric.count} must be at least 1"
    for field, limit in (("failureLimit", metric.failure_limit), ("inconclusiveLimit", metric.inconclusive_limit),
                         ("consecutiveErrorLimit", metric.consecutive_error_limit)):
        if limit < 0:
            return f"{field} {limit} must not be negative"
    if metric.interval is not None and metric.interval <= 0:
        return f"interval {metric.interval:g}s must be positive"
    if metric.initial_delay < 0:
        return f"initialDelay {metric.initial_delay:g}s must not be negative"
    return None


def start(metrics: Sequence[MetricSpec], *, now: datetime) -> RunState:
    """A fresh run: Pending, started now, one Pending result per metric."""
    return RunState(started_at=_to_millisecond(now), metrics=tuple(MetricResult(m.name) for m in metrics))


def errored(state: RunState | None, message: str, now: datetime) -> RunState:
    """The run cannot proceed at all (see `preflight`): Error, without measuring. A terminal run stays as it is."""
    state = state or RunState()
    if state.phase in TERMINAL:
        return state
    return replace(state, phase=ERROR, message=message, started_at=state.started_at or _to_millisecond(now))


# -- judging one measurement --------------------------------------------------------------------------------------


def _shown(display: str) -> str:
    return display if len(display) <= _SHOWN_VALUE_LENGTH else display[: _SHOWN_VALUE_LENGTH - 3] + "..."


def _judge(metric: MetricSpec, result: object, display: str) -> tuple[str, str]:
    """(phase, message) for a value, by the metric's conditions."""
    value = _shown(display)
    try:
        failure = _compiled(metric.failure_condition, "failureCondition")
        success = _compiled(metric.success_condition, "successCondition")
    except ConditionError as error:  # preflight rejects these; a run started without it still ends cleanly
        return ERROR, str(error)
    holds: dict[str, bool] = {}
    for condition in (failure, success):
        if condition is not None:
            try:
                holds[condition.field] = condition.evaluate(result)
            except EvaluationError as error:
                return ERROR, f"cannot evaluate {condition.label} on value {value}: {error}"
            if condition is failure and holds[condition.field]:
                return FAILED, f"value {value} met {failure.label}"
    if success is None or holds[success.field]:
        return SUCCESSFUL, ""
    if failure is None:
        return FAILED, f"value {value} failed {success.label}"
    return INCONCLUSIVE, f"value {value} met neither {success.label} nor {failure.label}"


def _compiled(source: str | None, field: str) -> Condition | None:
    return None if source is None else compile_condition(source, field=field)


def classify(metric: MetricSpec, outcome: Outcome, *, started_at: datetime, finished_at: datetime) -> Measurement:
    """Turn a provider's outcome into a judged measurement (see the module docstring for the rules)."""
    started, finished = _to_millisecond(started_at), _to_millisecond(finished_at)
    match outcome:
        case Failure(message):
            return Measurement(ERROR, "", started, finished, message)
        case NoData(message):
            phase = {"Fail": FAILED, "Pass": SUCCESSFUL}.get(metric.no_data_policy, INCONCLUSIVE)
            return Measurement(phase, "", started, finished,
                               f"no data: {message} (noDataPolicy {metric.no_data_policy})")
        case Value(value, display):
            phase, message = _judge(metric, value, display)
            return Measurement(phase, display[:MAX_VALUE_LENGTH], started, finished, message)


# -- recording and assessing --------------------------------------------------------------------------------------


def _with_result(state: RunState, result: MetricResult) -> RunState:
    if any(r.name == result.name for r in state.metrics):
        return replace(state, metrics=tuple(result if r.name == result.name else r for r in state.metrics))
    return replace(state, metrics=(*state.metrics, result))


def record(metric: MetricSpec, state: RunState, m: Measurement, *, retention: int = DEFAULT_RETENTION) -> RunState:
    """Add a measurement to its metric's result, keeping the last `retention` (at least 1) measurements.

    A terminal run or metric takes no more measurements: it is returned unchanged.
    """
    r = state.result(metric.name)
    if state.phase in TERMINAL or r.phase in TERMINAL:
        return state
    kept = (*r.measurements, m)[-max(retention, 1):]  # the last one anchors the schedule
    if m.phase == ERROR:
        r = replace(r, error=r.error + 1, consecutive_error=r.consecutive_error + 1)
    elif m.phase == SUCCESSFUL:
        r = replace(r, count=r.count + 1, consecutive_error=0, successful=r.successful + 1)
    elif m.phase == FAILED:
        r = replace(r, count=r.count + 1, consecutive_error=0, failed=r.failed + 1)
    elif m.phase == INCONCLUSIVE:
        r = replace(r, count=r.count + 1, consecutive_error=0, inconclusive=r.inconclusive + 1)
    else:
        raise ValueError(f"a measurement's phase is Successful, Failed, Inconclusive or Error, not {m.phase!r}")
    return _with_result(state, replace(r, phase=RUNNING, measurements=kept))


def _last_message(r: MetricResult, phase: str) -> str:
    last = next((m for m in reversed(r.measurements) if m.phase == phase), None)
    return f"; last: {last.message}" if last is not None and last.message else ""


def _many(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def _assess_metric(metric: MetricSpec, r: MetricResult, *, terminate: bool) -> MetricResult:
    if r.phase in TERMINAL:
        return r
    if r.failed > metric.failure_limit:
        why = f"{_many(r.failed, 'failed measurement')} > failureLimit {metric.failure_limit}"
        return replace(r, phase=FAILED, message=why + _last_message(r, FAILED))
    if r.consecutive_error > metric.consecutive_error_limit:
        errors = _many(r.consecutive_error, "consecutive error")
        why = f"{errors} > consecutiveErrorLimit {metric.consecutive_error_limit}"
        return replace(r, phase=ERROR, message=why + _last_message(r, ERROR))
    if r.inconclusive > metric.inconclusive_limit:
        why = f"{_many(r.inconclusive, 'inconclusive measurement')} > inconclusiveLimit {metric.inconclusive_limit}"
        return replace(r, phase=INCONCLUSIVE, message=why + _last_message(r, INCONCLUSIVE))
    wanted = metric.wanted
    if wanted is not None and r.count >= wanted:
        return replace(r, phase=SUCCESSFUL, message="")
    if terminate:
        return replace(r, phase=SUCCESSFUL, message=f"terminated after {_many(r.count, 'measurement')}")
    return replace(r, phase=RUNNING if r.taken else PENDING, message="")


def assess(metrics: Sequence[MetricSpec], state: RunState, *, now: datetime, terminate: bool = False) -> RunState:
    """Each metric's phase from its counters and limits, then the run's. Terminal runs are returned unchanged.

    `terminate`: the rollout no longer needs the analysis (finished, aborted, superseded); metrics still going end
    Successful, unless one has crossed a limit.
    """
    if state.phase in TERMINAL:
        return state
    results = tuple(_assess_metric(m, state.result(m.name), terminate=terminate) for m in metrics)
    started_at = state.started_at or _to_millisecond(now)
    for phase in (FAILED, ERROR, INCONCLUSIVE):
        decider = next((r for r in results if r.phase == phase), None)
        if decider is not None:
            return RunState(phase, f"metric {decider.name}: {decider.message}", started_at, results)
    if all(r.phase == SUCCESSFUL for r in results):
        cut_short = [f"metric {r.name} after {_many(r.count, 'measurement')}"
                     for r in results if r.message.startswith("terminated")]
        message = f"terminated: {', '.join(cut_short)}" if cut_short else ""
        return RunState(SUCCESSFUL, message, started_at, results)
    return RunState(RUNNING if any(r.taken for r in results) else PENDING, "", started_at, results)


# -- scheduling ---------------------------------------------------------------------------------------------------


def _next_at(metric: MetricSpec, r: MetricResult, started_at: datetime) -> datetime:
    if not r.taken or not r.measurements:
        # Nothing taken yet (or a status edited to keep no measurement to anchor on): initialDelay after the start.
        return started_at + timedelta(seconds=metric.initial_delay)
    last = r.measurements[-1]
    if metric.interval is not None:
        # Anchored on the previous start, so a slow provider does not make the measurements drift.
        return last.started_at + timedelta(seconds=metric.interval)
    return last.started_at + timedelta(seconds=RETRY_DELAY if last.phase == ERROR else 0.0)


def schedule(metrics: Sequence[MetricSpec], state: RunState, *, now: datetime) -> Schedule:
    """Which metrics to measure now, and when the next measurement is due.

    A metric's first measurement is due `initialDelay` after the run started, each next one `interval` after the
    previous one started. A metric without interval is measured once (or `count` times back to back), and retried
    RETRY_DELAY seconds after an Error. Metrics that are finished, or in a finished run, are never due.
    """
    state = assess(metrics, state, now=now)
    if state.phase in TERMINAL:
        return Schedule((), None)
    started_at = state.started_at or now
    due: list[str] = []
    waits: list[float] = []
    for metric in metrics:
        r = state.result(metric.name)
        if r.phase in TERMINAL:
            continue
        wait = (_next_at(metric, r, started_at) - now).total_seconds()
        if wait <= 0:
            due.append(metric.name)
        waits.append(max(wait, 0.0))
    return Schedule(tuple(due), min(waits) if waits else None)
