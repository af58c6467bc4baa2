"""The controller running as a user with only the permissions sluice needs (what the chart's ClusterRole will
grant): it walks a rollout, also through an analysis step whose Prometheus header comes from a Secret; take away its
right to patch VirtualServices and it reports the failure as a Warning Event on the Rollout, backs off, keeps traffic
where it was, and stays alive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rollout.kube import ANALYSISRUNS, ANALYSISTEMPLATES, EVENTS, SECRETS, KubeClient, Resource
from tests.integration.kit import (
    ControllerProcess,
    create_app,
    paused_at,
    rollout_body,
    set_image,
    wait_for,
    wait_status,
    weights,
)

CLUSTER_ROLES = Resource("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False)
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")

SLUICE_RULES: list[dict[str, Any]] = [
    {"apiGroups": ["sluice.dev"], "resources": ["rollouts"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["sluice.dev"], "resources": ["rollouts/status"], "verbs": ["patch"]},
    {"apiGroups": ["sluice.dev"], "resources": ["analysisruns"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": ["sluice.dev"], "resources": ["analysisruns/status"], "verbs": ["patch"]},
    {"apiGroups": ["sluice.dev"], "resources": ["analysistemplates", "clusteranalysistemplates"], "verbs": ["get"]},
    # Header values for metric providers; read one by one when measuring, never listed or watched.
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # The operator API: the cluster authenticates callers and decides what they may do; operations are patches.
    {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
    {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
    {"apiGroups": ["apps"], "resources": ["replicasets"],
     "verbs": ["get", "list", "watch", "create", "patch", "delete"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["get", "patch"]},
    {"apiGroups": ["networking.istio.io"], "resources": ["virtualservices"], "verbs": ["get", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]


async def _grant(kube: KubeClient, ns: str, user: str, rules: list[dict[str, Any]]) -> None:
    role = f"{ns}-sluice"
    await kube.create(CLUSTER_ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                                      "metadata": {"name": role}, "rules": rules})
    await kube.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "sluice"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
    }, namespace=ns)


@pytest.fixture
def restricted(control_plane: Any, namespace: str, tmp_path: Path) -> Iterator[ControllerProcess]:
    kubeconfig = control_plane.client_kubeconfig(f"sluice-{namespace}", [])
    proc = ControllerProcess(kubeconfig=kubeconfig, namespace=namespace, log_path=tmp_path / "controller.log")
    yield proc
    proc.stop()
    print(f"--- controller log ---\n{proc.log_tail()}")


async def test_least_privilege_is_enough_to_walk_a_rollout(kube: KubeClient, namespace: str,
                                                          restricted: ControllerProcess) -> None:
    await _grant(kube, namespace, f"sluice-{namespace}", SLUICE_RULES)
    restricted.start()
    await create_app(kube, namespace)
    await wait_status(kube, namespace, lambda s: s.get("phase") == "Healthy", what="Healthy")
    await set_image(kube, namespace, "registry.example/web:2")
    await wait_status(kube, namespace, paused_at(1), what="first step")
    assert await weights(kube, namespace) == (90, 10)
    await kube.delete(CLUSTER_ROLES, name=f"{namespace}-sluice")


async def test_least_privilege_is_enough_for_analysis_with_secret_headers(
        kube: KubeClient, namespace: str, restricted: ControllerProcess, prometheus: Any) -> None:
    ns = namespace
    await _grant(kube, ns, f"sluice-{ns}", SLUICE_RULES)
    restricted.start()
    await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prom-auth"},
                                "stringData": {"header": "Bearer not-checked-by-this-prometheus"}}, namespace=ns)
    await kube.create(ANALYSISTEMPLATES, {
        "apiVersion": "sluice.dev/v1alpha1", "kind": "AnalysisTemplate", "metadata": {"name": "always"},
        "spec": {"metrics": [{"name": "one", "successCondition": "result[0] == 1", "provider": {"prometheus": {
            "address": prometheus.url, "query": "vector(1)",
            "headers": [{"name": "Authorization",
                         "valueFrom": {"secretKeyRef": {"name": "prom-auth", "key": "header"}}}]}}}]},
    }, namespace=ns)
    body = rollout_body(steps=[{"setWeight": 20}, {"analysis": {"templates": [{"templateName": "always"}]}},
                               {"setWeight": 60}])
    await create_app(kube, ns, body)
    v1 = (await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="Healthy"))["stableHash"]
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                      what="promoted through the analysis step")
    runs, _ = await kube.list(ANALYSISRUNS, namespace=ns)
    assert [r["status"]["phase"] for r in runs] == ["Successful"]
    await kube.delete(CLUSTER_ROLES, name=f"{ns}-sluice")


async def test_forbidden_write_is_reported_as_an_event_and_retried(kube: KubeClient, namespace: str,
                                                                   restricted: ControllerProcess) -> None:
    rules = [r if r["resources"] != ["virtualservices"] else {**r, "verbs": ["get"]} for r in SLUICE_RULES]
    await _grant(kube, namespace, f"sluice-{namespace}", rules)
    restricted.start()
    await create_app(kube, namespace)
    await wait_status(kube, namespace, lambda s: s.get("phase") == "Healthy", what="Healthy (no weight to write)")
    await set_image(kube, namespace, "registry.example/web:2")

    async def failure_events() -> list[dict[str, Any]]:
        items, _ = await kube.list(EVENTS, namespace=namespace)
        return [e for e in items if e["reason"] == "ReconcileFailed"]

    events = await wait_for(failure_events, what="a ReconcileFailed Event", timeout=60)
    assert events[0]["type"] == "Warning"
    assert "forbidden" in events[0]["message"]
    assert "virtualservices" in events[0]["message"]
    assert await weights(kube, namespace) == (100, 0)
    assert restricted.alive
    await kube.delete(CLUSTER_ROLES, name=f"{namespace}-sluice")
