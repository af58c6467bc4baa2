"""The controller running as the chart's ServiceAccount under exactly the RBAC the chart renders (charts/sluice is the
single source of what sluice may do): it completes a canary with a step analysis against the real Prometheus, also
with a Prometheus header read from a Secret when the chart is told templates reference Secrets; the same identity is
refused Secrets, namespaces it does not watch and kinds sluice does not manage. Take away its right to patch
VirtualServices and it reports the failure as a Warning Event on the Rollout, backs off, keeps traffic where it was,
and stays alive."""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import pytest

from devcluster import ControlPlane, helm
from devcluster.helm import Json
from rollout.kube import (
    ANALYSISRUNS,
    ANALYSISTEMPLATES,
    EVENTS,
    NAMESPACES,
    REPLICASETS,
    ROLLOUTS,
    SECRETS,
    ApiError,
    KubeClient,
    Resource,
)
from tests.integration.kit import (
    PODS,
    ControllerProcess,
    create_app,
    rollout_body,
    set_image,
    wait_for,
    wait_status,
    weights,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

DEPLOYMENTS = Resource("apps", "v1", "deployments", "Deployment")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
# Flags about the pod (listen addresses, ports, certificate files): the test's controller serves on loopback.
POD_ONLY_FLAGS = ("--api-address", "--api-port", "--api-tls-cert", "--api-tls-key", "--metrics-address",
                  "--metrics-port")
SUCCESS_RATE = ('sum(rate(http_requests_total{app="{{args.app}}",code!~"5.."}[3s])) / '
                'sum(rate(http_requests_total{app="{{args.app}}"}[3s]))')


_releases = itertools.count()


class _ChartRules(Sequence[Json]):
    """The controller's rules in a watched namespace as the chart renders them (Secrets readable), rendered on first
    use: for tests that run the controller as a client-certificate user (`kit.grant`) rather than as the chart's
    ServiceAccount."""

    @staticmethod
    @functools.cache
    def _rules() -> tuple[Json, ...]:
        return helm.controller_rules({"analysis": {"secretRefs": True}})

    def __len__(self) -> int:
        return len(self._rules())

    @overload
    def __getitem__(self, index: int) -> Json: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Json]: ...
    def __getitem__(self, index: int | slice) -> Json | Sequence[Json]:
        return self._rules()[index]


SLUICE_RULES: Sequence[Json] = _ChartRules()


@dataclass(frozen=True)
class ChartIdentity:
    """The chart's controller identity installed for one test: a kubeconfig with its ServiceAccount's token, and
    the flags the chart's Deployment passes that make sense for a local controller."""

    kubeconfig: Path
    release_namespace: str
    args: list[str]
    rbac: list[Json]


Install = Callable[..., Awaitable[ChartIdentity]]


def local_flags(deployment: Json, *, namespace: str) -> list[str]:
    """The chart's controller flags minus those about the pod and the namespace ControllerProcess passes itself; the
    metrics and probe listener moves to a free loopback port."""
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[0] == "controller", args
    kept = [a for a in args[1:] if not a.startswith(POD_ONLY_FLAGS) and a != f"--namespace={namespace}"]
    if any(a.startswith("--metrics-port") for a in args):
        kept += ["--metrics-address=127.0.0.1", "--metrics-port=0"]
    return kept


def _without_virtual_service_patch(docs: list[Json]) -> list[Json]:
    for doc in docs:
        for rule in doc.get("rules") or []:
            if "virtualservices" in rule["resources"]:
                rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    return docs


@pytest.fixture
def release_namespace(control_plane: ControlPlane, namespace: str) -> Iterator[str]:
    """Where the chart is "installed" (its ServiceAccount and Lease): not a namespace the controller watches."""
    name = f"{namespace}-sys"[:63].rstrip("-")
    control_plane.api.request("POST", "/api/v1/namespaces", body={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    control_plane.api.raw("DELETE", f"/api/v1/namespaces/{name}")


@pytest.fixture
async def install_chart_rbac(control_plane: ControlPlane, release_namespace: str,
                             tmp_path: Path) -> AsyncIterator[Install]:
    """`await install(watch=[...], values={...}, edit=fn)`: render the chart for those namespaces, apply the
    controller's ServiceAccount, Roles, ClusterRoles and bindings as rendered (after `edit`, if given), and mint a
    token for the ServiceAccount. Cluster-scoped objects are deleted after the test."""
    installed: list[Json] = []

    def install_sync(watch: list[str], values: Json, edit: Callable[[list[Json]], list[Json]] | None) -> ChartIdentity:
        release = f"sluice-{os.getpid() % 1000}-{next(_releases)}"
        docs = helm.render(release=release, namespace=release_namespace,
                           values={**values, "watchNamespaces": watch})
        rbac = helm.controller_rbac(docs)
        if edit is not None:
            rbac = edit(rbac)
        installed.extend(rbac)
        helm.apply(control_plane.api, rbac)
        [account] = helm.find(rbac, "ServiceAccount")
        kubeconfig = helm.service_account_kubeconfig(
            control_plane, namespace=release_namespace, name=account["metadata"]["name"],
            path=tmp_path / f"{release}.kubeconfig")
        [deployment] = helm.find(docs, "Deployment")
        return ChartIdentity(kubeconfig=kubeconfig, release_namespace=release_namespace,
                             args=local_flags(deployment, namespace=watch[0]), rbac=rbac)

    async def install(*, watch: list[str], values: Json | None = None,
                      edit: Callable[[list[Json]], list[Json]] | None = None) -> ChartIdentity:
        return await asyncio.to_thread(install_sync, watch, values or {}, edit)

    yield install
    cluster_scoped = [d for d in installed if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    await asyncio.to_thread(helm.delete, control_plane.api, cluster_scoped)


@pytest.fixture
def start_controller(namespace: str, tmp_path: Path) -> Iterator[Callable[[ChartIdentity], ControllerProcess]]:
    started: list[ControllerProcess] = []

    def start(identity: ChartIdentity) -> ControllerProcess:
        proc = ControllerProcess(kubeconfig=identity.kubeconfig, namespace=namespace, extra_args=identity.args,
                                 log_path=tmp_path / "controller.log")
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop_and_show_log()


@pytest.fixture
async def as_controller() -> AsyncIterator[Callable[[ChartIdentity], Awaitable[KubeClient]]]:
    clients: list[KubeClient] = []

    async def connect(identity: ChartIdentity) -> KubeClient:
        clients.append(await KubeClient.connect(kubeconfig=str(identity.kubeconfig)))
        return clients[-1]

    yield connect
    for client in clients:
        await client.close()


def analysis_template(name: str, metric: Json, *, args: Sequence[str] = ()) -> Json:
    return {"apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": name},
            "spec": {"args": [{"name": a} for a in args], "metrics": [metric]}}


async def test_the_charts_rbac_is_enough_for_a_canary_with_analysis(
        kube: KubeClient, namespace: str, install_chart_rbac: Install, start_controller: Any, prometheus: Any,
        start_metrics_app: Any) -> None:
    ns, app = namespace, start_metrics_app(error_rate=0.0)
    identity = await install_chart_rbac(watch=[ns])
    start_controller(identity)
    await kube.create(ANALYSISTEMPLATES, analysis_template("success-rate", {
        "name": "success-rate", "interval": "1s", "count": 2, "successCondition": "result[0] >= 0.95",
        "provider": {"prometheus": {"address": prometheus.url, "query": SUCCESS_RATE, "timeout": "2s"}}},
        args=["app"]), namespace=ns)
    body = rollout_body(steps=[
        {"setWeight": 20},
        {"analysis": {"templates": [{"templateName": "success-rate"}], "args": [{"name": "app", "value": app.name}]}},
        {"setWeight": 60},
    ])
    await create_app(kube, ns, body)
    v1 = (await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy"))["stableHash"]
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                      what="v2 promoted through the analysis step", timeout=90)
    assert await weights(kube, ns) == (100, 0)
    runs, _ = await kube.list(ANALYSISRUNS, namespace=ns)
    assert [r["status"]["phase"] for r in runs] == ["Successful"]
    if "--leader-elect" in identity.args:
        leases, _ = await kube.list(LEASES, namespace=identity.release_namespace)
        assert [lease["metadata"]["name"] for lease in leases], "the controller took no Lease"


async def test_the_charts_rbac_is_enough_for_analysis_with_secret_headers(
        kube: KubeClient, namespace: str, install_chart_rbac: Install, start_controller: Any,
        prometheus: Any) -> None:
    ns = namespace
    identity = await install_chart_rbac(watch=[ns], values={"analysis": {"secretRefs": True}})
    start_controller(identity)
    await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prom-auth"},
                                "stringData": {"header": "Bearer not-checked-by-this-prometheus"}}, namespace=ns)
    await kube.create(ANALYSISTEMPLATES, analysis_template("always", {
        "name": "one", "successCondition": "result[0] == 1", "provider": {"prometheus": {
            "address": prometheus.url, "query": "vector(1)",
            "headers": [{"name": "Authorization",
                         "valueFrom": {"secretKeyRef": {"name": "prom-auth", "key": "header"}}}]}}}), namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "always"}]}},
                               {"setWeight": 60}])
    await create_app(kube, ns, body)
    v1 = (await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="Healthy"))["stableHash"]
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                      what="promoted through the analysis step")
    runs, _ = await kube.list(ANALYSISRUNS, namespace=ns)
    assert [r["status"]["phase"] for r in runs] == ["Successful"]


async def _status_of(call: Awaitable[Any]) -> int:
    try:
        await call
    except ApiError as exc:
        return exc.status
    return 200


@pytest.mark.parametrize("secret_refs", [False, True])
async def test_the_charts_identity_is_refused_what_sluice_does_not_need(
        kube: KubeClient, namespace: str, install_chart_rbac: Install, as_controller: Any,
        secret_refs: bool) -> None:
    ns = namespace
    elsewhere = f"{ns}-elsewhere"[:63]
    await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": elsewhere}})
    try:
        for where in (ns, elsewhere):
            await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                                        "data": {"password": base64.b64encode(b"hunter2").decode()}},
                              namespace=where)
        identity = await install_chart_rbac(watch=[ns], values={"analysis": {"secretRefs": secret_refs}})
        client = await as_controller(identity)
        replica_set = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "intruder"},
                       "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "x"}},
                                "template": {"metadata": {"labels": {"app": "x"}},
                                             "spec": {"containers": [{"name": "x", "image": "x:1"}]}}}}
        attempts: dict[str, Awaitable[Any]] = {
            "list Secrets in the watched namespace": client.list(SECRETS, namespace=ns),
            "list Secrets everywhere": client.list(SECRETS),
            "get a Secret outside the watched namespaces": client.get(SECRETS, name="db", namespace=elsewhere),
            "create a Rollout outside the watched namespaces": client.create(
                ROLLOUTS, rollout_body(), namespace=elsewhere),
            "create a ReplicaSet outside the watched namespaces": client.create(
                REPLICASETS, replica_set, namespace=elsewhere),
            "list Rollouts outside the watched namespaces": client.list(ROLLOUTS, namespace=elsewhere),
            "list Deployments": client.list(DEPLOYMENTS, namespace=ns),
            "create a ConfigMap": client.create(CONFIGMAPS, {"apiVersion": "v1", "kind": "ConfigMap",
                                                             "metadata": {"name": "x"}}, namespace=ns),
            "list Pods": client.list(PODS, namespace=ns),
            "create a Rollout (sluice only patches them)": client.create(ROLLOUTS, rollout_body(), namespace=ns),
            "delete a Service": client.delete(Resource("", "v1", "services", "Service"), name="x", namespace=ns),
        }
        if not secret_refs:
            attempts["get a Secret in the watched namespace"] = client.get(SECRETS, name="db", namespace=ns)
        outcomes = {what: await _status_of(call) for what, call in attempts.items()}
        assert outcomes == dict.fromkeys(attempts, 403)
        # What it needs works with the same token (so the refusals above are RBAC, not a broken token).
        allowed: dict[str, Awaitable[Any]] = {
            "list Rollouts in the watched namespace": client.list(ROLLOUTS, namespace=ns),
            "list ReplicaSets in the watched namespace": client.list(REPLICASETS, namespace=ns),
        }
        if secret_refs:
            allowed["get a Secret in the watched namespace"] = client.get(SECRETS, name="db", namespace=ns)
        assert {what: await _status_of(call) for what, call in allowed.items()} == dict.fromkeys(allowed, 200)
    finally:
        await kube.delete(NAMESPACES, name=elsewhere)


async def test_forbidden_write_is_reported_as_an_event_and_retried(
        kube: KubeClient, namespace: str, install_chart_rbac: Install, start_controller: Any) -> None:
    identity = await install_chart_rbac(watch=[namespace], edit=_without_virtual_service_patch)
    restricted = start_controller(identity)
    await create_app(kube, namespace)
    await wait_status(kube, namespace, lambda s: s.get("phase") == "Healthy", what="Healthy (no weight to write)")
    await set_image(kube, namespace, "registry.example/web:2")

    async def failure_events() -> list[Json]:
        items, _ = await kube.list(EVENTS, namespace=namespace)
        return [e for e in items if e["reason"] == "ReconcileFailed"]

    events = await wait_for(failure_events, what="a ReconcileFailed Event", timeout=60)
    assert events[0]["type"] == "Warning"
    assert "forbidden" in events[0]["message"]
    assert "virtualservices" in events[0]["message"]
    assert await weights(kube, namespace) == (100, 0)
    assert restricted.alive
