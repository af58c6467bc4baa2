"""Takes the measurements of AnalysisRuns: one reconcile of one run measures what is due, records, writes status.

The state machine is pure (analysis/run.py): which metrics are due, what a provider's outcome counts as, when a
limit decides the run. This module does the I/O around it: reading header values from Secrets, calling the
providers concurrently, patching the run's status, and asking to be woken when the next measurement is due.

A run's spec is frozen when the Rollout creates it (analysis/spec.py), so a run never reads its templates. Problems
reach the user as the run's phase and message, which the Rollout's status and messages repeat:
- a condition that does not compile, or a metric that does not parse: the run is Error before any measurement;
- a provider that fails (unreachable, timeout, HTTP error, bad data): an Error measurement with the cause; the
  metric's consecutiveErrorLimit decides when the run becomes Error. Errors never count towards success.
Only this controller writes a run's status, so the patch carries no resourceVersion precondition: a measurement is
never thrown away because the Rollout controller set `spec.terminate` meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from analysis.providers import Failure, Outcome, Provider, ProviderOptions, make_provider
from analysis.run import (
    Measurement,
    RunState,
    assess,
    classify,
    errored,
    parse_run_status,
    preflight,
    record,
    schedule,
    start,
)
from analysis.spec import MetricSpec, parse_run_metrics
from rollout.kube import ANALYSISRUNS, SECRETS, ApiError, Body, KubeClient, NotFound
from rollout.metrics import Metrics
from rollout.queueing import ObjectKey
from rollout.settings import AnalysisSettings
from rollout.watching import Store
from strategies.model import ROLLOUT_LABEL, TERMINAL_RUN_PHASES, SpecError

log = logging.getLogger(__name__)


class _HeaderError(Exception):
    """A header value could not be read (Secret or key missing, forbidden); never carries the value."""


class AnalysisRunner:
    def __init__(self, client: KubeClient, *, runs: Store, settings: AnalysisSettings,
                 record: Callable[[Body], None] | None = None, metrics: Metrics | None = None) -> None:
        self._client = client
        self._metrics = metrics
        # A status we wrote goes to the runs' informer (Informer.record): into the store and reported like any
        # change, so the owning Rollout hears of a new phase at once.
        self._record = record or runs.put
        self._runs = runs
        self._settings = settings
        self._providers: dict[str, Provider] = {}

    def _provider(self, kind: str) -> Provider:
        if kind not in self._providers:
            self._providers[kind] = make_provider(kind, ProviderOptions(threads=self._settings.provider_threads))
        return self._providers[kind]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        self._providers.clear()

    async def reconcile(self, key: ObjectKey) -> float | None:
        body = self._runs.get(key)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        state = parse_run_status(body.get("status"))
        if state.phase in TERMINAL_RUN_PHASES:
            return None
        now = datetime.now(UTC)
        spec = body.get("spec") or {}
        try:
            metrics = parse_run_metrics(spec)
            problem = preflight(metrics) if metrics else "spec.metrics: no metrics to measure"
        except SpecError as exc:
            metrics, problem = (), str(exc)
        if problem is not None:
            await self._write(body, errored(state, problem, now))
            return None
        if state.started_at is None:
            state = start(metrics, now=now)
        if spec.get("terminate"):
            await self._write(body, assess(metrics, state, now=now, terminate=True))
            return None
        due = schedule(metrics, state, now=now).due
        if due:
            by_name = {m.name: m for m in metrics}
            taken = await asyncio.gather(*(self._measure(body, by_name[name]) for name in due))
            for name, measurement in zip(due, taken, strict=True):
                state = record(by_name[name], state, measurement, retention=self._settings.measurement_retention)
        now = datetime.now(UTC)
        state = assess(metrics, state, now=now)
        await self._write(body, state)
        if state.phase in TERMINAL_RUN_PHASES:
            return None
        return schedule(metrics, state, now=now).wake_after

    async def _measure(self, body: Body, metric: MetricSpec) -> Measurement:
        started = datetime.now(UTC)
        outcome: Outcome
        try:
            headers = await self._headers(str(body["metadata"]["namespace"]), metric)
        except _HeaderError as exc:
            outcome = Failure(str(exc))
        else:
            try:
                outcome = await self._provider(metric.provider).measure(metric.provider_config, headers=headers,
                                                                        timeout=metric.timeout)
            except Exception as exc:
                # A provider bug must not stall the run (retried for ever, never reaching consecutiveErrorLimit):
                # it is an Error measurement. Only the exception's type is shown: its text may quote a header value.
                log.error("the %s provider failed unexpectedly measuring %s: %s", metric.provider, metric.name,
                          type(exc).__name__)
                outcome = Failure(f"internal error in the {metric.provider} provider ({type(exc).__name__})")
        measurement = classify(metric, outcome, started_at=started, finished_at=datetime.now(UTC))
        if self._metrics is not None:
            self._metrics.count_measurement(metric.provider, measurement.phase)
        return measurement

    async def _headers(self, namespace: str, metric: MetricSpec) -> dict[str, str]:
        headers: dict[str, str] = {}
        for header in metric.headers:
            if header.secret is None:
                headers[header.name] = header.value or ""
                continue
            name, key = header.secret
            where = f"header {header.name}: Secret {namespace}/{name}"
            try:
                secret = await self._client.get(SECRETS, name=name, namespace=namespace)
            except NotFound:
                raise _HeaderError(f"{where} not found") from None
            except ApiError as exc:
                raise _HeaderError(f"{where}: {exc}") from None
            encoded = (secret.get("data") or {}).get(key)
            if encoded is None:
                raise _HeaderError(f"{where} has no key {key}")
            try:
                headers[header.name] = base64.b64decode(encoded).decode().strip()
            except (binascii.Error, UnicodeDecodeError):
                raise _HeaderError(f"{where} key {key} is not UTF-8 text") from None
        return headers

    async def _write(self, body: Body, after: RunState) -> None:
        meta = body["metadata"]
        wanted, current = after.to_status(), body.get("status") or {}
        if wanted == current:
            return
        try:
            patched = await self._client.patch(ANALYSISRUNS, name=meta["name"], namespace=meta["namespace"],
                                               subresource="status", patch={"status": wanted})
        except NotFound:
            return  # deleted meanwhile (its Rollout pruned it, or went away)
        self._record(patched)
        if after.phase != current.get("phase"):
            rollout = (meta.get("labels") or {}).get(ROLLOUT_LABEL, "")
            level = logging.WARNING if after.phase in ("Failed", "Error", "Inconclusive") else logging.INFO
            log.log(level, "AnalysisRun %s/%s: %s%s", meta["namespace"], meta["name"], after.phase,
                    f": {after.message}" if after.message else "",
                    extra={"rollout": f"{meta['namespace']}/{rollout}", "decision": f"Analysis{after.phase}"})
