"""Operator operations as patches: every operation in the states it cares about, its 409s and 400s, idempotent
repeats, and, through the in-memory Cluster of test_canary_planner.py, that the patched Rollout makes the canary
planner do what the operation promises (resume advances, abort returns traffic, undo brings the old hash back)."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from strategies.canary import INCONCLUSIVE_REASON, PAUSE_REASON
from strategies.decision import CreateReplicaSet, SetWeight
from strategies.model import HASH_LABEL, REVISION_ANNOTATION, template_hash
from strategies.operations import OPERATIONS, TEMPLATE_ANNOTATION, OperationError, Outcome, Patch, plan_operation

from .test_canary_planner import (
    NAME,
    STEPS,
    Cluster,
    at_step,
    canary_at_weight_50,
    event_reasons,
    hash_of,
    healthy_cluster,
    pod_template,
    reconcile_with_pods,
    rollout_body,
    walk_until,
)

NOW = datetime(2024, 6, 1, 9, 30, tzinfo=UTC)
IMAGES = ("app:1", "app:2", "app:3")


# -- an API server for one Rollout ----------------------------------------------------------------------------------


class Conflict(Exception):
    pass


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def write(body: dict[str, Any], patch: Patch) -> None:
    """What the API server does with one patch: check the precondition, change only the part the (sub)resource
    owns, bump the resourceVersion."""
    if patch.body["metadata"]["resourceVersion"] != body["metadata"]["resourceVersion"]:
        raise Conflict
    changes = {k: v for k, v in patch.body.items() if k != "metadata"}
    if patch.subresource == "status":
        assert set(changes) == {"status"}, patch
        body["status"] = merge_patch(body.get("status") or {}, changes["status"])
    else:
        assert patch.subresource is None and "status" not in changes, patch
        body["spec"] = merge_patch(body["spec"], changes.get("spec", {}))
    body["metadata"]["resourceVersion"] = str(int(body["metadata"]["resourceVersion"]) + 1)


def operate(cluster: Cluster, op: str, params: Mapping[str, Any] | None = None) -> list[Outcome]:
    """rollout/api.py's loop: plan on a fresh read, write the patches in order, on a conflict re-read and re-plan."""
    outcomes: list[Outcome] = []
    for _ in range(3):
        outcome = plan_operation(op, cluster.body, params or {}, replica_sets=replica_set_bodies(cluster), now=NOW)
        outcomes.append(outcome)
        try:
            for patch in outcome.patches:
                write(cluster.body, patch)
        except Conflict:
            continue
        return outcomes
    raise AssertionError(f"{op} kept conflicting: {outcomes}")


def versioned(cluster: Cluster) -> Cluster:
    cluster.body["metadata"].setdefault("resourceVersion", "100")
    return cluster


def replica_set_bodies(cluster: Cluster) -> list[dict[str, Any]]:
    templates = {hash_of(image): pod_template(image) for image in IMAGES}
    bodies = []
    for rs in cluster.replica_sets.values():
        template = copy.deepcopy(templates[rs.hash])
        template["metadata"]["labels"][HASH_LABEL] = rs.hash
        bodies.append(rs_body(rs.name, rs.hash, rs.revision, template))
    return bodies


def rs_body(name: str, hash_: str, revision: int, template: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"app": NAME, HASH_LABEL: hash_},
                         "annotations": {REVISION_ANNOTATION: str(revision)}},
            "spec": {"template": template}}


def plan(op: str, body: Mapping[str, Any], params: Mapping[str, Any] | None = None, **kwargs: Any) -> Outcome:
    return plan_operation(op, body, params or {}, now=NOW, **kwargs)


def refused(op: str, body: Mapping[str, Any], params: Mapping[str, Any] | None = None, **kwargs: Any
            ) -> OperationError:
    with pytest.raises(OperationError) as raised:
        plan(op, body, params, **kwargs)
    return raised.value


def status_patch(changes: dict[str, Any], version: str = "100") -> Patch:
    return Patch("status", {"status": changes, "metadata": {"resourceVersion": version}})


def spec_patch(changes: dict[str, Any], version: str = "100") -> Patch:
    return Patch(None, {"spec": changes, "metadata": {"resourceVersion": version}})


# -- states ----------------------------------------------------------------------------------------------------------


def healthy() -> Cluster:
    return versioned(healthy_cluster())


def at_indefinite_pause() -> Cluster:
    """app:1 stable, app:2 paused at step 2/4 (`pause: {}`) with 10% of traffic."""
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    walk_until(cluster, at_step(1))
    assert cluster.reconcile().summary == "Paused"
    assert cluster.status["pauseConditions"][0]["reason"] == PAUSE_REASON
    return versioned(cluster)


def waiting_for_canary_pods() -> Cluster:
    cluster = healthy_cluster()
    cluster.set_image("app:2")
    cluster.reconcile()
    return versioned(cluster)


def aborted() -> Cluster:
    cluster = versioned(canary_at_weight_50())
    operate(cluster, "abort")
    cluster.reconcile()
    assert cluster.status["abort"] is True
    return cluster


# -- pause -----------------------------------------------------------------------------------------------------------


def test_pause_sets_spec_paused_on_the_version_it_read() -> None:
    outcome = plan("pause", healthy().body)
    assert outcome == Outcome((spec_patch({"paused": True}),), "pause")


def test_pause_on_a_paused_rollout_writes_nothing() -> None:
    cluster = healthy()
    cluster.spec["paused"] = True
    assert plan("pause", cluster.body) == Outcome((), "pause")


def test_pause_holds_a_canary_at_its_step() -> None:
    cluster = waiting_for_canary_pods()
    operate(cluster, "pause")
    cluster.make_available()
    for _ in range(3):
        held = cluster.reconcile()
        assert held.summary == "Paused"
        assert cluster.weight == 0


# -- resume ----------------------------------------------------------------------------------------------------------


def test_resume_releases_the_pause_step_and_the_canary_advances() -> None:
    cluster = at_indefinite_pause()
    assert plan("resume", cluster.body) == Outcome((status_patch({"pauseConditions": None}),), "resume")
    operate(cluster, "resume")
    resumed = cluster.reconcile()
    assert resumed.summary == "StepCompleted"
    assert "RolloutResumed" in event_reasons(resumed)
    assert cluster.status["currentStepIndex"] == 2


def test_resume_lifts_a_user_pause() -> None:
    cluster = waiting_for_canary_pods()
    cluster.spec["paused"] = True
    assert plan("resume", cluster.body) == Outcome((spec_patch({"paused": False}),), "resume")


def test_resume_releases_a_user_pause_and_a_step_pause_together() -> None:
    cluster = at_indefinite_pause()
    cluster.spec["paused"] = True
    assert plan("resume", cluster.body).patches == (spec_patch({"paused": False}),
                                                    status_patch({"pauseConditions": None}))
    # The status patch's precondition is stale once the spec patch is written: the API re-reads and re-decides.
    outcomes = operate(cluster, "resume")
    assert [len(o.patches) for o in outcomes] == [2, 1]
    assert cluster.spec["paused"] is False
    assert "pauseConditions" not in cluster.status
    assert cluster.reconcile().summary == "StepCompleted"


def test_patch_at_carries_over_the_version_a_previous_write_returned() -> None:
    patch = status_patch({"pauseConditions": None})
    assert patch.at("101") == status_patch({"pauseConditions": None}, version="101")
    assert patch.body["metadata"]["resourceVersion"] == "100"


def test_resume_accepts_an_inconclusive_analysis_pause() -> None:
    body = healthy().body
    body["status"] |= {"controllerPause": True,
                       "pauseConditions": [{"reason": INCONCLUSIVE_REASON, "startTime": "2024-06-01T09:00:00Z"}]}
    assert plan("resume", body).patches == (status_patch({"pauseConditions": None}),)


def test_resume_when_nothing_is_paused_is_409() -> None:
    for cluster in (healthy(), waiting_for_canary_pods()):
        error = refused("resume", cluster.body)
        assert (error.code, error.message) == (409, f"cannot resume {NAME}: it is not paused")


def test_resume_repeated_before_the_controller_acted_writes_nothing() -> None:
    cluster = at_indefinite_pause()
    operate(cluster, "resume")
    assert plan("resume", cluster.body) == Outcome((), "resume")


# -- promote ---------------------------------------------------------------------------------------------------------


def test_promote_releases_the_current_pause_step() -> None:
    cluster = at_indefinite_pause()
    assert plan("promote", cluster.body) == Outcome((status_patch({"pauseConditions": None}),), "promote")
    operate(cluster, "promote")
    assert cluster.reconcile().status["currentStepIndex"] == 2


def test_promote_full_skips_every_remaining_step() -> None:
    cluster = at_indefinite_pause()
    outcome = plan("promote", cluster.body, {"full": True})
    assert outcome == Outcome((status_patch({"promoteFull": True}),), "promote (full)")
    operate(cluster, "promote", {"full": True})
    decisions = walk_until(cluster, lambda d: d.summary == "Promoted")
    assert cluster.stable_service_hash == hash_of("app:2")
    assert 50 not in [a.weight for d in decisions for a in d.actions if isinstance(a, SetWeight)]


def test_promote_full_repeated_writes_nothing() -> None:
    cluster = at_indefinite_pause()
    operate(cluster, "promote", {"full": True})
    assert plan("promote", cluster.body, {"full": True}) == Outcome((), "promote (full)")


def test_promote_without_a_canary_is_409() -> None:
    error = refused("promote", healthy().body, {"full": True})
    assert error.code == 409
    assert error.message == f"cannot promote {NAME}: no canary in progress (revision {hash_of('app:1')} is stable)"


def test_promote_when_not_paused_at_a_step_is_409_pointing_at_full() -> None:
    error = refused("promote", waiting_for_canary_pods().body)
    assert error.code == 409
    assert "not paused at a step" in error.message and "use full" in error.message


def test_promote_releases_the_step_but_keeps_a_user_pause() -> None:
    cluster = at_indefinite_pause()
    cluster.spec["paused"] = True
    assert plan("promote", cluster.body).patches == (status_patch({"pauseConditions": None}),)


def test_promote_while_aborted_is_409() -> None:
    error = refused("promote", aborted().body, {"full": True})
    assert error.code == 409 and "aborted" in error.message


# -- abort and retry -------------------------------------------------------------------------------------------------


def test_abort_sends_all_traffic_back_to_stable() -> None:
    cluster = versioned(canary_at_weight_50())
    assert plan("abort", cluster.body) == Outcome((status_patch({"abort": True}),), "abort")
    operate(cluster, "abort")
    decision = cluster.reconcile()
    assert decision.summary == "Aborted"
    assert cluster.weight == 0


def test_abort_without_a_canary_is_409() -> None:
    error = refused("abort", healthy().body)
    assert error.code == 409 and "no canary in progress" in error.message


def test_abort_of_a_rollout_never_reconciled_is_409() -> None:
    error = refused("abort", rollout_body())
    assert error.code == 409 and "has not rolled it out yet" in error.message


def test_abort_repeated_writes_nothing() -> None:
    assert plan("abort", aborted().body) == Outcome((), "abort")


def test_retry_walks_the_steps_again() -> None:
    cluster = aborted()
    assert plan("retry", cluster.body) == Outcome((status_patch({"abort": False}, version="101"),), "retry")
    operate(cluster, "retry")
    retried = reconcile_with_pods(cluster)
    assert retried.status["abort"] is False
    assert "abortedAt" not in cluster.status
    walk_until(cluster, at_step(1))
    assert cluster.weight == 10  # from the first step again: aborted at 50


def test_retry_when_not_aborted_is_409() -> None:
    for cluster in (healthy(), at_indefinite_pause()):
        error = refused("retry", cluster.body)
        assert (error.code, error.message) == (409, f"cannot retry {NAME}: it is not aborted")


def test_retry_repeated_before_the_controller_acted_writes_nothing() -> None:
    cluster = aborted()
    operate(cluster, "retry")
    assert plan("retry", cluster.body) == Outcome((), "retry")


# -- restart ---------------------------------------------------------------------------------------------------------


def test_restart_stamps_the_template_and_walks_a_new_revision() -> None:
    cluster = healthy()
    now = datetime(2024, 6, 1, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    outcome = plan_operation("restart", cluster.body, {}, now=now)
    stamp = {"metadata": {"annotations": {"sluice.dev/restartedAt": "2024-06-01T09:30:00Z"}}}
    assert outcome == Outcome((spec_patch({"template": stamp}),), "restart")
    write(cluster.body, outcome.patches[0])
    assert cluster.spec["template"]["spec"] == pod_template("app:1")["spec"]
    new_hash = template_hash(cluster.spec["template"])
    decision = cluster.reconcile()
    assert CreateReplicaSet(new_hash, 2, 1) in decision.actions
    assert decision.status["currentStepIndex"] == 0


def test_restart_during_a_rollout_is_409() -> None:
    for cluster, why in ((at_indefinite_pause(), "has a rollout in progress"), (aborted(), "is aborted")):
        error = refused("restart", cluster.body)
        assert error.code == 409 and why in error.message


# -- undo ------------------------------------------------------------------------------------------------------------


def three_revisions(current: str = "app:3") -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A Rollout on `current` with ReplicaSets for app:1, app:2, app:3 as revisions 1, 2, 3."""
    body = rollout_body(image=current)
    body["metadata"]["resourceVersion"] = "100"
    body["status"] = {"stableHash": hash_of(current), "canaryHash": hash_of(current)}
    replica_sets = []
    for revision, image in enumerate(IMAGES, start=1):
        template = pod_template(image)
        template["metadata"]["labels"][HASH_LABEL] = hash_of(image)
        replica_sets.append(rs_body(f"{NAME}-{hash_of(image)}", hash_of(image), revision, template))
    return body, replica_sets


def undone(body: dict[str, Any], outcome: Outcome) -> str:
    """The template hash after writing the outcome."""
    after = copy.deepcopy(body)
    for patch in outcome.patches:
        write(after, patch)
    return template_hash(after["spec"]["template"])


def test_undo_goes_back_to_the_revision_before_the_current_one() -> None:
    body, replica_sets = three_revisions()
    outcome = plan("undo", body, replica_sets=replica_sets)
    assert outcome.summary == "undo to revision 2"
    assert undone(body, outcome) == hash_of("app:2")


def test_undo_to_an_explicit_revision() -> None:
    body, replica_sets = three_revisions()
    outcome = plan("undo", body, {"toRevision": 1}, replica_sets=replica_sets)
    assert outcome.summary == "undo to revision 1"
    assert outcome.patches[0].body["metadata"] == {"resourceVersion": "100"}
    assert undone(body, outcome) == hash_of("app:1")


def test_undo_replaces_the_template_exactly() -> None:
    body, replica_sets = three_revisions()
    template = body["spec"]["template"]
    template["metadata"]["annotations"] = {"team": "shop"}
    template["spec"]["containers"].append({"name": "sidecar", "image": "proxy:1"})
    template["spec"]["nodeSelector"] = {"disk": "ssd"}
    outcome = plan("undo", body, {"toRevision": 1}, replica_sets=replica_sets)
    assert undone(body, outcome) == hash_of("app:1")


def test_undo_drops_nulls_that_a_merge_patch_cannot_carry() -> None:
    body, replica_sets = three_revisions()
    replica_sets[0]["spec"]["template"]["metadata"]["creationTimestamp"] = None
    outcome = plan("undo", body, {"toRevision": 1}, replica_sets=replica_sets)
    assert undone(body, outcome) == hash_of("app:1")


def defaulted(template: dict[str, Any]) -> dict[str, Any]:
    """What the API server stores in a ReplicaSet for a pod template."""
    stored = copy.deepcopy(template)
    stored["metadata"]["creationTimestamp"] = None
    stored["spec"] |= {"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "terminationGracePeriodSeconds": 30}
    for container in stored["spec"]["containers"]:
        container |= {"imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/termination-log"}
    return stored


def test_undo_takes_the_template_as_applied_from_the_replica_set_annotation() -> None:
    body, replica_sets = three_revisions()
    for rs in replica_sets:
        template = rs["spec"]["template"]
        applied = copy.deepcopy(template)
        del applied["metadata"]["labels"][HASH_LABEL]
        rs["metadata"]["annotations"][TEMPLATE_ANNOTATION] = json.dumps(applied)
        rs["spec"]["template"] = defaulted(template)
    assert undone(body, plan("undo", body, {"toRevision": 1}, replica_sets=replica_sets)) == hash_of("app:1")


def test_undo_ignores_a_template_annotation_of_another_revision() -> None:
    body, replica_sets = three_revisions()
    replica_sets[0]["metadata"]["annotations"][TEMPLATE_ANNOTATION] = json.dumps(pod_template("app:2"))
    assert undone(body, plan("undo", body, {"toRevision": 1}, replica_sets=replica_sets)) == hash_of("app:1")


def test_undo_mid_rollout_is_a_fast_rollback_to_stable() -> None:
    cluster = versioned(canary_at_weight_50())
    [outcome] = operate(cluster, "undo")
    assert outcome.summary == "undo to revision 1"
    assert template_hash(cluster.spec["template"]) == hash_of("app:1")
    rollback = cluster.reconcile()
    assert rollback.summary == "FastRollback"
    assert cluster.weight == 0


def test_undo_of_a_template_without_replica_set_goes_to_the_newest_kept_revision() -> None:
    body, replica_sets = three_revisions()
    body["spec"]["template"] = pod_template("app:4")
    assert undone(body, plan("undo", body, replica_sets=replica_sets)) == hash_of("app:3")


def test_undo_to_the_current_revision_writes_nothing() -> None:
    body, replica_sets = three_revisions()
    assert plan("undo", body, {"toRevision": 3}, replica_sets=replica_sets) == Outcome((), "undo to revision 3")


def test_undo_to_a_revision_not_kept_is_409_listing_the_kept_ones() -> None:
    body, replica_sets = three_revisions()
    error = refused("undo", body, {"toRevision": 7}, replica_sets=replica_sets)
    assert error.code == 409
    assert error.message == f"cannot undo {NAME} to revision 7: it is not kept (kept revisions: 1, 2, 3)"


def test_undo_without_an_earlier_revision_is_409() -> None:
    body, replica_sets = three_revisions(current="app:1")
    error = refused("undo", body, replica_sets=replica_sets[:1])
    assert error.code == 409 and "no earlier revision" in error.message
    assert refused("undo", healthy().body).code == 409


@pytest.mark.parametrize("revision", [0, -1, True, "2", 1.5])
def test_undo_refuses_a_revision_that_is_not_a_positive_integer(revision: Any) -> None:
    body, replica_sets = three_revisions()
    assert refused("undo", body, {"toRevision": revision}, replica_sets=replica_sets).code == 400


# -- image -----------------------------------------------------------------------------------------------------------


def two_containers() -> dict[str, Any]:
    body = healthy().body
    pod = body["spec"]["template"]["spec"]
    pod["containers"].append({"name": "proxy", "image": "proxy:1", "ports": [{"containerPort": 15001}]})
    pod["initContainers"] = [{"name": "migrate", "image": "migrate:1"}]
    return body


def test_image_sets_one_container_and_sends_the_whole_list() -> None:
    body = two_containers()
    outcome = plan("image", body, {"container": "proxy", "image": "proxy:2"})
    containers = [{**body["spec"]["template"]["spec"]["containers"][0]},
                  {"name": "proxy", "image": "proxy:2", "ports": [{"containerPort": 15001}]}]
    assert outcome == Outcome((spec_patch({"template": {"spec": {"containers": containers}}}),), "image proxy=proxy:2")


def test_image_of_an_init_container() -> None:
    outcome = plan("image", two_containers(), {"container": "migrate", "image": "migrate:2"})
    assert outcome.patches[0].body["spec"]["template"]["spec"] == {
        "initContainers": [{"name": "migrate", "image": "migrate:2"}]}


def test_new_image_starts_a_canary_of_that_image() -> None:
    cluster = healthy()
    operate(cluster, "image", {"container": "app", "image": "app:2"})
    assert CreateReplicaSet(hash_of("app:2"), 2, 1) in cluster.reconcile().actions


def test_same_image_writes_nothing() -> None:
    assert plan("image", healthy().body, {"container": "app", "image": "app:1"}) == Outcome((), "image app=app:1")


def test_unknown_container_is_400_naming_the_known_ones() -> None:
    error = refused("image", two_containers(), {"container": "web", "image": "web:2"})
    assert (error.code, error.message) == (400, f"{NAME} has no container 'web' (its containers: app, proxy, migrate)")


@pytest.mark.parametrize("image", ["", "app 2", "app:2\n", "\tapp:2"])
def test_image_that_is_empty_or_has_whitespace_is_400(image: str) -> None:
    assert refused("image", healthy().body, {"container": "app", "image": image}).code == 400


@pytest.mark.parametrize("params", [{}, {"container": "app"}, {"image": "app:2"}, {"container": None, "image": "x"}])
def test_image_needs_container_and_image(params: dict[str, Any]) -> None:
    error = refused("image", healthy().body, params)
    assert error.code == 400 and "required" in error.message


# -- bodies ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", OPERATIONS)
def test_unknown_fields_are_400_naming_them(op: str) -> None:
    error = refused(op, at_indefinite_pause().body, {"force": True, "reason": "x"})
    assert error.code == 400
    assert "unknown fields" in error.message and "force, reason" in error.message


@pytest.mark.parametrize(("op", "params"), [
    ("promote", {"full": "yes"}), ("promote", {"full": 1}), ("undo", {"toRevision": "2"}),
    ("image", {"container": 1, "image": "app:2"}), ("image", {"container": "app", "image": ["app:2"]}),
])
def test_fields_of_the_wrong_type_are_400(op: str, params: dict[str, Any]) -> None:
    error = refused(op, at_indefinite_pause().body, params)
    assert error.code == 400 and "must be" in error.message


def test_null_counts_as_an_absent_optional_field() -> None:
    assert plan("promote", at_indefinite_pause().body, {"full": None}).summary == "promote"


def test_unknown_operation_is_400() -> None:
    assert refused("scale", healthy().body).code == 400


def test_a_rollout_with_an_invalid_spec_can_still_be_paused() -> None:
    body = rollout_body()
    del body["spec"]["strategy"]
    body["metadata"]["resourceVersion"] = "7"
    assert plan("pause", body).patches == (spec_patch({"paused": True}, version="7"),)


def test_every_patch_carries_the_resource_version_it_was_decided_on() -> None:
    body, replica_sets = three_revisions()
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("pause", healthy().body, {}), ("resume", at_indefinite_pause().body, {}),
        ("promote", at_indefinite_pause().body, {}), ("promote", at_indefinite_pause().body, {"full": True}),
        ("abort", at_indefinite_pause().body, {}), ("retry", aborted().body, {}), ("restart", healthy().body, {}),
        ("undo", body, {}), ("image", healthy().body, {"container": "app", "image": "app:9"}),
    ]
    for op, rollout, params in cases:
        rollout["metadata"]["resourceVersion"] = "4242"
        patches = plan(op, rollout, params, replica_sets=replica_sets).patches
        assert patches, op
        assert all(p.body["metadata"] == {"resourceVersion": "4242"} for p in patches), op
    assert len(STEPS) == 4  # the states above are built on the planner tests' steps


@pytest.mark.parametrize(("op", "params"), [("abort", {}), ("promote", {"full": True})])
def test_abort_and_promote_wait_until_the_controller_has_picked_up_a_new_template(op: str,
                                                                                 params: dict[str, Any]) -> None:
    """The planner drops abort and promoteFull on a revision it has not started: 409, not a 200 that does nothing."""
    body = rollout_body()
    body["metadata"]["resourceVersion"] = "7"
    body["status"] = {"stableHash": "aaaaaaaaaa", "canaryHash": "bbbbbbbbbb", "phase": "Paused"}
    with pytest.raises(OperationError) as refused:
        plan_operation(op, body, params, now=NOW)
    assert refused.value.code == 409 and "not picked up" in refused.value.message
