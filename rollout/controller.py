"""The controller process: informers, the work queue and its workers, started and stopped from one place.

Every long-running piece is a named task in one TaskGroup: a watcher per resource (and namespace), and two worker
pools: one reconciles Rollouts, the other measures AnalysisRuns (so a slow metrics provider never delays a Rollout).
Workers start only after the Rollout, ReplicaSet and AnalysisRun informers' first lists, so no Rollout is judged on a
half-filled cache; the operator API (rollout/api.py) serves from the start and reports ready once they are synced.
So does the plain-HTTP listener for probes and metrics (rollout/probes.py), started before anything else.

The traffic routers' objects (VirtualServices, DestinationRules, TrafficSplits, HTTPRoutes) are watched too, so that
someone else's change to a weight wakes the Rollouts using the object (found through the Rollout store's index,
rollout/routers/refs.py) and is put back within seconds rather than at the next resync. Those informers are optional:
a cluster without a router's CRD, or a role without its verbs, still starts and reconciles, and they never gate
readiness.

With leader election (`Settings.leader_election`, rollout/leader.py) several replicas run side by side: every one
runs the informers and serves the API, but only the holder of the Lease runs the two worker pools. Losing the Lease
cancels them at once (the elector waits until they have stopped), regaining it starts them again.

Cancelling `Controller.run` (SIGTERM, Ctrl-C) stops them all; work in flight is simply redone by the next controller
(or the next leader), because every reconcile is level-triggered and idempotent.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from rollout.analyzing import AnalysisRunner
from rollout.api import ApiServer
from rollout.auth import Reviewer
from rollout.kube import ANALYSISRUNS, PODDISRUPTIONBUDGETS, REPLICASETS, ROLLOUTS, Body, KubeClient
from rollout.leader import LeaderElector
from rollout.metrics import Metrics
from rollout.observing import budget_index
from rollout.probes import ProbeServer
from rollout.queueing import ObjectKey, RetryLater, WorkQueue, run_workers
from rollout.reconciler import Backoff, Reconciler
from rollout.reporting import Reporter
from rollout.routers.refs import WATCHED, object_key, rollout_index
from rollout.settings import QueueSettings, Settings
from rollout.watching import Informer, Store, controller_index, metadata_only
from strategies.model import ROLLOUT_LABEL

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, client: KubeClient, settings: Settings) -> None:
        self.settings = settings
        self.queue = WorkQueue(settings.queue)
        self.rollouts = Store(index=rollout_index)  # by the router objects each Rollout uses
        self.replica_sets = Store(index=controller_index("Rollout"))
        self.analysis_runs = Store(index=controller_index("Rollout"))
        self.budgets = Store(index=budget_index)  # PodDisruptionBudgets: sluice's own, and the users' that count
        self.analysis_queue = WorkQueue(QueueSettings(error_backoff=settings.analysis.error_backoff))
        self._runs_seen: dict[ObjectKey, tuple[Any, Any]] = {}  # generation and phase, as last reported
        self._client = client
        rollout_informer = Informer(client, ROLLOUTS, namespaces=settings.namespaces, settings=settings.watch,
                                    store=self.rollouts, on_change=self._rollout_changed)
        run_informer = Informer(client, ANALYSISRUNS, namespaces=settings.namespaces, label_selector=ROLLOUT_LABEL,
                                settings=settings.watch, store=self.analysis_runs, on_change=self._analysis_run_changed)
        self._informers = (
            rollout_informer,
            Informer(client, REPLICASETS, namespaces=settings.namespaces, label_selector=ROLLOUT_LABEL,
                     settings=settings.watch, store=self.replica_sets, on_change=self._replica_set_changed),
            run_informer,
            # Every PodDisruptionBudget, not only sluice's: one a user writes satisfies the disruption-budget rule.
            Informer(client, PODDISRUPTIONBUDGETS, namespaces=settings.namespaces, settings=settings.watch,
                     store=self.budgets, on_change=self._budget_changed),
        )
        # Router objects only say which Rollouts to wake: each router GETs its object when it runs. So their stores
        # keep metadata only (name, namespace, uid, resourceVersion): enough to drop repeated events and to report
        # deletions after a re-list, and small even for a mesh with thousands of VirtualServices.
        self._router_informers = tuple(
            Informer(client, resources[0], fallbacks=resources[1:], namespaces=settings.namespaces,
                     settings=settings.watch, store=Store(), on_change=partial(self._router_object_changed, kind),
                     optional=True, transform=metadata_only)
            for kind, resources in WATCHED.items()
        )
        # sluice_leader: 0 until this replica wins the Lease, if it has to (set by _lead).
        self.metrics = Metrics(self.rollouts, leader=settings.leader_election is None)
        reporter = Reporter(client, component=settings.controller_name)
        self._reconciler = Reconciler(client, rollouts=self.rollouts, replica_sets=self.replica_sets,
                                      analysis_runs=self.analysis_runs, reporter=reporter, metrics=self.metrics,
                                      resync=settings.queue.resync_seconds,
                                      record_run=run_informer.record, budgets=self.budgets, policy=settings.policy)
        self._runner = AnalysisRunner(client, runs=self.analysis_runs, settings=settings.analysis,
                                      record=run_informer.record, metrics=self.metrics)
        self._elector = (None if settings.leader_election is None
                         else LeaderElector(client, settings=settings.leader_election))
        self.api: ApiServer | None = None
        if settings.api is not None:
            reviewer = Reviewer(client, cache_seconds=settings.api.review_cache_seconds,
                                on_review=self.metrics.count_review)
            self.api = ApiServer(client, settings=settings.api, rollouts=self.rollouts,
                                 replica_sets=self.replica_sets, analysis_runs=self.analysis_runs, reviewer=reviewer,
                                 metrics=self.metrics, reporter=reporter, ready=self.ready,
                                 namespaces=settings.namespaces,
                                 record=rollout_informer.record)
        # The kubelet's probes and Prometheus's scrapes, over plain HTTP (rollout/probes.py), with or without the API.
        self.probes: ProbeServer | None = None
        if settings.metrics is not None:
            self.probes = ProbeServer(settings.metrics, metrics=self.metrics, ready=self.ready)

    def ready(self) -> bool:
        """The watches have listed once: the caches the workers and the API read from are filled (the routers'
        watches only wake Rollouts, and may be missing for good: they do not count)."""
        return all(informer.synced.is_set() for informer in self._informers)

    def _rollout_changed(self, event_type: str, body: Body) -> None:
        key = ObjectKey.of(body)
        if event_type == "DELETED":
            self.queue.forget(key)
            return
        self.queue.add(key)

    def _router_object_changed(self, kind: str, event_type: str, body: Body) -> None:
        """Wake every Rollout using this router object, whatever happened to it (deleted too): each reconcile
        compares the router's weights with its own and puts them back if someone else changed them. Our own writes
        wake the Rollout as well; that reconcile finds nothing to do."""
        for rollout in self.rollouts.by_index(object_key(kind, body)):
            self.queue.add(ObjectKey.of(rollout))

    def _replica_set_changed(self, event_type: str, body: Body) -> None:
        self._wake_owner(body)

    def _wake_owner(self, body: Body) -> None:
        """Wake the Rollout that controls this object (a ReplicaSet or an AnalysisRun)."""
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == "Rollout":
                self.queue.add(ObjectKey(str(body["metadata"].get("namespace", "")), str(ref["name"])))

    def _budget_changed(self, event_type: str, body: Body) -> None:
        """A PodDisruptionBudget came, changed or went: every Rollout of its namespace looks again (sluice's own puts
        an edit back; another may start or stop covering a Rollout's pods, and an event does not say which pods it
        selected before). Budgets change rarely."""
        namespace = str(body.get("metadata", {}).get("namespace", ""))
        for key, _ in self.rollouts.items():
            if key.namespace == namespace:
                self.queue.add(key)

    def _analysis_run_changed(self, event_type: str, body: Body) -> None:
        key = ObjectKey.of(body)
        if event_type == "DELETED":
            self.analysis_queue.forget(key)
            self._runs_seen.pop(key, None)
            self._wake_owner(body)
            return
        seen = (body["metadata"].get("generation"), (body.get("status") or {}).get("phase"))
        before = self._runs_seen.get(key)
        self._runs_seen[key] = seen
        # Measure a new run, or one whose spec changed (terminate); a status change is a measurement written by the
        # runner, which has already scheduled the next one.
        if before is None or before[0] != seen[0]:
            self.analysis_queue.add(key)
        # The owning Rollout decides on a run's phase: wake it when the phase moves, not on every measurement.
        if before is None or before[1] != seen[1]:
            self._wake_owner(body)

    async def _handle(self, key: ObjectKey) -> float | None:
        outcome = await self._reconciler.reconcile(key)
        if isinstance(outcome, Backoff):
            raise RetryLater(outcome.reason)
        return outcome

    async def _lead(self) -> None:
        """The leader's work: both worker pools, until cancelled (shutdown, or the Lease lost).

        Every Rollout and AnalysisRun in the caches is queued first. On a first start they are queued already (each
        informer event queues its key, on followers too), but a key a previous term was handling when it was
        cancelled is not: its reconcile stopped half-way, and the next one, level-triggered, finishes the job."""
        for key, _ in self.rollouts.items():
            self.queue.add(key)
        for key, _ in self.analysis_runs.items():
            self.analysis_queue.add(key)
        self.metrics.set_leader(True)
        try:
            async with asyncio.TaskGroup() as group:
                self._start_workers(group)
        finally:
            self.metrics.set_leader(False)

    def _start_workers(self, group: asyncio.TaskGroup) -> None:
        group.create_task(run_workers(self.queue, self._handle, workers=self.settings.queue.workers),
                          name="workers")
        group.create_task(run_workers(self.analysis_queue, self._runner.reconcile,
                                      workers=self.settings.analysis.workers, name="analysis"),
                          name="analysis-workers")

    async def run(self) -> None:
        scope = ", ".join(self.settings.namespaces) or "all namespaces"
        log.info("sluice controller starting: watching %s with %d workers", scope, self.settings.queue.workers)
        try:
            if self.probes is not None:  # first, and outside the group: a port in use is one plain ListenError
                await self.probes.start()
            async with asyncio.TaskGroup() as group:
                if self.api is not None:
                    await self.api.start()
                for informer in (*self._informers, *self._router_informers):
                    group.create_task(informer.run(), name=f"informer:{informer.resource.plural}")
                await asyncio.gather(*(i.synced.wait() for i in self._informers))
                log.info("caches synced: %d rollouts, %d replicasets, %d analysis runs, %d disruption budgets",
                         len(self.rollouts), len(self.replica_sets), len(self.analysis_runs), len(self.budgets))
                if self._elector is None:
                    self._start_workers(group)  # the only replica: it always leads
                else:  # campaign only once synced: a leader that cannot reconcile yet would hold everyone up
                    group.create_task(self._elector.run(self._lead), name="leader-election")
        finally:
            self.queue.shutdown()
            self.analysis_queue.shutdown()
            await self._runner.close()
            if self.api is not None:
                await self.api.stop()
            if self.probes is not None:
                await self.probes.stop()
