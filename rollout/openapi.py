"""The OpenAPI 3.1 description of the operator API (docs/api.md), served at `GET /openapi.json`.

Written as Python data next to the server (rollout/api.py) rather than generated from it: the document is the
contract's machine-readable twin, and schemathesis fuzzes the server from it, checking that every answer has a
documented status code, content type and shape. So it documents only what the server really answers: JSON
everywhere except `/metrics`, the error object `{"error": {"code", "message"}}` for every 4xx and 503, and the
codes each endpoint can give. 405 (a method a path does not serve) is not per operation in OpenAPI: the server
answers it, as the same JSON error, for any method not listed here.

Schemas are JSON Schema 2020-12 (what OpenAPI 3.1 uses), so tests can check documented examples against them.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

Schema = dict[str, Any]

# Kubernetes names: a namespace is an RFC 1123 label, a Rollout's name an RFC 1123 subdomain.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
IMAGE_TAG = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"  # the OCI distribution spec's tag grammar
IMAGE_DIGEST = r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[0-9a-fA-F]{32,}$"
OPERATIONS = ("pause", "resume", "promote", "abort", "retry", "restart", "undo")
ROLLOUT_PATH = "/api/v1/namespaces/{ns}/rollouts/{name}"

_OPERATION_DOCS = {
    "pause": ("Pause the Rollout (spec.paused: true).", None),
    "resume": ("Resume: spec.paused false and the current pause (step pause, inconclusive analysis) released.",
               "nothing is paused"),
    "promote": ("Release the current pause step; with full: true skip every remaining step.",
                "no canary in progress, or (without full) not paused at a step"),
    "abort": ("Abort: status.abort true, all traffic back on stable.", "no canary in progress"),
    "retry": ("Retry an aborted Rollout: status.abort false, walk the steps again.", "the Rollout is not aborted"),
    "restart": ("A new revision with the same pods (annotation sluice.dev/restartedAt), through the steps.",
                "a rollout is in progress"),
    "undo": ("Roll back to a kept revision's template (default: the revision before the current one).",
             "no such revision kept"),
}


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _nullable(schema: Schema) -> Schema:
    return {"oneOf": [schema, {"type": "null"}]}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(properties: dict[str, Schema], *, required: tuple[str, ...] | None = None, closed: bool = False,
            description: str | None = None) -> Schema:
    schema: Schema = {"type": "object", "properties": properties,
                      "required": list(properties if required is None else required)}
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


def _errors(*codes: int) -> dict[str, Schema]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
             413: "PayloadTooLarge", 415: "UnsupportedMediaType", 503: "Unavailable"}
    return {str(code): _ref("responses", names[code]) for code in codes}


# -- schemas -------------------------------------------------------------------------------------------------------

_COUNT: Schema = {"type": "integer", "minimum": 0}
_PERCENT: Schema = {"type": "integer", "minimum": 0, "maximum": 100}


def _view_schemas() -> dict[str, Schema]:
    step_common: dict[str, Schema] = {"index": _COUNT,
                                      "state": {"type": "string", "enum": ["done", "current", "pending"]}}
    measurement = _object({
        "phase": {"type": "string", "description": "Successful, Failed, Inconclusive or Error."},
        "value": {"type": "string"},
        "finishedAt": _nullable({"type": "string"}),
        "message": {"type": "string"},
    })
    return {
        "RolloutView": _object({
            "namespace": {"type": "string"},
            "name": {"type": "string"},
            "strategy": {"type": "string", "enum": ["canary", "blueGreen"],
                         "description": "For blueGreen, canary means the new revision behind the preview Service."},
            "phase": {"type": "string",
                      "description": "status.phase (Healthy, Progressing, Paused, Degraded); Pending before the "
                                     "controller's first reconcile."},
            "message": {"type": "string"},
            "paused": {"type": "boolean"},
            "aborted": {"type": "boolean"},
            "revision": _object({"stable": _nullable({"type": "string"}), "canary": _nullable({"type": "string"})}),
            "images": {"type": "object", "additionalProperties": {"type": "string"},
                       "description": "Container name to image."},
            "weights": _object({"stable": _PERCENT, "canary": _PERCENT}),
            "replicas": _object({k: {"type": "integer"} for k in ("desired", "stable", "stableAvailable", "canary",
                                                                  "canaryAvailable")}),
            "currentStep": _nullable(_COUNT | {"description": "null when no step is current."}),
            "steps": {"type": "array", "items": _ref("schemas", "Step")},
            "analysisRuns": {"type": "array", "items": _ref("schemas", "AnalysisRunView")},
            "conditions": {"type": "array", "items": _ref("schemas", "Condition")},
        }, description="One Rollout as the operator API shows it."),
        "RolloutList": _object({"items": {"type": "array", "items": _ref("schemas", "RolloutView")}},
                               description="Rollouts sorted by namespace and name."),
        "Step": {"oneOf": [
            _object({**step_common, "action": {"const": "setWeight"}, "weight": {"type": "integer"}}),
            _object({**step_common, "action": {"const": "pause"}, "duration": _nullable({"type": "string"})}),
            _object({**step_common, "action": {"const": "analysis"},
                     "templates": {"type": "array", "items": {"type": "string"}}}),
            _object({**step_common, "action": {"const": "invalid"}},
                    description="A step the controller refuses (not exactly one action)."),
        ]},
        "AnalysisRunView": _object({
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["Step", "Background", "PrePromotion", "PostPromotion"]},
            "step": {"type": "integer", "description": "The step index (Step runs only)."},
            "phase": {"type": "string"},
            "message": {"type": "string"},
            "metrics": {"type": "array", "items": _object({
                "name": {"type": "string"},
                "phase": {"type": "string"},
                "count": {"type": "integer"}, "failed": {"type": "integer"},
                "inconclusive": {"type": "integer"}, "error": {"type": "integer"},
                "latest": _nullable(measurement),
            })},
        }, required=("name", "kind", "phase", "message", "metrics")),
        "Condition": _object({
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
        }),
    }


def _request_schemas() -> dict[str, Schema]:
    return {
        "NoParameters": _object({}, closed=True, description="The operation takes no parameters: no body or {}."),
        # null counts as absent (the server's defaults).
        "PromoteRequest": _object({"full": {"type": ["boolean", "null"], "default": False}}, required=(),
                                  closed=True),
        "UndoRequest": _object({"toRevision": {"type": ["integer", "null"], "minimum": 1}}, required=(), closed=True),
        "ImageRequest": _object({
            "container": {"type": "string", "minLength": 1},
            # Visible ASCII, so no whitespace: what an image reference (OCI distribution grammar) can contain.
            "image": {"type": "string", "minLength": 1, "pattern": "^[!-~]+$"},
        }, closed=True),
        "GenericPush": _object({
            "repository": {"type": "string", "minLength": 1, "description": "The repository, without tag."},
            "tag": {"type": "string", "pattern": IMAGE_TAG},
            "digest": {"type": "string", "pattern": IMAGE_DIGEST},
        }, required=("repository", "tag")),
        "DockerHubPush": _object({
            "push_data": _object({"tag": {"type": "string", "pattern": IMAGE_TAG}}),
            "repository": _object({"repo_name": {"type": "string", "minLength": 1}}),
        }, description="A Docker Hub push webhook payload (other fields are ignored)."),
        "HarborPush": _object({
            "type": {"const": "PUSH_ARTIFACT"},
            "event_data": _object({
                "resources": {"type": "array", "minItems": 1, "items": _object({
                    "tag": {"type": "string", "pattern": IMAGE_TAG},
                    "resource_url": {"type": "string", "minLength": 1},
                }, required=("tag", "resource_url"))},
            }),
        }, description="A Harbor PUSH_ARTIFACT event (other fields are ignored)."),
        "WebhookResult": _object({
            "updated": {"type": "array", "items": {"type": "string", "pattern": r"^[a-z0-9.-]+/[a-z0-9.-]+$"},
                        "description": "The Rollouts whose image was set, as namespace/name."},
            "ignored": _COUNT,
        }),
    }


def _schemas() -> dict[str, Schema]:
    return {
        "Error": _object({"error": _object({"code": {"type": "integer", "minimum": 400, "maximum": 599},
                                            "message": {"type": "string"}})}),
        "Status": _object({"status": {"type": "string"}}),
        **_view_schemas(),
        **_request_schemas(),
    }


def _responses() -> dict[str, Schema]:
    error = _ref("schemas", "Error")
    unauthorized = _json(error, "No bearer token, a malformed one, or one the cluster does not authenticate.")
    unauthorized["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
    return {
        "BadRequest": _json(error, "A malformed body, an unknown field, a value out of range, or (for image) an "
                                   "unknown container."),
        "Unauthorized": unauthorized,
        "Forbidden": _json(error, "RBAC does not allow this verb on rollouts.sluice.dev in this namespace."),
        "NotFound": _json(error, "No such Rollout (or namespace not served by this controller)."),
        "Conflict": _json(error, "The operation makes no sense in the Rollout's current state; the message says why."),
        "PayloadTooLarge": _json(error, "The body is larger than 64 KiB."),
        "UnsupportedMediaType": _json(error, "A body that is not Content-Type: application/json."),
        "Unavailable": _json(error, "The Kubernetes API server is unreachable, or the controller is not ready."),
    }


def _parameters() -> dict[str, Schema]:
    return {
        "namespace": {"name": "ns", "in": "path", "required": True,
                      "schema": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": DNS_LABEL}},
        "name": {"name": "name", "in": "path", "required": True,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS_SUBDOMAIN}},
        "timestamp": {"name": "X-Sluice-Timestamp", "in": "header", "required": True,
                      "description": "Unix seconds; refused when more than 5 minutes away.",
                      "schema": {"type": "string", "pattern": r"^[0-9]+$"}},
        "signature": {"name": "X-Sluice-Signature", "in": "header", "required": True,
                      "description": "sha256=<hex HMAC-SHA256 of '<timestamp>.<body>'>; a signature is accepted "
                                     "once.",
                      "schema": {"type": "string", "pattern": r"^sha256=[0-9a-f]{64}$"}},
    }


# -- paths ---------------------------------------------------------------------------------------------------------

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
_OBJECT_PARAMS = [_ref("parameters", "namespace"), _ref("parameters", "name")]
# Any write can meet a Rollout that keeps changing under it (409), whatever its operation's own 409 case.
_WRITE_ERRORS = (400, 401, 403, 404, 409, 413, 415, 503)


def _body(schema_name: str, *, required: bool) -> Schema:
    return {"required": required, "content": {"application/json": {"schema": _ref("schemas", schema_name)}}}


def _operation(op: str) -> Schema:
    summary, conflict = _OPERATION_DOCS[op]
    body = {"promote": "PromoteRequest", "undo": "UndoRequest"}.get(op, "NoParameters")
    return {
        "operationId": op,
        "summary": summary,
        "description": f"RBAC verb `{op}`. 409 when {conflict or 'the Rollout kept changing while it was applied'}"
                       "; repeating an operation whose effect is in place answers 200.",
        "tags": ["operations"],
        "security": _BEARER,
        "parameters": _OBJECT_PARAMS,
        "requestBody": _body(body, required=False),
        "responses": {"200": _json(_ref("schemas", "RolloutView"), "The Rollout after the patch."),
                      **_errors(*_WRITE_ERRORS)},
    }


def _paths() -> dict[str, Schema]:
    view_ok = _json(_ref("schemas", "RolloutView"), "The Rollout.")
    list_ok = _json(_ref("schemas", "RolloutList"), "The Rollouts, sorted by namespace and name.")
    paths: dict[str, Schema] = {
        "/api/v1/rollouts": {"get": {
            "operationId": "listAllRollouts", "summary": "Every Rollout in every namespace (RBAC verb list).",
            "tags": ["reading"], "security": _BEARER,
            "responses": {"200": list_ok, **_errors(401, 403, 503)},
        }},
        "/api/v1/namespaces/{ns}/rollouts": {"get": {
            "operationId": "listRollouts", "summary": "The Rollouts of one namespace (RBAC verb list).",
            "tags": ["reading"], "security": _BEARER, "parameters": [_ref("parameters", "namespace")],
            "responses": {"200": list_ok, **_errors(400, 401, 403, 404, 503)},
        }},
        ROLLOUT_PATH: {"get": {
            "operationId": "getRollout", "summary": "One Rollout (RBAC verb get).",
            "tags": ["reading"], "security": _BEARER, "parameters": _OBJECT_PARAMS,
            "responses": {"200": view_ok, **_errors(400, 401, 403, 404, 503)},
        }},
    }
    for op in OPERATIONS:
        paths[f"{ROLLOUT_PATH}/{op}"] = {"post": _operation(op)}
    paths[f"{ROLLOUT_PATH}/image"] = {"put": {
        "operationId": "setImage", "summary": "Set one container's image (RBAC verb update-image).",
        "tags": ["operations"], "security": _BEARER, "parameters": _OBJECT_PARAMS,
        "requestBody": _body("ImageRequest", required=True),
        "responses": {"200": _json(_ref("schemas", "RolloutView"), "The Rollout after the patch."),
                      **_errors(*_WRITE_ERRORS)},
    }}
    paths["/api/v1/hooks/registry"] = {"post": {
        "operationId": "registryPush",
        "summary": "An image-push notification: sets the image of every Rollout that opted in by annotations.",
        "description": "Signed, not bearer-authenticated: HMAC-SHA256 over '<timestamp>.<body>' with the key in "
                       "the Secret given by --webhook-secret (key hmac). A stale timestamp or a signature seen "
                       "before is refused (401). 404 when the webhook is not enabled.",
        "tags": ["webhook"], "security": [],
        "parameters": [_ref("parameters", "timestamp"), _ref("parameters", "signature")],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"anyOf": [
            _ref("schemas", "GenericPush"), _ref("schemas", "DockerHubPush"), _ref("schemas", "HarborPush"),
        ]}}}},
        "responses": {"200": _json(_ref("schemas", "WebhookResult"), "What was updated."),
                      **_errors(400, 401, 404, 413, 415, 503)},
    }}
    paths.update(_service_paths())
    return paths


def _service_paths() -> dict[str, Schema]:
    status = _ref("schemas", "Status")
    return {
        "/healthz": {"get": {"operationId": "healthz", "summary": "200 while the process serves.",
                             "tags": ["service"], "responses": {"200": _json(status, "Serving.")}}},
        "/readyz": {"get": {"operationId": "readyz", "summary": "200 once the watches have synced, 503 before.",
                            "tags": ["service"], "responses": {"200": _json(status, "Ready."), **_errors(503)}}},
        "/metrics": {"get": {
            "operationId": "metrics", "summary": "Prometheus metrics, in the text exposition format.",
            "tags": ["service"],
            "responses": {"200": {"description": "The metrics.",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document.", "tags": ["service"],
            "responses": {"200": _json({"type": "object"}, "The OpenAPI description of the operator API.")},
        }},
    }


def _version() -> str:
    try:
        return importlib.metadata.version("sluice")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every endpoint of the operator API; a fresh copy on every call."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sluice operator API",
            "version": _version(),
            "description": "Pause, resume, promote, abort, retry, restart and undo Rollouts, set their images, and "
                           "read them (docs/api.md). Errors are JSON {\"error\": {\"code\", \"message\"}}; a method "
                           "a path does not serve answers 405 in the same form.",
        },
        "tags": [{"name": name} for name in ("reading", "operations", "webhook", "service")],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "parameters": _parameters(),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "A Kubernetes token (ServiceAccount or OIDC), checked with a TokenReview; RBAC on "
                               "rollouts.sluice.dev decides the verb (SubjectAccessReview).",
            }},
        },
    }
