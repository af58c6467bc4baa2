"""One reconcile of one Rollout: observe, decide (strategies.canary.plan), apply, write status once, report.

Level-triggered: each call reads the Rollout from the informer's store and the current state of its ReplicaSets
(store, indexed by owner), Services and traffic router (one GET each), and converges toward the spec. Nothing needed
to continue lives only in memory. A spec that cannot be acted on gets the InvalidSpec condition and is retried with
backoff; it never raises out of here in a way that disturbs other Rollouts (the work queue isolates keys).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from rollout.applying import Applier, status_patch
from rollout.kube import (
    ROLLOUTS,
    SERVICES,
    ApiError,
    Body,
    Conflict,
    KubeClient,
    NotFound,
    label_selector_string,
)
from rollout.queueing import ObjectKey
from rollout.reporting import Reporter
from rollout.routers import UNKNOWN_WEIGHT, RouterError, TrafficRouter, make_router
from rollout.watching import Store
from strategies.canary import invalid, plan
from strategies.decision import Decision, Event
from strategies.model import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    SCALE_DOWN_ANNOTATION,
    Observed,
    ReplicaSetState,
    Rollout,
    SpecError,
    parse_rollout,
    parse_status,
    parse_time,
)

log = logging.getLogger(__name__)

MAX_NAME = 52  # ReplicaSet names are <rollout>-<10 hex>; pod names add 6 more and labels allow 63


@dataclass(frozen=True)
class Backoff:
    """Returned for a Rollout that cannot progress (invalid spec): retry later with growing delays."""

    reason: str


Outcome = float | None | Backoff


class Reconciler:
    def __init__(self, client: KubeClient, *, rollouts: Store, replica_sets: Store, reporter: Reporter,
                 resync: float) -> None:
        self._client = client
        self._rollouts = rollouts
        self._replica_sets = replica_sets
        self._reporter = reporter
        self._resync = resync

    async def reconcile(self, key: ObjectKey) -> Outcome:
        body = self._rollouts.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # deleted: ReplicaSets go with it through their ownerReferences
        now = datetime.now(UTC)
        try:
            rollout = parse_rollout(body)
            if len(rollout.name) > MAX_NAME:
                raise SpecError(f"metadata.name: at most {MAX_NAME} characters (ReplicaSet and pod names derive "
                                "from it)")
            router = self._router(rollout)
            observed = await self._observe(rollout, body, router, now)
        except (SpecError, RouterError) as exc:
            decision = invalid(parse_status(body.get("status")), generation=body["metadata"].get("generation", 0),
                               message=str(exc), now=now)
            await self._finish(body, decision, context={"rollout": str(key), "decision": decision.summary})
            return Backoff(str(exc))
        try:
            return await self._act(key, body, rollout, router, observed)
        except Conflict:
            return 0.0  # the Rollout changed under us; the fresh copy is in the store: decide again
        except ApiError as exc:
            if exc.temporary:
                raise  # the work queue retries with backoff
            # Permanent (forbidden, invalid): tell the user where they look, then back off; nothing was recorded as
            # done, so the next attempt repeats the same idempotent actions.
            event = Event("ReconcileFailed", f"could not apply the rollout's next step: {exc}", warning=True)
            await self._reporter.emit(body, (event,), context={"rollout": str(key), "decision": "Error"})
            return Backoff(str(exc))

    async def _act(self, key: ObjectKey, body: Body, rollout: Rollout, router: TrafficRouter,
                   observed: Observed) -> float | None:
        decision = plan(rollout, observed)
        context = {
            "rollout": str(key), "revision": rollout.spec.template_hash,
            "step": decision.status.get("stepDisplay", ""), "weight": decision.status.get("canaryWeight", 0),
            "decision": decision.summary,
        }
        applier = Applier(self._client, rollout=body, router=router, replica_sets=self._replica_sets)
        for action in decision.actions:
            await applier.apply(action)
        drift = _drift_event(observed, decision)
        if drift:
            decision = Decision(summary=decision.summary, actions=decision.actions, status=decision.status,
                                events=(drift, *decision.events), requeue_after=decision.requeue_after)
        await self._finish(body, decision, context=context)
        return decision.requeue_after

    def _router(self, rollout: Rollout) -> TrafficRouter:
        canary = rollout.spec.canary
        return make_router(canary.traffic_routing.router, self._client, namespace=rollout.namespace,
                           config=canary.traffic_routing.config, stable_service=canary.stable_service,
                           canary_service=canary.canary_service)

    async def _observe(self, rollout: Rollout, body: Body, router: TrafficRouter, now: datetime) -> Observed:
        canary = rollout.spec.canary
        results = await asyncio.gather(
            self._service(rollout, canary.stable_service), self._service(rollout, canary.canary_service),
            router.verify(), return_exceptions=True,
        )
        problems = [str(r) for r in results if isinstance(r, SpecError | RouterError)]
        if problems:
            # All of them, in a stable order: the user fixes everything in one go.
            raise SpecError("; ".join(problems))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        stable_svc, canary_svc = cast(Body, results[0]), cast(Body, results[1])
        return Observed(
            now=now,
            replica_sets=self._owned_replica_sets(body),
            stable_service_hash=(stable_svc.get("spec", {}).get("selector") or {}).get(HASH_LABEL),
            canary_service_hash=(canary_svc.get("spec", {}).get("selector") or {}).get(HASH_LABEL),
            canary_weight=await router.current_weight(),
            resync=self._resync,
        )

    async def _service(self, rollout: Rollout, name: str) -> Body:
        try:
            service = await self._client.get(SERVICES, name=name, namespace=rollout.namespace)
        except NotFound as exc:
            raise SpecError(f"Service {rollout.namespace}/{name} not found") from exc
        selector = {k: v for k, v in ((service.get("spec") or {}).get("selector") or {}).items() if k != HASH_LABEL}
        labels = (rollout.spec.template.get("metadata") or {}).get("labels") or {}
        if not selector:
            raise SpecError(f"Service {rollout.namespace}/{name} has no selector; it needs one matching the pods")
        mismatched = {k: v for k, v in selector.items() if labels.get(k) != v}
        if mismatched:
            raise SpecError(f"Service {rollout.namespace}/{name} selects {mismatched}, which the pod template's "
                            f"labels do not have")
        return service

    def _owned_replica_sets(self, body: Body) -> tuple[ReplicaSetState, ...]:
        meta = body["metadata"]
        uid = meta.get("uid")
        owned: list[ReplicaSetState] = []
        for rs in self._replica_sets.by_index(ObjectKey(meta["namespace"], meta["name"])):
            rs_meta = rs["metadata"]
            if rs_meta.get("deletionTimestamp"):
                continue
            if not any(o.get("uid") == uid and o.get("controller") for o in rs_meta.get("ownerReferences") or []):
                continue
            hash_ = (rs_meta.get("labels") or {}).get(HASH_LABEL)
            if not hash_:
                continue
            annotations = rs_meta.get("annotations") or {}
            status = rs.get("status") or {}
            owned.append(ReplicaSetState(
                name=rs_meta["name"], hash=hash_,
                revision=_int(annotations.get(REVISION_ANNOTATION)),
                replicas=int((rs.get("spec") or {}).get("replicas", 0) or 0),
                ready=int(status.get("readyReplicas", 0) or 0),
                available=int(status.get("availableReplicas", 0) or 0),
                scale_down_at=parse_time(annotations.get(SCALE_DOWN_ANNOTATION)),
            ))
        return tuple(sorted(owned, key=lambda rs: rs.revision))

    async def _finish(self, body: Body, decision: Decision, *, context: dict[str, Any]) -> None:
        wanted = dict(decision.status)
        selector = body["spec"].get("selector") or {}
        wanted["selector"] = label_selector_string(
            {**(selector.get("matchLabels") or {})}, selector.get("matchExpressions") or ()
        )
        patch = status_patch(body.get("status"), wanted)
        if patch:
            meta = body["metadata"]
            try:
                updated = await self._client.patch(
                    ROLLOUTS, name=meta["name"], namespace=meta["namespace"], subresource="status",
                    patch={"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch},
                )
            except Conflict:
                # Someone (a user's abort or resume, or our own earlier write) changed the Rollout since we read
                # it: take the fresh copy and decide again; the actions we applied are idempotent.
                fresh = await self._client.get(ROLLOUTS, name=meta["name"], namespace=meta["namespace"])
                self._rollouts.put(fresh)
                raise
            self._rollouts.put(updated)
            body = updated
        if decision.events:
            await self._reporter.emit(body, decision.events, context=context)
        elif decision.actions or patch:
            log.debug("reconciled", extra=context)


def _drift_event(observed: Observed, decision: Decision) -> Event | None:
    if observed.canary_weight != UNKNOWN_WEIGHT:
        return None
    return Event("TrafficWeightDrift", "the traffic router's weights were changed outside sluice (routes disagree "
                 f"or do not add up to 100); re-applied canary weight {decision.status.get('canaryWeight', 0)}",
                 warning=True)


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
