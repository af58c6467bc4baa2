"""Reads what the planner decides on: the Rollout's ReplicaSets (from the informer's store, by owner), its two
Services and its traffic router (one GET each), the PodDisruptionBudgets around its pods (from their informer's
store) and the cluster's guardrail modes, as a plain `Observed` snapshot. Which revision each side selects comes
from the Services' selectors, or from the router when its subsets choose the pods (Istio DestinationRule).

Problems the user has to fix (a Service or VirtualService missing, selectors that select other pods) come out as one
`SpecError` listing all of them in a fixed order, so fixing one does not reveal the next. API failures (403, 5xx)
come out as `ApiError` for the reconciler to report.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, cast

from rollout.kube import SERVICES, Body, KubeClient, NotFound
from rollout.queueing import ObjectKey
from rollout.routers import RouterError, SubsetRouter, TrafficRouter
from rollout.watching import Store
from strategies.guardrails import SPREAD_ANNOTATION
from strategies.model import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    SCALE_DOWN_ANNOTATION,
    STEP_LABEL,
    WALK_LABEL,
    AnalysisRunState,
    BudgetState,
    Observed,
    ReplicaSetState,
    Rollout,
    SpecError,
    parse_slot,
    parse_time,
)
from strategies.policy import Mode, selector_matches


async def observe(client: KubeClient, *, rollout: Rollout, body: Body, router: TrafficRouter | None,
                  replica_sets: Store, analysis_runs: Store, now: datetime, resync: float,
                  budgets: Store | None = None, policy: Mapping[str, Mode] | None = None) -> Observed:
    """`router` is None for blue-green, whose two sides are the active and preview Services alone. `budgets` holds
    the PodDisruptionBudgets (filed by `budget_index`); `policy` is the cluster's guardrail modes."""
    budget, covered, conflict = _budgets(budgets or Store(), rollout, body)
    stable_name, canary_name = rollout.spec.services
    results = await asyncio.gather(
        _service(client, rollout, stable_name), _service(client, rollout, canary_name),
        router.verify() if router is not None else _nothing(), return_exceptions=True,
    )
    problems = [str(r) for r in results if isinstance(r, SpecError | RouterError)]
    if problems:
        raise SpecError("; ".join(problems))
    for result in results:
        if isinstance(result, BaseException):
            raise result
    stable_svc, canary_svc = cast(Body | None, results[0]), cast(Body | None, results[1])
    if isinstance(router, SubsetRouter):
        # The subsets choose the pods that get each side's traffic: they are what the planner moves.
        stable_hash, canary_hash = router.selected_hash("stable"), router.selected_hash("canary")
    else:
        stable_hash, canary_hash = _selected_hash(stable_svc), _selected_hash(canary_svc)
    return Observed(
        now=now,
        replica_sets=owned_replica_sets(replica_sets, body),
        stable_service_hash=stable_hash,
        canary_service_hash=canary_hash,
        canary_weight=await router.current_weight() if router is not None else 0,
        resync=resync,
        analysis_runs=owned_analysis_runs(analysis_runs, body),
        policy_defaults=dict(policy or {}),
        budget_covered=covered,
        budget=budget,
        budget_conflict=conflict,
    )


def budget_index(obj: Body) -> list[ObjectKey]:
    """PodDisruptionBudgets filed under their namespace (name ""): what may cover a Rollout's pods."""
    return [ObjectKey(str((obj.get("metadata") or {}).get("namespace") or ""), "")]


def _budgets(store: Store, rollout: Rollout, body: Body) -> tuple[BudgetState | None, bool, str | None]:
    """sluice's budget for this Rollout (named like it, controlled by it), whether another budget selects the pods,
    and why sluice cannot keep its own: a namesake it does not control, when spec.disruptionBudget asks for one, is
    the user's to sort out (reported; the rest of the Rollout goes on)."""
    uid = body["metadata"].get("uid")
    labels = (rollout.spec.template.get("metadata") or {}).get("labels") or {}
    ours, covered, conflict = None, False, None
    for pdb in store.by_index(ObjectKey(rollout.namespace, "")):
        meta, spec = pdb["metadata"], pdb.get("spec") or {}
        controlled = any(o.get("uid") == uid and o.get("controller") for o in meta.get("ownerReferences") or [])
        if controlled and meta.get("name") == rollout.name:
            selector = spec.get("selector") or {}
            ours = BudgetState(name=rollout.name, min_available=spec.get("minAvailable"),
                               match_labels=dict(selector.get("matchLabels") or {}),
                               match_expressions=tuple(selector.get("matchExpressions") or ()))
            continue
        if meta.get("name") == rollout.name and rollout.spec.guardrails.budget is not None:
            conflict = (f"spec.disruptionBudget not applied: PodDisruptionBudget {rollout.namespace}/{rollout.name} "
                        "exists and is not controlled by this Rollout; delete or rename it so sluice can keep its own")
        if not controlled and selector_matches(spec.get("selector"), labels):
            covered = True
    return ours, covered, conflict


async def _nothing() -> None:
    return None


def _selected_hash(service: Body | None) -> str | None:
    if service is None:
        return None
    value = ((service.get("spec") or {}).get("selector") or {}).get(HASH_LABEL)
    return str(value) if value is not None else None


async def _service(client: KubeClient, rollout: Rollout, name: str | None) -> Body | None:
    if name is None:
        return None
    try:
        service = await client.get(SERVICES, name=name, namespace=rollout.namespace)
    except NotFound as exc:
        raise SpecError(f"Service {rollout.namespace}/{name} not found") from exc
    selector = {k: v for k, v in ((service.get("spec") or {}).get("selector") or {}).items() if k != HASH_LABEL}
    labels = (rollout.spec.template.get("metadata") or {}).get("labels") or {}
    if not selector:
        raise SpecError(f"Service {rollout.namespace}/{name} has no selector; it needs one matching the pods")
    mismatched = {k: v for k, v in selector.items() if labels.get(k) != v}
    if mismatched:
        raise SpecError(f"Service {rollout.namespace}/{name} selects {mismatched}, which the pod template's "
                        "labels do not have")
    return service


def owned_replica_sets(store: Store, rollout: Body) -> tuple[ReplicaSetState, ...]:
    """The ReplicaSets this Rollout (this uid: not a deleted namesake) controls, oldest revision first."""
    meta = rollout["metadata"]
    owned: list[ReplicaSetState] = []
    for rs in store.by_index(ObjectKey(meta["namespace"], meta["name"])):
        rs_meta = rs["metadata"]
        controlled = any(o.get("uid") == meta.get("uid") and o.get("controller")
                         for o in rs_meta.get("ownerReferences") or [])
        hash_ = (rs_meta.get("labels") or {}).get(HASH_LABEL)
        if rs_meta.get("deletionTimestamp") or not controlled or not hash_:
            continue
        annotations = rs_meta.get("annotations") or {}
        status = rs.get("status") or {}
        owned.append(ReplicaSetState(
            name=rs_meta["name"], hash=hash_,
            revision=_int(annotations.get(REVISION_ANNOTATION)),
            replicas=_int((rs.get("spec") or {}).get("replicas")),
            ready=_int(status.get("readyReplicas")),
            available=_int(status.get("availableReplicas")),
            scale_down_at=parse_time(annotations.get(SCALE_DOWN_ANNOTATION)),
            spread=annotations.get(SPREAD_ANNOTATION) or None,
        ))
    return tuple(sorted(owned, key=lambda rs: rs.revision))


def owned_analysis_runs(store: Store, rollout: Body) -> tuple[AnalysisRunState, ...]:
    """The AnalysisRuns this Rollout (this uid) controls."""
    meta = rollout["metadata"]
    runs: list[AnalysisRunState] = []
    for run in store.by_index(ObjectKey(meta["namespace"], meta["name"])):
        run_meta = run["metadata"]
        if run_meta.get("deletionTimestamp") or not any(
                o.get("uid") == meta.get("uid") and o.get("controller") for o in run_meta.get("ownerReferences") or []):
            continue
        labels = run_meta.get("labels") or {}
        status = run.get("status") or {}
        runs.append(AnalysisRunState(
            name=run_meta["name"], hash=str(labels.get(HASH_LABEL, "")), walk=_int(labels.get(WALK_LABEL)),
            step=parse_slot(labels.get(STEP_LABEL)), phase=str(status.get("phase") or "Pending"),
            message=str(status.get("message", "")), terminating=bool((run.get("spec") or {}).get("terminate")),
            created=parse_time(run_meta.get("creationTimestamp")) or datetime.min.replace(tzinfo=UTC),
        ))
    return tuple(sorted(runs, key=lambda r: (r.walk, r.created, r.name)))


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
