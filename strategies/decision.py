"""What a planner decides: an ordered list of actions, the status to write, events, and when to look again.

Actions are applied by the reconciler in the order given, and the order is part of the decision: traffic leaves a
ReplicaSet before its Service selector moves or it is scaled down, and pods are available before traffic arrives.
The status is written once, after every action succeeded, so a controller killed half way repeats the same
(idempotent) actions on restart and never records progress it has not made.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from strategies.model import AnalysisRef, Condition, RunSlot, describe_slot, format_time, slot_label


@dataclass(frozen=True)
class CreateReplicaSet:
    hash: str
    revision: int
    replicas: int

    def describe(self) -> tuple[str, str]:
        return ("NewReplicaSetCreated",
                f"created ReplicaSet for revision {self.revision} ({self.hash}) with {self.replicas} replicas")


@dataclass(frozen=True)
class ScaleReplicaSet:
    name: str
    replicas: int
    previous: int

    def describe(self) -> tuple[str, str]:
        return "ScalingReplicaSet", f"scaled ReplicaSet {self.name} from {self.previous} to {self.replicas}"


@dataclass(frozen=True)
class SetRevision:
    """An older template came back: its ReplicaSet becomes the newest revision again."""

    name: str
    revision: int

    def describe(self) -> tuple[str, str]:
        return "ReplicaSetRevisionUpdated", f"ReplicaSet {self.name} is now revision {self.revision}"


@dataclass(frozen=True)
class MarkScaleDown:
    """Schedule a ReplicaSet's scale-down (an annotation, so the deadline survives controller restarts)."""

    name: str
    at: datetime | None  # None removes the mark

    def describe(self) -> tuple[str, str]:
        if self.at is None:
            return "ScaleDownCancelled", f"ReplicaSet {self.name} is needed again; scale-down cancelled"
        return "ScaleDownScheduled", f"ReplicaSet {self.name} scales down at {format_time(self.at)}"


@dataclass(frozen=True)
class DeleteReplicaSet:
    name: str

    def describe(self) -> tuple[str, str]:
        return "ReplicaSetPruned", f"deleted old ReplicaSet {self.name} (beyond revisionHistoryLimit)"


@dataclass(frozen=True)
class SetBackend:
    """Point one side of the traffic at a revision's pods: `role` "stable" or "canary" (blue-green: active or
    preview). The applier writes the side's Service selector (when the strategy names one) and, with a router whose
    subsets choose the pods (Istio DestinationRule), the side's subset."""

    role: str
    service: str | None
    hash: str

    def describe(self) -> tuple[str, str]:
        what = f"Service {self.service}" if self.service else f"the {self.role} subset"
        return "ServiceSelectorUpdated", f"{what} now selects pods of {self.hash}"


@dataclass(frozen=True)
class SetWeight:
    weight: int
    previous: int

    def describe(self) -> tuple[str, str]:
        # previous is -1 when the router's state could not be read as one weight (missing, or routes disagreeing).
        before = str(self.previous) if self.previous >= 0 else "unknown"
        return "TrafficWeightUpdated", f"canary weight {before} -> {self.weight} (stable {100 - self.weight})"


@dataclass(frozen=True)
class CreateAnalysisRun:
    """Start an AnalysisRun from templates; the applier resolves the templates and args into the run's spec."""

    name: str
    hash: str  # the revision under analysis (the canary)
    stable_hash: str
    walk: int
    step: RunSlot
    analysis: AnalysisRef

    def describe(self) -> tuple[str, str]:
        what = describe_slot(self.step)
        templates = ", ".join(t.name for t in self.analysis.templates)
        return "AnalysisRunCreated", f"started {what}: AnalysisRun {self.name} ({templates})"

    @property
    def step_label(self) -> str:
        return slot_label(self.step)


@dataclass(frozen=True)
class TerminateAnalysisRun:
    """Stop a run that is no longer needed (step passed, rollout promoted, aborted or superseded)."""

    name: str
    why: str

    def describe(self) -> tuple[str, str]:
        return "AnalysisRunTerminated", f"terminated AnalysisRun {self.name}: {self.why}"


@dataclass(frozen=True)
class DeleteAnalysisRun:
    name: str

    def describe(self) -> tuple[str, str]:
        return "AnalysisRunPruned", f"deleted old AnalysisRun {self.name} (beyond analysisRunHistoryLimit)"


@dataclass(frozen=True)
class ApplyDisruptionBudget:
    """sluice's PodDisruptionBudget for the Rollout (named like it, over its selector): create it or set it to
    `min_available`, computed from spec.disruptionBudget for `replicas` pods."""

    name: str
    min_available: int
    replicas: int
    create: bool

    def describe(self) -> tuple[str, str]:
        verb = "created" if self.create else "updated"
        return ("DisruptionBudgetUpdated", f"PodDisruptionBudget {self.name} {verb}: minAvailable {self.min_available} "
                f"of {self.replicas} replicas")


@dataclass(frozen=True)
class DeleteDisruptionBudget:
    name: str

    def describe(self) -> tuple[str, str]:
        return "DisruptionBudgetDeleted", f"PodDisruptionBudget {self.name} deleted (spec.disruptionBudget removed)"


@dataclass(frozen=True)
class SetSpread:
    """Write (or remove, `spread` None) sluice's anti-affinity term into a ReplicaSet's pod template: pods created
    from then on spread across nodes; running pods stay where they are."""

    name: str
    hash: str
    spread: str | None

    def describe(self) -> tuple[str, str]:
        if self.spread is None:
            return "SpreadUpdated", f"ReplicaSet {self.name}: sluice's anti-affinity removed from its pod template"
        return "SpreadUpdated", f"ReplicaSet {self.name}: pods spread across nodes ({self.spread} anti-affinity)"


Action = (
    CreateReplicaSet | ScaleReplicaSet | SetRevision | MarkScaleDown | DeleteReplicaSet | SetBackend | SetWeight
    | CreateAnalysisRun | TerminateAnalysisRun | DeleteAnalysisRun | ApplyDisruptionBudget | DeleteDisruptionBudget
    | SetSpread
)


@dataclass(frozen=True)
class Event:
    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Decision:
    """`status` holds the status fields this reconcile wants (the reconciler patches only what differs)."""

    summary: str  # one word for logs: Healthy, Progressing, StepCompleted, Paused, Aborted, ...
    actions: tuple[Action, ...] = ()
    status: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[Event, ...] = ()
    requeue_after: float | None = None


def condition(previous: tuple[Condition, ...], *, type_: str, status: bool, reason: str, message: str,
              now: datetime) -> dict[str, str]:
    """A condition in the Kubernetes convention; lastTransitionTime moves only when the status flips."""
    status_str = "True" if status else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.last_transition_time if before is not None and before.status == status_str else now
    return {
        "type": type_, "status": status_str, "reason": reason, "message": message,
        "lastTransitionTime": format_time(since),
    }
