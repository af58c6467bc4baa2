"""The local demo behind `hack/demo.sh`: a real control plane, the sluice controller, a Rollout walking its steps.

It applies examples/rollout.yaml, waits for the first version to be Healthy, sets a new image (what CI does), and
prints every change of the Rollout's status and of the VirtualService weights until the new version is Healthy.
At the indefinite pause it resumes the rollout the way an SRE would today (`kubectl patch ... pauseConditions`).
Everything it starts is stopped on exit, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devcluster.controlplane import ControlPlane
from rollout.kube import EVENTS, NAMESPACES, ROLLOUTS, SERVICES, VIRTUALSERVICES, KubeClient, Resource

HERE = Path(__file__).resolve().parent
NS = "demo"
KINDS: dict[str, Resource] = {"Service": SERVICES, "VirtualService": VIRTUALSERVICES, "Rollout": ROLLOUTS}


def say(start: float, text: str) -> None:
    print(f"[{time.monotonic() - start:6.1f}s] {text}", flush=True)


async def snapshot(kube: KubeClient) -> tuple[str, Any]:
    ro = await kube.get(ROLLOUTS, name="web", namespace=NS)
    vs = await kube.get(VIRTUALSERVICES, name="web", namespace=NS)
    st = ro.get("status") or {}
    split = {d["destination"]["host"]: d.get("weight", 0) for d in vs["spec"]["http"][0]["route"]}
    line = (f"{st.get('phase', '-'):<11} step {st.get('stepDisplay', '-'):<5} "
            f"traffic stable {split.get('web-stable')}% / canary {split.get('web-canary')}%  "
            f"pods stable {st.get('stableAvailableReplicas', 0)} canary {st.get('canaryAvailableReplicas', 0)}  "
            f"| {st.get('message', '')}")
    return line, st


async def new_events(kube: KubeClient, seen: set[str]) -> list[str]:
    """The Rollout's Events not printed yet, oldest first: every scale, weight change and step, even quick ones."""
    items, _ = await kube.list(EVENTS, namespace=NS)
    fresh = [e for e in items if e["metadata"]["uid"] not in seen and e["involvedObject"]["kind"] == "Rollout"]
    seen.update(e["metadata"]["uid"] for e in fresh)
    fresh.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))  # write order; timestamps are whole seconds
    return [f"    event {e['reason']}: {e['message']}" for e in fresh]


async def walk(kube: KubeClient, start: float, *, seen: set[str], until: Any, limit: float = 180) -> dict[str, Any]:
    last = ""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        for event in await new_events(kube, seen):
            say(start, event)
        line, st = await snapshot(kube)
        if line != last:
            say(start, line)
            last = line
        if until(st):
            return dict(st)
        if st.get("phase") == "Paused" and st.get("pauseConditions") and "until resumed" in st.get("message", ""):
            say(start, "an SRE looks at the canary and resumes: kubectl patch rollout web --subresource=status "
                "--type=merge -p '{\"status\":{\"pauseConditions\":null}}'")
            await kube.patch(ROLLOUTS, name="web", namespace=NS, subresource="status",
                             patch={"status": {"pauseConditions": None}})
        await asyncio.sleep(0.5)
    raise SystemExit("the demo rollout did not finish in time; see the controller log above")


async def demo(control_plane: ControlPlane, start: float) -> None:
    kube = await KubeClient.connect(kubeconfig=str(control_plane.kubeconfig))
    try:
        await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        for doc in yaml.safe_load_all((HERE / "rollout.yaml").read_text()):
            await kube.create(KINDS[doc["kind"]], doc, namespace=NS)
            say(start, f"applied {doc['kind']} {doc['metadata']['name']}")
        seen: set[str] = set()
        st = await walk(kube, start, seen=seen, until=lambda s: s.get("phase") == "Healthy")
        say(start, f"first version {st['stableHash']} is Healthy; CI pushes registry.example/web:1.1.0")
        await kube.patch(ROLLOUTS, name="web", namespace=NS, patch_type="json", patch=[
            {"op": "replace", "path": "/spec/template/spec/containers/0/image",
             "value": "registry.example/web:1.1.0"}])
        old = st["stableHash"]
        st = await walk(kube, start, seen=seen,
                        until=lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != old)
        say(start, f"new version {st['stableHash']} is Healthy and takes all traffic; the demo is done")
    finally:
        await kube.close()


def main() -> int:
    start = time.monotonic()
    say(start, "starting a local control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)")
    with ControlPlane() as control_plane:
        say(start, f"control plane up at {control_plane.server}; starting `sluice controller`")
        log_path = control_plane.workdir / "sluice-controller.log"
        with log_path.open("wb") as log:
            controller = subprocess.Popen(
                [sys.executable, "-m", "rollout", "controller", "--kubeconfig", str(control_plane.kubeconfig),
                 "--namespace", NS], stdout=log, stderr=subprocess.STDOUT)
        try:
            asyncio.run(demo(control_plane, start))
        except BaseException:
            print("--- controller log ---\n" + log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            raise
        finally:
            controller.terminate()
            controller.wait(10)
        say(start, "stopping the controller and the control plane")
    return 0


if __name__ == "__main__":
    sys.exit(main())
