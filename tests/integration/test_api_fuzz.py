"""The operator API fuzzed from its own OpenAPI description (served at /openapi.json) with schemathesis, against the
real controller and the real control plane: no 5xx, and every answer has a documented status code, content type,
body and headers. Once without credentials (every bearer endpoint answers 401, the registry webhook gets fuzzed
signature headers) and once as an SRE allowed every verb, in a namespace holding a real Rollout `web`, so reads and
operations meet a real object as well as missing ones, with the webhook's fuzzed pushes correctly signed so that they
get past the signature to the payload parsing.

Schemathesis runs synchronously (requests + hypothesis) in a worker thread: the fixtures and the control plane are
async, and its pytest plugin does not mix with pytest-asyncio fixtures. Hypothesis is bounded and derandomized so a
failure reproduces and the file stays well under a minute.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import aiohttp
import hypothesis
import requests
import schemathesis
from hypothesis import strategies as st
from schemathesis import APIOperation, Case, CheckFunction, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rollout.kube import EVENTS, SECRETS, KubeClient
from rollout.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.kit import ControllerProcess, create_app, rollout_body, wait_for
from tests.integration.test_api import PERSONAS, _persona

CHECKS: list[CheckFunction] = [not_a_server_error, status_code_conformance, content_type_conformance,
                               response_schema_conformance, response_headers_conformance]
MAX_EXAMPLES = 12  # per operation and generation mode
BEARER_ONLY = "/api/v1/"
WEBHOOK = "/api/v1/hooks/registry"
SECRET = b"fuzzed-hook-secret"
REPOSITORY = "registry.example/web"


def _settings() -> hypothesis.settings:
    return hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                               phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                               suppress_health_check=list(hypothesis.HealthCheck), print_blob=False)


class _Signed(requests.auth.AuthBase):
    """Signs the request as the registry would: the body as sent, with the current time."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body.encode() if isinstance(request.body, str) else request.body
        stamp = str(int(time.time()))
        request.headers[TIMESTAMP_HEADER] = stamp
        request.headers[SIGNATURE_HEADER] = sign(SECRET, stamp, body if isinstance(body, bytes) else b"")
        return request


def _aim(case: Case[Any]) -> Case[Any]:
    """Point a generated body at the real Rollout: its container for an image, its repository for a push."""
    if isinstance(case.body, dict):
        if case.path.endswith("/image") and isinstance(case.body.get("container"), str):
            case.body["container"] = "web"
        elif case.path == WEBHOOK and isinstance(case.body.get("repository"), str):
            case.body["repository"] = REPOSITORY
    return case


def _fuzz_operation(operation: APIOperation[Any, Any, Any, Any], *, url: str, session: requests.Session,
                    headers: dict[str, str], places: list[tuple[dict[str, str], bool]], anonymous: bool,
                    seen: list[str]) -> None:
    """Positive and negative data for one operation, at each (path parameters, aimed at the real Rollout) place."""
    auth = _Signed() if not anonymous and operation.path == WEBHOOK else None
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = st.one_of([
            operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=fixed)
            .map(_aim if aim and mode is GenerationMode.POSITIVE else lambda case: case)
            for fixed, aim in places])

        @hypothesis.given(case=strategy)
        @_settings()
        def run(case: Case[Any]) -> None:
            response = case.call_and_validate(base_url=url, session=session, checks=CHECKS, headers=headers,
                                              timeout=10, auth=auth)
            seen.append(f"{case.method} {case.formatted_path} -> {response.status_code}")
            if anonymous and case.path.startswith(BEARER_ONLY) and case.path != WEBHOOK:
                assert response.status_code == 401, (case.method, case.formatted_path, response.text)

        try:
            run()
        except hypothesis.errors.Unsatisfiable:
            # Nothing to make invalid (no parameters, no body): the positive cases covered it.
            assert mode is GenerationMode.NEGATIVE, operation.label


def _fuzz(url: str, *, headers: dict[str, str], places: list[tuple[dict[str, str], bool]],
          anonymous: bool) -> list[str]:
    """Every operation of the served document; returns "METHOD path -> code" per request."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            _fuzz_operation(result.ok(), url=url, session=session, headers=headers, places=places,
                            anonymous=anonymous, seen=seen)
    return seen


async def _ready(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async def probe() -> bool:
            async with session.get(f"{url}/readyz") as response:
                return response.status == 200

        await wait_for(probe, what="/readyz", timeout=30)


async def test_api_answers_only_what_its_openapi_document_says(kube: KubeClient, namespace: str, control_plane: Any,
                                                                tmp_path: Path) -> None:
    await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
                                "data": {"hmac": base64.b64encode(SECRET).decode()}}, namespace=namespace)
    web = rollout_body()
    web["metadata"]["annotations"] = {"sluice.dev/image-repository": REPOSITORY,
                                      "sluice.dev/image-tag-pattern": ".*", "sluice.dev/image-container": "web"}
    await create_app(kube, namespace, web)
    token = await _persona(kube, namespace, "sre", PERSONAS["sre"])
    # The `controller` fixture's process has no webhook; this one checks signatures with the Secret above.
    controller = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                                   log_path=tmp_path / "controller.log",
                                   extra_args=["--webhook-secret", f"{namespace}/hook"])
    controller.start()
    try:
        url = await controller.api_url()
        await _ready(url)
        anonymous = await asyncio.to_thread(_fuzz, url, headers={}, places=[({}, False)], anonymous=True)
        # The real Rollout web, a missing name in the served namespace, and names anywhere (RBAC: 403).
        places = [({"ns": namespace, "name": "web"}, True), ({"ns": namespace}, False), ({}, False)]
        sre = await asyncio.to_thread(_fuzz, url, headers={"Authorization": f"Bearer {token}"}, places=places,
                                      anonymous=False)
    finally:
        controller.stop()
        print(f"--- controller log ---\n{controller.log_tail()}")
    assert any(line.endswith("-> 401") for line in anonymous), anonymous
    assert any(line.endswith("-> 200") and f"/{namespace}/rollouts/web" in line for line in sre), sre
    # The aimed pushes reached the real Rollout through the webhook, and the aimed image PUTs through the API.
    events, _ = await kube.list(EVENTS, namespace=namespace)
    requested = [e["message"] for e in events if e["reason"] == "OperationRequested"]
    assert any("by registry webhook" in m for m in requested), requested
    assert any(f"system:serviceaccount:{namespace}:sre" in m and "image" in m for m in requested), requested
