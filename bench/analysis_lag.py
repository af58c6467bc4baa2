"""Do 200 concurrent AnalysisRuns get measured on time, and does an abort reach the router within a second?
(requirement: measurements run concurrently and never block other reconciles; p99 lag under 1 s)

Starts the local control plane, a real Prometheus and a few metrics apps it scrapes, then for a baseline (default 10
runs) and the case (default 200 runs), each in its own namespace with its own controller process:
- creates that many AnalysisRuns directly (one Prometheus metric, interval 5s, no count: they run until the end),
  labelled with a Rollout name so the controller's informer picks them up, and lets them run for `--duration` s;
- measures each measurement's lag: when it started minus when the state machine scheduled it (the previous
  measurement's start as written in the status, whole seconds, plus the interval: the instant the controller
  itself waits for), and the delay from creating a run to its first measurement;
- measures the controller process's CPU (utime+stime over wall time, from /proc) and memory (VmRSS, VmHWM);
- meanwhile a few real Rollouts sit on an analysis step against a probe app; halfway through, the probe's error rate
  goes to 100 % and the time from the Failed measurement that decides the run to the VirtualService's canary weight
  reaching 0 (seen through a watch) is recorded.

The controller runs as a subprocess (`python -m rollout controller`, through `child` mode of this file), so CPU and
memory are its own; `child` mode only wraps `AnalysisRunner._measure` to append one line per measurement (scheduled,
started, finished, phase) to a file, because the status keeps whole seconds and only the last 10 measurements.
Prints ratios case/baseline measured in the same run (machines are shared and noisy: compare ratios).
Usage: `.venv/bin/python bench/analysis_lag.py [--runs 200] [--baseline 10] [--duration 60] [--probes 3]
[--spread 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from fleet import app_objects, cpu_seconds, memory_mb, percentile, wait_until

from analysis.run import Measurement, parse_run_status
from analysis.spec import MetricSpec
from devcluster.controlplane import REPO_ROOT, Component, ControlPlane, spawn
from devcluster.metrics_app import MetricsApp
from devcluster.prometheus import Prometheus
from rollout.analyzing import AnalysisRunner
from rollout.cli import main as sluice
from rollout.kube import (
    ANALYSISRUNS,
    ANALYSISTEMPLATES,
    NAMESPACES,
    ROLLOUTS,
    VIRTUALSERVICES,
    Body,
    KubeClient,
)
from strategies.model import ROLLOUT_LABEL

INTERVAL = 5  # seconds between measurements of every run
LOAD_APPS = 3  # metrics apps the load runs query, round-robin


# -- child mode: the controller, recording every measurement ---------------------------------------------------------


def _child(record: str, argv: list[str]) -> int:
    """Run `sluice` with `argv`, appending `[run, rollout, scheduled, started, finished, phase]` per measurement."""
    out = open(record, "a", buffering=1)  # noqa: SIM115 - open for the life of the process
    original = AnalysisRunner._measure

    async def measure(self: AnalysisRunner, body: Body, metric: MetricSpec) -> Measurement:
        result = parse_run_status(body.get("status")).result(metric.name)
        scheduled = None  # the first measurement: timed from the run's creation by the parent
        if result.taken and result.measurements and metric.interval is not None:
            scheduled = (result.measurements[-1].started_at + timedelta(seconds=metric.interval)).timestamp()
        started = time.time()
        measurement = await original(self, body, metric)
        meta = body["metadata"]
        out.write(json.dumps([meta["name"], (meta.get("labels") or {}).get(ROLLOUT_LABEL), scheduled, started,
                              time.time(), measurement.phase]) + "\n")
        return measurement

    AnalysisRunner._measure = measure  # type: ignore[method-assign]
    return sluice(argv)


# -- objects ------------------------------------------------------------------------------------------------------


def _load_run(name: str, prometheus: str, app: str) -> Body:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisRun",
            "metadata": {"name": name, "labels": {ROLLOUT_LABEL: "bench-load"}},
            "spec": {"metrics": [{
                "name": "rps", "interval": f"{INTERVAL}s", "successCondition": "result[0] >= 0",
                "provider": {"prometheus": {"address": prometheus,
                                            "query": f'sum(rate(http_requests_total{{app="{app}"}}[10s]))'}}}]}}


def _probe_template(prometheus: str, app: str) -> Body:
    errors = f'sum(rate(http_requests_total{{app="{app}",code="500"}}[5s]))'
    total = f'sum(rate(http_requests_total{{app="{app}"}}[5s]))'
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "probe"},
            "spec": {"metrics": [{"name": "errors", "interval": f"{INTERVAL}s", "successCondition": "result[0] < 0.5",
                                  "provider": {"prometheus": {"address": prometheus,
                                                              "query": f"{errors} / {total}"}}}]}}


def _canary_weight(vs: Body) -> int | None:
    for route in (vs.get("spec") or {}).get("http") or []:
        for dest in route.get("route") or []:
            if str((dest.get("destination") or {}).get("host", "")).endswith("-canary"):
                return int(dest.get("weight") or 0)
    return None


# -- measuring ----------------------------------------------------------------------------------------------------


@dataclass
class Probes:
    """When each probe Rollout's canary weight reached 0 after the flip (watch on VirtualServices)."""

    names: list[str]
    flipped_at: float = 0.0
    weight_zero_at: dict[str, float] = field(default_factory=dict)

    async def watch(self, kube: KubeClient, ns: str) -> None:
        _, version = await kube.list(VIRTUALSERVICES, namespace=ns)
        async for _kind, vs in kube.watch(VIRTUALSERVICES, namespace=ns, resource_version=version):
            name = str(vs.get("metadata", {}).get("name"))
            if self.flipped_at and name in self.names and name not in self.weight_zero_at \
                    and _canary_weight(vs) == 0:
                self.weight_zero_at[name] = time.time()


async def _set_up_probes(admin: KubeClient, ns: str, prometheus: Prometheus, app: MetricsApp,
                         count: int) -> Probes:
    """Probe Rollouts walked to their analysis step (canary at 50 %, a run measuring the probe app)."""
    probes = Probes([f"probe{i}" for i in range(count)])
    template = _probe_template(prometheus.url, app.name)
    query = template["spec"]["metrics"][0]["provider"]["prometheus"]["query"]

    async def healthy() -> bool:  # the previous case's errors must have left the rate window
        result = await asyncio.to_thread(prometheus.query, query)
        return bool(result) and float(result[0]["value"][1]) == 0.0

    await wait_until("the probe app's error ratio not back to 0", 60, healthy)
    await admin.create(ANALYSISTEMPLATES, template, namespace=ns)
    for name in probes.names:
        steps: list[dict[str, Any]] = [{"setWeight": 50}, {"analysis": {"templates": [{"templateName": "probe"}]}}]
        for resource, body in app_objects(name, steps):
            await admin.create(resource, body, namespace=ns)

    async def phases(want: str) -> bool:
        items, _ = await admin.list(ROLLOUTS, namespace=ns)
        return sum(1 for ro in items if (ro.get("status") or {}).get("phase") == want) == count

    await wait_until("probe Rollouts not Healthy", 60, lambda: phases("Healthy"))
    for name in probes.names:
        await admin.patch(ROLLOUTS, name=name, namespace=ns, patch_type="json", patch=[
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "registry.example/app:2"}])

    async def at_analysis() -> bool:
        items, _ = await admin.list(ROLLOUTS, namespace=ns)
        runs, _ = await admin.list(ANALYSISRUNS, namespace=ns)
        return (sum(1 for ro in items if (ro.get("status") or {}).get("currentStepIndex") == 1) == count
                and len(runs) == count)

    await wait_until("probe Rollouts not at their analysis step", 60, at_analysis)
    return probes


# -- one case -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Env:
    kubeconfig: str
    prometheus: Prometheus
    load_apps: tuple[str, ...]
    probe_app: MetricsApp
    workdir: Path
    duration: float
    probes: int
    spread: float


@contextlib.contextmanager
def _controller(env: Env, ns: str, record: Path) -> Iterator[Component]:
    component = spawn(f"controller-{ns}", [
        sys.executable, str(Path(__file__).resolve()), "child", str(record), "controller", "--namespace", ns,
        "--api-address", "127.0.0.1", "--api-port", "0", "--metrics-address", "127.0.0.1", "--metrics-port", "0",
        "--kubeconfig", env.kubeconfig, "--log-level", "warning",
    ], log_path=env.workdir / f"controller-{ns}.log", cwd=REPO_ROOT)
    try:
        yield component
    finally:
        component.stop(grace=10.0)


async def _case(admin: KubeClient, env: Env, ns: str, runs: int) -> dict[str, float]:
    record = env.workdir / f"measurements-{ns}.jsonl"
    await admin.create(NAMESPACES, {"metadata": {"name": ns}})
    created: dict[str, float] = {}
    try:
        with _controller(env, ns, record) as controller:
            probes = await _set_up_probes(admin, ns, env.prometheus, env.probe_app, env.probes)
            watcher = asyncio.create_task(probes.watch(admin, ns))
            begin = time.monotonic()
            for i in range(runs):
                # --spread: run i is created i/runs of the way through it (0: all at once, the worst burst).
                await asyncio.sleep(max(0.0, begin + env.spread * i / runs - time.monotonic()))
                app = env.load_apps[i % len(env.load_apps)]
                await admin.create(ANALYSISRUNS, _load_run(f"load{i}", env.prometheus.url, app), namespace=ns)
                created[f"load{i}"] = time.time()
            pid = controller.process.pid
            cpu0, wall0 = cpu_seconds(pid), time.time()
            await asyncio.sleep(env.duration / 2)
            env.probe_app.set(error_rate=1.0)
            probes.flipped_at = time.time()
            await asyncio.sleep(env.duration / 2)
            cpu1, wall1 = cpu_seconds(pid), time.time()
            memory = memory_mb(pid)
            controller.check_alive()
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
    finally:
        env.probe_app.set(error_rate=0.0)
        await admin.delete(NAMESPACES, name=ns)
    records = [json.loads(line) for line in record.read_text().splitlines()]
    return _summary(records, created, probes, window=(wall0, wall1), cpu=cpu1 - cpu0, memory=memory)


def _summary(records: list[list[Any]], created: dict[str, float], probes: Probes, *, window: tuple[float, float],
             cpu: float, memory: dict[str, float]) -> dict[str, float]:
    start, end = window
    load = [r for r in records if r[0] in created]
    steady = [r for r in load if r[2] is not None and start <= r[3] <= end]
    lags = [r[3] - r[2] for r in steady]
    first = [r[3] - created[r[0]] for r in load if r[2] is None]
    queries = [r[4] - r[3] for r in steady]
    in_window = [r for r in load if start <= r[3] <= end]
    aborts = []
    for name in probes.names:
        failed = next((r for r in records if r[1] == name and r[5] == "Failed"), None)
        if failed is not None and name in probes.weight_zero_at:
            aborts.append(probes.weight_zero_at[name] - failed[4])
    return {
        "runs": len(created), "measurements in window": len(in_window),
        "error measurements": sum(1 for r in in_window if r[5] == "Error"),
        "lag p50 s": percentile(lags, 50), "lag p99 s": percentile(lags, 99),
        "lag max s": max(lags, default=float("nan")),
        "create->first p50 s": percentile(first, 50), "create->first p99 s": percentile(first, 99),
        "query p50 s": percentile(queries, 50), "query p99 s": percentile(queries, 99),
        "cpu % of a core": 100 * cpu / (end - start),
        "cpu ms/measurement": 1000 * cpu / max(len(in_window), 1),
        "rss MB": memory.get("VmRSS", float("nan")), "peak rss MB": memory.get("VmHWM", float("nan")),
        "aborts seen": len(aborts), "abort->router max s": max(aborts, default=float("nan")),
    }


# -- main ---------------------------------------------------------------------------------------------------------


async def _bench(control_plane: ControlPlane, prometheus: Prometheus, apps: list[MetricsApp],
                 args: argparse.Namespace, workdir: Path) -> tuple[dict[str, float], dict[str, float]]:
    env = Env(kubeconfig=str(control_plane.kubeconfig), prometheus=prometheus,
              load_apps=tuple(a.name for a in apps[:-1]), probe_app=apps[-1], workdir=workdir,
              duration=args.duration, probes=args.probes, spread=args.spread)
    admin = await KubeClient.connect(kubeconfig=env.kubeconfig)
    try:
        base = await _case(admin, env, "bench-lag-base", args.baseline)
        case = await _case(admin, env, "bench-lag-case", args.runs)
    finally:
        await admin.close()
    return base, case


def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-lag-"))
    with contextlib.ExitStack() as stack:
        control_plane = stack.enter_context(ControlPlane())
        prometheus = stack.enter_context(Prometheus())
        apps = [stack.enter_context(MetricsApp(name=f"load{i}")) for i in range(LOAD_APPS)]
        apps.append(stack.enter_context(MetricsApp(name="probe")))
        for app in apps:
            prometheus.add_target(app.address, {"app": app.name})
        for app in apps:
            prometheus.wait_for_series(f'http_requests_total{{app="{app.name}"}}', timeout=60)
        base, case = asyncio.run(_bench(control_plane, prometheus, apps, args, workdir))
    print(f"{'metric':<24}{'baseline':>12}{'case':>12}{'ratio':>8}")
    for key, value in base.items():
        ratio = case[key] / value if value else float("nan")
        print(f"{key:<24}{value:>12.3f}{case[key]:>12.3f}{ratio:>8.2f}")
    print(f"target: lag p99 < 1 s with {args.runs} runs: {'met' if case['lag p99 s'] < 1 else 'NOT met'}; "
          f"abort->router max < 1 s: {'met' if case['abort->router max s'] < 1 else 'NOT met'}")
    print(f"controller logs and measurement records: {workdir}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="concurrent AnalysisRuns in the case")
    parser.add_argument("--baseline", type=int, default=10, help="concurrent AnalysisRuns in the baseline")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds each case runs")
    parser.add_argument("--probes", type=int, default=3, help="Rollouts whose abort is timed, per case")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="seconds over which to spread creating the runs (default 0: as fast as possible)")
    main(parser.parse_args())
