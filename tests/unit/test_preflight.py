"""The guardrails as the planners use them (strategies/guardrails.py, strategies/preflight.py): what a Rollout asks,
the verdict on its template, and what the canary and blue-green planners do with it."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from strategies import bluegreen, preflight
from strategies.decision import (
    Action,
    ApplyDisruptionBudget,
    CreateReplicaSet,
    Decision,
    DeleteDisruptionBudget,
    ScaleReplicaSet,
    SetBackend,
    SetSpread,
    SetWeight,
)
from strategies.guardrails import (
    OVERRIDE_ANNOTATION,
    OVERRIDE_BY_ANNOTATION,
    DisruptionBudget,
    parse_guardrails,
    spread_term,
    with_spread,
)
from strategies.model import HASH_LABEL, BudgetState, Observed, SpecError, parse_rollout
from strategies.policy import Mode, PolicyError

from .test_bluegreen_planner import BlueGreenCluster, bg_body
from .test_canary_planner import (
    NAME,
    Cluster,
    condition,
    event_reasons,
    hash_of,
    pod_template,
    reconcile_with_pods,
    rollout_body,
    walk_until,
)

ALL_OFF: dict[str, Mode] = {rule: "off" for rule in ("resources", "readiness-probe", "liveness-probe", "pinned-image",
                                                       "privileged", "run-as-non-root", "disruption-budget",
                                                       "spread")}


# -- what a Rollout asks -------------------------------------------------------------------------------------------


def test_guardrails_read_policy_budget_spread_and_the_override() -> None:
    guard = parse_guardrails(
        {"policy": {"spread": "enforce"}, "disruptionBudget": {"maxUnavailable": "25%"}, "spread": "required"},
        {OVERRIDE_ANNOTATION: "pinned-image=warn, spread=off", OVERRIDE_BY_ANNOTATION: "alice"})
    assert guard.tighten == {"spread": "enforce"}
    assert guard.budget == DisruptionBudget(max_unavailable="25%")
    assert guard.spread == "required"
    assert guard.override == {"pinned-image": "warn", "spread": "off"} and guard.override_by == "alice"
    assert guard.override_error is None


@pytest.mark.parametrize(("spec", "message"), [
    ({"policy": {"no-such-rule": "warn"}}, "unknown rule 'no-such-rule'"),
    ({"policy": {"spread": "strict"}}, "unknown mode 'strict'"),
    ({"disruptionBudget": {}}, "exactly one of minAvailable, maxUnavailable"),
    ({"disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}}, "exactly one"),
    ({"disruptionBudget": {"minAvailable": "120%"}}, "not a percentage"),
    ({"disruptionBudget": {"maxUnavailable": -1}}, "must not be negative"),
    ({"spread": "always"}, "spec.spread: 'always'"),
])
def test_unreadable_guardrail_fields_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_guardrails(spec, {})


def test_an_unreadable_rollout_field_is_an_invalid_spec() -> None:
    body = rollout_body(spread="always")
    with pytest.raises(SpecError, match=r"spec\.spread"):
        parse_rollout(body)


@pytest.mark.parametrize(("annotations", "error"), [
    ({OVERRIDE_ANNOTATION: "spread=off"}, f"{OVERRIDE_BY_ANNOTATION} is missing"),
    ({OVERRIDE_ANNOTATION: "spread", OVERRIDE_BY_ANNOTATION: "bob"}, "'spread' is not RULE=MODE"),
    ({OVERRIDE_ANNOTATION: "spread=never", OVERRIDE_BY_ANNOTATION: "bob"}, "unknown mode 'never'"),
])
def test_an_override_that_cannot_be_honoured_is_kept_as_an_error_not_applied(annotations: dict[str, str],
                                                                            error: str) -> None:
    guard = parse_guardrails({}, annotations)
    assert guard.override == {}
    assert guard.override_error is not None and error in guard.override_error


@pytest.mark.parametrize(("budget", "replicas", "min_available"), [
    (DisruptionBudget(min_available=2), 4, 2),
    (DisruptionBudget(min_available="50%"), 5, 3),  # rounded up, as Kubernetes does
    (DisruptionBudget(min_available="100%"), 3, 3),
    (DisruptionBudget(max_unavailable=1), 4, 3),
    (DisruptionBudget(max_unavailable="25%"), 10, 7),  # 2.5 unavailable rounds up to 3
    (DisruptionBudget(max_unavailable=5), 3, 0),
    (DisruptionBudget(max_unavailable=1), 0, 0),
])
def test_the_budget_is_an_absolute_min_available_for_the_replicas(budget: DisruptionBudget, replicas: int,
                                                                  min_available: int) -> None:
    assert budget.min_available_for(replicas) == min_available


def test_spread_adds_one_term_and_keeps_the_users_affinity() -> None:
    user_term = {"topologyKey": "topology.kubernetes.io/zone", "labelSelector": {"matchLabels": {"app": NAME}}}
    pod = {"affinity": {"nodeAffinity": {"x": 1}, "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 5, "podAffinityTerm": user_term}]}}}
    term = spread_term({"matchLabels": {"app": NAME}}, HASH_LABEL, "abc")
    required = with_spread(pod, term=term, spread="required")
    assert required["nodeAffinity"] == {"x": 1}
    assert required["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] == [term]
    assert term["labelSelector"]["matchLabels"] == {"app": NAME, HASH_LABEL: "abc"}
    # Switching to preferred moves the term; applying twice adds nothing.
    preferred = with_spread({"affinity": required}, term=term, spread="preferred")
    assert with_spread({"affinity": preferred}, term=term, spread="preferred") == preferred
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in preferred["podAntiAffinity"]
    assert preferred["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"] == [
        {"weight": 5, "podAffinityTerm": user_term}, {"weight": 100, "podAffinityTerm": term}]
    # Removing it leaves the user's affinity as written.
    assert with_spread({"affinity": preferred}, term=term, spread=None) == pod["affinity"]
    assert with_spread({}, term=term, spread=None) == {}


# -- the verdict ---------------------------------------------------------------------------------------------------


def _review(body: dict[str, Any], *, running: bool = False, defaults: dict[str, Mode] | None = None,
            covered: bool = False) -> preflight.Preflight:
    rollout = parse_rollout(body)
    obs = Observed(now=Cluster(body).now, replica_sets=(), stable_service_hash=None, canary_service_hash=None,
                   canary_weight=0, policy_defaults=defaults or {}, budget_covered=covered)
    return preflight.review(rollout, obs, running=running)


def _unpinned(**spec: Any) -> dict[str, Any]:
    body = rollout_body(**spec)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "app:latest"
    return body


def test_a_template_failing_an_enforced_rule_is_blocked_with_the_field_named() -> None:
    verdict = _review(_unpinned())
    assert verdict.blocked and verdict.reason == preflight.BLOCKED
    assert verdict.message.startswith(f"revision {parse_rollout(_unpinned()).spec.template_hash} is not rolled out: ")
    assert ("pinned-image (enforce): container app: image app:latest is not pinned: latest moves "
            "[spec.template.spec.containers[0].image]") in verdict.message
    # The warn rules are listed too: every violation, not only the first.
    assert "run-as-non-root (warn)" in verdict.message and "disruption-budget (warn)" in verdict.message


def test_a_revision_already_running_is_reported_never_blocked() -> None:
    verdict = _review(_unpinned(), running=True)
    assert not verdict.blocked and verdict.reason == preflight.WARNED
    assert "runs already" in verdict.message


def test_warn_rules_proceed_and_off_rules_are_silent() -> None:
    warned = _review(rollout_body())  # passes every enforced rule; run-as-non-root, budget and spread are warn
    assert not warned.blocked and warned.reason == preflight.WARNED
    silent = _review(_unpinned(), defaults=ALL_OFF)
    assert (silent.blocked, silent.reason, silent.message) == (False, preflight.PASSED, "")


def test_a_disruption_budget_or_a_spread_satisfies_their_rules() -> None:
    defaults: dict[str, Mode] = {"run-as-non-root": "off"}
    assert _review(rollout_body(), defaults=defaults).reason == preflight.WARNED
    assert _review(rollout_body(disruptionBudget={"maxUnavailable": 1}, spread="preferred"),
                   defaults=defaults).reason == preflight.PASSED
    # Someone else's budget selecting the pods counts as well.
    assert "disruption-budget" not in _review(rollout_body(), defaults=defaults, covered=True).message


def test_spec_policy_tightens_and_a_looser_one_is_ignored_and_said() -> None:
    tightened = _review(rollout_body(policy={"run-as-non-root": "enforce"}))
    assert tightened.blocked and "run-as-non-root (enforce)" in tightened.message
    loosened = _review(_unpinned(policy={"pinned-image": "off"}))
    assert loosened.blocked
    assert "spec.policy pinned-image=off ignored: looser than the cluster's enforce" in loosened.message


def test_an_override_loosens_and_names_who_set_it() -> None:
    body = _unpinned(policy={"pinned-image": "off"})
    body["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "pinned-image=warn", OVERRIDE_BY_ANNOTATION: "alice"}
    verdict = _review(body)
    assert not verdict.blocked and verdict.reason == preflight.WARNED
    assert "pinned-image (warn)" in verdict.message
    assert verdict.overridden == ("alice overrode pinned-image=warn (cluster: enforce) with annotation "
                                  "sluice.dev/policy-override")
    assert verdict.overridden in verdict.message and "ignored" not in verdict.message


def test_an_override_without_its_author_is_not_honoured() -> None:
    body = _unpinned()
    body["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "pinned-image=off"}
    verdict = _review(body)
    assert verdict.blocked and f"{OVERRIDE_BY_ANNOTATION} is missing" in verdict.message


# -- the planners --------------------------------------------------------------------------------------------------


@dataclass
class GuardedCluster(Cluster):
    """The in-memory cluster with the guardrails' state: the cluster's modes, sluice's budget, the spread of each
    ReplicaSet's pod template."""

    defaults: dict[str, Mode] = field(default_factory=dict)
    budget: BudgetState | None = None
    applied: list[Action] = field(default_factory=list)

    def observed(self) -> Observed:
        return replace(super().observed(), policy_defaults=self.defaults, budget=self.budget)

    def _apply(self, action: Action) -> None:
        self.applied.append(action)
        match action:
            case ApplyDisruptionBudget():
                self.budget = BudgetState(action.name, action.min_available, {"app": NAME})
            case DeleteDisruptionBudget():
                self.budget = None
            case SetSpread():
                self.replica_sets[action.name] = replace(self.replica_sets[action.name], spread=action.spread)
            case _:
                super()._apply(action)

    def set_template(self, template: dict[str, Any]) -> None:
        self.spec["template"] = template
        self.body["metadata"]["generation"] += 1


def _unpinned_template() -> dict[str, Any]:
    template = pod_template("app:2")
    template["spec"]["containers"][0]["image"] = "app:latest"
    return template


def _healthy(**spec: Any) -> GuardedCluster:
    cluster = GuardedCluster(rollout_body(**spec))
    reconcile_with_pods(cluster)
    assert cluster.reconcile().summary == "Healthy"
    return cluster


def test_a_blocked_first_version_gets_nothing_and_is_reported_once() -> None:
    cluster = GuardedCluster(_unpinned())
    first = cluster.reconcile()
    assert first.summary == "Blocked" and first.actions == ()
    assert first.status["phase"] == "Degraded" and first.status["abort"] is False
    assert condition(first.status, "PolicyViolation")["reason"] == "PolicyViolation"
    assert condition(first.status, "Degraded")["reason"] == "PolicyViolation"
    assert event_reasons(first) == ["PolicyViolation"]
    again = cluster.reconcile()
    assert again.actions == () and event_reasons(again) == []


def test_a_blocked_new_revision_gets_no_pods_and_stable_keeps_serving() -> None:
    cluster = _healthy()
    stable = hash_of("app:1")
    cluster.set_template(_unpinned_template())
    blocked = cluster.reconcile()
    assert not any(isinstance(a, CreateReplicaSet) for a in blocked.actions)
    assert blocked.status["stableHash"] == stable and blocked.status["canaryWeight"] == 0
    assert blocked.status["abort"] is False and "abortedAt" not in cluster.status
    assert "PolicyViolation" in event_reasons(blocked) and cluster.rs("app:1").replicas == 10


def test_an_override_lets_the_blocked_revision_proceed_without_a_retry() -> None:
    cluster = _healthy()
    cluster.set_template(_unpinned_template())
    cluster.reconcile()
    cluster.body["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "pinned-image=warn",
                                               OVERRIDE_BY_ANNOTATION: "alice"}
    proceeding = cluster.reconcile()
    assert any(isinstance(a, CreateReplicaSet) for a in proceeding.actions)
    assert condition(proceeding.status, "PolicyViolation")["reason"] == "PolicyWarning"
    assert set(event_reasons(proceeding)) >= {"PolicyWarning", "PolicyOverridden"}
    assert "alice" in next(e.message for e in proceeding.events if e.reason == "PolicyOverridden")


def test_a_revision_in_flight_blocked_by_a_tightened_cluster_returns_traffic_to_stable() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: any(isinstance(a, SetWeight) and a.weight == 10 for a in d.actions))
    assert cluster.weight == 10
    cluster.defaults = {"run-as-non-root": "enforce"}  # the controller restarted with stricter settings
    blocked = cluster.reconcile()
    assert blocked.summary == "Blocked" and cluster.weight == 0
    assert blocked.status["phase"] == "Degraded" and blocked.status["abort"] is False
    # The canary keeps its pods for abortScaleDownDelaySeconds, then goes, as after an abort.
    cluster.pass_time(31)
    later = cluster.reconcile()
    assert any(isinstance(a, ScaleReplicaSet) and a.replicas == 0 for a in later.actions)


def test_warned_revisions_walk_their_steps_and_are_reported_once() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    decisions = walk_until(cluster, lambda d: d.status.get("currentStepIndex") == 1)
    assert sum(event_reasons(d).count("PolicyWarning") for d in decisions) == 1
    assert condition(decisions[-1].status, "PolicyViolation")["status"] == "True"


def test_off_rules_say_nothing() -> None:
    cluster = GuardedCluster(_unpinned(), defaults=ALL_OFF)
    decision = reconcile_with_pods(cluster)
    assert [type(a) for a in decision.actions] == [CreateReplicaSet]
    assert not {"PolicyViolation", "PolicyWarning"} & set(event_reasons(decision))
    assert condition(decision.status, "PolicyViolation") == {**condition(decision.status, "PolicyViolation"),
                                                             "status": "False", "reason": "PolicyPassed",
                                                             "message": ""}


def test_sluice_keeps_its_disruption_budget_in_step_with_the_replicas() -> None:
    cluster = _healthy(disruptionBudget={"maxUnavailable": 1})
    assert ApplyDisruptionBudget(NAME, 9, 10, create=True) in cluster.applied
    assert cluster.reconcile().actions == ()
    cluster.spec["replicas"] = 4
    assert ApplyDisruptionBudget(NAME, 3, 4, create=False) in cluster.reconcile().actions
    del cluster.spec["disruptionBudget"]
    assert cluster.reconcile().actions == (DeleteDisruptionBudget(NAME),)


def test_a_budget_edited_by_someone_else_is_put_back() -> None:
    cluster = _healthy(disruptionBudget={"minAvailable": "50%"})
    assert cluster.budget is not None and cluster.budget.min_available == 5
    cluster.budget = replace(cluster.budget, match_labels={"app": "other"})
    assert cluster.reconcile().actions == (ApplyDisruptionBudget(NAME, 5, 10, create=False),)


def test_spread_goes_into_new_replica_sets_and_is_written_into_existing_ones() -> None:
    cluster = _healthy()
    cluster.spec["spread"] = "required"  # not part of the template: no new revision
    decision = cluster.reconcile()
    assert decision.actions == (SetSpread(f"{NAME}-{hash_of('app:1')}", hash_of("app:1"), "required"),)
    assert decision.status.get("stableHash", cluster.status["stableHash"]) == hash_of("app:1")
    assert cluster.reconcile().actions == ()
    # A ReplicaSet created in the same decision gets the spread when it is created (rollout/applying.py).
    cluster.set_image("app:2")
    created = cluster.reconcile()
    assert not any(isinstance(a, SetSpread) for a in created.actions)


def test_blue_green_never_previews_a_blocked_revision() -> None:
    cluster = BlueGreenCluster(bg_body())
    reconcile_with_pods(cluster)
    reconcile_with_pods(cluster)
    active = cluster.active
    template = copy.deepcopy(cluster.spec["template"])
    template["spec"]["containers"][0]["image"] = "app"  # no tag: latest
    cluster.spec["template"] = template
    blocked = bluegreen.plan(cluster.rollout, cluster.observed())
    assert not any(isinstance(a, CreateReplicaSet | SetBackend) for a in blocked.actions)
    assert blocked.status["stepDisplay"] == "blocked" and blocked.status["phase"] == "Degraded"
    assert cluster.active == active


def test_a_decision_with_nothing_found_has_a_false_condition_and_no_event() -> None:
    body = rollout_body(disruptionBudget={"minAvailable": 1}, spread="preferred")
    cluster = GuardedCluster(body, defaults={"run-as-non-root": "off"})
    decision: Decision = reconcile_with_pods(cluster)
    assert condition(decision.status, "PolicyViolation")["reason"] == "PolicyPassed"
    assert not {"PolicyViolation", "PolicyWarning", "PolicyOverridden"} & set(event_reasons(decision))


# -- what a block must not undo or leak (found in review) ------------------------------------------------------------


def test_a_users_abort_survives_a_block_and_its_lifting() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: cluster.weight == 10)
    cluster.status["abort"] = True  # `sluice abort`
    assert cluster.reconcile().summary == "Aborted"
    cluster.defaults = {"run-as-non-root": "enforce"}
    aborted = cluster.reconcile()
    assert cluster.status["abort"] is True and "abortedAt" in cluster.status, aborted.status
    cluster.defaults = {}
    again = cluster.reconcile()
    assert cluster.status["abort"] is True and not any(isinstance(a, SetWeight) and a.weight > 0
                                                        for a in again.actions)


def test_lifting_a_block_starts_a_new_walk_with_a_fresh_progress_deadline() -> None:
    cluster = _healthy(progressDeadlineSeconds=600, progressDeadlineAbort=True)
    cluster.defaults = {"run-as-non-root": "enforce"}
    cluster.set_image("app:2")
    assert cluster.reconcile().summary == "Blocked"
    walk = cluster.status["walk"]
    cluster.pass_time(3600)
    assert cluster.reconcile().summary == "Blocked"
    cluster.defaults = {}
    lifted = cluster.reconcile()
    assert lifted.summary != "Aborted" and cluster.status["abort"] is False
    assert cluster.status["walk"] == walk + 1
    assert any(isinstance(a, CreateReplicaSet) for a in lifted.actions)


def test_a_blocked_revision_gets_no_pods_when_the_stable_replica_set_disappears() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: cluster.weight == 10)
    cluster.defaults = {"run-as-non-root": "enforce"}
    assert cluster.reconcile().summary == "Blocked"
    del cluster.replica_sets[f"{NAME}-{hash_of('app:1')}"]  # someone deletes stable
    for _ in range(3):  # not only once: a blocked revision must never come to count as the running one
        decision = cluster.reconcile()
        assert decision.summary == "Blocked"
        assert cluster.status.get("stableHash") != hash_of("app:2")
        assert not [a for a in decision.actions if isinstance(a, ScaleReplicaSet) and a.replicas > 0]
        assert not [a for a in decision.actions if isinstance(a, SetBackend) and a.hash == hash_of("app:2")]
        cluster.pass_time(10)


def test_a_first_version_created_before_a_stricter_controller_restarted_stays_blocked() -> None:
    cluster = GuardedCluster(rollout_body())
    first = cluster.plan()
    cluster.apply(first, crash_after=len(first.actions))  # the ReplicaSet exists, the status write was lost
    cluster.make_available()
    cluster.defaults = {"run-as-non-root": "enforce"}
    for _ in range(3):
        decision = cluster.reconcile()
        assert decision.summary == "Blocked"
        assert cluster.stable_service_hash is None and "stableHash" not in cluster.status
        cluster.pass_time(20)
    assert cluster.rs("app:1").replicas == 0  # scaled down after abortScaleDownDelaySeconds


def test_a_full_promotion_asked_before_a_block_does_not_outlive_it() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: cluster.weight == 10)
    cluster.status["promoteFull"] = True
    cluster.defaults = {"run-as-non-root": "enforce"}
    assert cluster.reconcile().summary == "Blocked" and cluster.status["promoteFull"] is False


def test_a_namesake_budget_is_reported_and_the_rollout_goes_on() -> None:
    conflict = "spec.disruptionBudget not applied: PodDisruptionBudget default/demo exists and is not controlled"

    @dataclass
    class Conflicted(GuardedCluster):
        def observed(self) -> Observed:
            return replace(super().observed(), budget_conflict=conflict, budget_covered=True)

    cluster = Conflicted(rollout_body(disruptionBudget={"maxUnavailable": 1}), defaults={"run-as-non-root": "off"})
    first = reconcile_with_pods(cluster)
    assert [type(a) for a in first.actions] == [CreateReplicaSet]  # no budget action, the rest goes on
    assert event_reasons(first).count("DisruptionBudgetConflict") == 1
    assert conflict in condition(first.status, "PolicyViolation")["message"]
    assert "DisruptionBudgetConflict" not in event_reasons(cluster.reconcile())


def test_the_spread_is_written_before_a_replica_set_scales_up() -> None:
    cluster = _healthy()
    cluster.spec["spread"] = "preferred"
    cluster.spec["replicas"] = 12  # an HPA scales up in the same moment
    actions = cluster.reconcile().actions
    kinds = [type(a) for a in actions]
    assert SetSpread in kinds and ScaleReplicaSet in kinds
    assert kinds.index(SetSpread) < kinds.index(ScaleReplicaSet)


def test_spread_skips_empty_replica_sets_until_they_are_scaled_up_again() -> None:
    cluster = _healthy(steps=[{"setWeight": 50}])
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: cluster.status.get("stableHash") == hash_of("app:2") and d.summary == "Healthy")
    cluster.pass_time(60)
    cluster.reconcile()  # the old stable scales down after its delay
    old = f"{NAME}-{hash_of('app:1')}"
    assert cluster.replica_sets[old].replicas == 0
    cluster.spec["spread"] = "required"
    assert cluster.reconcile().actions == (SetSpread(f"{NAME}-{hash_of('app:2')}", hash_of("app:2"), "required"),)
    # A rollback scales the empty one up: its spread is written first.
    cluster.set_image("app:1")
    actions = cluster.reconcile().actions
    assert actions[0] == SetSpread(old, hash_of("app:1"), "required")
    assert any(isinstance(a, ScaleReplicaSet) and a.name == old and a.replicas > 0 for a in actions[1:])


def test_a_budget_sluice_cannot_keep_does_not_satisfy_the_rule() -> None:
    body = rollout_body(disruptionBudget={"maxUnavailable": 1}, policy={"disruption-budget": "enforce"})
    rollout = parse_rollout(body)
    obs = Observed(now=Cluster(body).now, replica_sets=(), stable_service_hash=None, canary_service_hash=None,
                   canary_weight=0, budget_conflict="spec.disruptionBudget not applied: ...")
    verdict = preflight.review(rollout, obs, running=False)
    assert verdict.blocked and "disruption-budget (enforce)" in verdict.message
    assert not preflight.review(rollout, replace(obs, budget_covered=True), running=False).blocked


def test_spread_comes_after_the_traffic_returns_to_stable() -> None:
    cluster = _healthy()
    cluster.set_image("app:2")
    walk_until(cluster, lambda d: cluster.weight == 10)
    cluster.spec["spread"] = "preferred"
    cluster.status["abort"] = True
    actions = cluster.reconcile().actions
    weight = next(i for i, a in enumerate(actions) if isinstance(a, SetWeight))
    assert all(i > weight for i, a in enumerate(actions) if isinstance(a, SetSpread)), actions
