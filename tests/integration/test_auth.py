"""The operator API's authentication and authorisation against the real API server: real ServiceAccount tokens go
through TokenReview, RBAC Roles with sluice's custom verbs through SubjectAccessReview, and identical reviews are
cached and coalesced so a busy client costs the API server one review, not one per request."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.auth import AuthError, Reviewer, User
from rollout.kube import SERVICEACCOUNTS, KubeClient
from rollout.settings import RetrySettings
from tests.integration.kit import ROLE_BINDINGS, ROLES, wait_allowed, wait_for

pytestmark = pytest.mark.integration



async def service_account_token(kube: KubeClient, namespace: str, name: str) -> str:
    """Create a ServiceAccount and a token for it (TokenRequest), as `kubectl create token` does."""
    await kube.create(SERVICEACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                      namespace=namespace)
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 600}}
    answer = await kube.create(SERVICEACCOUNTS, request, namespace=namespace, name=name, subresource="token")
    return str(answer["status"]["token"])


async def grant(kube: KubeClient, namespace: str, service_account: str, verbs: list[str]) -> None:
    await kube.create(ROLES, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": service_account},
        "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"], "verbs": verbs}],
    }, namespace=namespace)
    await kube.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": service_account},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": service_account},
        "subjects": [{"kind": "ServiceAccount", "name": service_account, "namespace": namespace}],
    }, namespace=namespace)


class Reviews:
    """Counts the reviews that reached the API server, by kind (the hook the API's metrics use)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def __call__(self, kind: str) -> None:
        self.counts[kind] += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def sre(kube: KubeClient, namespace: str) -> str:
    """A token for ServiceAccount `sre`, allowed to get and promote Rollouts in the namespace, nothing else."""
    token = await service_account_token(kube, namespace, "sre")
    await grant(kube, namespace, "sre", ["get", "promote"])
    user = await Reviewer(kube).authenticate(f"Bearer {token}")
    await wait_allowed(kube, user, verb="promote", namespace=namespace)
    return token


async def test_a_service_account_token_authenticates_as_the_service_account(kube: KubeClient,
                                                                            namespace: str) -> None:
    token = await service_account_token(kube, namespace, "ci")
    user = await Reviewer(kube).authenticate(f"Bearer {token}")
    assert user.name == f"system:serviceaccount:{namespace}:ci"
    assert user.uid
    assert "system:authenticated" in user.groups
    assert f"system:serviceaccounts:{namespace}" in user.groups


@pytest.mark.parametrize(("header", "says"), [
    (None, "missing Authorization header"),
    ("", "missing Authorization header"),
    ("Basic YWxpY2U6c2VjcmV0", "expected 'Bearer <token>'"),
    ("Bearer", "expected 'Bearer <token>'"),
    ("Bearer two tokens", "malformed bearer token"),
    ("Bearer not-a-real-token", "not valid"),
    ("Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl", "not valid"),
])
async def test_a_missing_malformed_or_unknown_token_is_refused_with_401(kube: KubeClient, header: str | None,
                                                                       says: str) -> None:
    with pytest.raises(AuthError) as caught:
        await Reviewer(kube).authenticate(header)
    assert caught.value.code == 401
    assert says in caught.value.message
    if header:
        token = header.partition(" ")[2]
        assert not token or token not in caught.value.message


async def test_a_role_with_a_custom_verb_allows_exactly_that_verb(kube: KubeClient, namespace: str,
                                                                  sre: str) -> None:
    reviewer = Reviewer(kube)
    user = await reviewer.authenticate(f"Bearer {sre}")
    await reviewer.authorize(user, verb="promote", namespace=namespace, name="web")
    await reviewer.authorize(user, verb="get", namespace=namespace)

    with pytest.raises(AuthError) as caught:
        await reviewer.authorize(user, verb="abort", namespace=namespace, name="web")
    assert caught.value.code == 403
    assert "abort" in caught.value.message
    assert "rollouts.sluice.dev" in caught.value.message
    assert f"namespace {namespace}" in caught.value.message

    with pytest.raises(AuthError) as elsewhere:
        await reviewer.authorize(user, verb="promote", namespace="default")
    assert elsewhere.value.code == 403 and "namespace default" in elsewhere.value.message
    with pytest.raises(AuthError) as everywhere:
        await reviewer.authorize(user, verb="list", namespace=None)
    assert everywhere.value.code == 403 and "all namespaces" in everywhere.value.message


async def test_repeated_identical_requests_cost_one_review_of_each_kind(kube: KubeClient, namespace: str,
                                                                        sre: str) -> None:
    reviews = Reviews()
    reviewer = Reviewer(kube, on_review=reviews)
    for _ in range(25):
        user = await reviewer.authenticate(f"Bearer {sre}")
        await reviewer.authorize(user, verb="promote", namespace=namespace, name="web")
    assert reviews.counts == {"TokenReview": 1, "SubjectAccessReview": 1}

    # The namespace-wide answer covers every Rollout: other names cost no review.
    for name in ("api", "worker", "cron"):
        await reviewer.authorize(user, verb="promote", namespace=namespace, name=name)
    assert reviews.counts == {"TokenReview": 1, "SubjectAccessReview": 1}

    # Another verb is another question; a denial asks namespace-wide, then for the name, and both are cached.
    for _ in range(5):
        with pytest.raises(AuthError):
            await reviewer.authorize(user, verb="abort", namespace=namespace, name="web")
    assert reviews.counts == {"TokenReview": 1, "SubjectAccessReview": 3}


async def test_concurrent_identical_requests_share_one_review_in_flight(kube: KubeClient, namespace: str,
                                                                        sre: str) -> None:
    reviews = Reviews()
    reviewer = Reviewer(kube, on_review=reviews)

    async def request() -> None:
        user = await reviewer.authenticate(f"Bearer {sre}")
        await reviewer.authorize(user, verb="promote", namespace=namespace, name="web")

    await asyncio.gather(*(request() for _ in range(100)))
    assert reviews.counts == {"TokenReview": 1, "SubjectAccessReview": 1}

    denied = await asyncio.gather(*(reviewer.authenticate("Bearer garbage") for _ in range(50)),
                                  return_exceptions=True)
    assert all(isinstance(e, AuthError) and e.code == 401 for e in denied)
    assert reviews.counts["TokenReview"] == 2


async def test_results_expire_and_bad_tokens_are_remembered_only_briefly(kube: KubeClient, namespace: str,
                                                                         sre: str) -> None:
    reviews, clock = Reviews(), FakeClock()
    reviewer = Reviewer(kube, cache_seconds=5.0, clock=clock, on_review=reviews)
    for _ in range(10):
        with pytest.raises(AuthError):
            await reviewer.authenticate("Bearer garbage")
    user = await reviewer.authenticate(f"Bearer {sre}")
    assert reviews.counts["TokenReview"] == 2

    clock.now += 1.5  # the bad token is asked about again; the good one is still cached
    with pytest.raises(AuthError):
        await reviewer.authenticate("Bearer garbage")
    assert await reviewer.authenticate(f"Bearer {sre}") == user
    assert reviews.counts["TokenReview"] == 3

    clock.now += 5.0
    await reviewer.authenticate(f"Bearer {sre}")
    assert reviews.counts["TokenReview"] == 4


async def test_the_cache_is_bounded(kube: KubeClient, namespace: str, sre: str) -> None:
    reviews = Reviews()
    reviewer = Reviewer(kube, max_entries=2, on_review=reviews)
    user = await reviewer.authenticate(f"Bearer {sre}")
    await reviewer.authorize(user, verb="get", namespace=namespace)
    await reviewer.authorize(user, verb="promote", namespace=namespace)
    with pytest.raises(AuthError):
        await reviewer.authorize(user, verb="abort", namespace=namespace)  # the oldest (get) makes room
    await reviewer.authorize(user, verb="promote", namespace=namespace)  # still cached
    await reviewer.authorize(user, verb="get", namespace=namespace)  # evicted: asked again
    assert reviews.counts["SubjectAccessReview"] == 4


async def test_a_reviewer_that_may_not_create_reviews_answers_503_not_401(control_plane: Any, kube: KubeClient,
                                                                          namespace: str) -> None:
    token = await service_account_token(kube, namespace, "ci")
    nobody = await KubeClient.connect(kubeconfig=str(control_plane.client_kubeconfig(f"nobody-{namespace}", [])))
    try:
        with pytest.raises(AuthError) as caught:
            await Reviewer(nobody).authenticate(f"Bearer {token}")
    finally:
        await nobody.close()
    assert caught.value.code == 503
    assert token not in caught.value.message


@pytest.fixture
def unreachable_kubeconfig(control_plane: Any, tmp_path: Path) -> Path:
    """The admin kubeconfig pointed at a loopback port nobody listens on."""
    config = yaml.safe_load(Path(control_plane.kubeconfig).read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{closed_port}"
    path = tmp_path / "unreachable.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


async def test_an_unreachable_api_server_answers_503(unreachable_kubeconfig: Path) -> None:
    client = await KubeClient.connect(kubeconfig=str(unreachable_kubeconfig),
                                      retry=RetrySettings(attempts=1, backoff=(0.0,), request_timeout=5))
    reviewer = Reviewer(client)
    try:
        with pytest.raises(AuthError) as token_check:
            await reviewer.authenticate("Bearer some-token")
        with pytest.raises(AuthError) as access_check:
            await reviewer.authorize(User("alice", groups=("system:authenticated",)), verb="get", namespace="shop")
    finally:
        await client.close()
    assert token_check.value.code == 503 and "cannot reach the Kubernetes API" in token_check.value.message
    assert access_check.value.code == 503



async def test_a_role_limited_to_some_rollouts_allows_exactly_those(kube: KubeClient, namespace: str) -> None:
    """The namespace-wide review is asked first (one per user and verb, shared by every Rollout); a Role with
    resourceNames is denied there and allowed by the named review for its own Rollouts only."""
    token = await service_account_token(kube, namespace, "owner")
    await kube.create(ROLES, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "owner"},
        "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"], "verbs": ["abort"],
                   "resourceNames": ["mine"]}],
    }, namespace=namespace)
    await kube.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "owner"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "owner"},
        "subjects": [{"kind": "ServiceAccount", "name": "owner", "namespace": namespace}],
    }, namespace=namespace)
    fresh = Reviewer(kube, cache_seconds=0)
    user = await fresh.authenticate(f"Bearer {token}")

    async def allowed_on_mine() -> bool:
        try:
            await fresh.authorize(user, verb="abort", namespace=namespace, name="mine")
        except AuthError:
            return False
        return True

    await wait_for(allowed_on_mine, timeout=30, what="abort allowed on the named Rollout")
    with pytest.raises(AuthError) as denied:
        await fresh.authorize(user, verb="abort", namespace=namespace, name="theirs")
    assert denied.value.code == 403 and "theirs" in denied.value.message
    with pytest.raises(AuthError):
        await fresh.authorize(user, verb="abort", namespace=namespace)
