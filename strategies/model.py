"""The Rollout as plain, frozen data: parsed spec and status, and the observed-state snapshot planners decide on.

Parsing is pure and strict: a body that the CRD schema let through but that makes no sense (a duration we cannot
read, a selector that does not match the template) raises `SpecError` with a message naming the field; the
reconciler turns that into the InvalidSpec condition. The reconciler (rollout/) builds `Observed` from the cluster;
planners (strategies/canary.py) never see a Kubernetes client.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from strategies.guardrails import Guardrails, parse_guardrails
from strategies.policy import Mode, PolicyError

HASH_LABEL = "sluice.dev/pod-template-hash"
ROLLOUT_LABEL = "sluice.dev/rollout"
REVISION_ANNOTATION = "sluice.dev/revision"
SCALE_DOWN_ANNOTATION = "sluice.dev/scale-down-deadline"
WALK_LABEL = "sluice.dev/walk"  # on AnalysisRuns: which walk of the steps (a new revision or a retry) started them
STEP_LABEL = "sluice.dev/analysis-step"  # on AnalysisRuns: the step index, or "background"
BACKGROUND = "background"
PRE_PROMOTION = "prePromotion"  # blue-green: the analysis that gates the switch
POST_PROMOTION = "postPromotion"  # blue-green: the analysis after the switch; failing switches back
TERMINAL_RUN_PHASES = ("Successful", "Failed", "Inconclusive", "Error")

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """The Rollout spec cannot be acted on; the message names the field and says why."""


def parse_duration(text: str, *, field_name: str) -> float:
    """'30s', '1m30s', '2h', '500ms' -> seconds."""
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise SpecError(f"{field_name}: cannot read duration {text!r} (use e.g. 30s, 5m, 1h30m)")
    return total


def format_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def template_hash(template: Mapping[str, Any]) -> str:
    """A stable hash of the pod template, used in ReplicaSet names and the Services' selectors."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    # Label values and names want something short; 10 hex digits make collisions between a rollout's
    # revisions practically impossible.
    return digest[:10]


# -- steps -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetWeightStep:
    weight: int


@dataclass(frozen=True)
class PauseStep:
    duration: float | None  # seconds; None waits for a human


@dataclass(frozen=True)
class TemplateRef:
    name: str
    cluster: bool  # a ClusterAnalysisTemplate rather than a namespaced AnalysisTemplate


@dataclass(frozen=True)
class AnalysisArg:
    """An arg given by the Rollout: a literal `value`, or `value_from` (podTemplateHashValue, fieldRef)."""

    name: str
    value: str | None = None
    value_from: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AnalysisRef:
    templates: tuple[TemplateRef, ...]
    args: tuple[AnalysisArg, ...] = ()


@dataclass(frozen=True)
class AnalysisStep:
    """Gate the step on an AnalysisRun: Successful proceeds, Failed/Error aborts, Inconclusive pauses."""

    analysis: AnalysisRef


@dataclass(frozen=True)
class BackgroundAnalysis:
    """An AnalysisRun alongside the steps, from step `starting_step` (an index into steps) until the end."""

    analysis: AnalysisRef
    starting_step: int = 0


Step = SetWeightStep | PauseStep | AnalysisStep

# Which part of a rollout an AnalysisRun speaks for: a canary step's index, PRE_PROMOTION or POST_PROMOTION
# (blue-green), or None for canary background analysis. On the run it is the STEP_LABEL label.
RunSlot = int | str | None


def slot_label(slot: RunSlot) -> str:
    return BACKGROUND if slot is None else str(slot)


def parse_slot(label: str | None) -> RunSlot:
    if label in (None, BACKGROUND):
        return None
    if label in (PRE_PROMOTION, POST_PROMOTION):
        return label
    try:
        return int(str(label))
    except ValueError:
        return None


def describe_slot(slot: RunSlot) -> str:
    if slot is None:
        return "background analysis"
    if slot == PRE_PROMOTION:
        return "pre-promotion analysis"
    if slot == POST_PROMOTION:
        return "post-promotion analysis"
    return f"analysis for step {int(slot) + 1}"


def steps_hash(steps: tuple[Step, ...]) -> str:
    return hashlib.sha256(repr(steps).encode()).hexdigest()[:10]


# -- spec --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrafficRouting:
    """Which router and its configuration, as written (routers parse their own part)."""

    router: str
    config: Mapping[str, Any]


@dataclass(frozen=True)
class CanaryStrategy:
    stable_service: str | None  # None only with Istio DestinationRule subsets, which then choose the pods
    canary_service: str | None
    traffic_routing: TrafficRouting
    steps: tuple[Step, ...]
    scale_down_delay: float
    abort_scale_down_delay: float
    analysis: BackgroundAnalysis | None = None


@dataclass(frozen=True)
class BlueGreenStrategy:
    """The new revision comes up behind the preview Service; promotion switches the active Service to it."""

    active_service: str
    preview_service: str | None
    preview_replicas: int | None  # None: spec.replicas
    auto_promotion: bool
    auto_promotion_seconds: float
    pre_promotion: AnalysisRef | None
    post_promotion: AnalysisRef | None
    scale_down_delay: float
    abort_scale_down_delay: float


@dataclass(frozen=True)
class RolloutSpec:
    replicas: int
    match_labels: Mapping[str, str]
    match_expressions: tuple[Mapping[str, Any], ...]
    template: Mapping[str, Any]
    template_hash: str
    min_ready_seconds: int
    revision_history_limit: int
    progress_deadline: float
    progress_deadline_abort: bool
    paused: bool
    strategy: CanaryStrategy | BlueGreenStrategy
    analysis_run_history_limit: int = 5
    guardrails: Guardrails = field(default_factory=Guardrails)

    @property
    def canary(self) -> CanaryStrategy:
        """The canary strategy; only the canary planner and its router plumbing ask (blue-green has neither)."""
        if not isinstance(self.strategy, CanaryStrategy):
            raise TypeError("not a canary Rollout")
        return self.strategy

    @property
    def blue_green(self) -> BlueGreenStrategy | None:
        return self.strategy if isinstance(self.strategy, BlueGreenStrategy) else None

    @property
    def services(self) -> tuple[str | None, str | None]:
        """The Services of the two sides: stable and canary, or blue-green's active and preview. Either may be None:
        a canary whose Istio DestinationRule subsets choose the pods, blue-green without a preview Service."""
        if isinstance(self.strategy, BlueGreenStrategy):
            return self.strategy.active_service, self.strategy.preview_service
        return self.strategy.stable_service, self.strategy.canary_service

    @property
    def steps(self) -> tuple[Step, ...]:
        """The step plan; blue-green has none (its analysis and promotion are not steps)."""
        return self.strategy.steps if isinstance(self.strategy, CanaryStrategy) else ()


@dataclass(frozen=True)
class PauseCondition:
    reason: str
    start_time: datetime


@dataclass(frozen=True)
class Condition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str
    last_transition_time: datetime


@dataclass(frozen=True)
class RolloutStatus:
    observed_generation: int | None = None
    phase: str | None = None
    message: str = ""
    current_step_index: int = 0
    current_step_hash: str | None = None
    canary_weight: int = 0
    stable_hash: str | None = None
    canary_hash: str | None = None
    canary_available_replicas: int = 0
    stable_available_replicas: int = 0
    abort: bool = False
    aborted_at: datetime | None = None
    promote_full: bool = False
    controller_pause: bool = False
    pause_conditions: tuple[PauseCondition, ...] = ()
    last_progress_time: datetime | None = None
    conditions: tuple[Condition, ...] = ()
    walk: int = 0  # bumped when a new walk of the steps starts (new revision, retry): names its AnalysisRuns
    accepted_runs: tuple[str, ...] = ()  # Inconclusive AnalysisRuns a human resumed past

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


@dataclass(frozen=True)
class Rollout:
    namespace: str
    name: str
    generation: int
    spec: RolloutSpec
    status: RolloutStatus


# -- observed state ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplicaSetState:
    name: str
    hash: str
    revision: int
    replicas: int  # spec.replicas
    ready: int
    available: int
    scale_down_at: datetime | None = None
    spread: str | None = None  # the spread sluice wrote into its pod template (strategies/guardrails.py)


@dataclass(frozen=True)
class AnalysisRunState:
    """One AnalysisRun this Rollout owns, as the planner needs it."""

    name: str
    hash: str
    walk: int
    step: RunSlot
    phase: str  # Pending, Running, Successful, Failed, Inconclusive, Error
    message: str
    terminating: bool
    created: datetime

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL_RUN_PHASES


@dataclass(frozen=True)
class BudgetState:
    """The PodDisruptionBudget sluice keeps for a Rollout, as it is now."""

    name: str
    min_available: int | str | None
    match_labels: Mapping[str, str]
    match_expressions: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Observed:
    """What the reconciler read from the cluster for this decision, at time `now`."""

    now: datetime
    replica_sets: tuple[ReplicaSetState, ...]
    stable_service_hash: str | None  # the hash label in the stable Service's selector, if any
    canary_service_hash: str | None
    canary_weight: int  # what the traffic router currently sends to the canary Service
    resync: float = 300.0
    analysis_runs: tuple[AnalysisRunState, ...] = ()
    # The guardrails: the cluster's rule modes (the controller's configuration), whether a PodDisruptionBudget that
    # is not sluice's selects the pods, and sluice's own budget for this Rollout.
    policy_defaults: Mapping[str, Mode] = field(default_factory=dict)
    budget_covered: bool = False
    budget: BudgetState | None = None
    budget_conflict: str | None = None  # why sluice cannot keep its budget (a namesake it does not own)
    by_hash: Mapping[str, ReplicaSetState] = field(init=False, repr=False, compare=False)
    runs: Mapping[str, AnalysisRunState] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_hash", {rs.hash: rs for rs in self.replica_sets})
        object.__setattr__(self, "runs", {run.name: run for run in self.analysis_runs})


# -- parsing -----------------------------------------------------------------------------------------------------


def _parse_analysis_ref(raw: Any, where: str) -> AnalysisRef:
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}: must be an object with templates and args")
    templates: list[TemplateRef] = []
    for i, t in enumerate(raw.get("templates") or ()):
        name = str((t or {}).get("templateName", ""))
        if not name:
            raise SpecError(f"{where}.templates[{i}].templateName: required")
        templates.append(TemplateRef(name, bool(t.get("clusterScope", False))))
    if not templates:
        raise SpecError(f"{where}.templates: at least one template is required")
    args: list[AnalysisArg] = []
    for i, a in enumerate(raw.get("args") or ()):
        name = str((a or {}).get("name", ""))
        if not name:
            raise SpecError(f"{where}.args[{i}].name: required")
        value_from = a.get("valueFrom")
        if ("value" in a) == (value_from is not None):
            raise SpecError(f"{where}.args[{i}] ({name}): needs exactly one of value, valueFrom")
        if value_from is not None:
            kinds = [k for k in ("podTemplateHashValue", "fieldRef") if k in value_from]
            if len(kinds) != 1:
                raise SpecError(f"{where}.args[{i}].valueFrom: needs exactly one of podTemplateHashValue, fieldRef")
            if "podTemplateHashValue" in value_from and value_from["podTemplateHashValue"] not in ("Stable", "Latest"):
                raise SpecError(f"{where}.args[{i}].valueFrom.podTemplateHashValue: Stable or Latest")
            if "fieldRef" in value_from and not (value_from["fieldRef"] or {}).get("fieldPath"):
                raise SpecError(f"{where}.args[{i}].valueFrom.fieldRef.fieldPath: required")
        args.append(AnalysisArg(name, None if value_from is not None else str(a["value"]), value_from))
    return AnalysisRef(tuple(templates), tuple(args))


def _parse_step(raw: Mapping[str, Any], index: int) -> Step:
    actions = [k for k in ("setWeight", "pause", "analysis") if k in raw]
    if len(actions) != 1:
        raise SpecError(f"spec.strategy.canary.steps[{index}]: needs exactly one of setWeight, pause, analysis")
    if "analysis" in raw:
        return AnalysisStep(_parse_analysis_ref(raw["analysis"], f"spec.strategy.canary.steps[{index}].analysis"))
    if "setWeight" in raw:
        weight = raw["setWeight"]
        if not isinstance(weight, int) or not 0 <= weight <= 100:
            raise SpecError(f"spec.strategy.canary.steps[{index}].setWeight: must be an integer 0..100")
        return SetWeightStep(weight)
    pause = raw.get("pause") or {}
    duration = pause.get("duration")
    if duration is None:
        return PauseStep(None)
    return PauseStep(parse_duration(str(duration), field_name=f"spec.strategy.canary.steps[{index}].pause.duration"))


def _parse_canary(raw: Mapping[str, Any]) -> CanaryStrategy:
    routing_raw = raw.get("trafficRouting") or {}
    routers = [k for k, v in routing_raw.items() if v is not None]
    if len(routers) != 1:
        raise SpecError("spec.strategy.canary.trafficRouting: needs exactly one traffic router")
    steps = tuple(_parse_step(s, i) for i, s in enumerate(raw.get("steps") or []))
    highest, highest_at = 0, -1
    for i, step in enumerate(steps):
        if isinstance(step, SetWeightStep):
            if step.weight < highest:
                raise SpecError(
                    f"spec.strategy.canary.steps[{i}].setWeight: {step.weight} is lower than step {highest_at}'s "
                    f"{highest}; weights only move forward (abort returns traffic to stable)"
                )
            highest, highest_at = step.weight, i
    stable, canary = str(raw.get("stableService") or ""), str(raw.get("canaryService") or "")
    subsets = routers[0] == "istio" and bool((routing_raw["istio"] or {}).get("destinationRule"))
    if (not stable or not canary) and not (subsets and not stable and not canary):
        raise SpecError("spec.strategy.canary: stableService and canaryService are required (both may be left out "
                        "only with trafficRouting.istio.destinationRule, whose subsets then choose the pods)")
    if stable and stable == canary:
        raise SpecError("spec.strategy.canary: stableService and canaryService must be different Services")
    return CanaryStrategy(
        stable_service=stable or None,
        canary_service=canary or None,
        traffic_routing=TrafficRouting(routers[0], routing_raw[routers[0]]),
        steps=steps,
        scale_down_delay=float(raw.get("scaleDownDelaySeconds", 30)),
        abort_scale_down_delay=float(raw.get("abortScaleDownDelaySeconds", 30)),
        analysis=_parse_background(raw.get("analysis"), len(steps)),
    )


def _parse_blue_green(raw: Mapping[str, Any]) -> BlueGreenStrategy:
    where = "spec.strategy.blueGreen"
    if raw.get("steps") is not None or raw.get("trafficRouting") is not None:
        raise SpecError(f"{where}: steps and trafficRouting belong to the canary strategy; blue-green switches "
                        "Services (use strategy.canary for a weighted walk)")
    active, preview = str(raw.get("activeService") or ""), str(raw.get("previewService") or "")
    if not active:
        raise SpecError(f"{where}.activeService: required")
    if preview == active:
        raise SpecError(f"{where}: activeService and previewService must be different Services")
    preview_replicas = raw.get("previewReplicaCount")
    if preview_replicas is not None and (not isinstance(preview_replicas, int) or preview_replicas < 1):
        raise SpecError(f"{where}.previewReplicaCount: must be an integer of at least 1")

    def analysis(key: str) -> AnalysisRef | None:
        value = raw.get(key)
        return None if value is None else _parse_analysis_ref(value, f"{where}.{key}")

    return BlueGreenStrategy(
        active_service=active,
        preview_service=preview or None,
        preview_replicas=preview_replicas,
        auto_promotion=bool(raw.get("autoPromotionEnabled", True)),
        auto_promotion_seconds=float(raw.get("autoPromotionSeconds", 0) or 0),
        pre_promotion=analysis("prePromotionAnalysis"),
        post_promotion=analysis("postPromotionAnalysis"),
        scale_down_delay=float(raw.get("scaleDownDelaySeconds", 30)),
        abort_scale_down_delay=float(raw.get("abortScaleDownDelaySeconds", 30)),
    )


def _parse_background(raw: Any, steps: int) -> BackgroundAnalysis | None:
    if raw is None:
        return None
    where = "spec.strategy.canary.analysis"
    ref = _parse_analysis_ref(raw, where)
    starting = raw.get("startingStep", 0)
    if not isinstance(starting, int) or not 0 <= starting <= steps:
        raise SpecError(f"{where}.startingStep: must be a step index 0..{steps}")
    return BackgroundAnalysis(ref, starting)


def _selector_matches(match_labels: Mapping[str, str], expressions: tuple[Mapping[str, Any], ...],
                      labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for expr in expressions:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values):
            return False
        if (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def parse_spec(raw: Mapping[str, Any], annotations: Mapping[str, Any] | None = None) -> RolloutSpec:
    """`annotations` (the Rollout's metadata) carry the guardrails' override."""
    selector = raw.get("selector") or {}
    match_labels = dict(selector.get("matchLabels") or {})
    expressions = tuple(selector.get("matchExpressions") or ())
    if not match_labels and not expressions:
        raise SpecError("spec.selector: must not be empty (it would select every pod in the namespace)")
    template = raw.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not _selector_matches(match_labels, expressions, labels):
        raise SpecError(f"spec.selector: does not match spec.template.metadata.labels {dict(labels)}")
    if HASH_LABEL in labels:
        raise SpecError(f"spec.template.metadata.labels: {HASH_LABEL} is set by sluice and must not be given")
    strategy_raw = raw.get("strategy") or {}
    chosen = [k for k in ("canary", "blueGreen") if strategy_raw.get(k) is not None]
    if len(chosen) != 1:
        raise SpecError("spec.strategy: needs exactly one of canary, blueGreen")
    strategy: CanaryStrategy | BlueGreenStrategy = (
        _parse_canary(strategy_raw["canary"]) if chosen[0] == "canary" else _parse_blue_green(strategy_raw["blueGreen"])
    )
    replicas = int(raw.get("replicas", 1))
    try:
        guardrails = parse_guardrails(raw, annotations or {})
    except PolicyError as exc:
        raise SpecError(str(exc)) from None
    if isinstance(strategy, BlueGreenStrategy) and (strategy.preview_replicas or 0) > replicas:
        raise SpecError(f"spec.strategy.blueGreen.previewReplicaCount: {strategy.preview_replicas} is more than "
                        f"spec.replicas ({replicas})")
    return RolloutSpec(
        replicas=replicas,
        match_labels=match_labels,
        match_expressions=expressions,
        template=template,
        template_hash=template_hash(template),
        min_ready_seconds=int(raw.get("minReadySeconds", 0)),
        revision_history_limit=int(raw.get("revisionHistoryLimit", 10)),
        progress_deadline=float(raw.get("progressDeadlineSeconds", 600)),
        progress_deadline_abort=bool(raw.get("progressDeadlineAbort", False)),
        paused=bool(raw.get("paused", False)),
        strategy=strategy,
        analysis_run_history_limit=int(raw.get("analysisRunHistoryLimit", 5)),
        guardrails=guardrails,
    )


def parse_status(raw: Mapping[str, Any] | None) -> RolloutStatus:
    raw = raw or {}
    return RolloutStatus(
        observed_generation=raw.get("observedGeneration"),
        phase=raw.get("phase"),
        message=str(raw.get("message", "")),
        current_step_index=int(raw.get("currentStepIndex", 0) or 0),
        current_step_hash=raw.get("currentStepHash"),
        canary_weight=int(raw.get("canaryWeight", 0) or 0),
        stable_hash=raw.get("stableHash") or None,
        canary_hash=raw.get("canaryHash") or None,
        canary_available_replicas=int(raw.get("canaryAvailableReplicas", 0) or 0),
        stable_available_replicas=int(raw.get("stableAvailableReplicas", 0) or 0),
        abort=bool(raw.get("abort", False)),
        aborted_at=parse_time(raw.get("abortedAt")),
        promote_full=bool(raw.get("promoteFull", False)),
        controller_pause=bool(raw.get("controllerPause", False)),
        pause_conditions=tuple(
            PauseCondition(str(p.get("reason", "")), parse_time(p.get("startTime")) or datetime.min)
            for p in raw.get("pauseConditions") or ()
        ),
        last_progress_time=parse_time(raw.get("lastProgressTime")),
        conditions=tuple(
            Condition(
                type=str(c.get("type", "")), status=str(c.get("status", "Unknown")), reason=str(c.get("reason", "")),
                message=str(c.get("message", "")),
                last_transition_time=parse_time(c.get("lastTransitionTime")) or datetime.min,
            )
            for c in raw.get("conditions") or ()
        ),
        walk=int(raw.get("walk", 0) or 0),
        accepted_runs=tuple(str(n) for n in raw.get("acceptedAnalysisRuns") or ()),
    )


def parse_rollout(body: Mapping[str, Any]) -> Rollout:
    """Parse a Rollout body; raises SpecError for a spec that cannot be acted on."""
    meta = body.get("metadata") or {}
    return Rollout(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        generation=int(meta.get("generation", 0) or 0),
        spec=parse_spec(body.get("spec") or {}, meta.get("annotations") or {}),
        status=parse_status(body.get("status")),
    )


def seconds_until(moment: datetime, now: datetime) -> float:
    return max(0.0, (moment - now) / timedelta(seconds=1))
