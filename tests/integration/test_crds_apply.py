"""`sluice crds apply` on the real control plane: it upgrades an older Rollout CRD, as a Helm upgrade's hook does (a
status field the old schema pruned is kept afterwards; what the chart dropped goes, even fields another manager
created), reports what changed, and creates a CRD that does not exist yet and waits until it is Established.

The Rollout CRD is shared by the whole session: the test puts the session's CRD back in a `finally`, whatever
happens (pytest runs tests one at a time, so no other test sees the older one).
"""

from __future__ import annotations

import asyncio
import copy
import sys
from typing import Any

from rollout.installing import CRDS, apply_crds
from rollout.kube import ROLLOUTS, Body, KubeClient
from tests.integration.kit import REPO, rollout_body, wait_for

ROLLOUT_CRD = "rollouts.sluice.dev"
WALK = "spec.versions[v1alpha1].schema.openAPIV3Schema.properties.status.properties.walk"
LEGACY = "spec.versions[v1alpha1].schema.openAPIV3Schema.properties.status.properties.legacyCounter"


def _status_schema(crd: Body) -> dict[str, Any]:
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    properties: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    return properties


def _older(crd: Body) -> Body:
    """The CRD as an older chart had it: no status.walk yet, a status property and a category since dropped.

    The category matters most: `spec.versions` is replaced whole by any forced apply, but `spec.names` merges field
    by field, so without taking over what other managers own the category would stay."""
    old = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": crd["metadata"]["name"], "resourceVersion": crd["metadata"]["resourceVersion"]},
           "spec": copy.deepcopy(crd["spec"])}
    status = _status_schema(old)
    del status["walk"]
    status["legacyCounter"] = {"type": "integer"}
    assert "categories" not in old["spec"]["names"]
    old["spec"]["names"]["categories"] = ["sluice-legacy"]
    return old


async def _sluice(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rollout", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def _walk_after_write(kube: KubeClient, namespace: str, walk: int) -> Any:
    """Write status.walk and read it back: None while the served schema prunes it."""
    await kube.patch(ROLLOUTS, name="web", namespace=namespace, subresource="status", patch={"status": {"walk": walk}})
    body = await kube.get(ROLLOUTS, name="web", namespace=namespace)
    return (body.get("status") or {}).get("walk")


async def test_crds_apply_upgrades_an_older_rollout_crd(kube: KubeClient, namespace: str, control_plane: Any) -> None:
    session_crd = await kube.get(CRDS, name=ROLLOUT_CRD)
    try:
        # What Helm's first install of an older chart left: written by another manager (a PUT here), not by sluice.
        await kube.replace(CRDS, _older(session_crd), name=ROLLOUT_CRD)
        await kube.create(ROLLOUTS, rollout_body(), namespace=namespace)  # no controller: only this test writes
        await wait_for(lambda: _pruned(kube, namespace), timeout=30, what="the old schema to prune status.walk")

        code, out, err = await _sluice("crds", "apply", "--kubeconfig", str(control_plane.kubeconfig))
        assert code == 0, err
        assert f"customresourcedefinition/{ROLLOUT_CRD} updated" in out, out
        assert f"+ {WALK}" in out and f"- {LEGACY}" in out and "- spec.names.categories" in out, out
        assert out.rstrip().splitlines()[-1].startswith("4 CRDs Established"), out

        upgraded = await kube.get(CRDS, name=ROLLOUT_CRD)
        assert "walk" in _status_schema(upgraded) and "legacyCounter" not in _status_schema(upgraded)
        assert "categories" not in upgraded["spec"]["names"]
        owners = {e["manager"] for e in upgraded["metadata"]["managedFields"] if "f:spec" in e.get("fieldsV1", {})}
        assert owners == {"sluice"}, owners
        assert await wait_for(lambda: _walk_after_write(kube, namespace, 7), timeout=30,
                              what="status.walk to be kept by the upgraded CRD") == 7

        code, out, err = await _sluice("crds", "apply", "--kubeconfig", str(control_plane.kubeconfig))
        assert code == 0, err
        assert out.count(" unchanged\n") == 4 and " updated\n" not in out, out
    finally:
        current = await kube.get(CRDS, name=ROLLOUT_CRD)
        restored = {**{k: v for k, v in session_crd.items() if k != "status"},
                    "metadata": {"name": ROLLOUT_CRD, "resourceVersion": current["metadata"]["resourceVersion"],
                                 "labels": session_crd["metadata"].get("labels") or {},
                                 "annotations": session_crd["metadata"].get("annotations") or {}}}
        await kube.replace(CRDS, restored, name=ROLLOUT_CRD)


async def _pruned(kube: KubeClient, namespace: str) -> bool:
    return await _walk_after_write(kube, namespace, 3) is None


async def test_crds_apply_creates_a_missing_crd_and_waits_until_established(kube: KubeClient, namespace: str) -> None:
    group = f"{namespace}.test.sluice.dev"
    crd: Body = {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"spec": {"type": "object", "properties": {
                         "size": {"type": "integer"}}}}}}}]},
    }
    try:
        [created] = await apply_crds(kube, [crd], wait_seconds=30)
        assert created.action == "created"
        established = await kube.get(CRDS, name=created.name)
        assert any(c["type"] == "Established" and c["status"] == "True" for c in established["status"]["conditions"])

        [same] = await apply_crds(kube, [crd], wait_seconds=30)
        assert (same.action, same.paths) == ("unchanged", ())

        _sized = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        _sized["colour"] = {"type": "string"}
        [updated] = await apply_crds(kube, [crd], wait_seconds=30)
        assert updated.action == "updated"
        assert updated.paths == ("+ spec.versions[v1].schema.openAPIV3Schema.properties.spec.properties.colour",)
    finally:
        await kube.delete(CRDS, name=f"widgets.{group}")
