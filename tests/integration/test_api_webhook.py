"""The registry webhook through the real controller: a correctly signed push updates the Rollouts that opted in (and
only those), a bad signature and a replayed request are refused; and /readyz says not ready until the watches sync."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from rollout.kube import ROLLOUTS, SECRETS, KubeClient
from rollout.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from tests.integration.kit import (
    CLUSTER_ROLES,
    ControllerProcess,
    create_app,
    grant,
    rollout_body,
    wait_for,
    wait_status,
)
from tests.integration.test_rbac import SLUICE_RULES

SECRET = b"registry-hook-secret"


def _opted_in(name: str, pattern: str = r"^2\.\d+$") -> dict[str, Any]:
    body = rollout_body(name, image="registry.example/web:1.0")
    body["metadata"]["annotations"] = {"sluice.dev/image-repository": "registry.example/web",
                                       "sluice.dev/image-tag-pattern": pattern}
    return body


async def _post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any], *, secret: bytes = SECRET,
                timestamp: int | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    body = json.dumps(payload).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    sent = headers or {TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body),
                       "Content-Type": "application/json"}
    async with session.post(url + "/api/v1/hooks/registry", data=body, headers=sent) as response:
        return response.status, await response.json(), sent


async def test_signed_push_updates_opted_in_rollouts_and_replays_are_refused(
        kube: KubeClient, namespace: str, control_plane: Any, tmp_path: Path) -> None:
    ns = namespace
    await kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hook"},
                                "data": {"hmac": base64.b64encode(SECRET).decode()}}, namespace=ns)
    # The webhook is configured per controller; this test runs its own.
    proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=ns, log_path=tmp_path / "c.log",
                             extra_args=["--webhook-secret", f"{ns}/hook"])
    proc.start()
    try:
        await create_app(kube, ns, _opted_in("web"))
        await kube.create(ROLLOUTS, _opted_in("web-pinned", pattern=r"^1\.\d+$"), namespace=ns)
        await kube.create(ROLLOUTS, rollout_body("web-manual", image="registry.example/web:1.0"), namespace=ns)
        # The first version must be up before the push, or the pushed image simply becomes the first version.
        await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="web Healthy on 1.0")
        url = await proc.api_url()
        push = {"repository": "registry.example/web", "tag": "2.1"}
        async with aiohttp.ClientSession() as session:
            async def ready() -> bool:
                async with session.get(url + "/readyz") as response:
                    return response.status == 200

            await wait_for(ready, what="/readyz")
            code, answer, sent = await _post(session, url, push)
            assert code == 200, answer
            assert answer["updated"] == [f"{ns}/web"]
            assert answer["ignored"] == 2

            code, answer, _ = await _post(session, url, push, headers=sent)  # the same request again
            assert code == 401 and "replay" in answer["error"]["message"].lower()
            code, answer, _ = await _post(session, url, push, secret=b"wrong")
            assert code == 401
            code, answer, _ = await _post(session, url, push, timestamp=int(time.time()) - 3600)
            assert code == 401
            code, answer, _ = await _post(session, url, {"what": "is this"})
            assert code == 400

        rollout = await kube.get(ROLLOUTS, name="web", namespace=ns)
        assert rollout["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:2.1"
        for untouched in ("web-pinned", "web-manual"):
            other = await kube.get(ROLLOUTS, name=untouched, namespace=ns)
            assert other["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:1.0"
        await wait_status(kube, ns, lambda s: s.get("currentStepIndex") == 1, what="the pushed image rolls out")
    finally:
        proc.stop()


async def test_readyz_is_503_until_the_watches_sync(kube: KubeClient, namespace: str, control_plane: Any,
                                                    tmp_path: Path) -> None:
    # A user who may not list Rollouts: the controller serves, but its watches never sync.
    kubeconfig = control_plane.client_kubeconfig(f"unsynced-{namespace}", [])
    proc = ControllerProcess(kubeconfig=kubeconfig, namespace=namespace, log_path=tmp_path / "c.log")
    proc.start()
    try:
        url = await proc.api_url()
        async with aiohttp.ClientSession() as session:
            async with session.get(url + "/healthz") as response:
                assert response.status == 200
            async with session.get(url + "/readyz") as response:
                assert response.status == 503
                assert "not ready" in (await response.json())["error"]["message"]
            await grant(kube, namespace, f"unsynced-{namespace}", SLUICE_RULES)

            async def ready() -> bool:
                async with session.get(url + "/readyz") as response:
                    return response.status == 200

            await wait_for(ready, what="ready once allowed to list", timeout=60)
        await kube.delete(CLUSTER_ROLES, name=f"{namespace}-sluice")
    finally:
        proc.stop()
