"""The review cache's edge cases that the real API server cannot provoke on demand: a caller giving up while others
wait on the same review, and failures that must not be cached. (Behaviour against RBAC: tests/integration.)"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from rollout.auth import AuthError, Reviewer, bearer_token
from rollout.kube import ApiError, KubeClient


class SlowApiServer:
    """Answers TokenReviews once released; fails the first `failures` of them."""

    def __init__(self, *, failures: int = 0) -> None:
        self.release = asyncio.Event()
        self.calls = 0
        self.failures = failures

    async def create(self, resource: Any, body: dict[str, Any], *, namespace: str | None = None) -> dict[str, Any]:
        self.calls += 1
        await self.release.wait()
        if self.calls <= self.failures:
            raise ApiError(status=503, reason="ServiceUnavailable", message="etcd is sad")
        return {"status": {"authenticated": True, "user": {"username": "alice", "uid": "1", "groups": ["devs"]}}}


def reviewer(server: SlowApiServer) -> Reviewer:
    return Reviewer(cast(KubeClient, server))


async def test_a_caller_giving_up_does_not_cancel_the_review_others_wait_for() -> None:
    server = SlowApiServer()
    r = reviewer(server)
    first = asyncio.create_task(r.authenticate("Bearer t"))
    second = asyncio.create_task(r.authenticate("Bearer t"))
    await asyncio.sleep(0)
    first.cancel()
    server.release.set()
    assert (await second).name == "alice"
    assert server.calls == 1


async def test_a_failed_review_is_a_503_for_every_waiter_and_is_not_cached() -> None:
    server = SlowApiServer(failures=1)
    r = reviewer(server)
    waiting = [asyncio.create_task(r.authenticate("Bearer t")) for _ in range(3)]
    await asyncio.sleep(0)
    server.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(e, AuthError) and e.code == 503 for e in results)
    assert (await r.authenticate("Bearer t")).groups == ("devs",)
    assert server.calls == 2


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("BEARER a.b.c", "a.b.c"),
])
def test_bearer_tokens_are_read_case_insensitively(header: str, token: str) -> None:
    assert bearer_token(header) == token


@pytest.mark.parametrize("header", ["Bearer ünïcode", "Bearer " + "x" * 20_000, "Token secret-abc", "secret-abc"])
def test_odd_authorization_headers_are_401_without_the_token(header: str) -> None:
    with pytest.raises(AuthError) as caught:
        bearer_token(header)
    assert caught.value.code == 401
    assert "cod" not in caught.value.message and "xxx" not in caught.value.message and "abc" not in caught.value.message
