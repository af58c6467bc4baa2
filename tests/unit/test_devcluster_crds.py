"""devcluster's conversion of old (apiextensions v1beta1) CRDs, as SMI ships its TrafficSplit, to the v1 that API
servers accept; and the choice of upstream CRD files."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml

from devcluster.controlplane import (
    GATEWAY_API_KINDS,
    SMI_KINDS,
    crd_documents,
    crd_to_v1,
    gateway_api_crd_files,
    smi_crd_file,
)

SCHEMA: dict[str, Any] = {"properties": {"spec": {"type": "object", "properties": {"service": {"type": "string"}}}}}


def _v1beta1(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1beta1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "trafficsplits.split.smi-spec.io"},
        "spec": {"group": "split.smi-spec.io", "scope": "Namespaced",
                 "names": {"kind": "TrafficSplit", "plural": "trafficsplits"}, **spec},
    }


def test_top_level_schema_and_columns_move_into_every_version() -> None:
    doc = _v1beta1(
        version="v1alpha4",
        versions=[{"name": "v1alpha4", "served": True, "storage": True},
                  {"name": "v1alpha3", "served": False, "storage": False}],
        additionalPrinterColumns=[{"name": "Service", "type": "string", "description": "apex",
                                   "JSONPath": ".spec.service"}],
        validation={"openAPIV3Schema": SCHEMA},
    )
    out = crd_to_v1(doc)
    assert out["apiVersion"] == "apiextensions.k8s.io/v1"
    assert not {"version", "validation", "additionalPrinterColumns"} & set(out["spec"])
    assert [(v["name"], v["served"], v["storage"]) for v in out["spec"]["versions"]] == [
        ("v1alpha4", True, True), ("v1alpha3", False, False)]
    for version in out["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object"
        assert schema["properties"] == SCHEMA["properties"]
        assert version["additionalPrinterColumns"] == [
            {"name": "Service", "type": "string", "description": "apex", "jsonPath": ".spec.service"}]
    assert doc["apiVersion"] == "apiextensions.k8s.io/v1beta1"  # the input is not changed
    assert "type" not in SCHEMA


def test_unknown_fields_are_kept_unless_v1beta1_pruned_them() -> None:
    kept = crd_to_v1(_v1beta1(version="v1", validation={"openAPIV3Schema": SCHEMA}))
    pruned = crd_to_v1(_v1beta1(version="v1", validation={"openAPIV3Schema": SCHEMA}, preserveUnknownFields=False))
    assert kept["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-preserve-unknown-fields"] is True
    assert "x-kubernetes-preserve-unknown-fields" not in pruned["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert "preserveUnknownFields" not in kept["spec"] and "preserveUnknownFields" not in pruned["spec"]


def test_single_version_becomes_the_served_storage_version() -> None:
    out = crd_to_v1(_v1beta1(version="v1alpha1", validation={"openAPIV3Schema": SCHEMA},
                             subresources={"status": {}}))
    (version,) = out["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    assert "additionalPrinterColumns" not in version


def test_per_version_schema_and_columns_win_over_the_top_level() -> None:
    own = {"type": "object", "properties": {"spec": {"type": "object"}}}
    out = crd_to_v1(_v1beta1(
        versions=[{"name": "v2", "served": True, "storage": True, "schema": {"openAPIV3Schema": own},
                   "additionalPrinterColumns": [{"name": "Age", "type": "date",
                                                 "JSONPath": ".metadata.creationTimestamp"}]},
                  {"name": "v1", "served": True, "storage": False}],
        validation={"openAPIV3Schema": SCHEMA}))
    v2, v1 = out["spec"]["versions"]
    assert v2["schema"]["openAPIV3Schema"]["properties"] == own["properties"]
    assert v2["additionalPrinterColumns"] == [{"name": "Age", "type": "date",
                                              "jsonPath": ".metadata.creationTimestamp"}]
    assert v1["schema"]["openAPIV3Schema"]["properties"] == SCHEMA["properties"]


def test_webhook_conversion_moves_under_webhook() -> None:
    client = {"service": {"name": "conv", "namespace": "x"}}
    out = crd_to_v1(_v1beta1(version="v1", conversion={"strategy": "Webhook", "webhookClientConfig": client}))
    assert out["spec"]["conversion"] == {"strategy": "Webhook", "webhook": {
        "clientConfig": client, "conversionReviewVersions": ["v1beta1"]}}


def test_v1_documents_are_returned_unchanged() -> None:
    doc = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "spec": {"versions": []}}
    assert crd_to_v1(doc) is doc


needs_go = pytest.mark.skipif(shutil.which("go") is None, reason="the pinned CRD modules come through go")


@needs_go
def test_smi_split_crd_converts_to_a_structural_v1_crd() -> None:
    (doc,) = crd_documents([smi_crd_file()], kinds=SMI_KINDS)
    out = crd_to_v1(doc)
    served = [v["name"] for v in out["spec"]["versions"] if v["served"]]
    assert served == ["v1alpha4"]
    for version in out["spec"]["versions"]:
        schema = version["schema"]["openAPIV3Schema"]
        assert schema["type"] == "object"
        assert schema["properties"]["spec"]["required"] == ["service", "backends"]
    yaml.safe_dump(out)  # plain data all the way down


@needs_go
def test_gateway_api_files_hold_the_four_kinds_and_no_admission_policy() -> None:
    files = gateway_api_crd_files()
    assert not [f for f in files if "vap" in f.name]
    kinds = {d["spec"]["names"]["kind"] for d in crd_documents(files, kinds=GATEWAY_API_KINDS)}
    assert kinds == GATEWAY_API_KINDS
