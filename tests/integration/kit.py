"""Helpers for integration tests: make the objects a user would apply, read what the controller did, poll with
deadlines (never fixed sleeps), and run the real controller as a separate process that tests can kill and restart.
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rollout.auth import AuthError, Reviewer, User
from rollout.kube import REPLICASETS, ROLLOUTS, SERVICES, VIRTUALSERVICES, Body, KubeClient, Resource
from strategies.model import HASH_LABEL

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


async def wait_for(probe: Callable[[], Awaitable[T | None]], *, timeout: float = 60.0, what: str = "condition",
                   interval: float = 0.2) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")


# Kinds the tests create or read that sluice itself never touches.
PODS = Resource("", "v1", "pods", "Pod")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False)

RESOURCES: Body = {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}


def pod_template(image: str, *, node_selector: dict[str, str] | None = None) -> Body:
    spec: Body = {
        # Passes the guardrails' enforced rules (docs/policy.md): resources and a readiness probe (kwok marks pods
        # Ready without running probes).
        "containers": [{"name": "web", "image": image, "ports": [{"containerPort": 8080}], "resources": RESOURCES,
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}}}],
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    }
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"metadata": {"labels": {"app": "web"}}, "spec": spec}


DEFAULT_STEPS: list[Body] = [
    {"setWeight": 10}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}, {"setWeight": 100}, {"pause": {}},
]


def rollout_body(name: str = "web", *, replicas: int = 4, steps: list[Body] | None = None,
                 image: str = "registry.example/web:1", routes: list[str] | None = None, **spec: Any) -> Body:
    return {
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": pod_template(image),
            "strategy": {"canary": {
                "stableService": "web-stable",
                "canaryService": "web-canary",
                "scaleDownDelaySeconds": 2,
                "abortScaleDownDelaySeconds": 2,
                "trafficRouting": {"istio": {"virtualService": {"name": "web",
                                                                "routes": routes if routes is not None
                                                                else ["primary"]}}},
                "steps": copy.deepcopy(DEFAULT_STEPS if steps is None else steps),
            }},
            **spec,
        },
    }


def service_body(name: str, selector: dict[str, str] | None = None) -> Body:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector or {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}


def virtual_service_body(name: str = "web", route: str = "primary") -> Body:
    return {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
        "spec": {"hosts": ["web.example"], "http": [
            {"name": route, "route": [
                {"destination": {"host": "web-stable"}, "weight": 100},
                {"destination": {"host": "web-canary"}, "weight": 0},
            ]},
            {"name": "other", "route": [{"destination": {"host": "unrelated"}}]},
        ]},
    }


async def create_app(kube: KubeClient, ns: str, rollout: Body | None = None, *, virtual_service: bool = True,
                     services: bool = True) -> Body:
    """The user's objects: two Services, a VirtualService, and the Rollout."""
    if services:
        for svc in ("web-stable", "web-canary"):
            await kube.create(SERVICES, service_body(svc), namespace=ns)
    if virtual_service:
        await kube.create(VIRTUALSERVICES, virtual_service_body(), namespace=ns)
    return await kube.create(ROLLOUTS, rollout or rollout_body(), namespace=ns)


async def get_rollout(kube: KubeClient, ns: str, name: str = "web") -> Body:
    return await kube.get(ROLLOUTS, name=name, namespace=ns)


async def status(kube: KubeClient, ns: str, name: str = "web") -> Body:
    return (await get_rollout(kube, ns, name)).get("status") or {}


def condition(st: Body, type_: str) -> Body:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


async def weights(kube: KubeClient, ns: str, route: str = "primary") -> tuple[int, int]:
    """(stable, canary) weights of the named route of VirtualService `web`."""
    vs = await kube.get(VIRTUALSERVICES, name="web", namespace=ns)
    http = next(r for r in vs["spec"]["http"] if r.get("name") == route)
    by_host = {d["destination"]["host"]: int(d.get("weight", 0)) for d in http["route"]}
    return by_host["web-stable"], by_host["web-canary"]


async def selector_hash(kube: KubeClient, ns: str, service: str) -> str | None:
    svc = await kube.get(SERVICES, name=service, namespace=ns)
    value = (svc["spec"].get("selector") or {}).get(HASH_LABEL)
    return str(value) if value is not None else None


async def replica_sets(kube: KubeClient, ns: str) -> dict[str, Body]:
    """ReplicaSets of the namespace by pod-template hash."""
    items, _ = await kube.list(REPLICASETS, namespace=ns)
    return {rs["metadata"]["labels"][HASH_LABEL]: rs for rs in items if HASH_LABEL in rs["metadata"]["labels"]}


async def set_image(kube: KubeClient, ns: str, image: str, name: str = "web") -> None:
    await kube.patch(ROLLOUTS, name=name, namespace=ns, patch_type="json",
                     patch=[{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}])


async def patch_status(kube: KubeClient, ns: str, status_patch: Body, name: str = "web") -> None:
    await kube.patch(ROLLOUTS, name=name, namespace=ns, subresource="status", patch={"status": status_patch})


async def resume(kube: KubeClient, ns: str, name: str = "web") -> None:
    await patch_status(kube, ns, {"pauseConditions": None}, name)


async def wait_status(kube: KubeClient, ns: str, check: Callable[[Body], bool], *, what: str,
                      timeout: float = 60.0, name: str = "web") -> Body:
    async def probe() -> Body | None:
        st = await status(kube, ns, name)
        return st if check(st) else None

    try:
        return await wait_for(probe, timeout=timeout, what=what)
    except AssertionError as exc:
        st = await status(kube, ns, name)
        raise AssertionError(f"{exc}\nstatus: phase={st.get('phase')} step={st.get('currentStepIndex')} "
                             f"message={st.get('message')!r} conditions={st.get('conditions')}") from None


def paused_at(index: int) -> Callable[[Body], bool]:
    return lambda st: st.get("currentStepIndex") == index and st.get("phase") == "Paused"


class ControllerProcess:
    """The real controller (`python -m rollout controller`) in its own process, watching one namespace."""

    def __init__(self, *, kubeconfig: Path, namespace: str, log_path: Path,
                 extra_args: list[str] | None = None) -> None:
        self._args = [sys.executable, "-m", "rollout", "controller", "--kubeconfig", str(kubeconfig),
                      "--namespace", namespace, "--resync-seconds", "15", "--log-format", "json",
                      "--log-level", "info", "--api-address", "127.0.0.1", "--api-port", "0",
                      "--metrics-address", "127.0.0.1", "--metrics-port", "0", *(extra_args or [])]
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(self._args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"})
        log.close()

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as when a node dies."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    async def api_url(self, timeout: float = 30.0) -> str:
        """The operator API's base URL (a free port, announced in the log; the latest start's)."""
        pattern = re.compile(r"operator API listening on (https?://[\d.]+:\d+)")

        async def announced() -> str | None:
            text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            found = pattern.findall(text)
            return found[-1] if found else None

        return await wait_for(announced, timeout=timeout, what="the operator API to listen")

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop_and_show_log(self, name: str = "controller", *, lines: int = 60) -> None:
        """Teardown: stop it, then print the end of its log (pytest shows it with a failure), saying whether it was
        still running (a controller that died during the test is the first thing to know)."""
        alive = self.alive
        self.stop()
        print(f"--- {name} log (alive at teardown: {alive}) ---\n{self.log_tail(lines)}")


# -- blue-green ----------------------------------------------------------------------------------------------------


def blue_green_body(name: str = "web", *, replicas: int = 4, image: str = "registry.example/web:1",
                    **blue_green: Any) -> Body:
    """A blue-green Rollout behind the Services web-active and web-preview; keyword arguments are blueGreen fields
    (the scale-down delays default to 2 s)."""
    body = rollout_body(name, replicas=replicas, image=image)
    body["spec"]["strategy"] = {"blueGreen": {"activeService": "web-active", "previewService": "web-preview",
                                              "scaleDownDelaySeconds": 2, "abortScaleDownDelaySeconds": 2,
                                              **blue_green}}
    return body


async def create_blue_green_app(kube: KubeClient, ns: str, rollout: Body) -> Body:
    """The user's objects for blue-green: the active and preview Services, and the Rollout."""
    for svc in ("web-active", "web-preview"):
        await kube.create(SERVICES, service_body(svc), namespace=ns)
    return await kube.create(ROLLOUTS, rollout, namespace=ns)


async def blue_green_selectors(kube: KubeClient, ns: str) -> tuple[str | None, str | None]:
    """The revisions (pod-template hashes) the active and preview Services select."""
    return await selector_hash(kube, ns, "web-active"), await selector_hash(kube, ns, "web-preview")


async def wait_allowed(kube: KubeClient, user: User, *, verb: str, namespace: str) -> None:
    """RBAC sees a new binding through its informer a moment later: poll with an uncached reviewer."""
    fresh = Reviewer(kube, cache_seconds=0)

    async def allowed() -> bool:
        try:
            await fresh.authorize(user, verb=verb, namespace=namespace)
        except AuthError:
            return False
        return True

    await wait_for(allowed, timeout=30, what=f"{user.name} allowed to {verb}")


async def grant(kube: KubeClient, ns: str, user: str, rules: Sequence[Body]) -> None:
    """`rules` for the client-certificate `user` in `ns`, through a ClusterRole named `<ns>-sluice` (the test deletes
    it) and a RoleBinding in `ns`."""
    role = f"{ns}-sluice"
    await kube.create(CLUSTER_ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                      "metadata": {"name": role}, "rules": list(rules)})
    await kube.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "sluice"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }, namespace=ns)
