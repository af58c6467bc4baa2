"""The canary planner, one behaviour per test, walked through a tiny in-memory cluster.

`Cluster` stands in for the reconciler and the API server: it plans on the current Rollout body and observed state,
applies the decision's actions in order to fake ReplicaSets, Service selectors and a router weight, then merges the
decision's status into the body as the status merge patch would. Pods become available only when a test says so,
and time passes only when a test says so. test_canary_properties.py drives the same Cluster with random events.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from strategies.canary import PAUSE_REASON, canary_replicas, invalid, plan
from strategies.decision import (
    Action,
    CreateReplicaSet,
    Decision,
    DeleteReplicaSet,
    MarkScaleDown,
    ScaleReplicaSet,
    SetBackend,
    SetRevision,
    SetWeight,
)
from strategies.model import (
    Observed,
    ReplicaSetState,
    Rollout,
    SpecError,
    format_time,
    parse_rollout,
    parse_status,
    parse_time,
    template_hash,
)

START = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NAME = "demo"
STABLE_SVC = "demo-stable"
CANARY_SVC = "demo-canary"
STEPS: list[dict[str, Any]] = [
    {"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "60s"}},
]


# -- bodies --------------------------------------------------------------------------------------------------------


RESOURCES = {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "64Mi"}}


def pod_template(image: str) -> dict[str, Any]:
    """A template that passes the guardrails' enforced rules (pinned image, resources; no ports, so no probe)."""
    return {"metadata": {"labels": {"app": NAME}},
            "spec": {"containers": [{"name": "app", "image": image, "resources": RESOURCES}]}}


def hash_of(image: str) -> str:
    return template_hash(pod_template(image))


def rs_name(image: str) -> str:
    return f"{NAME}-{hash_of(image)}"


def rollout_body(*, steps: Sequence[Mapping[str, Any]] = tuple(STEPS), replicas: int = 10, image: str = "app:1",
                 scale_down_delay: int = 30, abort_delay: int = 30, **spec: Any) -> dict[str, Any]:
    """A Rollout body with an empty status; extra keyword arguments are spec fields (progressDeadlineSeconds=...)."""
    return {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"namespace": "default", "name": NAME, "generation": 1},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": NAME}},
            "template": pod_template(image),
            "strategy": {"canary": {
                "stableService": STABLE_SVC,
                "canaryService": CANARY_SVC,
                "scaleDownDelaySeconds": scale_down_delay,
                "abortScaleDownDelaySeconds": abort_delay,
                "trafficRouting": {"istio": {"virtualService": {"name": NAME}}},
                "steps": [dict(s) for s in steps],
            }},
            **spec,
        },
        "status": {},
    }


# -- the in-memory cluster -----------------------------------------------------------------------------------------


def merge_status(status: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """A JSON merge patch of the top-level status fields (the planner writes no nested objects, only lists)."""
    for key, value in patch.items():
        if value is None:
            status.pop(key, None)
        else:
            status[key] = copy.deepcopy(value)


def _at_second(moment: datetime | None) -> datetime | None:
    """The scale-down deadline round-trips through an annotation, which keeps whole seconds."""
    return None if moment is None else parse_time(format_time(moment))


@dataclass
class Cluster:
    body: dict[str, Any]
    now: datetime = START
    replica_sets: dict[str, ReplicaSetState] = field(default_factory=dict)  # by name
    stable_service_hash: str | None = None
    canary_service_hash: str | None = None
    weight: int = 0  # what the router sends to the canary Service
    resync: float = 300.0

    # -- what the reconciler reads

    @property
    def rollout(self) -> Rollout:
        return parse_rollout(self.body)

    @property
    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = self.body["status"]
        return status

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.body["spec"]
        return spec

    def observed(self) -> Observed:
        return Observed(
            now=self.now,
            replica_sets=tuple(sorted(self.replica_sets.values(), key=lambda rs: rs.revision)),
            stable_service_hash=self.stable_service_hash,
            canary_service_hash=self.canary_service_hash,
            canary_weight=self.weight,
            resync=self.resync,
        )

    def rs(self, image: str) -> ReplicaSetState:
        return self.replica_sets[rs_name(image)]

    # -- what the reconciler does

    def plan(self) -> Decision:
        return plan(self.rollout, self.observed())

    def apply(self, decision: Decision, *, crash_after: int | None = None) -> None:
        """Apply the actions in order, then write the status; `crash_after` stops after that many actions and
        never writes the status, as a controller killed half way would."""
        actions = decision.actions if crash_after is None else decision.actions[:crash_after]
        for action in actions:
            self._apply(action)
        if crash_after is None:
            merge_status(self.status, decision.status)

    def reconcile(self) -> Decision:
        decision = self.plan()
        self.apply(decision)
        return decision

    def _apply(self, action: Action) -> None:
        match action:
            case CreateReplicaSet():
                name = f"{NAME}-{action.hash}"
                assert name not in self.replica_sets, f"{name} created twice"
                self.replica_sets[name] = ReplicaSetState(name=name, hash=action.hash, revision=action.revision,
                                                          replicas=action.replicas, ready=0, available=0)
            case ScaleReplicaSet():
                rs = self.replica_sets[action.name]
                assert action.previous == rs.replicas, f"{action} but it has {rs.replicas}"
                # Scaling to zero drops the scale-down deadline (rollout/applying.py does the same).
                self.replica_sets[action.name] = replace(
                    rs, replicas=action.replicas, ready=min(rs.ready, action.replicas),
                    available=min(rs.available, action.replicas),
                    scale_down_at=None if action.replicas == 0 else rs.scale_down_at,
                )
            case SetRevision():
                self.replica_sets[action.name] = replace(self.replica_sets[action.name], revision=action.revision)
            case MarkScaleDown():
                self.replica_sets[action.name] = replace(self.replica_sets[action.name],
                                                         scale_down_at=_at_second(action.at))
            case DeleteReplicaSet():
                del self.replica_sets[action.name]
            case SetBackend():
                if action.service == STABLE_SVC:
                    self.stable_service_hash = action.hash
                else:
                    assert action.service == CANARY_SVC, action
                    self.canary_service_hash = action.hash
            case SetWeight():
                assert action.previous == self.weight, f"{action} but the router has {self.weight}"
                self.weight = action.weight

    # -- the world changing

    def make_available(self, image: str | None = None, *, count: int | None = None) -> None:
        """Pods of one ReplicaSet (or all) become ready and available: `count` more, or all of them."""
        for name, rs in self.replica_sets.items():
            if image is not None and rs.hash != hash_of(image):
                continue
            available = rs.replicas if count is None else min(rs.replicas, rs.available + count)
            self.replica_sets[name] = replace(rs, ready=max(rs.ready, available), available=available)

    def pass_time(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)

    def set_image(self, image: str) -> None:
        self.spec["template"] = pod_template(image)
        self.body["metadata"]["generation"] += 1

    def resume(self) -> None:
        self.status["pauseConditions"] = []


def healthy_cluster(body: dict[str, Any] | None = None) -> Cluster:
    """A cluster where the Rollout's first version is up and Healthy."""
    cluster = Cluster(body or rollout_body())
    cluster.reconcile()
    cluster.make_available()
    assert cluster.reconcile().summary == "Healthy"
    return cluster


def reconcile_with_pods(cluster: Cluster) -> Decision:
    """Reconcile, then let every pod the decision asked for become available."""
    decision = cluster.reconcile()
    cluster.make_available()
    return decision


def walk_until(cluster: Cluster, done: Callable[[Decision], bool], *, limit: int = 20) -> list[Decision]:
    """Reconcile with pods becoming available and time passing as the planner asked, until `done`."""
    decisions: list[Decision] = []
    for _ in range(limit):
        decision = reconcile_with_pods(cluster)
        decisions.append(decision)
        if done(decision):
            return decisions
        cluster.pass_time(decision.requeue_after or 0.0)
    raise AssertionError(f"not done after {limit} reconciles: {[d.summary for d in decisions]}")


def at_step(index: int) -> Callable[[Decision], bool]:
    return lambda decision: decision.status.get("currentStepIndex") == index


def weights(decisions: Sequence[Decision]) -> list[int]:
    return [a.weight for d in decisions for a in d.actions if isinstance(a, SetWeight)]


def event_reasons(decision: Decision) -> list[str]:
    return [e.reason for e in decision.events]


def condition(status: Mapping[str, Any], type_: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["conditions"] if c["type"] == type_)
    return found


def canary_at_weight_50(**body: Any) -> Cluster:
    """app:1 stable, app:2 at step 3 (the timed pause) with 50% of traffic; the indefinite pause was resumed."""
    cluster = healthy_cluster(rollout_body(**body))
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    reconcile_with_pods(cluster)  # enters the indefinite pause
    cluster.resume()
    walk_until(cluster, at_step(3))
    assert cluster.weight == 50
    return cluster


# -- first version and steady state --------------------------------------------------------------------------------


def test_first_version_goes_straight_to_healthy_without_steps() -> None:
    cluster = Cluster(rollout_body())
    h1 = hash_of("app:1")

    first = cluster.reconcile()
    # The Services keep selecting what they selected (say, a Deployment's pods) until the new pods are available.
    assert first.actions == (CreateReplicaSet(h1, 1, 10),)
    assert first.status["phase"] == "Progressing"
    assert first.status["currentStepIndex"] == len(STEPS)
    assert (first.status["stableHash"], first.status["canaryHash"]) == (h1, h1)

    cluster.make_available()
    second = cluster.reconcile()
    assert second.summary == "Healthy"
    assert second.actions == (SetBackend("stable", STABLE_SVC, h1), SetBackend("canary", CANARY_SVC, h1))
    assert cluster.reconcile().actions == ()
    assert cluster.weight == 0
    assert condition(cluster.status, "Available")["status"] == "True"
    assert condition(cluster.status, "Progressing")["reason"] == "RolloutCompleted"


def test_steady_state_reconcile_is_quiet() -> None:
    cluster = healthy_cluster()
    cluster.pass_time(300)
    again = cluster.reconcile()
    assert (again.summary, again.actions, again.events) == ("Healthy", (), ())
    assert again.requeue_after == cluster.resync


# -- walking the steps ---------------------------------------------------------------------------------------------


def test_set_weight_scales_canary_before_moving_traffic() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    decision = cluster.reconcile()
    assert decision.actions == (CreateReplicaSet(hash_of("app:2"), 2, canary_replicas(10, 10)),)
    assert decision.status["canaryWeight"] == 0
    assert decision.status["currentStepIndex"] == 0
    assert cluster.weight == 0


def test_weight_moves_only_after_canary_pods_are_available() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    h2 = hash_of("app:2")
    walk_until(cluster, at_step(1))  # 10% done
    cluster.reconcile()  # enters the indefinite pause
    cluster.resume()
    cluster.reconcile()  # leaves it
    assert cluster.status["currentStepIndex"] == 2

    scale = cluster.reconcile()  # setWeight 50 of 10 replicas needs 5 canary pods
    assert scale.actions == (ScaleReplicaSet(rs_name("app:2"), 5, 1),)
    cluster.make_available("app:2", count=3)
    waiting = cluster.reconcile()
    assert weights([waiting]) == []
    assert waiting.status["message"] == "step 3/4: waiting for canary pods: 4/5 available"
    assert cluster.weight == 10

    cluster.make_available("app:2", count=1)
    moved = cluster.reconcile()
    assert moved.actions == (SetWeight(50, 10),)
    assert moved.summary == "StepCompleted"
    assert cluster.canary_service_hash == h2


def test_first_weight_arrives_after_canary_service_selects_canary_pods() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    cluster.reconcile()
    cluster.make_available("app:2")
    decision = cluster.reconcile()
    assert decision.actions == (SetBackend("canary", CANARY_SVC, hash_of("app:2")), SetWeight(10, 0))
    assert decision.status["currentStepIndex"] == 1
    assert decision.status["canaryWeight"] == 10
    assert decision.requeue_after == 0.0


def test_full_walk_moves_traffic_10_then_50_then_promotes() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    h2 = hash_of("app:2")
    decisions: list[Decision] = []
    for _ in range(30):
        decision = reconcile_with_pods(cluster)
        decisions.append(decision)
        if cluster.status.get("pauseConditions") and "until resumed" in cluster.status["message"]:
            cluster.resume()
        cluster.pass_time(decision.requeue_after or 0.0)
        if cluster.rs("app:1").replicas == 0:
            break
    assert weights(decisions) == [10, 50, 0]
    summaries = [d.summary for d in decisions]
    assert summaries.count("StepCompleted") == len(STEPS)
    assert summaries.count("Promoted") == 1
    assert (cluster.stable_service_hash, cluster.canary_service_hash) == (h2, h2)
    assert cluster.rs("app:2").replicas == 10
    assert cluster.rs("app:1").replicas == 0
    assert cluster.status["phase"] == "Healthy"
    assert cluster.status["stepDisplay"] == "4/4"


def test_rollout_without_steps_promotes_once_canary_is_full_size() -> None:
    cluster = healthy_cluster(rollout_body(steps=[]))
    cluster.set_image("app:2")
    scale = cluster.reconcile()
    assert scale.actions == (CreateReplicaSet(hash_of("app:2"), 2, 10),)
    cluster.make_available("app:2", count=9)
    assert cluster.reconcile().status["message"] == "full promotion: waiting for canary pods: 9/10 available"
    cluster.make_available("app:2")
    assert cluster.reconcile().summary == "Promoted"


# -- pauses --------------------------------------------------------------------------------------------------------


def test_timed_pause_expires_from_start_time_in_status() -> None:
    cluster = canary_at_weight_50()
    entered = cluster.reconcile()
    assert entered.summary == "Paused"
    assert entered.requeue_after == 60.0
    assert cluster.status["pauseConditions"] == [{"reason": PAUSE_REASON, "startTime": format_time(cluster.now)}]
    assert condition(cluster.status, "Paused")["reason"] == PAUSE_REASON

    cluster.pass_time(45)
    waiting = cluster.reconcile()
    assert (waiting.summary, waiting.actions, waiting.requeue_after) == ("Paused", (), 15.0)
    assert "RolloutPaused" not in event_reasons(waiting)

    # The controller was down past the end: the pause ends at startTime + 60s, not 60s after the restart.
    cluster.pass_time(3600)
    done = cluster.reconcile()
    assert done.summary == "StepCompleted"
    assert done.status["currentStepIndex"] == 4
    assert done.status["pauseConditions"] == []
    assert done.status["controllerPause"] is False


def test_timed_pause_ends_exactly_at_its_duration() -> None:
    cluster = canary_at_weight_50()
    cluster.reconcile()
    cluster.pass_time(59)
    assert cluster.reconcile().summary == "Paused"
    cluster.pass_time(1)
    assert cluster.reconcile().summary == "StepCompleted"


def test_indefinite_pause_waits_until_pause_conditions_removed() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    entered = cluster.reconcile()
    assert entered.summary == "Paused"
    assert "RolloutPaused" in event_reasons(entered)
    assert cluster.status["controllerPause"] is True
    assert cluster.status["phase"] == "Paused"

    for _ in range(24):
        cluster.pass_time(3600)
        held = cluster.reconcile()
        assert (held.summary, held.actions, held.events) == ("Paused", (), ())
        assert held.requeue_after == cluster.resync
    assert cluster.status["currentStepIndex"] == 1

    cluster.resume()
    resumed = cluster.reconcile()
    assert resumed.summary == "StepCompleted"
    assert "RolloutResumed" in event_reasons(resumed)
    assert resumed.status["currentStepIndex"] == 2
    assert condition(cluster.status, "Paused")["status"] == "False"


def test_user_pause_holds_the_step() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    cluster.spec["paused"] = True
    cluster.reconcile()
    cluster.make_available()
    for _ in range(3):
        held = cluster.reconcile()
        assert held.summary == "Paused"
        assert weights([held]) == []
        cluster.pass_time(3600)
    assert cluster.status["currentStepIndex"] == 0
    assert cluster.status["phase"] == "Paused"
    assert condition(cluster.status, "Paused")["reason"] == "PausedByUser"
    assert condition(cluster.status, "Degraded")["status"] == "False"  # paused time is not lack of progress

    cluster.spec["paused"] = False
    go = cluster.reconcile()
    assert go.summary == "StepCompleted"
    assert cluster.weight == 10


def test_user_pause_during_timed_pause_keeps_its_start_time() -> None:
    cluster = canary_at_weight_50()
    cluster.reconcile()
    started = cluster.status["pauseConditions"]
    cluster.spec["paused"] = True
    cluster.pass_time(30)
    assert cluster.reconcile().summary == "Paused"
    cluster.spec["paused"] = False
    cluster.pass_time(10)
    still = cluster.reconcile()
    assert still.summary == "Paused"
    assert cluster.status["pauseConditions"] == started
    assert still.requeue_after == 20.0


def test_promote_full_skips_remaining_steps() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    cluster.reconcile()  # indefinite pause
    cluster.status["promoteFull"] = True

    scale = cluster.reconcile()
    assert scale.actions == (ScaleReplicaSet(rs_name("app:2"), 10, 1),)
    assert scale.status["currentStepIndex"] == len(STEPS)
    cluster.make_available()
    promoted = cluster.reconcile()
    assert promoted.summary == "Promoted"
    assert weights([promoted]) == [0]
    assert cluster.stable_service_hash == hash_of("app:2")
    assert promoted.status["pauseConditions"] == []
    assert cluster.reconcile().status["promoteFull"] is False


# -- promotion -----------------------------------------------------------------------------------------------------


def test_full_promotion_switches_stable_selector_before_weight_returns_to_zero() -> None:
    cluster = canary_at_weight_50()
    decisions = walk_until(cluster, lambda d: d.summary == "Promoted")
    promoted = decisions[-1]
    h2 = hash_of("app:2")
    assert promoted.actions[:2] == (SetBackend("stable", STABLE_SVC, h2), SetWeight(0, 50))
    assert promoted.status["stableHash"] == h2
    assert promoted.status["phase"] == "Healthy"
    full = next(d for d in decisions if any(isinstance(a, ScaleReplicaSet) for a in d.actions))
    assert full.actions == (ScaleReplicaSet(rs_name("app:2"), 10, 5),)  # full size before the switch


def test_promotion_with_fewer_replicas_scales_the_canary_once() -> None:
    cluster = canary_at_weight_50()
    walk_until(cluster, at_step(4))
    cluster.reconcile()  # the canary goes to full size
    cluster.make_available()
    cluster.spec["replicas"] = 4
    promoted = cluster.reconcile()
    assert promoted.summary == "Promoted"
    assert [a for a in promoted.actions if isinstance(a, ScaleReplicaSet)] == [
        ScaleReplicaSet(rs_name("app:1"), 4, 10), ScaleReplicaSet(rs_name("app:2"), 4, 10),
    ]


def test_promotion_after_a_crash_half_way_keeps_the_stable_service_on_the_new_revision() -> None:
    cluster = canary_at_weight_50()
    walk_until(cluster, at_step(4))
    reconcile_with_pods(cluster)  # the canary goes to full size
    h2 = hash_of("app:2")
    promotion = cluster.plan()
    assert promotion.actions[0] == SetBackend("stable", STABLE_SVC, h2)
    cluster.apply(promotion, crash_after=1)  # the stable Service moved; the weight and the status did not

    again = cluster.reconcile()
    assert again.summary == "Promoted"
    assert not [a for a in again.actions if isinstance(a, SetBackend)]
    assert (cluster.stable_service_hash, cluster.status["stableHash"], cluster.weight) == (h2, h2, 0)


def test_old_stable_scaled_down_only_after_scale_down_delay() -> None:
    cluster = canary_at_weight_50(scale_down_delay=120, abort_delay=5)
    promoted = walk_until(cluster, lambda d: d.summary == "Promoted")[-1]
    promoted_at = cluster.now
    assert MarkScaleDown(rs_name("app:1"), promoted_at + timedelta(seconds=120)) in promoted.actions

    cluster.pass_time(10)
    early = cluster.reconcile()
    assert early.summary == "Healthy"
    assert early.actions == ()
    assert early.requeue_after == 110.0
    cluster.pass_time(109)
    assert cluster.reconcile().actions == ()
    assert cluster.rs("app:1").replicas == 10

    cluster.pass_time(1)
    due = cluster.reconcile()
    assert due.actions == (ScaleReplicaSet(rs_name("app:1"), 0, 10),)


# -- abort and retry -----------------------------------------------------------------------------------------------


def test_abort_sets_weight_zero_before_moving_canary_selector() -> None:
    cluster = canary_at_weight_50(abort_delay=45)
    cluster.status["abort"] = True
    aborted = cluster.reconcile()
    assert aborted.summary == "Aborted"
    assert aborted.actions == (
        SetWeight(0, 50),
        SetBackend("canary", CANARY_SVC, hash_of("app:1")),
        MarkScaleDown(rs_name("app:2"), cluster.now + timedelta(seconds=45)),
    )
    assert aborted.status["abort"] is True
    assert aborted.status["abortedAt"] == format_time(cluster.now)
    assert aborted.status["phase"] == "Degraded"
    assert condition(aborted.status, "Degraded")["reason"] == "RolloutAborted"
    assert [(e.reason, e.warning) for e in aborted.events if e.reason == "RolloutAborted"] == [("RolloutAborted", True)]


def test_abort_scales_canary_down_after_abort_delay() -> None:
    cluster = canary_at_weight_50(abort_delay=45, scale_down_delay=600)
    cluster.status["abort"] = True
    cluster.reconcile()
    aborted_at = cluster.status["abortedAt"]

    cluster.pass_time(44)
    waiting = cluster.reconcile()
    assert (waiting.summary, waiting.actions, waiting.events) == ("Aborted", (), ())
    assert waiting.requeue_after == 1.0
    cluster.pass_time(1)
    due = cluster.reconcile()
    assert due.actions == (ScaleReplicaSet(rs_name("app:2"), 0, 5),)
    assert cluster.status["abortedAt"] == aborted_at
    assert cluster.rs("app:1").replicas == 10


def test_retry_after_abort_restarts_from_first_step() -> None:
    cluster = canary_at_weight_50()
    cluster.status["abort"] = True
    cluster.reconcile()
    cluster.pass_time(30)
    cluster.reconcile()  # canary scaled to zero
    cluster.pass_time(60)

    cluster.status["abort"] = False
    retry = cluster.reconcile()
    assert retry.actions == (ScaleReplicaSet(rs_name("app:2"), 1, 0),)
    assert retry.status["currentStepIndex"] == 0
    assert retry.status["abort"] is False
    assert "abortedAt" not in cluster.status
    assert condition(cluster.status, "Degraded")["status"] == "False"
    assert cluster.weight == 0

    cluster.make_available()
    first = cluster.reconcile()
    assert first.actions == (SetBackend("canary", CANARY_SVC, hash_of("app:2")), SetWeight(10, 0))
    assert first.status["currentStepIndex"] == 1


def test_retry_long_after_abort_gets_a_fresh_progress_deadline() -> None:
    cluster = canary_at_weight_50(progressDeadlineSeconds=600, progressDeadlineAbort=True)
    cluster.status["abort"] = True
    cluster.reconcile()
    cluster.pass_time(30)
    cluster.reconcile()  # canary scaled to zero
    cluster.pass_time(3600)

    cluster.status["abort"] = False
    retry = cluster.reconcile()
    assert retry.summary == "Progressing"
    assert cluster.status["abort"] is False
    assert cluster.status["lastProgressTime"] == format_time(cluster.now)
    cluster.pass_time(599)
    assert cluster.reconcile().summary == "Progressing"


def test_abort_while_healthy_is_ignored() -> None:
    cluster = healthy_cluster()
    cluster.status["abort"] = True
    decision = cluster.reconcile()
    assert (decision.summary, decision.actions) == ("Healthy", ())
    assert cluster.status["abort"] is False


# -- new templates -------------------------------------------------------------------------------------------------


def test_new_template_mid_rollout_supersedes_canary() -> None:
    cluster = canary_at_weight_50(abort_delay=45)
    cluster.set_image("app:3")
    h1, h3 = hash_of("app:1"), hash_of("app:3")
    superseded = cluster.reconcile()
    assert superseded.actions == (
        CreateReplicaSet(h3, 3, 1),
        SetWeight(0, 50),
        SetBackend("canary", CANARY_SVC, h1),
        MarkScaleDown(rs_name("app:2"), cluster.now + timedelta(seconds=45)),
    )
    assert superseded.summary == "Progressing"
    assert superseded.status["canaryHash"] == h3
    assert superseded.status["stableHash"] == h1
    assert superseded.status["currentStepIndex"] == 0
    assert superseded.status["canaryWeight"] == 0

    cluster.make_available()
    assert cluster.reconcile().actions == (SetBackend("canary", CANARY_SVC, h3), SetWeight(10, 0))
    cluster.pass_time(45)
    assert ScaleReplicaSet(rs_name("app:2"), 0, 5) in cluster.reconcile().actions


def test_traffic_leaves_a_superseded_revision_before_the_canary_service_moves() -> None:
    # app:3 supersedes app:2 and takes 10%; then the template goes back to app:2, whose pods are still up.
    cluster = canary_at_weight_50(abort_delay=45)
    cluster.set_image("app:3")
    for _ in range(4):  # no time passes: app:2 is marked for scale-down but its pods are still up
        reconcile_with_pods(cluster)
    assert cluster.rs("app:2").available == 5
    assert cluster.weight == 10
    assert cluster.canary_service_hash == hash_of("app:3")
    cluster.set_image("app:2")
    actions = cluster.reconcile().actions
    route = [a for a in actions if isinstance(a, SetWeight | SetBackend)]
    # Not one request more to app:3's pods: its weight goes to zero before the Service selects app:2's pods.
    assert route == [SetWeight(0, 10), SetBackend("canary", CANARY_SVC, hash_of("app:2")), SetWeight(10, 0)]


def test_new_revision_gets_its_own_timed_pause_not_the_superseded_ones() -> None:
    steps: list[dict[str, Any]] = [{"pause": {"duration": "60s"}}, {"setWeight": 50}, {"pause": {}}]
    cluster = healthy_cluster(rollout_body(steps=steps))
    cluster.set_image("app:2")
    walk_until(cluster, at_step(2))
    reconcile_with_pods(cluster)  # app:2 waits in the indefinite pause
    cluster.pass_time(600)

    cluster.set_image("app:3")
    walk_until(cluster, lambda d: d.summary == "Paused")
    assert cluster.status["currentStepIndex"] == 0
    assert cluster.status["pauseConditions"] == [{"reason": PAUSE_REASON, "startTime": format_time(cluster.now)}]
    cluster.pass_time(59)
    assert cluster.reconcile().summary == "Paused"


def test_back_to_stable_template_is_fast_rollback() -> None:
    cluster = canary_at_weight_50()
    cluster.set_image("app:1")
    h1 = hash_of("app:1")
    rollback = cluster.reconcile()
    assert rollback.summary == "FastRollback"
    assert rollback.actions == (
        SetRevision(rs_name("app:1"), 3),
        SetWeight(0, 50),
        SetBackend("canary", CANARY_SVC, h1),
        MarkScaleDown(rs_name("app:2"), cluster.now + timedelta(seconds=30)),
    )
    assert "RolloutRolledBack" in event_reasons(rollback)
    assert rollback.status["phase"] == "Healthy"
    assert rollback.status["currentStepIndex"] == len(STEPS)
    assert rollback.status["pauseConditions"] == []
    assert (rollback.status["stableHash"], rollback.status["canaryHash"]) == (h1, h1)
    assert cluster.reconcile().summary == "Healthy"


def test_new_template_while_aborted_starts_a_new_rollout() -> None:
    cluster = canary_at_weight_50()
    cluster.status["abort"] = True
    cluster.reconcile()
    cluster.set_image("app:3")
    fresh = cluster.reconcile()
    assert fresh.summary == "Progressing"
    assert fresh.status["abort"] is False
    assert CreateReplicaSet(hash_of("app:3"), 3, 1) in fresh.actions


# -- progress deadline ---------------------------------------------------------------------------------------------


def stuck_canary(**body: Any) -> Cluster:
    cluster = healthy_cluster(rollout_body(**body))
    cluster.set_image("app:2")
    cluster.reconcile()
    return cluster


def test_progress_deadline_marks_degraded() -> None:
    cluster = stuck_canary(progressDeadlineSeconds=120)
    cluster.pass_time(100)
    waiting = cluster.reconcile()
    assert waiting.summary == "Progressing"
    assert waiting.requeue_after == 20.0
    cluster.pass_time(20)
    degraded = cluster.reconcile()
    assert degraded.summary == "Degraded"
    assert degraded.actions == ()
    assert [e.reason for e in degraded.events] == ["ProgressDeadlineExceeded"]
    assert cluster.status["phase"] == "Degraded"
    assert condition(cluster.status, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert condition(cluster.status, "Progressing")["status"] == "False"
    assert cluster.status.get("abort") is False

    cluster.pass_time(60)
    assert cluster.reconcile().events == ()  # reported once
    cluster.make_available()
    recovered = cluster.reconcile()
    assert recovered.summary == "StepCompleted"
    assert condition(cluster.status, "Degraded")["status"] == "False"


def test_time_paused_by_a_user_does_not_count_against_the_progress_deadline() -> None:
    cluster = stuck_canary(progressDeadlineSeconds=120)
    cluster.spec["paused"] = True
    held = cluster.reconcile()
    assert held.summary == "Paused"
    progress_time = cluster.status["lastProgressTime"]
    cluster.pass_time(1000)
    assert cluster.reconcile().summary == "Paused"
    assert cluster.status["lastProgressTime"] == progress_time  # no status write per wake-up while paused
    cluster.spec["paused"] = False
    assert cluster.reconcile().summary == "Progressing"  # the clock restarted on unpause
    cluster.pass_time(119)
    assert cluster.reconcile().summary == "Progressing"
    cluster.pass_time(1)
    assert cluster.reconcile().summary == "Degraded"


def test_each_new_available_pod_counts_as_progress() -> None:
    cluster = healthy_cluster(rollout_body(progressDeadlineSeconds=120, steps=[{"setWeight": 50}]))
    cluster.set_image("app:2")
    cluster.reconcile()
    for _ in range(4):
        cluster.pass_time(100)
        cluster.make_available("app:2", count=1)
        assert cluster.reconcile().summary == "Progressing"
    cluster.pass_time(120)
    assert cluster.reconcile().summary == "Degraded"


def test_progress_deadline_abort_aborts() -> None:
    cluster = stuck_canary(progressDeadlineSeconds=120, progressDeadlineAbort=True)
    cluster.make_available("app:2")
    cluster.reconcile()  # 10%
    cluster.reconcile()  # indefinite pause
    cluster.resume()
    cluster.reconcile()  # on to setWeight 50, which needs 4 more pods that never come
    cluster.reconcile()
    cluster.pass_time(120)
    aborted = cluster.reconcile()
    assert aborted.summary == "Aborted"
    assert SetWeight(0, 10) in aborted.actions
    assert cluster.weight == 0
    assert cluster.canary_service_hash == hash_of("app:1")
    assert cluster.status["abort"] is True
    assert cluster.status["message"].startswith("Rollout aborted: ProgressDeadlineExceeded")
    assert "ProgressDeadlineExceeded" in event_reasons(aborted)
    assert cluster.reconcile().summary == "Aborted"


def test_progress_deadline_abort_decides_afresh() -> None:
    cluster = stuck_canary(progressDeadlineSeconds=120, progressDeadlineAbort=True, abort_delay=60)
    cluster.pass_time(120)
    cluster.spec["replicas"] = 20  # the canary path alone would scale the canary it is about to abort
    aborted = cluster.reconcile()
    assert aborted.summary == "Aborted"
    assert aborted.actions == (
        ScaleReplicaSet(rs_name("app:1"), 20, 10),
        MarkScaleDown(rs_name("app:2"), cluster.now + timedelta(seconds=60)),
    )
    assert event_reasons(aborted)[0] == "ProgressDeadlineExceeded"


# -- replicas (HPA through the scale subresource) ------------------------------------------------------------------


def test_replicas_change_rescales_canary_share() -> None:
    cluster = canary_at_weight_50()
    cluster.spec["replicas"] = 20
    rescale = cluster.reconcile()
    assert set(rescale.actions) == {ScaleReplicaSet(rs_name("app:1"), 20, 10),
                                    ScaleReplicaSet(rs_name("app:2"), 10, 5)}
    assert weights([rescale]) == []
    assert rescale.status["message"] == "step 4/4: waiting for canary pods: 5/10 available"
    cluster.make_available()
    assert cluster.reconcile().summary == "Paused"

    cluster.spec["replicas"] = 3
    shrink = cluster.reconcile()
    assert set(shrink.actions) == {ScaleReplicaSet(rs_name("app:1"), 3, 20),
                                   ScaleReplicaSet(rs_name("app:2"), 2, 10)}
    assert cluster.weight == 50


def test_replicas_change_on_stable_scales_stable() -> None:
    cluster = healthy_cluster()
    cluster.spec["replicas"] = 4
    assert cluster.reconcile().actions == (ScaleReplicaSet(rs_name("app:1"), 4, 10),)


# -- old ReplicaSets -----------------------------------------------------------------------------------------------


def test_old_replica_sets_pruned_beyond_revision_history_limit() -> None:
    body = rollout_body(image="app:9", revisionHistoryLimit=2)
    h9 = hash_of("app:9")
    body["status"] = {"stableHash": h9, "canaryHash": h9, "currentStepHash": None}
    old = [ReplicaSetState(rs_name(f"app:{n}"), hash_of(f"app:{n}"), n, 0, 0, 0) for n in range(1, 6)]
    stable = ReplicaSetState(rs_name("app:9"), h9, 9, 10, 10, 10)
    cluster = Cluster(body, replica_sets={rs.name: rs for rs in [*old, stable]}, stable_service_hash=h9,
                      canary_service_hash=h9)
    decision = cluster.reconcile()
    assert decision.actions == tuple(DeleteReplicaSet(rs_name(f"app:{n}")) for n in (3, 2, 1))
    assert "ReplicaSetPruned" in [a.describe()[0] for a in decision.actions]
    assert sorted(cluster.replica_sets) == sorted([rs_name("app:4"), rs_name("app:5"), rs_name("app:9")])


def test_replica_set_with_pods_still_terminating_is_not_pruned() -> None:
    body = rollout_body(image="app:9", revisionHistoryLimit=0)
    h9 = hash_of("app:9")
    body["status"] = {"stableHash": h9, "canaryHash": h9}
    draining = ReplicaSetState(rs_name("app:1"), hash_of("app:1"), 1, 0, 1, 0)
    stable = ReplicaSetState(rs_name("app:9"), h9, 9, 10, 10, 10)
    cluster = Cluster(body, replica_sets={rs.name: rs for rs in [draining, stable]}, stable_service_hash=h9,
                      canary_service_hash=h9)
    assert cluster.reconcile().actions == ()


# -- invalid spec --------------------------------------------------------------------------------------------------


def test_invalid_decision_sets_invalid_spec_condition() -> None:
    cluster = healthy_cluster()
    cluster.spec["strategy"]["canary"]["steps"] = [{"pause": {"duration": "soon"}}]
    try:
        parse_rollout(cluster.body)
    except SpecError as exc:
        message = str(exc)
    else:
        raise AssertionError("the spec should be refused")
    status = parse_status(cluster.status)
    decision = invalid(status, generation=2, message=message, now=cluster.now)
    assert (decision.summary, decision.actions) == ("InvalidSpec", ())
    assert [(e.reason, e.warning) for e in decision.events] == [("InvalidSpec", True)]
    assert decision.status["phase"] == "Degraded"
    assert decision.status["observedGeneration"] == 2
    assert decision.status["message"] == f"InvalidSpec: {message}"
    assert condition(decision.status, "InvalidSpec") == {
        "type": "InvalidSpec", "status": "True", "reason": "InvalidSpec", "message": message,
        "lastTransitionTime": format_time(cluster.now),
    }
    assert condition(decision.status, "Degraded")["reason"] == "InvalidSpec"
    assert condition(decision.status, "Available") == condition(cluster.status, "Available")  # others kept

    merge_status(cluster.status, decision.status)
    later = cluster.now + timedelta(minutes=5)
    again = invalid(parse_status(cluster.status), generation=2, message=message, now=later)
    assert again.events == ()  # reported once per message
    assert condition(again.status, "InvalidSpec")["lastTransitionTime"] == format_time(cluster.now)


def test_fixed_spec_clears_invalid_spec_condition() -> None:
    cluster = healthy_cluster()
    decision = invalid(parse_status(cluster.status), generation=2, message="bad", now=cluster.now)
    merge_status(cluster.status, decision.status)
    healthy = cluster.reconcile()
    assert healthy.summary == "Healthy"
    assert condition(cluster.status, "InvalidSpec")["status"] == "False"
    assert condition(cluster.status, "Degraded")["status"] == "False"


# -- replica math --------------------------------------------------------------------------------------------------


@given(st.integers(0, 100), st.integers(0, 1000))
def test_canary_replicas_is_the_smallest_count_covering_the_weight(weight: int, replicas: int) -> None:
    n = canary_replicas(weight, replicas)
    assert 0 <= n <= replicas
    assert n * 100 >= weight * replicas
    assert n == 0 or (n - 1) * 100 < weight * replicas


# -- observed state that disagrees with the status ----------------------------------------------------------------


def selector_moves(decisions: Sequence[Decision], service: str) -> list[str]:
    """The hashes a Service was pointed at, in order, over these decisions."""
    return [a.hash for d in decisions for a in d.actions if isinstance(a, SetBackend) and a.service == service]


def test_status_lost_mid_rollout_adopts_stable_from_the_stable_service() -> None:
    cluster = canary_at_weight_50()
    h1, h2 = hash_of("app:1"), hash_of("app:2")
    cluster.body["status"] = {}  # restored from a backup taken before the Rollout had a status

    first = cluster.reconcile()
    assert first.status["stableHash"] == h1  # what the stable Service selects, not the template
    assert first.status["canaryHash"] == h2
    # The canary walks its steps again from the first (its progress was in the lost status) instead of becoming
    # the stable revision: setWeight 10 is done at once, its pods being up.
    assert (first.summary, first.status["currentStepIndex"], first.status["canaryWeight"]) == ("StepCompleted", 1, 10)
    assert "StableReplicaSetMissing" not in event_reasons(first)
    decisions = [first, reconcile_with_pods(cluster)]  # the indefinite pause
    assert cluster.status["phase"] == "Paused"
    cluster.resume()
    decisions += walk_until(cluster, at_step(3))
    assert h2 not in selector_moves(decisions, STABLE_SVC)
    assert (cluster.stable_service_hash, cluster.status["stableHash"]) == (h1, h1)
    assert cluster.rs("app:1").replicas == 10
    assert (cluster.canary_service_hash, cluster.weight) == (h2, 50)


def test_missing_stable_replica_set_moves_the_stable_service_to_the_first_available_pods() -> None:
    cluster = stuck_canary()
    h1, h2 = hash_of("app:1"), hash_of("app:2")
    del cluster.replica_sets[rs_name("app:1")]  # deleted by hand; the status still names it
    assert cluster.status["stableHash"] == h1

    first = cluster.reconcile()
    assert [(e.reason, e.warning) for e in first.events if e.reason == "StableReplicaSetMissing"] == [
        ("StableReplicaSetMissing", True)]
    assert ScaleReplicaSet(rs_name("app:2"), 10, 1) in first.actions  # app:2 becomes the stable revision
    assert selector_moves([first], STABLE_SVC) == []  # no pod of app:2 is available yet
    # The stable Service selects pods that no longer exist: any available pod of the new stable beats none.
    cluster.make_available("app:2", count=1)
    assert selector_moves([cluster.reconcile()], STABLE_SVC) == [h2]
    assert cluster.stable_service_hash == h2 != h1


def test_stable_service_waits_for_a_fully_available_revision_while_its_pods_exist() -> None:
    # A first version next to pods the Service already selects (say, the Deployment being replaced): the Service
    # moves only when all the new pods are available.
    cluster = Cluster(rollout_body())
    cluster.stable_service_hash = None
    h1 = hash_of("app:1")
    cluster.reconcile()
    for _ in range(9):
        cluster.make_available("app:1", count=1)
        assert selector_moves([cluster.reconcile()], STABLE_SVC) == []
    cluster.make_available("app:1", count=1)
    assert selector_moves([cluster.reconcile()], STABLE_SVC) == [h1]


def set_available(cluster: Cluster, image: str, available: int) -> None:
    """Exactly `available` pods of one ReplicaSet are ready and available (pods crash, or come back)."""
    rs = cluster.rs(image)
    cluster.replica_sets[rs.name] = replace(rs, ready=available, available=available)


def test_canary_service_returns_to_the_canary_only_when_it_can_carry_its_weight() -> None:
    cluster = canary_at_weight_50()
    h1, h2 = hash_of("app:1"), hash_of("app:2")
    assert cluster.rs("app:2").replicas == 5

    set_available(cluster, "app:2", 0)  # every canary pod crashed
    crashed = cluster.reconcile()
    assert selector_moves([crashed], CANARY_SVC) == [h1]
    assert weights([crashed]) == []
    assert (cluster.weight, cluster.status["canaryWeight"]) == (50, 50)  # the weight is held, not lowered

    set_available(cluster, "app:2", 1)  # one pod cannot carry 50% of the traffic
    one = cluster.reconcile()
    assert selector_moves([one], CANARY_SVC) == []
    assert cluster.canary_service_hash == h1
    set_available(cluster, "app:2", 4)
    assert selector_moves([cluster.reconcile()], CANARY_SVC) == []

    set_available(cluster, "app:2", 5)
    back = cluster.reconcile()
    assert selector_moves([back], CANARY_SVC) == [h2]
    assert weights([back]) == []
    assert (cluster.weight, cluster.status["canaryWeight"]) == (50, 50)


def test_hpa_scale_up_keeps_the_canary_in_traffic() -> None:
    cluster = canary_at_weight_50()
    h2 = hash_of("app:2")
    cluster.spec["replicas"] = 20
    decisions = [cluster.reconcile()]
    assert ScaleReplicaSet(rs_name("app:2"), 10, 5) in decisions[0].actions
    for _ in range(5):  # the canary catches up one pod at a time: 6..10 of 10
        cluster.make_available("app:2", count=1)
        decisions.append(cluster.reconcile())
    assert selector_moves(decisions, CANARY_SVC) == []
    assert weights(decisions) == []
    assert (cluster.canary_service_hash, cluster.weight) == (h2, 50)
    assert cluster.rs("app:2").available == 10


def test_weight_raised_outside_sluice_is_put_back() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    assert (cluster.weight, cluster.status["canaryWeight"]) == (10, 10)
    cluster.weight = 80  # someone edits the VirtualService by hand

    decision = cluster.reconcile()
    assert weights([decision]) == [10]
    assert SetWeight(10, 80) in decision.actions
    assert [(e.reason, e.warning) for e in decision.events][:1] == [("TrafficWeightDrift", True)]
    assert decision.status["canaryWeight"] == 10
    assert not [a for a in decision.actions if isinstance(a, ScaleReplicaSet)]
    assert (cluster.rs("app:2").replicas, cluster.weight) == (1, 10)


def test_unreadable_weight_goes_to_zero_before_a_superseded_canary_service_moves() -> None:
    # As test_traffic_leaves_a_superseded_revision_before_the_canary_service_moves, with a router whose weight
    # for the canary cannot be read (rollout.routers.UNKNOWN_WEIGHT, -1): it may be sending app:3 anything.
    cluster = canary_at_weight_50(abort_delay=45)
    cluster.set_image("app:3")
    for _ in range(4):
        reconcile_with_pods(cluster)
    assert cluster.canary_service_hash == hash_of("app:3")
    cluster.weight = -1
    cluster.set_image("app:2")
    actions = cluster.reconcile().actions
    route = [a for a in actions if isinstance(a, SetWeight | SetBackend)]
    assert route[0] == SetWeight(0, -1)
    assert route == [SetWeight(0, -1), SetBackend("canary", CANARY_SVC, hash_of("app:2")), SetWeight(10, 0)]


def test_first_version_that_never_comes_up_exceeds_the_progress_deadline() -> None:
    cluster = Cluster(rollout_body(progressDeadlineSeconds=120))
    first = cluster.reconcile()
    assert first.summary == "Progressing"
    assert first.requeue_after == 120.0
    cluster.pass_time(119)
    assert cluster.reconcile().summary == "Progressing"
    cluster.pass_time(1)
    degraded = cluster.reconcile()
    assert degraded.summary == "Degraded"
    assert [e.reason for e in degraded.events] == ["ProgressDeadlineExceeded"]
    assert condition(cluster.status, "Degraded")["reason"] == "ProgressDeadlineExceeded"
    assert "stable" in cluster.status["message"]
    cluster.pass_time(60)
    assert cluster.reconcile().events == ()  # reported once
    cluster.make_available()
    assert cluster.reconcile().summary == "Healthy"
    assert condition(cluster.status, "Degraded")["status"] == "False"


def test_stable_losing_pods_gets_the_whole_deadline_from_when_it_fell_short() -> None:
    cluster = healthy_cluster(rollout_body(progressDeadlineSeconds=120))
    cluster.pass_time(10_000)  # long healthy: that time must not count
    set_available(cluster, "app:1", 4)
    short = cluster.reconcile()
    assert short.summary == "Progressing"
    assert short.requeue_after == 120.0
    cluster.pass_time(60)
    set_available(cluster, "app:1", 6)  # a pod more: progress, the clock restarts
    assert cluster.reconcile().requeue_after == 120.0
    cluster.pass_time(120)
    assert cluster.reconcile().summary == "Degraded"


def test_crash_between_weight_and_status_is_not_reported_as_drift() -> None:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    reconcile_with_pods(cluster)  # enters the indefinite pause
    cluster.resume()
    cluster.reconcile()  # leaves the pause, on to setWeight 50
    reconcile_with_pods(cluster)  # the canary is scaled to 5 and its pods come up
    moving = cluster.plan()
    assert SetWeight(50, 10) in moving.actions
    cluster.apply(moving, crash_after=len(moving.actions))  # the weight is written, the status is not
    assert (cluster.weight, cluster.status["canaryWeight"]) == (50, 10)
    cluster.status["abort"] = True  # and a user aborts in the meantime
    aborted = cluster.reconcile()
    assert SetWeight(0, 50) in aborted.actions
    assert "TrafficWeightDrift" not in event_reasons(aborted)


def test_new_rollout_with_unweighted_routes_is_not_reported_as_drift() -> None:
    cluster = Cluster(rollout_body())
    cluster.weight = -1  # the user's VirtualService routes carry no weights yet
    first = cluster.reconcile()
    assert SetWeight(0, -1) in first.actions or cluster.weight in (-1, 0)
    assert "TrafficWeightDrift" not in event_reasons(first)
