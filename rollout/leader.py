"""Leader election: of several controller replicas, only the holder of one `coordination.k8s.io/v1` Lease reconciles.

Every replica runs the informers and the operator API (the API reads from the informers' caches and writes patches
with preconditions, so any replica can answer); only the leader runs the worker pools (rollout/controller.py). The
protocol is client-go's `tools/leaderelection` with a LeaseLock:

- a candidate takes the Lease when it is absent, released (no holder) or expired. Expired is judged by the
  candidate's own monotonic clock: it remembers when it last saw the Lease's record change and waits the record's
  `leaseDurationSeconds` from then, so the clocks of the nodes never need to agree (the times written into the Lease
  are for people and `kubectl`);
- the leader renews every retry period and stops leading once it has not renewed for the renew deadline, which is
  shorter than the lease duration: it has stopped before anyone else may take over;
- every write is a PUT carrying the resourceVersion that was read (or a create, which fails if the Lease exists), so
  of two candidates that both find an expired Lease exactly one wins;
- on a clean shutdown the leader stops its work first, then releases the Lease (no holder, 1 s duration) so that a
  successor takes over at once instead of after the lease duration.

The decision is pure (`decide`: the observed record, when it was last seen changing, now, our identity and whether
we lead → acquire, renew, wait or lost) and so is building the records to write (`claim`, `released`);
`LeaderElector` reads and writes the Lease around them and runs the leader's work as a task that it cancels, and
waits for, the moment leadership may be lost.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import math
import os
import secrets
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from rollout.kube import LEASES, ApiError, Body, Conflict, NotFound, Resource
from rollout.settings import LeaderElectionSettings

log = logging.getLogger(__name__)

Lead = Callable[[], Coroutine[Any, Any, None]]


class Verdict(enum.Enum):
    ACQUIRE = "acquire"  # the Lease is absent, free, expired, or names us while we do not lead: take it
    RENEW = "renew"  # we lead and the Lease names us: write a fresh renewTime
    WAIT = "wait"  # someone else holds a live Lease: look again later
    LOST = "lost"  # we led, but the renew deadline passed or the Lease is no longer ours: stop at once


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec: who holds it, for how long, and since when (the times as the holder's clock wrote them)."""

    holder: str = ""  # empty: free (released, or never held)
    duration: float = 0.0  # leaseDurationSeconds
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0

    @classmethod
    def parse(cls, body: Body, *, default_duration: float) -> LeaseRecord:
        spec = body.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""),
                   duration=float(spec.get("leaseDurationSeconds") or default_duration),
                   acquire_time=spec.get("acquireTime"), renew_time=spec.get("renewTime"),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def spec(self) -> Body:
        return {"holderIdentity": self.holder, "leaseDurationSeconds": max(1, math.ceil(self.duration)),
                "acquireTime": self.acquire_time, "renewTime": self.renew_time, "leaseTransitions": self.transitions}


@dataclass(frozen=True)
class Observation:
    """The Lease's record as last read (None: there is no Lease), and when, by our monotonic clock, it was last seen
    changing: the start of its lease duration as far as we are concerned."""

    record: LeaseRecord | None
    changed_at: float


def observe(previous: Observation | None, record: LeaseRecord | None, *, now: float) -> Observation:
    """The observation after reading `record` at `now`: the time moves only when the record differs from the last
    one read (a renewal always does: its renewTime changes), never because of the times written in it."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def decide(lease: LeaseRecord | None, *, changed_at: float, now: float, identity: str, renewed_at: float | None,
           renew_deadline: float) -> Verdict:
    """What to do with the Lease. `renewed_at` is when we sent our last successful write (None: we do not lead);
    `changed_at` and `now` are readings of our own monotonic clock, so other nodes' clocks play no part."""
    if renewed_at is not None:
        if now - renewed_at >= renew_deadline:
            return Verdict.LOST  # others may take over once the lease duration passes: stop well before
        if lease is None or lease.holder != identity:
            return Verdict.LOST  # deleted, released or taken while we thought we held it
        return Verdict.RENEW
    if lease is None or not lease.holder or lease.holder == identity:
        # Ours but not leading: our last renewal was in doubt (a timeout that the server did apply). The write
        # carries the resourceVersion we read, so it fails if anyone has touched the Lease since.
        return Verdict.ACQUIRE
    return Verdict.ACQUIRE if now >= changed_at + lease.duration else Verdict.WAIT


def next_delay(lease: LeaseRecord | None, *, changed_at: float, now: float, renewed_at: float | None,
               renew_deadline: float, retry_period: float) -> float:
    """Seconds until the next look: a leader renews every retry period but wakes by its renew deadline at the
    latest; a candidate facing a live Lease wakes when it expires if that comes before the next retry period."""
    if renewed_at is not None:
        return max(0.0, min(retry_period, renewed_at + renew_deadline - now))
    if lease is not None and lease.holder and changed_at + lease.duration > now:
        return min(retry_period, changed_at + lease.duration - now)
    return retry_period


def micro_time(moment: datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def claim(lease: LeaseRecord | None, *, identity: str, duration: float, now: datetime) -> LeaseRecord:
    """The record that acquires or renews the Lease for `identity`: a renewal keeps the acquire time and the count of
    transitions, a change of holder counts one more transition."""
    stamp = micro_time(now)
    if lease is not None and lease.holder == identity:
        return replace(lease, duration=duration, renew_time=stamp, acquire_time=lease.acquire_time or stamp)
    return LeaseRecord(holder=identity, duration=duration, acquire_time=stamp, renew_time=stamp,
                       transitions=0 if lease is None else lease.transitions + 1)


def released(lease: LeaseRecord, *, now: datetime) -> LeaseRecord:
    """The record that lets go of the Lease: no holder, so the next candidate takes it on sight (client-go writes
    the same: a 1 s duration, for readers that only look at the times)."""
    stamp = micro_time(now)
    return LeaseRecord(holder="", duration=1, acquire_time=stamp, renew_time=stamp, transitions=lease.transitions)


def default_identity() -> str:
    """Unique per process: the pod (or host) name, the pid, and a random suffix, so a restarted process never
    mistakes its predecessor's Lease for its own."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{os.getpid()}_{secrets.token_hex(3)}"


class LeaseClient(Protocol):
    """What the elector needs of rollout/kube.py's KubeClient."""

    async def get(self, resource: Resource, *, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> Body: ...

    async def create(self, resource: Resource, body: Body, *, namespace: str | None = None, name: str | None = None,
                     subresource: str | None = None) -> Body: ...

    async def replace(self, resource: Resource, body: Body, *, name: str, namespace: str | None = None,
                      subresource: str | None = None) -> Body: ...


class LeaderElector:
    """Campaigns for one Lease and runs the leader's work (`run(lead)`) while, and only while, it holds it."""

    def __init__(self, client: LeaseClient, *, settings: LeaderElectionSettings, identity: str | None = None) -> None:
        self._client = client
        self._settings = settings
        self.identity = identity or default_identity()
        self._observation: Observation | None = None
        self._body: Body | None = None  # the Lease as last read or written: the next PUT carries its resourceVersion
        self._renewed_at: float | None = None  # when our last successful write was sent; None: not leading
        self._task: asyncio.Task[None] | None = None

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None

    @property
    def _where(self) -> str:
        return f"{self._settings.namespace}/{self._settings.name}"

    async def run(self, lead: Lead) -> None:
        """Campaign until cancelled. While the Lease is ours, `lead()` runs as a task; it is cancelled, and awaited,
        as soon as leadership may be lost, and started again if it is regained. Cancelling `run` stops `lead()` first
        and then releases the Lease. Should `lead()` end by itself, `run` ends too (raising what it raised)."""
        log.info("campaigning for Lease %s as %s", self._where, self.identity)
        try:
            while True:
                delay = await self._round(lead)
                if self._task is None:
                    await asyncio.sleep(delay)
                    continue
                done, _ = await asyncio.wait({self._task}, timeout=delay)
                if done:
                    self._task.result()
                    return
        finally:
            await self._resign()

    async def _round(self, lead: Lead) -> float:
        """Look (candidates only: a leader knows the Lease from its last write), decide, write, act on the outcome;
        returns the delay before the next round."""
        loop = asyncio.get_running_loop()
        if not self.leading and not await self._read():
            return self._settings.retry_period  # as client-go: no take-over on a Lease we could not read
        verdict = self._decide(loop.time())
        if verdict in (Verdict.ACQUIRE, Verdict.RENEW):
            await self._write()
            verdict = self._decide(loop.time())
        if verdict is Verdict.LOST:
            await self._step_down(self._why_lost(loop.time()))
        elif self.leading and self._task is None:
            log.info("became leader (Lease %s) as %s", self._where, self.identity)
            self._task = asyncio.create_task(lead(), name="leading")
        record, changed_at = self._observed()
        return next_delay(record, changed_at=changed_at, now=loop.time(), renewed_at=self._renewed_at,
                          renew_deadline=self._settings.renew_deadline, retry_period=self._settings.retry_period)

    def _observed(self) -> tuple[LeaseRecord | None, float]:
        if self._observation is None:  # not read yet
            return None, asyncio.get_running_loop().time()
        return self._observation.record, self._observation.changed_at

    def _decide(self, now: float) -> Verdict:
        record, changed_at = self._observed()
        return decide(record, changed_at=changed_at, now=now, identity=self.identity, renewed_at=self._renewed_at,
                      renew_deadline=self._settings.renew_deadline)

    def _see(self, body: Body | None) -> None:
        self._body = body
        record = None if body is None else LeaseRecord.parse(body, default_duration=self._settings.lease_duration)
        self._observation = observe(self._observation, record, now=asyncio.get_running_loop().time())

    async def _read(self, *, deadline: float | None = None) -> bool:
        """GET the Lease (giving up at `deadline`, loop time); False if that failed (the last observation stays)."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._settings.renew_deadline
        try:
            async with asyncio.timeout_at(deadline):
                body: Body | None = await self._client.get(LEASES, name=self._settings.name,
                                                           namespace=self._settings.namespace)
        except NotFound:
            body = None
        except (ApiError, TimeoutError) as exc:
            log.warning("cannot read Lease %s: %s", self._where, exc or "timed out")
            return False
        self._see(body)
        return True

    async def _write(self) -> None:
        """Acquire or renew with a precondition; a leader's attempt is cut off at its renew deadline."""
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        record, _ = self._observed()
        wanted = claim(record, identity=self.identity, duration=self._settings.lease_duration, now=datetime.now(UTC))
        deadline = sent_at + self._settings.renew_deadline
        if self._renewed_at is not None:
            deadline = self._renewed_at + self._settings.renew_deadline
        ns, name = self._settings.namespace, self._settings.name
        try:
            async with asyncio.timeout_at(deadline):
                if self._body is None:
                    body: Body = {"apiVersion": LEASES.api_version, "kind": LEASES.kind,
                                  "metadata": {"name": name, "namespace": ns}, "spec": wanted.spec()}
                    written = await self._client.create(LEASES, body, namespace=ns)
                else:
                    body = {**self._body, "spec": {**(self._body.get("spec") or {}), **wanted.spec()}}
                    written = await self._client.replace(LEASES, body, name=name, namespace=ns)
        except Conflict:
            # Someone else wrote the Lease since we read it (or created it first): see what it says now.
            log.info("Lease %s changed under us; reading it again", self._where)
            await self._read(deadline=deadline)  # a leader's look is cut off at its renew deadline too
            return
        except NotFound:
            self._see(None)  # deleted: a leader stops (LOST), a candidate creates it next round
            return
        except (ApiError, TimeoutError) as exc:
            log.warning("cannot %s Lease %s: %s", "renew" if self.leading else "acquire", self._where,
                        exc or "renew deadline reached")
            return
        self._see(written)
        self._renewed_at = sent_at

    def _why_lost(self, now: float) -> str:
        record, _ = self._observed()
        if self._renewed_at is not None and now - self._renewed_at >= self._settings.renew_deadline:
            return f"not renewed within the renew deadline ({self._settings.renew_deadline:g}s)"
        if record is None:
            return "the Lease was deleted"
        return f"the Lease is now held by {record.holder or 'nobody'}"

    async def _step_down(self, why: str) -> None:
        """Stop leading: cancel the leader's work and wait until it has stopped."""
        was_leading, task = self.leading, self._task
        self._renewed_at, self._task = None, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.error("the leader's work failed while stopping", exc_info=task.exception())
        if was_leading:
            log.warning("lost leadership (Lease %s) as %s: %s; stopped reconciling", self._where, self.identity, why)

    async def _resign(self) -> None:
        """On the way out: stop the work, then let go of the Lease if it is still ours, so a successor need not wait
        for it to expire. Best effort: if this fails, the Lease simply expires."""
        was_leading = self.leading
        task = self._task
        self._renewed_at, self._task = None, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if was_leading:
            log.info("stopped leading (Lease %s) as %s: shutting down", self._where, self.identity)
        record, _ = self._observed()
        if not was_leading or record is None or record.holder != self.identity or self._body is None:
            return
        body = {**self._body, "spec": {**(self._body.get("spec") or {}),
                                       **released(record, now=datetime.now(UTC)).spec()}}
        try:
            async with asyncio.timeout(self._settings.renew_deadline):
                await self._client.replace(LEASES, body, name=self._settings.name,
                                           namespace=self._settings.namespace)
        except (ApiError, TimeoutError) as exc:
            log.warning("could not release Lease %s (%s): the next leader takes over when it expires", self._where,
                        exc or "timed out")
            return
        log.info("released Lease %s as %s", self._where, self.identity)
