"""`sluice crds apply` without a cluster: the CRDs packaged with sluice are the chart's, other managers' ownership of
spec moves to sluice (so a dropped field can be removed), the report names what changed, and the command's errors
are one line with the client commands' exit codes. The real API server is in tests/integration/test_crds_apply.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from rollout import installing
from rollout.cli import main
from rollout.installing import Change, CrdError, differences, packaged_crds, take_over_spec, wait_established
from rollout.kube import ApiError, Body, KubeClient, Resource

CHART_CRDS = Path(__file__).resolve().parents[2] / "charts" / "sluice" / "crds"


def test_the_packaged_crds_are_the_charts() -> None:
    chart = [doc for path in sorted(CHART_CRDS.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    assert packaged_crds() == chart
    assert {doc["metadata"]["name"] for doc in chart} >= {"rollouts.sluice.dev", "analysisruns.sluice.dev"}


# -- taking over spec ------------------------------------------------------------------------------------------


def entry(manager: str, fields: dict[str, Any], *, operation: str = "Update", subresource: str | None = None
          ) -> dict[str, Any]:
    e: dict[str, Any] = {"manager": manager, "operation": operation, "apiVersion": "apiextensions.k8s.io/v1",
                         "fieldsType": "FieldsV1", "fieldsV1": fields}
    if subresource:
        e["subresource"] = subresource
    return e


HELM = entry("helm", {"f:metadata": {"f:labels": {"f:app": {}}},
                      "f:spec": {"f:names": {"f:categories": {}, "f:kind": {}}, "f:versions": {}}})
STATUS = entry("kube-apiserver", {"f:status": {"f:conditions": {}}}, subresource="status")


def test_other_managers_spec_moves_to_a_new_sluice_apply_entry() -> None:
    entries = take_over_spec([HELM, STATUS])
    assert entries is not None
    helm, status, ours = entries
    assert helm["fieldsV1"] == {"f:metadata": {"f:labels": {"f:app": {}}}}  # Helm keeps its label
    assert status == STATUS
    assert ours == entry("sluice", {"f:spec": {"f:names": {"f:categories": {}, "f:kind": {}}, "f:versions": {}}},
                         operation="Apply")
    assert HELM["fieldsV1"]["f:spec"]  # the input is not changed


def test_spec_is_merged_into_the_existing_sluice_apply_entry() -> None:
    ours = entry("sluice", {"f:spec": {"f:names": {"f:plural": {}}, "f:scope": {}}}, operation="Apply")
    kubectl = entry("kubectl-edit", {"f:spec": {"f:names": {"f:shortNames": {}}}})
    entries = take_over_spec([ours, kubectl, STATUS])
    merged: dict[str, Any] = {"f:spec": {"f:names": {"f:plural": {}, "f:shortNames": {}}, "f:scope": {}}}
    assert entries == [entry("sluice", merged, operation="Apply"), STATUS]  # kubectl-edit owned nothing else


def test_nothing_to_take_over_when_sluice_owns_all_of_spec() -> None:
    ours = entry("sluice", {"f:spec": {"f:group": {}}}, operation="Apply")
    assert take_over_spec([ours, STATUS, entry("helm", {"f:metadata": {"f:labels": {}}})]) is None
    # sluice's own Update (not Apply) entry is another manager as far as apply is concerned
    assert take_over_spec([ours, entry("sluice", {"f:spec": {"f:scope": {}}})]) is not None


# -- what changed ----------------------------------------------------------------------------------------------


def crd(**status_properties: Any) -> Body:
    return {"spec": {"names": {"kind": "Rollout", "shortNames": ["ro"]}, "versions": [
        {"name": "v1alpha1", "served": True, "schema": {"openAPIV3Schema": {"properties": {"status": {
            "properties": status_properties}}}}},
        {"name": "v1alpha2", "served": False},
    ]}}


STATUS_PATH = "spec.versions[v1alpha1].schema.openAPIV3Schema.properties.status.properties"


def test_differences_name_the_outermost_added_removed_and_changed_parts() -> None:
    before = crd(phase={"type": "string"}, legacy={"type": "integer", "minimum": 0})
    after = crd(phase={"type": "string", "enum": ["Healthy"]}, walk={"type": "integer", "description": "x"})
    after["spec"]["names"]["shortNames"] = ["ro", "rollout"]
    after["spec"]["versions"][1]["served"] = True
    assert differences(before, after) == [
        "~ spec.names.shortNames",  # lists of values compare whole
        f"- {STATUS_PATH}.legacy",
        f"+ {STATUS_PATH}.phase.enum",
        f"+ {STATUS_PATH}.walk",
        "~ spec.versions[v1alpha2].served",
    ]
    assert differences(after, after) == []


def test_a_report_lists_the_paths_and_counts_past_the_limit() -> None:
    paths = tuple(f"+ spec.p{i}" for i in range(installing.MAX_PATHS + 3))
    lines = Change("rollouts.sluice.dev", "updated", paths).lines()
    assert lines[0] == "customresourcedefinition/rollouts.sluice.dev updated"
    assert lines[1:-1] == [f"  {p}" for p in paths[:installing.MAX_PATHS]]
    assert lines[-1] == "  ... and 3 more"
    assert Change("x.sluice.dev", "unchanged").lines() == ["customresourcedefinition/x.sluice.dev unchanged"]


# -- waiting ---------------------------------------------------------------------------------------------------


class ConditionsClient:
    """GET answers the CRD with the given conditions, becoming Established after `established_after` GETs."""

    def __init__(self, *, established_after: int = 0, names_accepted: str = "True") -> None:
        self.gets = 0
        self.established_after = established_after
        self.names_accepted = names_accepted

    async def get(self, resource: Resource, *, name: str) -> Body:
        self.gets += 1
        established = "True" if self.gets > self.established_after else "False"
        return {"metadata": {"name": name}, "status": {"conditions": [
            {"type": "NamesAccepted", "status": self.names_accepted, "message": "kind Widget is already in use"},
            {"type": "Established", "status": established}]}}


async def test_waiting_ends_once_established(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installing, "POLL_INTERVAL", 0.01)
    client = ConditionsClient(established_after=2)
    await wait_established(cast(KubeClient, client), ["widgets.example.com"], wait_seconds=5)
    assert client.gets == 3


async def test_refused_names_fail_at_once_and_a_crd_never_established_times_out(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(installing, "POLL_INTERVAL", 0.01)
    with pytest.raises(CrdError, match="refused its names: kind Widget is already in use"):
        await wait_established(cast(KubeClient, ConditionsClient(names_accepted="False")), ["w.example.com"],
                               wait_seconds=5)
    with pytest.raises(CrdError, match=r"not Established after 0.05s: w.example.com"):
        await wait_established(cast(KubeClient, ConditionsClient(established_after=10**6)), ["w.example.com"],
                               wait_seconds=0.05)


# -- the command -----------------------------------------------------------------------------------------------


def test_crds_apply_without_credentials_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "apply", "--kubeconfig", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluice: kubeconfig ") and err.count("\n") == 1


class RefusingClient:
    async def get(self, resource: Resource, **_: Any) -> Body:
        raise ApiError(status=403, reason="Forbidden", message="cannot get customresourcedefinitions")

    async def close(self) -> None:
        pass


async def _refusing(**_: Any) -> KubeClient:
    return cast(KubeClient, RefusingClient())


def test_crds_apply_refused_by_rbac_exits_1(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(KubeClient, "connect", _refusing)
    assert main(["crds", "apply"]) == 1
    err = capsys.readouterr().err
    assert err == "sluice: cannot apply the CRDs: 403 Forbidden: cannot get customresourcedefinitions\n"
