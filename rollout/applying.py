"""Applies a planner's actions to the cluster, one at a time, in the order the planner gave.

Each action is idempotent (creating a ReplicaSet that exists is fine, scaling to the current size is a no-op), so a
controller killed between two actions simply applies the rest on its next reconcile. Objects returned by our writes
go straight into the informer's store, so the next reconcile sees them even before the watch event arrives.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any

from analysis.spec import NamedTemplate, build_run_spec, rollout_arg_values
from rollout.kube import (
    ANALYSISRUNS,
    ANALYSISTEMPLATES,
    CLUSTERANALYSISTEMPLATES,
    PODDISRUPTIONBUDGETS,
    REPLICASETS,
    SERVICES,
    ApiError,
    Body,
    Conflict,
    KubeClient,
    NotFound,
    owner_reference,
)
from rollout.queueing import ObjectKey
from rollout.routers import SubsetRouter, TrafficRouter
from rollout.watching import Store
from strategies.decision import (
    Action,
    ApplyDisruptionBudget,
    CreateAnalysisRun,
    CreateReplicaSet,
    DeleteAnalysisRun,
    DeleteDisruptionBudget,
    DeleteReplicaSet,
    MarkScaleDown,
    ScaleReplicaSet,
    SetBackend,
    SetRevision,
    SetSpread,
    SetWeight,
    TerminateAnalysisRun,
)
from strategies.guardrails import SPREAD_ANNOTATION, spread_term, with_spread
from strategies.model import (
    HASH_LABEL,
    REVISION_ANNOTATION,
    ROLLOUT_LABEL,
    SCALE_DOWN_ANNOTATION,
    STEP_LABEL,
    WALK_LABEL,
    SpecError,
    describe_slot,
    format_time,
)
from strategies.operations import TEMPLATE_ANNOTATION


def replica_set_name(rollout_name: str, hash_: str) -> str:
    return f"{rollout_name}-{hash_}"


class Applier:
    def __init__(self, client: KubeClient, *, rollout: Body, router: TrafficRouter | None, replica_sets: Store,
                 analysis_runs: Store, budgets: Store | None = None,
                 record_run: Callable[[Body], None] | None = None) -> None:
        self._client = client
        self._budgets = budgets if budgets is not None else Store()
        self._rollout = rollout
        self._router = router
        self._replica_sets = replica_sets
        self._analysis_runs = analysis_runs
        # A run we wrote goes to its informer (Informer.record): into the store and reported like any change.
        self._record_run = record_run or analysis_runs.put
        self._namespace = str(rollout["metadata"]["namespace"])
        self._handlers: dict[type[Any], Callable[[Any], Awaitable[None]]] = {
            CreateReplicaSet: self._create,
            ScaleReplicaSet: self._scale,
            SetRevision: self._set_revision,
            MarkScaleDown: self._mark_scale_down,
            DeleteReplicaSet: self._delete,
            SetBackend: self._set_backend,
            SetWeight: self._set_weight,
            CreateAnalysisRun: self._create_run,
            TerminateAnalysisRun: self._terminate_run,
            DeleteAnalysisRun: self._delete_run,
            ApplyDisruptionBudget: self._apply_budget,
            DeleteDisruptionBudget: self._delete_budget,
            SetSpread: self._set_spread,
        }

    async def apply(self, action: Action) -> None:
        await self._handlers[type(action)](action)

    async def _create(self, action: CreateReplicaSet) -> None:
        body = self._replica_set_body(action)
        try:
            created = await self._client.create(REPLICASETS, body, namespace=self._namespace)
        except Conflict:
            # Already there: ours if our cache was behind, else a namesake we must not take over (a Rollout deleted
            # with --cascade=orphan and applied again). That is for a human to sort out: a permanent error.
            name = body["metadata"]["name"]
            created = await self._client.get(REPLICASETS, name=name, namespace=self._namespace)
            owners = created["metadata"].get("ownerReferences") or []
            if not any(o.get("uid") == self._rollout["metadata"]["uid"] for o in owners):
                raise ApiError(status=409, reason="AlreadyExists", message=(
                    f"ReplicaSet {self._namespace}/{name} exists and is not controlled by this Rollout; delete it "
                    "(or adopt its pods under another name) so sluice can create its own")) from None
        self._replica_sets.put(created)

    def _replica_set_body(self, action: CreateReplicaSet) -> Body:
        spec, meta = self._rollout["spec"], self._rollout["metadata"]
        template = copy.deepcopy(spec["template"])
        labels = {**(template.get("metadata") or {}).get("labels", {}), HASH_LABEL: action.hash}
        template.setdefault("metadata", {})["labels"] = labels
        selector = copy.deepcopy(spec["selector"])
        selector["matchLabels"] = {**selector.get("matchLabels", {}), HASH_LABEL: action.hash}
        annotations = {REVISION_ANNOTATION: str(action.revision),
                       # The template as the Rollout had it, before the API server's defaults and sluice's spread:
                       # `undo` restores exactly this revision (strategies/operations.py), as a fast rollback.
                       TEMPLATE_ANNOTATION: json.dumps(spec["template"], sort_keys=True, separators=(",", ":"))}
        spread = spec.get("spread")
        if spread:
            template["spec"]["affinity"] = self._affinity(template["spec"], action.hash, spread)
            annotations[SPREAD_ANNOTATION] = spread
        return {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": replica_set_name(meta["name"], action.hash),
                "namespace": self._namespace,
                "labels": {**labels, ROLLOUT_LABEL: meta["name"]},
                "annotations": annotations,
                "ownerReferences": [owner_reference(self._rollout)],
            },
            "spec": {
                "replicas": action.replicas,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }

    def _affinity(self, pod_spec: Body, hash_: str, spread: str | None) -> Body:
        selector = self._rollout["spec"].get("selector") or {}
        return with_spread(pod_spec, term=spread_term(selector, HASH_LABEL, hash_), spread=spread)

    async def _set_spread(self, action: SetSpread) -> None:
        """Put sluice's term into (or out of) the pod template's anti-affinity; both lists are written whole, as a
        merge patch replaces lists, and the rest of the user's affinity is left alone."""
        current = self._replica_sets.get(ObjectKey(self._namespace, action.name))
        if current is None:
            return  # gone since observed: nothing to spread
        pod_spec = ((current.get("spec") or {}).get("template") or {}).get("spec") or {}
        anti = self._affinity(pod_spec, action.hash, action.spread).get("podAntiAffinity") or {}
        lists = {key: anti.get(key) for key in ("requiredDuringSchedulingIgnoredDuringExecution",
                                                "preferredDuringSchedulingIgnoredDuringExecution")}
        patch = {"metadata": {"annotations": {SPREAD_ANNOTATION: action.spread}},
                 "spec": {"template": {"spec": {"affinity": {"podAntiAffinity": lists if any(lists.values())
                                                             else None}}}}}
        await self._patch_rs(action.name, patch)

    async def _apply_budget(self, action: ApplyDisruptionBudget) -> None:
        """Create sluice's PodDisruptionBudget, or set its whole spec (a JSON patch: the selector is replaced, not
        merged with an edited one). observe() refused a namesake sluice does not control."""
        meta = self._rollout["metadata"]
        spec = {"minAvailable": action.min_available, "selector": copy.deepcopy(self._rollout["spec"]["selector"])}
        if action.create:
            body: Body = {
                "apiVersion": PODDISRUPTIONBUDGETS.api_version, "kind": PODDISRUPTIONBUDGETS.kind,
                "metadata": {"name": action.name, "namespace": self._namespace,
                             "labels": {ROLLOUT_LABEL: meta["name"]},
                             "ownerReferences": [owner_reference(self._rollout)]},
                "spec": spec,
            }
            try:
                self._budgets.put(await self._client.create(PODDISRUPTIONBUDGETS, body, namespace=self._namespace))
                return
            except Conflict:  # our cache was behind, or a namesake appeared since observed: never take that over
                found = await self._client.get(PODDISRUPTIONBUDGETS, name=action.name, namespace=self._namespace)
                if not any(o.get("uid") == meta["uid"] for o in found["metadata"].get("ownerReferences") or []):
                    raise ApiError(status=409, reason="AlreadyExists", message=(
                        f"PodDisruptionBudget {self._namespace}/{action.name} exists and is not controlled by this "
                        "Rollout; delete or rename it so sluice can keep spec.disruptionBudget")) from None
        patched = await self._client.patch(PODDISRUPTIONBUDGETS, name=action.name, namespace=self._namespace,
                                           patch=[{"op": "add", "path": "/spec", "value": spec}], patch_type="json")
        self._budgets.put(patched)

    async def _delete_budget(self, action: DeleteDisruptionBudget) -> None:
        uid = self._budget_uid(action.name)  # never a namesake created since we looked
        await self._client.delete(PODDISRUPTIONBUDGETS, name=action.name, namespace=self._namespace,
                                  preconditions={"uid": uid} if uid else None)
        if ObjectKey(self._namespace, action.name) in self._budgets:
            self._budgets.delete({"metadata": {"namespace": self._namespace, "name": action.name}})

    def _budget_uid(self, name: str) -> str:
        current = self._budgets.get(ObjectKey(self._namespace, name)) or {}
        return str((current.get("metadata") or {}).get("uid", ""))

    async def _patch_rs(self, name: str, patch: Body) -> None:
        patched = await self._client.patch(REPLICASETS, name=name, namespace=self._namespace, patch=patch)
        self._replica_sets.put(patched)

    async def _scale(self, action: ScaleReplicaSet) -> None:
        patch: Body = {"spec": {"replicas": action.replicas}}
        if action.replicas == 0:
            # A ReplicaSet at zero needs no deadline; a stale one must not cut a later scale-down delay short.
            patch["metadata"] = {"annotations": {SCALE_DOWN_ANNOTATION: None}}
        await self._patch_rs(action.name, patch)

    async def _set_revision(self, action: SetRevision) -> None:
        await self._patch_rs(action.name, {"metadata": {"annotations": {REVISION_ANNOTATION: str(action.revision)}}})

    async def _mark_scale_down(self, action: MarkScaleDown) -> None:
        value = format_time(action.at) if action.at is not None else None
        await self._patch_rs(action.name, {"metadata": {"annotations": {SCALE_DOWN_ANNOTATION: value}}})

    async def _delete(self, action: DeleteReplicaSet) -> None:
        await self._client.delete(REPLICASETS, name=action.name, namespace=self._namespace)
        if ObjectKey(self._namespace, action.name) in self._replica_sets:
            self._replica_sets.delete({"metadata": {"namespace": self._namespace, "name": action.name}})

    async def _set_backend(self, action: SetBackend) -> None:
        # The Service first: a crash between the two writes leaves the subset (which observe() reads when there is
        # one) behind, so the next reconcile plans this action again and both end up written.
        if action.service is not None:
            await self._client.patch(SERVICES, name=action.service, namespace=self._namespace,
                                     patch={"spec": {"selector": {HASH_LABEL: action.hash}}})
        if isinstance(self._router, SubsetRouter):
            await self._router.set_hash("stable" if action.role == "stable" else "canary", action.hash)

    async def _set_weight(self, action: SetWeight) -> None:
        if self._router is None:
            raise TypeError("SetWeight planned for a Rollout without a traffic router")
        await self._router.set_weight(action.weight)

    async def _create_run(self, action: CreateAnalysisRun) -> None:
        """Resolve the templates and args into the run's spec and create it. A missing template or an arg without
        a value is the user's to fix: a permanent error, reported on the Rollout and retried with backoff."""
        what = describe_slot(action.step)
        templates = []
        for ref in action.analysis.templates:
            resource = CLUSTERANALYSISTEMPLATES if ref.cluster else ANALYSISTEMPLATES
            source = f"{resource.kind} {ref.name}" if ref.cluster else f"{resource.kind} {self._namespace}/{ref.name}"
            try:
                found = await self._client.get(resource, name=ref.name,
                                               namespace=None if ref.cluster else self._namespace)
            except NotFound:
                raise ApiError(status=404, reason="AnalysisTemplateNotFound",
                               message=f"{source} not found (used by the {what})") from None
            templates.append(NamedTemplate(source, found.get("spec") or {}))
        try:
            given = rollout_arg_values(action.analysis.args, self._rollout, stable_hash=action.stable_hash,
                                       canary_hash=action.hash)
            spec = build_run_spec(templates, given)
        except SpecError as exc:
            raise ApiError(status=422, reason="InvalidAnalysis", message=f"{what}: {exc}") from None
        meta = self._rollout["metadata"]
        body: Body = {
            "apiVersion": ANALYSISRUNS.api_version,
            "kind": ANALYSISRUNS.kind,
            "metadata": {
                "name": action.name,
                "namespace": self._namespace,
                "labels": {ROLLOUT_LABEL: meta["name"], HASH_LABEL: action.hash, WALK_LABEL: str(action.walk),
                           STEP_LABEL: action.step_label},
                "ownerReferences": [owner_reference(self._rollout)],
            },
            "spec": spec,
        }
        try:
            created = await self._client.create(ANALYSISRUNS, body, namespace=self._namespace)
        except Conflict:
            created = await self._client.get(ANALYSISRUNS, name=action.name, namespace=self._namespace)
            if not any(o.get("uid") == meta["uid"] for o in created["metadata"].get("ownerReferences") or []):
                raise ApiError(status=409, reason="AlreadyExists", message=(
                    f"AnalysisRun {self._namespace}/{action.name} exists and is not controlled by this Rollout; "
                    "delete it so sluice can create its own")) from None
        self._record_run(created)

    async def _terminate_run(self, action: TerminateAnalysisRun) -> None:
        try:
            patched = await self._client.patch(ANALYSISRUNS, name=action.name, namespace=self._namespace,
                                               patch={"spec": {"terminate": True}})
        except NotFound:
            return
        self._record_run(patched)

    async def _delete_run(self, action: DeleteAnalysisRun) -> None:
        with contextlib.suppress(NotFound):
            await self._client.delete(ANALYSISRUNS, name=action.name, namespace=self._namespace)
        if ObjectKey(self._namespace, action.name) in self._analysis_runs:
            self._analysis_runs.delete({"metadata": {"namespace": self._namespace, "name": action.name}})


def status_patch(current: Body | None, wanted: Body) -> Body:
    """The fields of `wanted` that differ from `current` (absent and null count as equal)."""
    current = current or {}
    return {k: v for k, v in wanted.items() if current.get(k) != v}
