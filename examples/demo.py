"""The local demo behind `hack/demo.sh`: a real control plane, the sluice controller and a real Prometheus; a Rollout
walks its steps, and metric analysis promotes a good version and aborts a bad one.

It starts Prometheus (devcluster.prometheus) scraping a metrics app that stands in for the app's traffic (series
labelled app="web"; devcluster.metrics_app), the control plane and `sluice controller`. It applies
examples/analysis-template.yaml and examples/rollout.yaml, the Rollout's `prometheus` arg pointing at the local
Prometheus instead of the in-cluster address the file names. Once the first version is Healthy it plays CI twice:

1. a good image: 10% -> pause 5s -> analysis (three measurements of the success rate) -> 50% -> an indefinite
   pause, which the demo resumes the way an SRE would today (`kubectl patch ... pauseConditions`) -> 100%, Healthy;
2. a bad image, whose requests fail half the time (the metrics app's error rate set to 0.5): the analysis fails its
   first measurement and sluice aborts on its own, all traffic back on the stable version.

It prints every change of the Rollout's status and of the VirtualService weights, the Rollout's Events, and each
AnalysisRun's phase and latest measurement. Everything it starts is stopped on exit, also on errors, Ctrl-C and
SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster.controlplane import ControlPlane
from devcluster.metrics_app import MetricsApp
from devcluster.prometheus import Prometheus
from rollout.kube import (
    ANALYSISRUNS,
    ANALYSISTEMPLATES,
    EVENTS,
    NAMESPACES,
    ROLLOUTS,
    SERVICES,
    VIRTUALSERVICES,
    Body,
    KubeClient,
    Resource,
)

HERE = Path(__file__).resolve().parent
NS = "demo"
APP = "web"  # the Rollout's name and the `app` label of the metrics app's series
PROMETHEUS_ARG = "prometheus"  # the analysis arg that carries the Prometheus address
KINDS: dict[str, Resource] = {"Service": SERVICES, "VirtualService": VIRTUALSERVICES, "Rollout": ROLLOUTS,
                              "AnalysisTemplate": ANALYSISTEMPLATES}
SCRAPED = f'sum(rate(http_requests_total{{app="{APP}"}}[5s])) > 0'
RESUME = ("kubectl patch rollout web --subresource=status --type=merge "
          "-p '{\"status\":{\"pauseConditions\":null}}'")


class DemoError(RuntimeError):
    """The demo could not go on; the controller's log is printed with it."""


@dataclass
class Screen:
    """What the demo has printed, so each poll prints only what changed, and the controller process it watches."""

    start: float
    events: set[str] = field(default_factory=set)
    runs: dict[str, str] = field(default_factory=dict)
    status: str = ""
    controller: subprocess.Popen[bytes] | None = None  # watched: the demo stops if it exits

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f}s] {text}", flush=True)


def load(path: Path, *, prometheus_url: str) -> list[Body]:
    """The documents of an example file; in a Rollout, every analysis arg `prometheus` gets `prometheus_url`."""
    docs: list[Body] = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    for doc in docs:
        if doc["kind"] != "Rollout":
            continue
        canary = doc["spec"]["strategy"]["canary"]
        analyses = [step["analysis"] for step in canary.get("steps", []) if "analysis" in step]
        for analysis in [*analyses, *([canary["analysis"]] if "analysis" in canary else [])]:
            for arg in analysis.get("args", []):
                if arg["name"] == PROMETHEUS_ARG:
                    arg["value"] = prometheus_url
    return docs


@dataclass(frozen=True)
class Snapshot:
    line: str  # what is printed when it changes
    status: Body
    canary_weight: int


async def snapshot(kube: KubeClient) -> Snapshot:
    # The controller moves traffic before it writes the status that reports the step, so for a few milliseconds a
    # line may show the new weight next to the previous message.
    ro = await kube.get(ROLLOUTS, name=APP, namespace=NS)
    vs = await kube.get(VIRTUALSERVICES, name=APP, namespace=NS)
    st: Body = ro.get("status") or {}
    split = {d["destination"]["host"]: int(d.get("weight", 0)) for d in vs["spec"]["http"][0]["route"]}
    line = (f"{st.get('phase', '-'):<11} step {st.get('stepDisplay', '-'):<5} "
            f"traffic stable {split.get('web-stable')}% / canary {split.get('web-canary')}%  "
            f"pods stable {st.get('stableAvailableReplicas', 0)} canary {st.get('canaryAvailableReplicas', 0)}  "
            f"| {st.get('message', '')}")
    return Snapshot(line=line, status=st, canary_weight=split.get("web-canary", 0))


async def new_events(kube: KubeClient, seen: set[str]) -> list[str]:
    """The Rollout's Events not printed yet, oldest first: every scale, weight change and step, even quick ones."""
    items, _ = await kube.list(EVENTS, namespace=NS)
    fresh = [e for e in items if e["metadata"]["uid"] not in seen and e["involvedObject"]["kind"] == "Rollout"]
    seen.update(e["metadata"]["uid"] for e in fresh)
    fresh.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # write order; timestamps are whole seconds
    return [f"    event {e['reason']}: {e['message']}" for e in fresh]


def short(value: str) -> str:
    """A measured value for a line: numbers to 3 digits, a one-element vector as its element ("[1]" -> "1")."""
    try:
        parsed = json.loads(value)
    except ValueError:
        return value or "-"
    if isinstance(parsed, list) and len(parsed) == 1:
        parsed = parsed[0]
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        return f"{parsed:.3g}"
    return value


def run_line(run: Body) -> str:
    """`analysis <run>: <phase> <metric>=<latest value> (<measured>/<count>) ...`; why a run failed is in the
    Rollout's message and Events, printed too."""
    st: Body = run.get("status") or {}
    wanted = {m["name"]: m.get("count") for m in run["spec"].get("metrics", [])}
    parts = []
    for result in st.get("metricResults") or []:
        measurements = result.get("measurements") or []
        value = short(str(measurements[-1].get("value", ""))) if measurements else "-"
        count = wanted.get(result["name"])
        parts.append(f"{result['name']}={value} ({result.get('count', 0)}{f'/{count}' if count else ''})")
    return f"analysis {run['metadata']['name']}: {st.get('phase', 'Pending')} {' '.join(parts) or 'no measurement yet'}"


async def new_run_lines(kube: KubeClient, shown: dict[str, str]) -> list[str]:
    """A line for every AnalysisRun whose phase or latest measurement changed since the last poll."""
    items, _ = await kube.list(ANALYSISRUNS, namespace=NS)
    lines = []
    for run in sorted(items, key=lambda r: str(r["metadata"]["creationTimestamp"])):
        line = run_line(run)
        if shown.get(run["metadata"]["name"]) != line:
            shown[run["metadata"]["name"]] = line
            lines.append("    " + line)
    return lines


async def watch(kube: KubeClient, screen: Screen, *, until: Callable[[Snapshot], bool], limit: float = 120) -> Body:
    """Print what changes until `until(snapshot)`, and return the Rollout's status then; resume an indefinite pause
    (not an Inconclusive analysis) the way an SRE would."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if screen.controller is not None and (code := screen.controller.poll()) is not None:
            raise DemoError(f"the controller exited with code {code}")
        for line in [*await new_events(kube, screen.events), *await new_run_lines(kube, screen.runs)]:
            screen.say(line)
        now = await snapshot(kube)
        if now.line != screen.status:
            screen.say(now.line)
            screen.status = now.line
        if until(now):
            return now.status
        st = now.status
        if st.get("phase") == "Paused" and st.get("pauseConditions") and "until resumed" in st.get("message", ""):
            screen.say(f"an SRE looks at the canary and resumes: {RESUME}")
            await kube.patch(ROLLOUTS, name=APP, namespace=NS, subresource="status",
                             patch={"status": {"pauseConditions": None}})
        await asyncio.sleep(0.5)
    raise DemoError(f"the demo rollout did not get there in {limit:g}s; see the controller log above")


async def set_image(kube: KubeClient, image: str) -> None:
    await kube.patch(ROLLOUTS, name=APP, namespace=NS, patch_type="json", patch=[
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}])


async def demo(kube: KubeClient, screen: Screen, *, prometheus: Prometheus, app: MetricsApp) -> None:
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    for name in ("analysis-template.yaml", "rollout.yaml"):
        for doc in load(HERE / name, prometheus_url=prometheus.url):
            await kube.create(KINDS[doc["kind"]], doc, namespace=NS)
            screen.say(f"applied {doc['kind']} {doc['metadata']['name']} from examples/{name}")
    screen.say(f"  (the Rollout's analysis arg {PROMETHEUS_ARG} is {prometheus.url}, the local Prometheus, "
               "instead of the file's http://prometheus.monitoring:9090)")
    st = await watch(kube, screen, until=lambda s: s.status.get("phase") == "Healthy")
    first = st["stableHash"]
    series = await asyncio.to_thread(prometheus.wait_for_series, SCRAPED, 30)
    screen.say(f"first version {first} is Healthy; Prometheus sees {float(series[0]['value'][1]):.0f} requests/s "
               f"on app={APP}")

    screen.say("CI pushes registry.example/web:1.1.0 (a good version)")
    await set_image(kube, "registry.example/web:1.1.0")
    st = await watch(kube, screen, until=lambda s: s.status.get("phase") == "Healthy"
                     and s.status.get("stableHash") != first)
    good = st["stableHash"]
    screen.say(f"version {good} passed its analysis and is Healthy with all traffic")

    app.set(error_rate=0.5)
    screen.say("CI pushes registry.example/web:1.2.0, a bad version: half its requests fail "
               "(the metrics app's error rate is now 0.5)")
    await set_image(kube, "registry.example/web:1.2.0")
    st = await watch(kube, screen, until=lambda s: s.status.get("phase") == "Degraded"
                     and bool(s.status.get("abort")) and s.canary_weight == 0)
    screen.say(f"analysis aborted the bad version on its own: all traffic is back on {st['stableHash']}; "
               "the demo is done")


@contextlib.contextmanager
def controller(control_plane: ControlPlane) -> Iterator[subprocess.Popen[bytes]]:
    """`sluice controller` as a subprocess; its log's end is printed if the demo fails."""
    log_path = control_plane.workdir / "sluice-controller.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rollout", "controller", "--kubeconfig", str(control_plane.kubeconfig),
             "--namespace", NS, "--api-address", "127.0.0.1", "--api-port", "0", "--metrics-address", "127.0.0.1",
             "--metrics-port", "0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield process
    except Exception:
        print("--- controller log ---\n" + log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
        raise
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def connected(control_plane: ControlPlane, screen: Screen, *, prometheus: Prometheus, app: MetricsApp) -> None:
    kube = await KubeClient.connect(kubeconfig=str(control_plane.kubeconfig))
    try:
        await demo(kube, screen, prometheus=prometheus, app=app)
    finally:
        await kube.close()


def main() -> int:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    screen = Screen(start=time.monotonic())
    try:
        with contextlib.ExitStack() as stack:
            screen.say(f"starting Prometheus and a metrics app standing in for {APP}'s traffic (20 requests/s)")
            prometheus = stack.enter_context(Prometheus())
            app = stack.enter_context(MetricsApp(name=APP))
            prometheus.add_target(app.address, {"app": APP})
            screen.say(f"Prometheus at {prometheus.url} scrapes the metrics app at {app.address} as app={APP}")
            screen.say("starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)")
            control_plane = stack.enter_context(ControlPlane())
            screen.say(f"control plane up at {control_plane.server}; starting `sluice controller`")
            screen.controller = stack.enter_context(controller(control_plane))
            asyncio.run(connected(control_plane, screen, prometheus=prometheus, app=app))
            screen.say("stopping the controller, the control plane, the metrics app and Prometheus")
    except KeyboardInterrupt:
        screen.say("interrupted; everything the demo started is stopped")
        return 130
    except DemoError as error:
        screen.say(f"the demo failed: {error}")
        return 1
    screen.say("all stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
