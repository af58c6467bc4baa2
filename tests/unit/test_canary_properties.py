"""Properties of the canary planner under random event sequences, on the in-memory Cluster of test_canary_planner.

A sequence mixes what the world does (pods become available, time passes, an HPA changes spec.replicas, a user
resumes, pauses, aborts, retries, promotes or ships a new template, the controller crashes half way through applying
a decision) with reconciles; the controller reconciles after every change, as its watch would make it. Every
reconcile is checked: the weight only moves backwards on abort, rollback, promotion or a new template; nothing is
scaled above spec.replicas and only the stable and canary ReplicaSets are scaled up; traffic goes only to available
canary pods; the same state gives the same decision; a timed pause lasts its duration; the status written is one the
CRD declares. A separate property walks random steps to the end and sees every step index on the way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies.canary import canary_replicas, plan
from strategies.decision import CreateReplicaSet, Decision, ScaleReplicaSet, SetBackend, SetWeight
from strategies.model import AnalysisStep, Observed, PauseStep, Rollout, SetWeightStep

from .test_canary_planner import CANARY_SVC, STABLE_SVC, Cluster, hash_of, healthy_cluster, rollout_body

IMAGES = ("app:1", "app:2", "app:3")
CRD = Path(__file__).resolve().parents[2] / "charts" / "sluice" / "crds" / "rollouts.sluice.dev.yaml"
WEIGHT_MAY_DROP = {"Aborted", "FastRollback", "Promoted"}


# -- events --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reconcile:
    """Reconcile again with nothing changed (a resync, or a restarted controller reading the same state)."""


@dataclass(frozen=True)
class Wake:
    """The requeue the last decision asked for comes due."""


@dataclass(frozen=True)
class PodsReady:
    count: int
    canary_only: bool


@dataclass(frozen=True)
class TimePasses:
    seconds: int


@dataclass(frozen=True)
class Scale:
    """An HPA writes spec.replicas through the scale subresource."""

    replicas: int


@dataclass(frozen=True)
class Resume:
    pass


@dataclass(frozen=True)
class Abort:
    pass


@dataclass(frozen=True)
class Retry:
    pass


@dataclass(frozen=True)
class PromoteFull:
    pass


@dataclass(frozen=True)
class UserPause:
    paused: bool


@dataclass(frozen=True)
class NewTemplate:
    image: str


@dataclass(frozen=True)
class Crash:
    """The controller dies after applying `applied` actions of a decision, before writing the status."""

    applied: int


WorldEvent = (Reconcile | Wake | PodsReady | TimePasses | Scale | Resume | Abort | Retry | PromoteFull | UserPause
              | NewTemplate | Crash)

pods_ready = st.builds(PodsReady, count=st.integers(1, 10), canary_only=st.booleans())
# one_of picks its branches uniformly: the things that move a rollout along are listed more than once, so that
# sequences reach the later steps and promotion as often as they abort.
world_events: st.SearchStrategy[WorldEvent] = st.one_of(
    st.just(Reconcile()),
    st.just(Wake()), st.just(Wake()), st.just(Wake()),
    pods_ready, pods_ready, pods_ready, pods_ready,
    st.builds(TimePasses, seconds=st.integers(1, 900)),
    st.builds(Scale, replicas=st.integers(1, 20)),
    st.just(Resume()), st.just(Resume()),
    st.just(Abort()),
    st.just(Retry()),
    st.just(PromoteFull()),
    st.builds(UserPause, paused=st.booleans()),
    st.builds(NewTemplate, image=st.sampled_from(IMAGES)),
    st.builds(Crash, applied=st.integers(0, 5)), st.builds(Crash, applied=st.integers(0, 5)),
)


@st.composite
def canary_steps(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Any mix of setWeight and pause steps, weights non-decreasing as the CRD semantics require."""
    pause: st.SearchStrategy[dict[str, Any]] = st.one_of(
        st.just({"pause": {}}),
        st.integers(0, 900).map(lambda s: {"pause": {"duration": f"{s}s"}}),
        st.integers(1, 30).map(lambda m: {"pause": {"duration": f"{m}m"}}),
    )
    steps = draw(st.lists(st.one_of(st.integers(0, 100).map(lambda w: {"setWeight": w}), pause), max_size=8))
    weights = iter(sorted(s["setWeight"] for s in steps if "setWeight" in s))
    return [{"setWeight": next(weights)} if "setWeight" in s else s for s in steps]


@st.composite
def rollout_bodies(draw: st.DrawFn) -> dict[str, Any]:
    return rollout_body(
        steps=draw(canary_steps()),
        replicas=draw(st.integers(1, 20)),
        scale_down_delay=draw(st.integers(0, 120)),
        abort_delay=draw(st.integers(0, 120)),
        progressDeadlineSeconds=draw(st.integers(1, 1800)),
        progressDeadlineAbort=draw(st.booleans()),
        revisionHistoryLimit=draw(st.integers(0, 3)),
    )


# -- the checks made on every reconcile ----------------------------------------------------------------------------


@cache
def crd_status_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return schema


def planner_stable(rollout: Rollout, observed: Observed) -> str:
    """The ReplicaSet the planner treats as stable: status.stableHash while its ReplicaSet exists."""
    stable = rollout.status.stable_hash
    return stable if stable and stable in observed.by_hash else rollout.spec.template_hash


def check_weight_moves_back_only_on_abort_rollback_promotion_or_new_template(
        rollout: Rollout, observed: Observed, decision: Decision) -> None:
    new_template = rollout.status.canary_hash != rollout.spec.template_hash
    excused = decision.summary in WEIGHT_MAY_DROP or new_template
    for action in decision.actions:
        if isinstance(action, SetWeight) and action.weight < action.previous:
            assert excused, f"weight {action.previous} -> {action.weight} on {decision.summary}"
    if decision.status.get("canaryWeight", 0) < rollout.status.canary_weight:
        assert excused, f"status canaryWeight {rollout.status.canary_weight} -> {decision.status['canaryWeight']}"
    if decision.summary == "Promoted":
        # The stable Service moves to the new pods before the canary route is emptied.
        stable_moved = observed.stable_service_hash == rollout.spec.template_hash
        for action in decision.actions:
            if action == SetBackend("stable", STABLE_SVC, rollout.spec.template_hash):
                stable_moved = True
            if isinstance(action, SetWeight):
                assert stable_moved, decision.actions


def check_replicas_bounded(rollout: Rollout, observed: Observed, decision: Decision) -> None:
    bound = rollout.spec.replicas
    may_grow = {rollout.spec.template_hash, planner_stable(rollout, observed)}
    names = {rs.name: rs.hash for rs in observed.replica_sets}
    for action in decision.actions:
        if isinstance(action, CreateReplicaSet):
            assert action.hash in may_grow, action
            assert action.replicas <= bound, action
        elif isinstance(action, ScaleReplicaSet):
            assert action.replicas <= bound, action
            if action.replicas > action.previous:
                assert names[action.name] in may_grow, action


def check_traffic_only_to_available_canary_pods(rollout: Rollout, observed: Observed, decision: Decision) -> None:
    desired = rollout.spec.template_hash
    canary = observed.by_hash.get(desired)
    selects = observed.canary_service_hash
    for action in decision.actions:
        if isinstance(action, SetBackend) and action.service == CANARY_SVC:
            selects = action.hash
        if isinstance(action, SetWeight) and action.weight > 0:
            needed = canary_replicas(action.weight, rollout.spec.replicas)
            assert canary is not None, decision.actions
            assert canary.available >= needed, f"{action} with {canary.available}/{needed} canary pods available"
            assert selects == desired, f"{action} while the canary Service selects {selects}"


def check_status_fits_the_crd(decision: Decision) -> None:
    schema = crd_status_schema()["properties"]
    assert set(decision.status) <= set(schema), set(decision.status) - set(schema)
    if "phase" in decision.status:
        assert decision.status["phase"] in schema["phase"]["enum"]
    for cond in decision.status.get("conditions", ()):
        assert cond["status"] in {"True", "False", "Unknown"}


@dataclass
class Controller:
    """Reconciles a Cluster with every check, and remembers what the checks need across reconciles."""

    cluster: Cluster
    last: Decision | None = None
    walk: int = 0  # bumped when a new walk through the steps starts (new template, retry)
    pause_entered: dict[tuple[int, int], datetime] = field(default_factory=dict)
    visited: set[int] = field(default_factory=set)

    def reconcile(self, *, crash_after: int | None = None) -> Decision:
        cluster = self.cluster
        rollout, observed = cluster.rollout, cluster.observed()
        decision = plan(rollout, observed)
        assert plan(rollout, observed) == decision, "the same state must give the same decision"
        check_weight_moves_back_only_on_abort_rollback_promotion_or_new_template(rollout, observed, decision)
        check_replicas_bounded(rollout, observed, decision)
        check_traffic_only_to_available_canary_pods(rollout, observed, decision)
        check_status_fits_the_crd(decision)
        self._check_timed_pause_lasted(rollout, decision)
        cluster.apply(decision, crash_after=crash_after)
        if crash_after is None:
            self._after_status_written(decision)
        self.last = decision
        return decision

    def _check_timed_pause_lasted(self, rollout: Rollout, decision: Decision) -> None:
        if decision.summary != "StepCompleted" or not rollout.status.pause_conditions:
            return  # no step completed, or a user released the pause
        index = decision.status["currentStepIndex"] - 1
        step = rollout.spec.canary.steps[index]
        if isinstance(step, PauseStep) and step.duration is not None:
            entered = self.pause_entered.get((self.walk, index))
            assert entered is not None, f"timed pause at step {index} completed without being entered in this walk"
            waited = (self.cluster.now - entered).total_seconds()
            assert waited >= step.duration, f"timed pause of {step.duration}s at step {index} ended after {waited}s"

    def _after_status_written(self, decision: Decision) -> None:
        cluster, status = self.cluster, self.cluster.status
        if any(e.reason == "RolloutPaused" for e in decision.events):
            self.pause_entered[(self.walk, status["currentStepIndex"])] = cluster.now
        if status.get("canaryHash") == hash_of(IMAGES[1]):
            self.visited.add(status["currentStepIndex"])
        # What the status says is what the cluster has.
        assert cluster.weight == status["canaryWeight"]
        assert cluster.stable_service_hash == status["stableHash"]
        replicas, by_hash = cluster.spec["replicas"], cluster.observed().by_hash
        assert by_hash[status["stableHash"]].replicas == replicas
        canary = by_hash.get(status["canaryHash"])  # an aborted canary may be pruned already
        if not status["abort"]:  # an aborted canary is retired as it is (scaled down after the delay)
            assert canary is not None
            assert canary.replicas <= replicas
        if cluster.weight > 0:
            assert cluster.canary_service_hash == status["canaryHash"]
            assert canary is not None
            assert canary.available > 0

    def handle(self, event: WorldEvent) -> None:
        cluster = self.cluster
        match event:
            case Reconcile():
                self.reconcile()
                return
            case Crash(applied=applied):
                self.reconcile(crash_after=applied)
            case Wake():
                cluster.pass_time(self.last.requeue_after or 0.0 if self.last else 0.0)
            case PodsReady(count=count, canary_only=canary_only):
                image = next((i for i in IMAGES if hash_of(i) == cluster.rollout.spec.template_hash), None)
                cluster.make_available(image if canary_only else None, count=count)
            case TimePasses(seconds=seconds):
                cluster.pass_time(seconds)
            case Scale(replicas=replicas):
                cluster.spec["replicas"] = replicas
            case Resume():
                cluster.resume()
            case Abort():
                cluster.status["abort"] = True
            case Retry():
                if cluster.status.get("abort"):
                    self.walk += 1
                cluster.status["abort"] = False
            case PromoteFull():
                cluster.status["promoteFull"] = True
            case UserPause(paused=paused):
                cluster.spec["paused"] = paused
            case NewTemplate(image=image):
                if hash_of(image) != cluster.rollout.spec.template_hash:
                    self.walk += 1
                cluster.set_image(image)
        self.reconcile()  # the watch sees the change


def started_canary(body: dict[str, Any]) -> Controller:
    """app:1 Healthy, then app:2 shipped."""
    cluster = healthy_cluster(body)
    controller = Controller(cluster)
    controller.handle(NewTemplate(IMAGES[1]))
    return controller


# -- properties ----------------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(body=rollout_bodies(), events=st.lists(world_events, min_size=20, max_size=60))
def test_planner_invariants_hold_under_any_sequence_of_events(body: dict[str, Any], events: list[WorldEvent]) -> None:
    controller = started_canary(body)
    for event in events:
        controller.handle(event)


def reconciles_needed(rollout: Rollout, resync: float) -> int:
    """An upper bound on the reconciles a walk takes when pods come up at once and pauses are released at once."""
    total = 4  # the canary's first reconcile, scaling to full size, promotion, Healthy
    for step in rollout.spec.canary.steps:
        if isinstance(step, SetWeightStep | AnalysisStep) or step.duration is None:
            total += 2  # scale (or enter the pause), then move traffic (or be resumed)
        else:
            total += 1 + max(1, math.ceil(step.duration / resync))
    return total


@settings(max_examples=200, deadline=None)
@given(body=rollout_bodies())
def test_every_step_index_is_reached_and_the_rollout_completes(body: dict[str, Any]) -> None:
    body["spec"]["progressDeadlineSeconds"] = 600  # pods come up at once here; no deadline can pass
    controller = started_canary(body)
    cluster, new = controller.cluster, hash_of(IMAGES[1])
    steps = cluster.rollout.spec.canary.steps
    limit = reconciles_needed(cluster.rollout, cluster.resync)
    for _ in range(limit):
        cluster.make_available()
        if cluster.status.get("pauseConditions") and "until resumed" in cluster.status["message"]:
            cluster.resume()
        cluster.pass_time(controller.last.requeue_after or 0.0 if controller.last else 0.0)
        decision = controller.reconcile()
        if decision.summary == "Healthy" and cluster.status["stableHash"] == new:
            break
    else:
        raise AssertionError(f"not Healthy on {new} after {limit} reconciles; status {cluster.status}")
    assert controller.visited == set(range(len(steps) + 1))
    assert (cluster.stable_service_hash, cluster.weight) == (new, 0)
