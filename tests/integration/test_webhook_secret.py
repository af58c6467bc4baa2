"""The registry webhook's HMAC key comes from a real Secret; every way of not getting it is a 503 that names the
Secret and never its value."""

from __future__ import annotations

import base64

import pytest

from rollout.kube import SECRETS, KubeClient
from rollout.webhook import WebhookError, load_secret

pytestmark = pytest.mark.integration

KEY = b"correct horse battery staple"


async def create_secret(kube: KubeClient, namespace: str, name: str, data: dict[str, bytes]) -> None:
    await kube.create(SECRETS, {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }, namespace=namespace)


async def test_the_key_is_read_from_the_secrets_hmac_entry(kube: KubeClient, namespace: str) -> None:
    await create_secret(kube, namespace, "registry-hook", {"hmac": KEY, "other": b"x"})
    assert await load_secret(kube, f"{namespace}/registry-hook") == KEY


@pytest.mark.parametrize(("ref", "says"), [
    ("{ns}/absent", "does not exist"),
    ("{ns}/no-key", "has no key 'hmac'"),
    ("no-slash", "is not namespace/name"),
    ("{ns}/a/b", "is not namespace/name"),
])
async def test_a_missing_secret_or_key_is_a_503_without_the_value(kube: KubeClient, namespace: str, ref: str,
                                                                  says: str) -> None:
    await create_secret(kube, namespace, "no-key", {"key": KEY})
    with pytest.raises(WebhookError) as caught:
        await load_secret(kube, ref.format(ns=namespace))
    assert caught.value.code == 503
    assert says in caught.value.message
    assert KEY.decode() not in caught.value.message
    assert base64.b64encode(KEY).decode() not in caught.value.message
