"""The registry webhook's pure parts: signatures and replays, the three payload shapes, and which Rollouts opt in."""

from __future__ import annotations

import hmac
import json
from typing import Any

import pytest

from rollout.webhook import (
    Push,
    ReplayGuard,
    WebhookError,
    normalise_repository,
    parse_push,
    plan_updates,
    sign,
    target_container,
    verify_signature,
)

SECRET = b"s3cret-key"
NOW = 1_750_000_000.0
SKEW = 300.0
BODY = json.dumps({"repository": "registry.example/web", "tag": "1.4.2"}).encode()
DIGEST = "sha256:76525f02955aec223342400a080c73024c995c9db1ba2eabf7505cf3bdf3f1f0"

# As Docker Hub sends it (docs.docker.com/docker-hub/repos/manage/webhooks).
DOCKER_HUB_PUSH: dict[str, Any] = {
    "callback_url": "https://registry.hub.docker.com/u/acme/web/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
    "push_data": {"pushed_at": 1417566161, "pusher": "trustedbuilder", "tag": "1.4.2", "images": []},
    "repository": {
        "comment_count": 0, "date_created": 1417494799, "description": "", "dockerfile": "FROM scratch\n",
        "full_description": "The web front end", "is_official": False, "is_private": True, "is_trusted": True,
        "name": "web", "namespace": "acme", "owner": "acme", "repo_name": "acme/web",
        "repo_url": "https://registry.hub.docker.com/u/acme/web/", "star_count": 0, "status": "Active",
    },
}

# A Harbor "Default" format PUSH_ARTIFACT event (goharbor.io, Configure Webhook Notifications).
HARBOR_PUSH: dict[str, Any] = {
    "type": "PUSH_ARTIFACT",
    "occur_at": 1737446601,
    "operator": "admin",
    "event_data": {
        "resources": [{"digest": DIGEST, "tag": "1.4.2", "resource_url": "harbor.example/proj/web:1.4.2"}],
        "repository": {"date_created": 1737446600, "name": "web", "namespace": "proj",
                       "repo_full_name": "proj/web", "repo_type": "private"},
    },
}


def verify(*, timestamp: str | None = str(int(NOW)), signature: str | None = None, body: bytes = BODY,
           now: float = NOW, guard: ReplayGuard | None = None) -> None:
    if signature is None and timestamp is not None:
        signature = sign(SECRET, timestamp, body)
    verify_signature(SECRET, timestamp=timestamp, signature=signature, body=body, now=now, max_skew=SKEW,
                     seen=guard if guard is not None else ReplayGuard())


def refused(**kwargs: Any) -> str:
    with pytest.raises(WebhookError) as caught:
        verify(**kwargs)
    assert caught.value.code == 401
    return caught.value.message


# -- signatures ----------------------------------------------------------------------------------------------------


def test_a_signed_fresh_request_is_accepted() -> None:
    verify()
    verify(timestamp=str(int(NOW - SKEW)))  # at the edge of the window, both ways
    verify(timestamp=str(int(NOW + SKEW)))


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    assert sign(b"key", "1700000000", b"{}") == (
        "sha256=" + hmac.new(b"key", b"1700000000.{}", "sha256").hexdigest())
    upper = "sha256=" + sign(SECRET, str(int(NOW)), BODY).removeprefix("sha256=").upper()
    verify(signature=upper)


def test_missing_headers_are_named() -> None:
    assert "X-Sluice-Timestamp" in refused(timestamp=None, signature="sha256=" + "0" * 64)
    assert "X-Sluice-Signature" in refused(signature="")


@pytest.mark.parametrize("timestamp", ["12.5", "-1", "soon", "1e9", " 1750000000", "0x10"])
def test_a_timestamp_that_is_not_integer_seconds_is_refused(timestamp: str) -> None:
    assert "integer" in refused(timestamp=timestamp, signature="sha256=" + "0" * 64)


@pytest.mark.parametrize("offset", [-SKEW - 1, SKEW + 1, -86_400])
def test_a_stale_or_future_timestamp_is_refused_even_when_signed(offset: float) -> None:
    assert "away from" in refused(timestamp=str(int(NOW + offset)))


@pytest.mark.parametrize("signature", ["", "sha256=", "sha256=abc", "sha1=" + "0" * 40, "0" * 64,
                                       "sha256=" + "g" * 64, "sha256=" + "0" * 65])
def test_a_malformed_signature_is_refused(signature: str) -> None:
    assert "X-Sluice-Signature" in refused(signature=signature)


def test_a_wrong_key_a_changed_body_or_a_changed_timestamp_do_not_match() -> None:
    ts = str(int(NOW))
    assert "does not match" in refused(signature=sign(b"other", ts, BODY))
    assert "does not match" in refused(signature=sign(SECRET, ts, BODY), body=BODY + b" ")
    assert "does not match" in refused(signature=sign(SECRET, ts, BODY), timestamp=str(int(NOW) - 1))


def test_the_same_request_is_accepted_once() -> None:
    guard = ReplayGuard()
    verify(guard=guard)
    assert "replay" in refused(guard=guard, now=NOW + 10)
    verify(guard=guard, timestamp=str(int(NOW) + 1))  # a new request (new timestamp) is fine


def test_unsigned_requests_never_fill_the_replay_guard() -> None:
    guard = ReplayGuard()
    refused(guard=guard, signature="sha256=" + "0" * 64)
    assert len(guard) == 0


def test_the_replay_guard_forgets_signatures_once_they_could_not_be_accepted_anyway() -> None:
    guard = ReplayGuard()
    for i in range(50):
        verify(guard=guard, timestamp=str(int(NOW) + i), now=NOW + i)
    assert len(guard) == 50
    verify(guard=guard, timestamp=str(int(NOW + 2 * SKEW)), now=NOW + 2 * SKEW)
    assert len(guard) == 1


def test_the_replay_guard_is_bounded() -> None:
    guard = ReplayGuard(max_entries=10)
    for i in range(25):
        guard.remember(f"sig{i}", until=NOW + SKEW + i, now=NOW)
    assert len(guard) == 10
    assert guard.seen("sig24", now=NOW) and not guard.seen("sig0", now=NOW)


# -- payloads ------------------------------------------------------------------------------------------------------


def test_generic_payload() -> None:
    assert parse_push({"repository": "registry.example/web", "tag": "1.4.2"}) == Push(
        "registry.example/web", "1.4.2", None)
    assert parse_push({"repository": "registry.example/web", "tag": "1.4.2", "digest": DIGEST}).digest == DIGEST


def test_docker_hub_payload_names_the_docker_io_repository() -> None:
    assert parse_push(DOCKER_HUB_PUSH) == Push("docker.io/acme/web", "1.4.2", None)


def test_harbor_payload_takes_the_repository_from_the_resource_url() -> None:
    assert parse_push(HARBOR_PUSH) == Push("harbor.example/proj/web", "1.4.2", DIGEST)


@pytest.mark.parametrize("payload", [
    [], "push", None, {}, {"repository": 3, "tag": "1"}, {"tag": "1.4.2"},
    {"repository": "registry.example/web"}, {"repository": "registry.example/web", "tag": ""},
    {"type": "PULL_ARTIFACT", "event_data": HARBOR_PUSH["event_data"]},
    {"type": "PUSH_ARTIFACT", "event_data": {"resources": []}},
    {"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"digest": DIGEST, "resource_url": "h.example/p/w"}]}},
    {"push_data": {}, "repository": {"repo_name": "acme/web"}},
    {"push_data": {"tag": "1"}, "repository": {}},
])
def test_anything_else_is_unrecognised(payload: object) -> None:
    with pytest.raises(WebhookError) as caught:
        parse_push(payload)
    assert caught.value.code == 400
    assert caught.value.message.startswith("unrecognised payload")


@pytest.mark.parametrize("tag", ["1.4.2 ", "1.4.2\n", "../x", "a" * 129, ".hidden", "1.4.2@sha256:x"])
def test_a_tag_that_cannot_be_part_of_an_image_reference_is_refused(tag: str) -> None:
    with pytest.raises(WebhookError) as caught:
        parse_push({"repository": "registry.example/web", "tag": tag})
    assert caught.value.code == 400


@pytest.mark.parametrize(("reference", "normal"), [
    ("registry.example/web", "registry.example/web"),
    ("registry.example/web:1.4.2", "registry.example/web"),
    ("registry.example:5000/team/web:1.4.2@" + DIGEST, "registry.example:5000/team/web"),
    ("localhost:5000/web", "localhost:5000/web"),
    ("nginx", "docker.io/library/nginx"),
    ("nginx:1.27", "docker.io/library/nginx"),
    ("library/nginx", "docker.io/library/nginx"),
    ("docker.io/nginx", "docker.io/library/nginx"),
    ("acme/web", "docker.io/acme/web"),
    ("docker.io/acme/web", "docker.io/acme/web"),
    ("index.docker.io/acme/web:2", "docker.io/acme/web"),
    ("registry-1.docker.io/acme/web", "docker.io/acme/web"),
])
def test_repositories_are_compared_in_one_normal_form(reference: str, normal: str) -> None:
    assert normalise_repository(reference) == normal


# -- matching ------------------------------------------------------------------------------------------------------


def rollout(*, annotations: dict[str, str] | None = None, containers: list[tuple[str, str]] | None = None,
            name: str = "web") -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "annotations": annotations or {}},
        "spec": {"template": {"spec": {"containers": [
            {"name": c, "image": image} for c, image in (containers or [("web", "registry.example/web:1.4.1")])
        ]}}},
    }


OPTED_IN = {"sluice.dev/image-repository": "registry.example/web", "sluice.dev/image-tag-pattern": r"1\.4\.\d+"}
PUSH = Push("registry.example/web", "1.4.2")


def test_an_opted_in_rollout_gets_the_pushed_tag_on_the_container_using_the_repository() -> None:
    r = rollout(annotations=OPTED_IN, containers=[("proxy", "envoyproxy/envoy:v1.31"),
                                                  ("web", "registry.example/web:1.4.1")])
    assert target_container(r, PUSH) == ("web", "registry.example/web:1.4.2")


def test_the_tag_pattern_must_match_in_full() -> None:
    r = rollout(annotations={**OPTED_IN, "sluice.dev/image-tag-pattern": r"1\.4"})
    assert target_container(r, PUSH) is None
    assert target_container(rollout(annotations=OPTED_IN), Push("registry.example/web", "1.4.2-rc1")) is None
    assert target_container(rollout(annotations=OPTED_IN), Push("registry.example/web", "1.5.0")) is None


def test_a_rollout_without_the_annotations_is_never_touched() -> None:
    assert target_container(rollout(), PUSH) is None
    only_repository = {"sluice.dev/image-repository": "registry.example/web"}
    assert target_container(rollout(annotations=only_repository), PUSH) is None


def test_an_invalid_tag_pattern_matches_nothing() -> None:
    r = rollout(annotations={**OPTED_IN, "sluice.dev/image-tag-pattern": "1.4.(+"})
    assert target_container(r, PUSH) is None


def test_another_repository_does_not_match() -> None:
    assert target_container(rollout(annotations=OPTED_IN), Push("registry.example/api", "1.4.2")) is None


def test_the_named_container_is_used_even_with_another_image() -> None:
    r = rollout(annotations={**OPTED_IN, "sluice.dev/image-container": "app"},
                containers=[("app", "registry.example/web-old:3"), ("web", "registry.example/web:1.4.1")])
    assert target_container(r, PUSH) == ("app", "registry.example/web:1.4.2")
    missing = rollout(annotations={**OPTED_IN, "sluice.dev/image-container": "nope"})
    assert target_container(missing, PUSH) is None


def test_two_containers_with_the_repository_and_no_name_is_ambiguous() -> None:
    r = rollout(annotations=OPTED_IN, containers=[("a", "registry.example/web:1"), ("b", "registry.example/web:2")])
    assert target_container(r, PUSH) is None


def test_docker_hub_forms_match_each_other_and_keep_the_rollouts_spelling() -> None:
    annotations = {"sluice.dev/image-repository": "index.docker.io/acme/web", "sluice.dev/image-tag-pattern": ".+"}
    r = rollout(annotations=annotations, containers=[("web", "acme/web@" + DIGEST)])
    assert target_container(r, parse_push(DOCKER_HUB_PUSH)) == ("web", "acme/web:1.4.2")


def test_harbor_push_matches_the_harbor_repository() -> None:
    annotations = {"sluice.dev/image-repository": "harbor.example/proj/web", "sluice.dev/image-tag-pattern": ".*"}
    r = rollout(annotations=annotations, containers=[("web", "harbor.example/proj/web:1.4.1")])
    assert target_container(r, parse_push(HARBOR_PUSH)) == ("web", "harbor.example/proj/web:1.4.2")


def test_plan_updates_opted_in_rollouts_and_says_why_others_are_ignored() -> None:
    rollouts = [
        rollout(name="web", annotations=OPTED_IN),
        rollout(name="plain"),
        rollout(name="broken", annotations={**OPTED_IN, "sluice.dev/image-tag-pattern": "1.4.(+"}),
        rollout(name="old", annotations={**OPTED_IN, "sluice.dev/image-tag-pattern": r"1\.3\.\d+"}),
    ]
    plan = plan_updates(rollouts, PUSH)
    assert [(u.namespace, u.name, u.container, u.image) for u in plan.updates] == [
        ("shop", "web", "web", "registry.example/web:1.4.2")]
    reasons = dict(plan.ignored)
    assert reasons["shop/plain"] == "not opted in"
    assert reasons["shop/broken"].startswith("invalid sluice.dev/image-tag-pattern")
    assert "does not match" in reasons["shop/old"]


@pytest.mark.timeout(5)
def test_a_catastrophic_tag_pattern_cannot_stall_the_controller() -> None:
    # With backtracking regular expressions `(a+)+` against 40 a's and a '-' runs for hours; RE2 is linear.
    rollout = {"metadata": {"annotations": {"sluice.dev/image-repository": "registry.example/web",
                                            "sluice.dev/image-tag-pattern": "(a+)+"}},
               "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}}}}
    assert target_container(rollout, Push("registry.example/web", "a" * 120 + "-")) is None
    tag = "a" * 120
    assert target_container(rollout, Push("registry.example/web", tag)) == ("web", f"registry.example/web:{tag}")


def test_a_pattern_re2_cannot_run_is_reported_as_invalid() -> None:
    rollout = {"metadata": {"namespace": "ns", "name": "web", "annotations": {
        "sluice.dev/image-repository": "registry.example/web", "sluice.dev/image-tag-pattern": r"(1)\.\1"}},
               "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "registry.example/web:1"}]}}}}
    plan = plan_updates([rollout], Push("registry.example/web", "1.1"))
    assert plan.updates == () and "invalid sluice.dev/image-tag-pattern" in plan.ignored[0][1]
