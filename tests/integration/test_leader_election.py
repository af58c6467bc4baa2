"""High availability on the real control plane: two controller processes, one Lease (rollout/leader.py).

Exactly one replica reconciles (every Event names it as the reporting instance) while both serve the API; when the
leader is SIGKILLed mid-rollout the other takes over within the lease duration and finishes the rollout without
repeating or skipping a step; a leader stopped with SIGTERM releases the Lease, so the other takes over at once.
The replicas are told apart by POD_NAME, which names both the Events' reportingInstance and the Lease holder.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollout.kube import EVENTS, LEASES, Body, KubeClient, NotFound
from tests.integration.kit import (
    ControllerProcess,
    create_app,
    paused_at,
    rollout_body,
    set_image,
    wait_for,
    wait_status,
)
from tests.integration.test_api import PERSONAS, Api, _persona

LEASE = "sluice-controller"
# Short timings, so a takeover takes seconds: (lease duration, renew deadline, retry period).
FAST = (4.0, 3.0, 1.0)
REPLICAS = ("sluice-a", "sluice-b")
STEP_COMPLETED = re.compile(r"step (\d+)/(\d+) completed")

Start = Callable[[tuple[float, float, float]], dict[str, ControllerProcess]]


@pytest.fixture
def start_replicas(control_plane: Any, namespace: str, tmp_path: Path,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """`start_replicas((lease, renew, retry))` starts sluice-a and sluice-b electing through a Lease in the test's
    namespace; both are stopped at teardown, and their logs printed."""
    started: dict[str, ControllerProcess] = {}

    def start(timings: tuple[float, float, float]) -> dict[str, ControllerProcess]:
        lease, renew, retry = timings
        for name in REPLICAS:
            proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=namespace,
                                     log_path=tmp_path / f"{name}.log", extra_args=[
                                         "--leader-elect", "--leader-election-namespace", namespace,
                                         "--leader-election-lease-duration", f"{lease:g}s",
                                         "--leader-election-renew-deadline", f"{renew:g}s",
                                         "--leader-election-retry-period", f"{retry:g}s",
                                         # two processes on one host: each its own probes port
                                         "--metrics-address", "127.0.0.1", "--metrics-port", "0"])
            monkeypatch.setenv("POD_NAME", name)  # read when the process starts
            proc.start()
            started[name] = proc
        return started

    try:
        yield start
    finally:
        for name, proc in started.items():
            proc.stop_and_show_log(name, lines=40)


async def holder(kube: KubeClient, ns: str) -> str | None:
    """The replica (POD_NAME) named by the Lease; None while there is no Lease or it is free."""
    try:
        lease = await kube.get(LEASES, name=LEASE, namespace=ns)
    except NotFound:
        return None
    identity = str((lease.get("spec") or {}).get("holderIdentity") or "")
    return identity.split("_", 1)[0] or None


async def named(kube: KubeClient, ns: str, name: str) -> bool:
    return await holder(kube, ns) == name


async def lease_spec(kube: KubeClient, ns: str) -> Body:
    return dict((await kube.get(LEASES, name=LEASE, namespace=ns))["spec"])


async def events(kube: KubeClient, ns: str) -> list[Body]:
    items, _ = await kube.list(EVENTS, namespace=ns)
    return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))


def completed_steps(items: list[Body]) -> list[tuple[int, str]]:
    """(step number, reporting replica) of every RolloutStepCompleted Event, in the order they were written."""
    found = []
    for event in items:
        match = STEP_COMPLETED.match(event["message"]) if event["reason"] == "RolloutStepCompleted" else None
        if match:
            found.append((int(match.group(1)), str(event.get("reportingInstance"))))
    return found


async def ready(url: str) -> bool:
    async with aiohttp.ClientSession() as session, session.get(url + "/readyz") as response:
        return response.status == 200


def other(name: str) -> str:
    return REPLICAS[1] if name == REPLICAS[0] else REPLICAS[0]


async def test_only_the_lease_holder_reconciles_while_every_replica_serves_the_api(
        kube: KubeClient, namespace: str, start_replicas: Start) -> None:
    ns = namespace
    procs = start_replicas(FAST)
    leader = await wait_for(lambda: holder(kube, ns), what="a replica to take the Lease", timeout=30)
    follower = other(leader)
    for proc in procs.values():
        await wait_for(partial(ready, await proc.api_url()), what="/readyz on both replicas", timeout=30)

    await create_app(kube, ns)
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(1), what="paused after setWeight 10")

    # The follower answers reads from its own caches, and writes (a resume) that the leader then acts on.
    token = await _persona(kube, ns, "sre", PERSONAS["sre"])
    async with aiohttp.ClientSession() as session:
        api = Api(await procs[follower].api_url(), ns, {"sre": token}, session)

        async def paused_in_the_followers_cache() -> Body | None:
            # Its caches follow the leader's writes through its own watches: a moment behind what we just read.
            code, view = await api.call("GET", api.rollout())
            assert code == 200, view
            return view if view["phase"] == "Paused" and view["currentStep"] == 1 else None

        view = await wait_for(paused_in_the_followers_cache, what="the follower's view of the pause", timeout=15)
        assert view["weights"] == {"stable": 90, "canary": 10}, view
        code, view = await api.call("POST", api.rollout(op="resume"))
        assert code == 200, view
    await wait_status(kube, ns, paused_at(3), what="resumed through the follower, walked by the leader")

    ours = [e for e in await events(kube, ns) if e.get("reportingComponent") == "sluice.dev/sluice-controller"]
    # The API records who asked for an operation on the replica that served it; everything else is a reconcile's.
    asked = Counter(str(e.get("reportingInstance")) for e in ours if e["reason"] == "OperationRequested")
    assert asked == {follower: 1}, asked
    acted = Counter(str(e.get("reportingInstance")) for e in ours if e["reason"] != "OperationRequested")
    assert set(acted) == {leader}, f"Events written by a replica that does not hold the Lease: {acted}"
    spec = await lease_spec(kube, ns)
    assert spec["leaseTransitions"] == 0 and spec["leaseDurationSeconds"] == 4
    assert "became leader" not in procs[follower].log_path.read_text()
    assert "became leader" in procs[leader].log_path.read_text()


async def test_killed_leader_is_replaced_within_the_lease_duration_and_the_rollout_finishes_once(
        kube: KubeClient, namespace: str, start_replicas: Start, record_property: Callable[[str, object], None],
) -> None:
    ns = namespace
    steps: list[Body] = [
        {"setWeight": 20}, {"pause": {"duration": "1s"}}, {"setWeight": 40}, {"pause": {"duration": "8s"}},
        {"setWeight": 60}, {"pause": {"duration": "1s"}}, {"setWeight": 100}, {"pause": {"duration": "1s"}},
    ]
    procs = start_replicas(FAST)
    leader = await wait_for(lambda: holder(kube, ns), what="a replica to take the Lease", timeout=30)
    successor = other(leader)
    await create_app(kube, ns, rollout_body(steps=steps))
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")
    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(3), what="the timed pause at step 4", timeout=60)

    async def third_step_reported() -> bool:
        # Written just after the status we read: a kill before it would lose it (the successor does not repeat it).
        return 3 in {number for number, _ in completed_steps(await events(kube, ns))}

    await wait_for(third_step_reported, what="the Event for step 3", timeout=15)
    killed_at = time.monotonic()
    procs[leader].kill()  # SIGKILL: no release, the Lease must expire
    await wait_for(partial(named, kube, ns, successor), what=f"{successor} to take the Lease", timeout=30,
                   interval=0.05)
    takeover = time.monotonic() - killed_at
    print(f"takeover after {takeover:.2f}s")
    record_property("takeover_seconds", round(takeover, 2))
    lease, _, retry = FAST
    # Expired by the successor's clock lease-duration after it last saw a renewal, which it sees within a retry period.
    assert takeover <= lease + retry + 1.5, f"takeover took {takeover:.2f}s"

    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy" and s.get("currentStepIndex") == len(steps)
                           and s.get("stableHash") == s.get("canaryHash"), what="promoted by the successor",
                           timeout=60)
    assert st["stepDisplay"] == f"{len(steps)}/{len(steps)}"

    async def last_step_reported() -> list[tuple[int, str]] | None:
        # Events are written after the status patch: the last step's may follow the Healthy we just read.
        found = completed_steps(await events(kube, ns))
        return found if len(steps) in {number for number, _ in found} else None

    completed = await wait_for(last_step_reported, what=f"the Event for step {len(steps)}", timeout=15)
    numbers = [number for number, _ in completed]
    assert sorted(numbers) == list(range(1, len(steps) + 1)), f"a step repeated or skipped: {completed}"
    # Steps 1-3 completed before the kill, by the leader; everything after it, by the successor.
    assert {who for number, who in completed if number <= 3} == {leader}, completed
    assert {who for number, who in completed if number > 3} == {successor}, completed
    assert (await lease_spec(kube, ns))["leaseTransitions"] == 1


async def test_leader_stopped_with_sigterm_releases_the_lease_so_the_other_takes_over_at_once(
        kube: KubeClient, namespace: str, start_replicas: Start, record_property: Callable[[str, object], None],
) -> None:
    ns = namespace
    lease_duration = 20.0
    procs = start_replicas((lease_duration, 15.0, 1.0))
    leader = await wait_for(lambda: holder(kube, ns), what="a replica to take the Lease", timeout=30)
    successor = other(leader)
    await create_app(kube, ns)
    await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="v1 Healthy")

    stopped_at = time.monotonic()
    procs[leader].stop()  # SIGTERM: stop reconciling, release the Lease, exit
    await wait_for(partial(named, kube, ns, successor), what=f"{successor} to take the Lease", timeout=30,
                   interval=0.05)
    handover = time.monotonic() - stopped_at
    print(f"takeover after {handover:.2f}s (released on SIGTERM)")
    record_property("takeover_seconds", round(handover, 2))
    assert handover < lease_duration / 4, f"handover took {handover:.2f}s: the Lease was not released"
    assert "released Lease" in procs[leader].log_path.read_text()

    await set_image(kube, ns, "registry.example/web:2")
    await wait_status(kube, ns, paused_at(1), what="the successor walks the new revision")

    async def first_step_reported() -> list[tuple[int, str]] | None:
        found = completed_steps(await events(kube, ns))  # written after the status patch we just read
        return found or None

    completed = await wait_for(first_step_reported, what="the Event for step 1", timeout=15)
    assert [who for _, who in completed] == [successor], completed
