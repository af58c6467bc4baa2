"""The controller process: informers, the work queue and its workers, started and stopped from one place.

Every long-running piece is a named task in one TaskGroup: a watcher per resource (and namespace), the worker pool.
Workers start only after the informers' first lists, so no Rollout is judged on a half-filled cache. Cancelling
`Controller.run` (SIGTERM, Ctrl-C) stops them all; work in flight is simply redone by the next controller, because
every reconcile is level-triggered and idempotent.
"""

from __future__ import annotations

import asyncio
import logging

from rollout.kube import REPLICASETS, ROLLOUTS, Body, KubeClient
from rollout.queueing import ObjectKey, RetryLater, WorkQueue, run_workers
from rollout.reconciler import Backoff, Reconciler
from rollout.reporting import Reporter
from rollout.settings import Settings
from rollout.watching import Informer, Store, controller_index
from strategies.model import ROLLOUT_LABEL

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, client: KubeClient, settings: Settings) -> None:
        self.settings = settings
        self.queue = WorkQueue(settings.queue)
        self.rollouts = Store()
        self.replica_sets = Store(index=controller_index("Rollout"))
        self._client = client
        self._informers = (
            Informer(client, ROLLOUTS, namespaces=settings.namespaces, settings=settings.watch, store=self.rollouts,
                     on_change=self._rollout_changed),
            Informer(client, REPLICASETS, namespaces=settings.namespaces, label_selector=ROLLOUT_LABEL,
                     settings=settings.watch, store=self.replica_sets, on_change=self._replica_set_changed),
        )
        self._reconciler = Reconciler(client, rollouts=self.rollouts, replica_sets=self.replica_sets,
                                      reporter=Reporter(client, component=settings.controller_name),
                                      resync=settings.queue.resync_seconds)

    def _rollout_changed(self, event_type: str, body: Body) -> None:
        key = ObjectKey.of(body)
        if event_type == "DELETED":
            self.queue.forget(key)
            return
        self.queue.add(key)

    def _replica_set_changed(self, event_type: str, body: Body) -> None:
        for ref in body.get("metadata", {}).get("ownerReferences") or []:
            if ref.get("controller") and ref.get("kind") == "Rollout":
                self.queue.add(ObjectKey(str(body["metadata"].get("namespace", "")), str(ref["name"])))

    async def _handle(self, key: ObjectKey) -> float | None:
        outcome = await self._reconciler.reconcile(key)
        if isinstance(outcome, Backoff):
            raise RetryLater(outcome.reason)
        return outcome

    async def run(self) -> None:
        scope = ", ".join(self.settings.namespaces) or "all namespaces"
        log.info("sluice controller starting: watching %s with %d workers", scope, self.settings.queue.workers)
        try:
            async with asyncio.TaskGroup() as group:
                for informer in self._informers:
                    group.create_task(informer.run(), name=f"informer:{informer.resource.plural}")
                await asyncio.gather(*(i.synced.wait() for i in self._informers))
                log.info("caches synced: %d rollouts, %d replicasets", len(self.rollouts), len(self.replica_sets))
                group.create_task(run_workers(self.queue, self._handle, workers=self.settings.queue.workers),
                                  name="workers")
        finally:
            self.queue.shutdown()
