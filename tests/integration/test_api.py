"""The operator API end to end: the real controller process serving it, the real control plane authenticating real
ServiceAccount tokens (TokenRequest) and authorising them through RBAC Roles with sluice's custom verbs. An SRE may
operate, a CI pipeline may only set images, a reader may only read, anyone else gets 403, and no token 401."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from rollout.auth import Reviewer
from rollout.kube import EVENTS, ROLLOUTS, Body, KubeClient, Resource
from tests.integration.kit import (
    ROLE_BINDINGS,
    ROLES,
    ControllerProcess,
    create_app,
    paused_at,
    rollout_body,
    status,
    wait_allowed,
    wait_for,
    wait_status,
    weights,
)

SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")

OPERATOR_VERBS = ["pause", "resume", "promote", "abort", "retry", "restart", "undo", "update-image"]
PERSONAS: dict[str, list[str]] = {
    "sre": ["get", "list", "watch", *OPERATOR_VERBS],
    "ci": ["update-image"],
    "reader": ["get", "list"],
    "nobody": [],
}


@dataclass
class Api:
    url: str
    ns: str
    tokens: dict[str, str]
    session: aiohttp.ClientSession

    async def call(self, method: str, path: str, *, who: str | None = "sre", body: Any = None,
                   raw: bytes | None = None, content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = content_type
        async with self.session.request(method, self.url + path, headers=headers, data=data) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except json.JSONDecodeError:
                return response.status, text

    def rollout(self, name: str = "web", op: str | None = None) -> str:
        return f"/api/v1/namespaces/{self.ns}/rollouts/{name}" + (f"/{op}" if op else "")


async def _token(kube: KubeClient, ns: str, account: str) -> str:
    await kube.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount",
                                         "metadata": {"name": account}}, namespace=ns)
    request = await kube.create(SERVICE_ACCOUNTS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                   "spec": {"expirationSeconds": 3600}},
                                namespace=ns, name=account, subresource="token")
    return str(request["status"]["token"])


async def _persona(kube: KubeClient, ns: str, who: str, verbs: list[str]) -> str:
    token = await _token(kube, ns, who)
    if verbs:
        await kube.create(ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                                  "metadata": {"name": who},
                                  "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"], "verbs": verbs}]},
                          namespace=ns)
        await kube.create(ROLE_BINDINGS, {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": who},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": who},
            "subjects": [{"kind": "ServiceAccount", "name": who, "namespace": ns}]}, namespace=ns)
        # RBAC sees the new binding a moment later, and the API caches a denial for seconds: a call made at once
        # could be refused for a while. Every verb comes with the one binding.
        user = await Reviewer(kube).authenticate(f"Bearer {token}")
        await wait_allowed(kube, user, verb=verbs[0], namespace=ns)
    return token


@pytest.fixture
async def api(kube: KubeClient, namespace: str, controller: ControllerProcess) -> AsyncIterator[Api]:
    tokens = {who: await _persona(kube, namespace, who, verbs) for who, verbs in PERSONAS.items()}
    tokens["garbage"] = "not-a-real-token"
    url = await controller.api_url()
    async with aiohttp.ClientSession() as session:
        api = Api(url, namespace, tokens, session)

        async def ready() -> bool:
            code, _ = await api.call("GET", "/readyz", who=None)
            return code == 200

        await wait_for(ready, what="/readyz", timeout=30)
        yield api


async def _healthy(kube: KubeClient, ns: str) -> str:
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="Healthy")
    return str(st["stableHash"])


def _error(body: Any) -> tuple[int, str]:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    return int(body["error"]["code"]), str(body["error"]["message"])


async def test_no_or_invalid_token_is_401_and_a_token_without_rights_is_403(kube: KubeClient, api: Api) -> None:
    await create_app(kube, api.ns)
    for who in (None, "garbage"):
        code, body = await api.call("GET", api.rollout(), who=who)
        assert code == 401 and _error(body)[0] == 401
    code, body = await api.call("GET", api.rollout(), who="nobody")
    assert code == 403
    message = _error(body)[1]
    assert "get" in message and api.ns in message and "rollouts" in message
    code, body = await api.call("POST", api.rollout(op="abort"), who="reader")
    assert code == 403 and "abort" in _error(body)[1]


async def test_reader_sees_the_step_plan_weights_and_replicas(kube: KubeClient, api: Api) -> None:
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    await kube.patch(ROLLOUTS, name="web", namespace=api.ns, patch_type="json", patch=[
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "registry.example/web:2"}])
    await wait_status(kube, api.ns, paused_at(1), what="first pause")
    code, view = await api.call("GET", api.rollout(), who="reader")
    assert code == 200, view
    assert view["name"] == "web" and view["namespace"] == api.ns and view["phase"] == "Paused"
    assert view["weights"] == {"stable": 90, "canary": 10}
    assert view["images"] == {"web": "registry.example/web:2"}
    assert [s["state"] for s in view["steps"]] == ["done", "current", "pending", "pending", "pending", "pending"]
    assert view["replicas"]["desired"] == 4
    code, listed = await api.call("GET", f"/api/v1/namespaces/{api.ns}/rollouts", who="reader")
    assert code == 200 and [i["name"] for i in listed["items"]] == ["web"]
    # Listing every namespace needs a cluster-wide list: a namespaced Role is not enough.
    code, body = await api.call("GET", "/api/v1/rollouts", who="reader")
    assert code == 403 and "all namespaces" in _error(body)[1]


async def test_ci_sets_the_image_and_the_sre_operates_the_rollout(kube: KubeClient, api: Api) -> None:
    await create_app(kube, api.ns)
    v1 = await _healthy(kube, api.ns)
    code, body = await api.call("PUT", api.rollout(op="image"), who="ci",
                                body={"container": "web", "image": "registry.example/web:2"})
    assert code == 200, body
    assert body["images"] == {"web": "registry.example/web:2"}
    code, body = await api.call("POST", api.rollout(op="pause"), who="ci")
    assert code == 403
    await wait_status(kube, api.ns, paused_at(1), what="first pause")

    code, body = await api.call("POST", api.rollout(op="resume"))
    assert code == 200, body
    await wait_status(kube, api.ns, paused_at(3), what="50%")
    code, body = await api.call("POST", api.rollout(op="pause"))
    assert code == 200 and body["paused"] is True
    code, body = await api.call("POST", api.rollout(op="pause"))
    assert code == 200  # already paused: nothing to do, not an error
    code, body = await api.call("POST", api.rollout(op="resume"))
    assert code == 200
    code, body = await api.call("POST", api.rollout(op="abort"))
    assert code == 200, body
    await wait_status(kube, api.ns, lambda s: s.get("phase") == "Degraded", what="aborted")
    assert await weights(kube, api.ns) == (100, 0)
    code, body = await api.call("POST", api.rollout(op="retry"))
    assert code == 200, body
    await wait_status(kube, api.ns, paused_at(1), what="retried from the first step")
    code, body = await api.call("POST", api.rollout(op="promote"), body={"full": True})
    assert code == 200, body
    st = await wait_status(kube, api.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                           what="fully promoted")
    assert st["canaryWeight"] == 0

    events, _ = await kube.list(EVENTS, namespace=api.ns)
    operations = [e["message"] for e in events if e["reason"] == "OperationRequested"]
    assert any(f"system:serviceaccount:{api.ns}:ci" in m and "image" in m for m in operations), operations
    assert any(f"system:serviceaccount:{api.ns}:sre" in m and "abort" in m for m in operations), operations


async def test_operations_that_make_no_sense_now_answer_409_with_the_reason(kube: KubeClient, api: Api) -> None:
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    for op, body in (("resume", None), ("promote", None), ("retry", None), ("abort", None)):
        code, answer = await api.call("POST", api.rollout(op=op), body=body)
        assert code == 409, (op, answer)
        assert "web" in _error(answer)[1]


async def test_undo_brings_back_the_previous_revision_and_restart_makes_a_new_one(kube: KubeClient,
                                                                                  api: Api) -> None:
    await create_app(kube, api.ns, rollout_body(steps=[{"setWeight": 50}]))
    v1 = await _healthy(kube, api.ns)
    code, _ = await api.call("PUT", api.rollout(op="image"),
                             body={"container": "web", "image": "registry.example/web:2"})
    assert code == 200
    st = await wait_status(kube, api.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                           what="v2 promoted")
    code, body = await api.call("POST", api.rollout(op="undo"))
    assert code == 200, body
    assert body["images"] == {"web": "registry.example/web:1"}
    await wait_status(kube, api.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") == v1,
                      what="back on v1")
    code, body = await api.call("POST", api.rollout(op="undo"), body={"toRevision": 99})
    assert code in (404, 409) and "99" in _error(body)[1]
    code, body = await api.call("POST", api.rollout(op="restart"))
    assert code == 200, body
    st = await wait_status(kube, api.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") not in
                           (v1, st["stableHash"]), what="restarted as a new revision", timeout=60)
    assert st["stableHash"]


@pytest.mark.parametrize(("method", "path", "raw", "content_type", "code"), [
    ("POST", "promote", b"{not json", "application/json", 400),
    ("POST", "promote", b'{"full": true, "fast": 1}', "application/json", 400),
    ("POST", "promote", b'{"full": "yes"}', "application/json", 400),
    ("PUT", "image", b'{"container": "nope", "image": "x:1"}', "application/json", 400),
    ("PUT", "image", b'{"container": "web"}', "application/json", 400),
    ("POST", "pause", b"full=true", "application/x-www-form-urlencoded", 415),
    ("POST", "promote", b'{"full": true, "pad": "' + b"x" * 70_000 + b'"}', "application/json", 413),
    ("GET", "pause", None, "application/json", 405),
])
async def test_bad_requests_get_a_json_4xx_never_a_500(kube: KubeClient, api: Api, method: str, path: str,
                                                      raw: bytes | None, content_type: str, code: int) -> None:
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    got, body = await api.call(method, api.rollout(op=path), raw=raw, content_type=content_type)
    assert got == code, body
    assert _error(body)[0] == code


async def test_unknown_rollout_and_unknown_path_are_404(api: Api) -> None:
    code, body = await api.call("GET", api.rollout("missing"))
    assert code == 404 and "missing" in _error(body)[1]
    code, body = await api.call("POST", api.rollout("missing", "pause"))
    assert code == 404
    code, body = await api.call("GET", "/api/v1/nowhere")
    assert code == 404 and _error(body)[0] == 404


async def test_health_metrics_and_description_are_served(kube: KubeClient, api: Api) -> None:
    code, _ = await api.call("GET", "/healthz", who=None)
    assert code == 200
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    await api.call("GET", api.rollout(), who="reader")

    async def metrics() -> str | None:
        _, text = await api.call("GET", "/metrics", who=None)
        return text if f'sluice_rollout_canary_weight{{namespace="{api.ns}",rollout="web"}}' in text else None

    text = await wait_for(metrics, what="the Rollout in /metrics", timeout=20)
    for family in ("sluice_reconcile_duration_seconds", "sluice_api_requests_total",
                   'sluice_rollouts{phase="Healthy"}', "sluice_auth_reviews_total",
                   "sluice_analysis_measurements_total", "sluice_kube_api_errors_total"):
        assert family in text, family
    code, document = await api.call("GET", "/openapi.json", who=None)
    assert code == 200 and document["openapi"].startswith("3")
    assert "/api/v1/namespaces/{ns}/rollouts/{name}/promote" in document["paths"]


async def test_status_view_matches_the_rollout(kube: KubeClient, api: Api) -> None:
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    code, view = await api.call("GET", api.rollout())
    st = await status(kube, api.ns)
    assert code == 200
    assert view["phase"] == st["phase"] and view["revision"]["stable"] == st["stableHash"]
    assert all(s["state"] == "done" for s in view["steps"])


async def test_body_of_a_rollout_is_never_needed_from_the_caller(kube: KubeClient, api: Api) -> None:
    """Operations are patches decided on the server's fresh copy: a concurrent spec change is not overwritten."""
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    await kube.patch(ROLLOUTS, name="web", namespace=api.ns, patch={"spec": {"minReadySeconds": 1}})
    code, _ = await api.call("POST", api.rollout(op="pause"))
    assert code == 200
    body: Body = await kube.get(ROLLOUTS, name="web", namespace=api.ns)
    assert body["spec"]["minReadySeconds"] == 1 and body["spec"]["paused"] is True


ENDPOINTS: list[tuple[str, str, str, Any]] = [
    ("GET", "", "get", None),
    ("GET", "list", "list", None),
    *(("POST", op, op, None) for op in ("pause", "resume", "promote", "abort", "retry", "restart")),
    ("POST", "undo", "undo", {"toRevision": 1}),
    ("PUT", "image", "update-image", {"container": "web", "image": "registry.example/web:1"}),
]


async def test_every_endpoint_answers_each_persona_as_its_role_allows(kube: KubeClient, api: Api) -> None:
    """The 401/403/allowed matrix: allowed means neither 401 nor 403 (the state may still answer 200 or 409)."""
    await create_app(kube, api.ns)
    await _healthy(kube, api.ns)
    seen: dict[tuple[str, str], int] = {}
    for who in ("garbage", "nobody", "reader", "ci", "sre"):
        for method, op, verb, body in ENDPOINTS:
            path = f"/api/v1/namespaces/{api.ns}/rollouts" if op == "list" else api.rollout(op=op or None)
            code, answer = await api.call(method, path, who=who, body=body)
            seen[(who, verb)] = code
            if who == "garbage":
                expected = {401}
            elif verb in PERSONAS[who]:
                expected = {200, 409}
            else:
                expected = {403}
            assert code in expected, (who, verb, code, answer)
            if code == 403:
                assert verb in _error(answer)[1]
    assert seen[("sre", "pause")] == 200 and seen[("ci", "update-image")] == 200


async def test_an_operation_takes_effect_at_once_not_at_the_next_resync(
        kube: KubeClient, namespace: str, control_plane: Any, tmp_path: Any) -> None:
    """The API writes the Rollout and tells the controller; with a 5-minute resync nothing else would wake it."""
    tokens = {"sre": await _persona(kube, namespace, "sre", PERSONAS["sre"])}
    proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                             log_path=tmp_path / "controller.log", extra_args=["--resync-seconds", "300"])
    proc.start()
    try:
        await create_app(kube, namespace)
        await _healthy(kube, namespace)
        async with aiohttp.ClientSession() as session:
            api = Api(await proc.api_url(), namespace, tokens, session)
            code, body = await api.call("PUT", api.rollout(op="image"),
                                        body={"container": "web", "image": "registry.example/web:2"})
            assert code == 200, body
            await wait_status(kube, namespace, paused_at(1), what="the new image at its first pause", timeout=20)
            code, body = await api.call("POST", api.rollout(op="resume"))
            assert code == 200, body
            await wait_status(kube, namespace, paused_at(3), what="resumed to the next pause", timeout=20)
    finally:
        proc.stop()
