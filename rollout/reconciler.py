"""One reconcile of one Rollout: observe, decide (strategies.canary.plan or strategies.bluegreen.plan), apply, write
status once, report.

Level-triggered: each call reads the Rollout from the informer's store and the cluster state around it
(rollout/observing.py) and converges toward the spec; nothing needed to continue lives only in memory. Every action
is reported (Event + log line) as soon as it is applied; the status, and the Rollout-level events (steps, pauses,
aborts), follow in one patch with a resourceVersion precondition.

What can go wrong, and where the user sees it:
- a spec that cannot be acted on: the InvalidSpec condition (message naming the object), retried with backoff;
- an API failure (forbidden, invalid, server errors past the client's retries): the ReconcileError condition and
  a ReconcileFailed Event, retried with backoff; cleared by the next successful reconcile;
- the Rollout changed while we decided (409 on the status patch): decided again at once from the fresh copy.
None of it escapes in a way that disturbs other Rollouts: the work queue isolates keys.

Given a `Metrics` (rollout/metrics.py), each reconcile's duration and outcome, and the API errors it met, are counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollout.applying import Applier, status_patch
from rollout.kube import ROLLOUTS, ApiError, Body, Conflict, KubeClient, label_selector_string
from rollout.metrics import Metrics
from rollout.observing import observe
from rollout.queueing import ObjectKey
from rollout.reporting import Reporter
from rollout.routers import RouterError, RouterTarget, TrafficRouter, make_router
from rollout.watching import Store
from strategies.bluegreen import plan as plan_bluegreen
from strategies.canary import plan
from strategies.common import invalid
from strategies.decision import Decision, Event, condition
from strategies.model import Rollout, SpecError, parse_rollout, parse_status
from strategies.policy import Mode

log = logging.getLogger(__name__)

MAX_NAME = 52  # ReplicaSet names are <rollout>-<10 hex>; pod names add 6 more and labels allow 63
ERROR_CONDITION = "ReconcileError"


@dataclass(frozen=True)
class Backoff:
    """Returned for a Rollout that cannot progress (its reason is in its status): retry with growing delays."""

    reason: str


Outcome = float | None | Backoff


class StatusConflict(Exception):
    """The status patch lost a race with another writer: decide again from the fresh copy (now in the store)."""


class Reconciler:
    def __init__(self, client: KubeClient, *, rollouts: Store, replica_sets: Store, analysis_runs: Store,
                 reporter: Reporter, resync: float, record_run: Callable[[Body], None] | None = None,
                 metrics: Metrics | None = None, budgets: Store | None = None,
                 policy: Mapping[str, Mode] | None = None) -> None:
        self._client = client
        self._budgets = budgets if budgets is not None else Store()
        self._policy = dict(policy or {})
        self._metrics = metrics
        self._rollouts = rollouts
        self._replica_sets = replica_sets
        self._analysis_runs = analysis_runs
        self._record_run = record_run
        self._reporter = reporter
        self._resync = resync

    async def reconcile(self, key: ObjectKey) -> Outcome:
        started = time.monotonic()
        try:
            outcome = await self._reconcile_key(key)
        except Exception:
            self._observe(started, "error")
            raise
        self._observe(started, "backoff" if isinstance(outcome, Backoff) else "ok" if outcome is None else "requeue")
        return outcome

    def _observe(self, started: float, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.observe_reconcile(time.monotonic() - started, outcome)

    async def _reconcile_key(self, key: ObjectKey) -> Outcome:
        body = self._rollouts.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None  # deleted: ReplicaSets go with it through their ownerReferences
        try:
            return await self._reconcile(key, body)
        except StatusConflict:
            self._count_kube_error("Conflict")
            return 0.0
        except ApiError as exc:
            self._count_kube_error(exc.reason or f"HTTP{exc.status}")
            await self._record_failure(key, body, exc)
            if exc.temporary:
                raise  # the work queue retries with its backoff and logs a warning
            return Backoff(str(exc))

    def _count_kube_error(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.count_kube_error(reason)

    async def _reconcile(self, key: ObjectKey, body: Body) -> Outcome:
        now = datetime.now(UTC)
        try:
            rollout = parse_rollout(body)
            if len(rollout.name) > MAX_NAME:
                raise SpecError(f"metadata.name: at most {MAX_NAME} characters (ReplicaSet and pod names derive "
                                "from it)")
            router = self._router(rollout, body)
            observed = await observe(self._client, rollout=rollout, body=body, router=router,
                                     replica_sets=self._replica_sets, analysis_runs=self._analysis_runs, now=now,
                                     resync=self._resync, budgets=self._budgets, policy=self._policy)
        except (SpecError, RouterError) as exc:
            decision = invalid(parse_status(body.get("status")), generation=body["metadata"].get("generation", 0),
                               message=str(exc), now=now)
            await self._finish(body, decision, context={"rollout": str(key), "decision": decision.summary})
            return Backoff(str(exc))
        decision = plan_bluegreen(rollout, observed) if rollout.spec.blue_green else plan(rollout, observed)
        context = {
            "rollout": str(key), "revision": rollout.spec.template_hash,
            "step": decision.status.get("stepDisplay", ""), "weight": decision.status.get("canaryWeight", 0),
            "decision": decision.summary,
        }
        applier = Applier(self._client, rollout=body, router=router, replica_sets=self._replica_sets,
                          analysis_runs=self._analysis_runs, budgets=self._budgets, record_run=self._record_run)
        for action in decision.actions:
            await applier.apply(action)
            reason, message = action.describe()
            await self._reporter.emit(body, (Event(reason, message),), context=context)
        await self._finish(body, decision, context=context)
        return decision.requeue_after

    def _router(self, rollout: Rollout, body: Body) -> TrafficRouter | None:
        if rollout.spec.blue_green is not None:
            return None  # blue-green moves traffic by switching Services
        canary = rollout.spec.canary
        target = RouterTarget(rollout=body, namespace=rollout.namespace, config=canary.traffic_routing.config,
                              stable_service=canary.stable_service, canary_service=canary.canary_service)
        return make_router(canary.traffic_routing.router, self._client, target)

    async def _finish(self, body: Body, decision: Decision, *, context: dict[str, Any]) -> None:
        wanted = dict(decision.status)
        selector = body["spec"].get("selector") or {}
        wanted["selector"] = label_selector_string(
            {**(selector.get("matchLabels") or {})}, selector.get("matchExpressions") or ()
        )
        _resolve_error_condition(body, wanted)
        patch = status_patch(body.get("status"), wanted)
        if patch:
            body = await self._patch_status(body, patch)
        if decision.events:
            await self._reporter.emit(body, decision.events, context=context)

    async def _patch_status(self, body: Body, patch: Body) -> Body:
        meta = body["metadata"]
        try:
            updated = await self._client.patch(
                ROLLOUTS, name=meta["name"], namespace=meta["namespace"], subresource="status",
                patch={"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch},
            )
        except Conflict as exc:
            # Someone (a user's abort or resume, an HPA) changed the Rollout since we read it: take the fresh copy
            # and decide again; the actions already applied are idempotent and will not be planned twice.
            self._rollouts.put(await self._client.get(ROLLOUTS, name=meta["name"], namespace=meta["namespace"]))
            raise StatusConflict(str(exc)) from exc
        self._rollouts.put(updated)
        return updated

    async def _record_failure(self, key: ObjectKey, body: Body, exc: ApiError) -> None:
        """Best effort: the ReconcileError condition, and an Event when it is new. Never raises."""
        if exc.status == 0:
            return  # the API server is unreachable: writing about it would only spend more retries
        message = f"{exc.reason or 'Error'} ({exc.status or 'no response'}): {exc.message}"
        status = parse_status(body.get("status"))
        before = status.condition(ERROR_CONDITION)
        if before is not None and before.status == "True" and before.message == message:
            return
        context = {"rollout": str(key), "decision": "Error"}
        await self._reporter.emit(body, (Event("ReconcileFailed", message, warning=True),), context=context)
        now = datetime.now(UTC)
        conditions = [c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] != ERROR_CONDITION]
        conditions.append(condition(status.conditions, type_=ERROR_CONDITION, status=True,
                                    reason=exc.reason or "ApiError", message=message, now=now))
        try:
            await self._patch_status(body, {"conditions": conditions})
        except (ApiError, StatusConflict) as failure:
            log.warning("could not record the failure in the status of %s: %s", key, failure)


def _resolve_error_condition(body: Body, wanted: dict[str, Any]) -> None:
    """A successful reconcile flips an earlier ReconcileError condition to False (kept, with its transition time)."""
    before = parse_status(body.get("status")).condition(ERROR_CONDITION)
    if before is None or "conditions" not in wanted:
        return
    resolved = condition((before,), type_=ERROR_CONDITION, status=False, reason="Reconciled", message="",
                         now=datetime.now(UTC))
    wanted["conditions"] = [*(c for c in wanted["conditions"] if c["type"] != ERROR_CONDITION), resolved]
