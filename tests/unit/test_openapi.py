"""The OpenAPI description of the operator API: a valid OpenAPI 3.1 document (checked against the specification's own
schema, as schemathesis loads it), covering every endpoint of docs/api.md with the security, parameters, request
bodies and error answers the contract names; its schemas accept the contract's examples and refuse what it refuses."""

from __future__ import annotations

import importlib.metadata
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis

from rollout.openapi import openapi_document

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return openapi_document()


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def contract_endpoints() -> set[tuple[str, str]]:
    """(method, path) of every endpoint docs/api.md names, the operations table's rows included."""
    text = API_DOC.read_text()
    found = {(m.lower(), p) for m, p in re.findall(r"`(GET|POST|PUT) (/[^`\s]+)`", text)}
    operating = text.split("### Operating", 1)[1].split("###", 1)[0]
    for op, put in re.findall(r"^\| `([a-z]+)`( \(PUT\))? \|", operating, flags=re.MULTILINE):
        found.add(("put" if put else "post", f"/api/v1/namespaces/{{ns}}/rollouts/{{name}}/{op}"))
    return found


def validator(document: dict[str, Any], schema_name: str) -> jsonschema_rs.Validator:
    """A JSON Schema 2020-12 validator for one component schema, its $refs resolved within the document."""
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]})


def test_the_document_is_valid_openapi(document: dict[str, Any]) -> None:
    loaded = schemathesis.openapi.from_dict(json.loads(json.dumps(document)))
    loaded.validate()
    assert document["openapi"].startswith("3.1")


def test_the_validator_would_catch_a_broken_document(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["paths"]["/healthz"]["get"]["responses"]["200"] = {"content": "text"}
    with pytest.raises(jsonschema_rs.ValidationError):
        schemathesis.openapi.from_dict(broken).validate()


def test_the_version_is_the_installed_package_version(document: dict[str, Any]) -> None:
    assert document["info"]["version"] == importlib.metadata.version("sluice")


def test_every_endpoint_of_the_contract_is_described(document: dict[str, Any]) -> None:
    described = {(method, path) for path, method, _ in operations(document)}
    expected = contract_endpoints()
    assert len(expected) == 16
    assert expected == described


def test_every_reference_resolves(document: dict[str, Any]) -> None:
    for ref in set(refs(document)):
        assert resolve(document, ref) is not None, ref


def test_operation_ids_are_unique(document: dict[str, Any]) -> None:
    ids = [op["operationId"] for _, _, op in operations(document)]
    assert len(ids) == len(set(ids))


def test_every_api_call_but_the_webhook_needs_a_bearer_token(document: dict[str, Any]) -> None:
    assert document["components"]["securitySchemes"]["bearer"] == {
        **document["components"]["securitySchemes"]["bearer"], "type": "http", "scheme": "bearer"}
    for path, method, op in operations(document):
        if path == "/api/v1/hooks/registry":
            assert op["security"] == []
        elif path.startswith("/api/v1/"):
            assert op["security"] == [{"bearer": []}], (method, path)
            assert {"401", "403", "503"} <= set(op["responses"]), (method, path)
        else:
            assert "security" not in op and "bearer" not in json.dumps(op)


def test_the_webhook_requires_its_signature_headers(document: dict[str, Any]) -> None:
    op = document["paths"]["/api/v1/hooks/registry"]["post"]
    headers = {p["name"]: p for p in (resolve(document, r["$ref"]) for r in op["parameters"])}
    assert set(headers) == {"X-Sluice-Timestamp", "X-Sluice-Signature"}
    assert all(h["in"] == "header" and h["required"] for h in headers.values())
    assert set(op["responses"]) == {"200", "400", "401", "404", "413", "415", "503"}


def test_writes_document_every_refusal_of_the_contract(document: dict[str, Any]) -> None:
    for path, method, op in operations(document):
        if method in ("post", "put") and path.startswith("/api/v1/namespaces/"):
            assert set(op["responses"]) == {"200", "400", "401", "403", "404", "409", "413", "415", "503"}, path
            assert op["requestBody"]["content"].keys() == {"application/json"}


def test_errors_are_the_json_error_object(document: dict[str, Any]) -> None:
    check = validator(document, "Error")
    for path, _, op in operations(document):
        for code, response in op["responses"].items():
            if code == "200":
                continue
            body = resolve(document, response["$ref"])
            assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, path
    assert check.is_valid({"error": {"code": 409, "message": "cannot resume web: it is not paused"}})
    assert not check.is_valid({"error": "boom"})


def test_metrics_are_text_and_everything_else_json(document: dict[str, Any]) -> None:
    for path, _, op in operations(document):
        types = set(op["responses"]["200"]["content"])
        assert types == ({"text/plain"} if path == "/metrics" else {"application/json"}), path


def test_path_parameters_are_kubernetes_names(document: dict[str, Any]) -> None:
    params = document["components"]["parameters"]
    namespace, name = params["namespace"]["schema"], params["name"]["schema"]
    assert (namespace["maxLength"], name["maxLength"]) == (63, 253)
    for good in ("shop", "a", "team-1"):
        assert re.fullmatch(namespace["pattern"], good)
    for bad in ("Shop", "-a", "a-", "a.b", "a_b", ""):
        assert not re.fullmatch(namespace["pattern"], bad)
    assert re.fullmatch(name["pattern"], "web.v2")
    assert not re.fullmatch(name["pattern"], "web..v2")


def test_the_contract_example_is_a_valid_rollout_view(document: dict[str, Any]) -> None:
    reading = API_DOC.read_text().split("### Reading", 1)[1]
    example = json.loads(reading.split("```json", 1)[1].split("```", 1)[0])
    view = validator(document, "RolloutView")
    assert view.is_valid(example)
    assert validator(document, "RolloutList").is_valid({"items": [example]})
    assert not view.is_valid({**example, "steps": [{"index": 0, "action": "setWeight", "weight": 10,
                                                    "state": "later"}]})
    missing = dict(example)
    del missing["weights"]
    assert not view.is_valid(missing)


@pytest.mark.parametrize(("schema", "body", "valid"), [
    ("PromoteRequest", {}, True),
    ("PromoteRequest", {"full": True}, True),
    ("PromoteRequest", {"full": "yes"}, False),
    ("PromoteRequest", {"full": True, "force": True}, False),
    ("UndoRequest", {"toRevision": 3}, True),
    ("UndoRequest", {"toRevision": 0}, False),
    ("UndoRequest", {"toRevision": 1.5}, False),
    ("ImageRequest", {"container": "web", "image": "registry.example/web:1.4.2"}, True),
    ("ImageRequest", {"container": "web"}, False),
    ("ImageRequest", {"container": "", "image": "web:1"}, False),
    ("ImageRequest", {"container": "web", "image": "web: 1"}, False),
    ("ImageRequest", {"container": "web", "image": "web:1", "pull": True}, False),
    ("NoParameters", {}, True),
    ("NoParameters", {"now": True}, False),
])
def test_request_bodies_refuse_what_the_contract_refuses(document: dict[str, Any], schema: str,
                                                         body: dict[str, Any], valid: bool) -> None:
    assert validator(document, schema).is_valid(body) is valid


def test_the_webhook_takes_its_three_payload_shapes(document: dict[str, Any]) -> None:
    op = document["paths"]["/api/v1/hooks/registry"]["post"]
    shapes = op["requestBody"]["content"]["application/json"]["schema"]["anyOf"]
    assert {s["$ref"].rsplit("/", 1)[1] for s in shapes} == {"GenericPush", "DockerHubPush", "HarborPush"}
    assert validator(document, "GenericPush").is_valid({"repository": "registry.example/web", "tag": "1.4.2"})
    assert validator(document, "DockerHubPush").is_valid(
        {"push_data": {"tag": "1.4.2", "pusher": "me"}, "repository": {"repo_name": "org/web", "stars": 0}})
    assert validator(document, "HarborPush").is_valid({
        "type": "PUSH_ARTIFACT", "occur_at": 1, "event_data": {
            "resources": [{"digest": "sha256:" + "a" * 64, "tag": "1.4.2",
                           "resource_url": "harbor.example/proj/web:1.4.2"}],
            "repository": {"name": "web", "namespace": "proj", "repo_full_name": "proj/web"}}})
    assert not validator(document, "HarborPush").is_valid({"type": "DELETE_ARTIFACT", "event_data": {}})
    assert validator(document, "WebhookResult").is_valid({"updated": ["shop/web"], "ignored": 2})
