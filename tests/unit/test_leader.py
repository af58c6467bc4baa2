"""Leader election (rollout/leader.py): the pure decision, exhaustively and as a two-node safety property under clock
skew, then the elector against an in-memory Lease with the API server's resourceVersion rules: exactly one leader,
release on shutdown, stepping down at the renew deadline and when the Lease changes hands, and the CLI flags."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.cli import UsageError, _parser, controller_settings
from rollout.kube import LEASES, ApiError, Body, Conflict, NotFound, Resource
from rollout.leader import (
    Lead,
    LeaderElector,
    LeaseRecord,
    Observation,
    Verdict,
    claim,
    decide,
    default_identity,
    next_delay,
    observe,
    released,
)
from rollout.settings import LeaderElectionSettings
from tests.unit.background import background
from tests.unit.polling import eventually

ME, OTHER = "me_1_aaaaaa", "other_2_bbbbbb"
DURATION, DEADLINE, RETRY = 15.0, 10.0, 2.0
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def held(holder: str, *, renewed: str = "2030-01-01T00:00:00.000000Z", duration: float = DURATION) -> LeaseRecord:
    return LeaseRecord(holder=holder, duration=duration, acquire_time=renewed, renew_time=renewed, transitions=3)


def verdict(lease: LeaseRecord | None, *, changed_at: float = 100.0, now: float = 101.0,
            renewed_at: float | None = None) -> Verdict:
    return decide(lease, changed_at=changed_at, now=now, identity=ME, renewed_at=renewed_at,
                  renew_deadline=DEADLINE)


# -- the decision --------------------------------------------------------------------------------------------------


def test_candidate_acquires_an_absent_lease() -> None:
    assert verdict(None) is Verdict.ACQUIRE


def test_candidate_acquires_a_released_lease_at_once() -> None:
    # Released a moment ago: no holder means free, whatever the times say.
    assert verdict(replace(released(held(OTHER), now=T0), holder=""), changed_at=100.0, now=100.0) is Verdict.ACQUIRE


def test_candidate_waits_while_another_holders_lease_is_live() -> None:
    assert verdict(held(OTHER), changed_at=100.0, now=100.0 + DURATION - 0.001) is Verdict.WAIT


def test_candidate_acquires_once_the_lease_has_not_changed_for_its_duration() -> None:
    assert verdict(held(OTHER), changed_at=100.0, now=100.0 + DURATION) is Verdict.ACQUIRE
    assert verdict(held(OTHER), changed_at=100.0, now=100.0 + 10 * DURATION) is Verdict.ACQUIRE


def test_the_holders_own_duration_counts_not_ours() -> None:
    assert verdict(held(OTHER, duration=60), changed_at=100.0, now=100.0 + DURATION + 1) is Verdict.WAIT
    assert verdict(held(OTHER, duration=60), changed_at=100.0, now=160.0) is Verdict.ACQUIRE


def test_a_renew_time_long_past_by_a_skewed_clock_does_not_make_a_fresh_lease_expired() -> None:
    # The holder's clock is a day behind ours: its renewTime looks ancient, but we just saw the Lease change.
    stale_looking = held(OTHER, renewed=(datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert verdict(stale_looking, changed_at=100.0, now=100.5) is Verdict.WAIT


def test_a_renew_time_in_the_future_does_not_keep_a_dead_holders_lease_alive() -> None:
    # The holder's clock is a day ahead: its renewTime is tomorrow, but the Lease has not changed for its duration.
    future = held(OTHER, renewed=(datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    assert verdict(future, changed_at=100.0, now=100.0 + DURATION) is Verdict.ACQUIRE


def test_candidate_takes_back_a_lease_that_still_names_it() -> None:
    # Our last renewal timed out but reached the server: the Lease is ours, and the precondition guards the write.
    assert verdict(held(ME), changed_at=100.0, now=100.0) is Verdict.ACQUIRE


def test_leader_renews_its_own_lease_before_the_deadline() -> None:
    assert verdict(held(ME), renewed_at=100.0, now=100.0 + DEADLINE - 0.001) is Verdict.RENEW


def test_leader_loses_at_the_renew_deadline_even_if_the_lease_still_names_it() -> None:
    assert verdict(held(ME), renewed_at=100.0, now=100.0 + DEADLINE) is Verdict.LOST


def test_leader_loses_when_the_lease_changed_hands_while_it_was_renewing() -> None:
    # The renewal met a conflict; re-read, the Lease names someone else.
    assert verdict(held(OTHER), renewed_at=100.0, now=101.0) is Verdict.LOST


def test_leader_loses_when_the_lease_was_released_or_deleted_by_someone_else() -> None:
    assert verdict(held(""), renewed_at=100.0, now=101.0) is Verdict.LOST
    assert verdict(None, renewed_at=100.0, now=101.0) is Verdict.LOST


LEASES_SEEN: list[LeaseRecord | None] = [None, held(""), held(ME), held(OTHER), held(OTHER, duration=1)]
MOMENTS = [0.0, 0.5, 0.999, 1.0, 9.999, 10.0, 14.999, 15.0, 15.001, 100.0]


@pytest.mark.parametrize(("lease", "since_change", "since_renewal"), list(itertools.product(
    LEASES_SEEN, MOMENTS, [None, *MOMENTS])))
def test_every_situation_gets_the_only_safe_verdict(lease: LeaseRecord | None, since_change: float,
                                                    since_renewal: float | None) -> None:
    now = 1000.0
    got = verdict(lease, changed_at=now - since_change, now=now,
                  renewed_at=None if since_renewal is None else now - since_renewal)
    if since_renewal is not None:
        ours_and_fresh = lease is not None and lease.holder == ME and since_renewal < DEADLINE
        assert got is (Verdict.RENEW if ours_and_fresh else Verdict.LOST)
    elif lease is not None and lease.holder == OTHER and since_change < lease.duration:
        assert got is Verdict.WAIT  # never take a live Lease from someone else
    else:
        assert got is Verdict.ACQUIRE


@settings(max_examples=500, deadline=None)
@given(
    leader_clock=st.floats(-1e6, 1e6), candidate_clock=st.floats(-1e6, 1e6),  # monotonic clocks' offsets
    seen_after=st.floats(0, 30),  # how long after the renewal was sent the candidate saw the Lease change
    asked_after=st.floats(0, 60),  # when both decide, after the renewal was sent
    lease_duration=st.floats(1, 60), margin=st.floats(0.001, 0.9),
)
def test_a_candidate_never_acquires_while_the_leader_still_renews(
        leader_clock: float, candidate_clock: float, seen_after: float, asked_after: float, lease_duration: float,
        margin: float) -> None:
    renew_deadline = lease_duration * (1 - margin)
    sent = 5000.0  # the leader's last successful renewal, in absolute time
    lease = held(ME, duration=lease_duration)
    leader = decide(lease, changed_at=sent + leader_clock, now=sent + asked_after + leader_clock, identity=ME,
                    renewed_at=sent + leader_clock, renew_deadline=renew_deadline)
    candidate = decide(lease, changed_at=sent + seen_after + candidate_clock,
                       now=sent + asked_after + candidate_clock, identity=OTHER, renewed_at=None,
                       renew_deadline=renew_deadline)
    assert not (leader is Verdict.RENEW and candidate is Verdict.ACQUIRE)


@given(renewed=st.datetimes(timezones=st.just(UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
       since_change=st.floats(0, 100), leading=st.booleans())
def test_the_times_written_in_the_lease_never_change_the_verdict(renewed: str, since_change: float,
                                                                 leading: bool) -> None:
    renewed_at = since_change - 1 if leading else None
    for holder in ("", ME, OTHER):
        assert verdict(held(holder, renewed=renewed), changed_at=0.0, now=since_change, renewed_at=renewed_at) is \
            verdict(held(holder), changed_at=0.0, now=since_change, renewed_at=renewed_at)


# -- observing, timing, records --------------------------------------------------------------------------------------


def test_observation_moves_only_when_the_record_changes() -> None:
    first = observe(None, held(OTHER), now=10.0)
    assert first == Observation(held(OTHER), 10.0)
    assert observe(first, held(OTHER), now=20.0) is first  # no renewal seen: the clock keeps running from 10
    renewed = held(OTHER, renewed="2030-01-01T00:00:02.000000Z")
    assert observe(first, renewed, now=20.0) == Observation(renewed, 20.0)
    assert observe(first, None, now=30.0) == Observation(None, 30.0)


def test_leader_wakes_by_its_renew_deadline_and_candidates_when_the_lease_expires() -> None:
    def delay(lease: LeaseRecord | None, *, changed_at: float = 0.0, now: float = 0.0,
              renewed_at: float | None = None) -> float:
        return next_delay(lease, changed_at=changed_at, now=now, renewed_at=renewed_at, renew_deadline=DEADLINE,
                          retry_period=RETRY)

    assert delay(held(ME), renewed_at=0.0, now=0.5) == RETRY
    assert delay(held(ME), renewed_at=0.0, now=9.0) == pytest.approx(1.0)  # a failing renewal: stop on time
    assert delay(held(ME), renewed_at=0.0, now=11.0) == 0.0
    assert delay(held(OTHER), changed_at=0.0, now=1.0) == RETRY
    assert delay(held(OTHER), changed_at=0.0, now=14.5) == pytest.approx(0.5)  # take over as soon as it expires
    assert delay(held(OTHER), changed_at=0.0, now=20.0) == RETRY  # expired, yet our take-over failed: retry later
    assert delay(None) == RETRY
    assert delay(held("")) == RETRY


def test_claim_counts_a_transition_when_the_holder_changes_and_keeps_the_acquire_time_on_renewal() -> None:
    created = claim(None, identity=ME, duration=15, now=T0)
    assert created == LeaseRecord(holder=ME, duration=15, acquire_time="2030-01-01T00:00:00.000000Z",
                                  renew_time="2030-01-01T00:00:00.000000Z", transitions=0)
    renewed = claim(created, identity=ME, duration=15, now=T0 + timedelta(seconds=2.5))
    assert renewed.acquire_time == created.acquire_time and renewed.transitions == 0
    assert renewed.renew_time == "2030-01-01T00:00:02.500000Z"
    taken = claim(held(OTHER), identity=ME, duration=15, now=T0)
    assert taken.holder == ME and taken.transitions == 4 and taken.acquire_time == taken.renew_time


def test_release_clears_the_holder_and_keeps_the_count() -> None:
    free = released(held(ME), now=T0)
    assert free.holder == "" and free.duration == 1 and free.transitions == 3
    assert free.spec()["holderIdentity"] == "" and free.spec()["leaseDurationSeconds"] == 1


def test_lease_record_reads_and_writes_the_lease_spec() -> None:
    spec = {"holderIdentity": OTHER, "leaseDurationSeconds": 4, "acquireTime": "a", "renewTime": "r",
            "leaseTransitions": 2}
    record = LeaseRecord.parse({"spec": spec}, default_duration=15)
    assert record == LeaseRecord(holder=OTHER, duration=4, acquire_time="a", renew_time="r", transitions=2)
    assert record.spec() == spec
    assert LeaseRecord.parse({"spec": {}}, default_duration=15) == LeaseRecord(holder="", duration=15)
    assert replace(record, duration=2.2).spec()["leaseDurationSeconds"] == 3  # whole seconds, rounded up


def test_identity_is_the_pod_name_pid_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "sluice-7d9f-x2")
    first, second = default_identity(), default_identity()
    assert first.startswith("sluice-7d9f-x2_") and first != second


# -- the elector against an in-memory Lease ------------------------------------------------------------------------

FAST = LeaderElectionSettings(namespace="ns", name="lock", lease_duration=30, renew_deadline=0.3, retry_period=0.02)


@dataclass
class LeaseServer:
    """One Lease with the API server's rules: create fails if it exists, a PUT needs the current resourceVersion."""

    body: Body | None = None
    version: int = 0
    holders: list[str] = field(default_factory=list)  # the holder after every write, in order

    def write(self, body: Body) -> Body:
        self.version += 1
        self.body = copy.deepcopy(body)
        self.body["metadata"]["resourceVersion"] = str(self.version)
        self.holders.append(self.body["spec"]["holderIdentity"])
        return copy.deepcopy(self.body)

    def take(self, holder: str) -> None:
        """Someone else writes the Lease (another replica, or a person with kubectl)."""
        assert self.body is not None
        self.write({**self.body, "spec": {**self.body["spec"], "holderIdentity": holder,
                                          "renewTime": datetime.now(UTC).isoformat()}})


@dataclass
class FakeApi:
    """One replica's view of the LeaseServer; `reachable` False cuts it off (every call fails as unreachable),
    `hanging` True makes every call wait for ever (a black-holed connection)."""

    server: LeaseServer
    reachable: bool = True
    hanging: bool = False

    async def _call(self) -> None:
        await asyncio.sleep(0)
        if self.hanging:
            await asyncio.Event().wait()
        if not self.reachable:
            raise ApiError(status=0, reason="ConnectionError", message="partitioned")

    async def get(self, resource: Resource, *, name: str, namespace: str | None = None,
                  subresource: str | None = None) -> Body:
        await self._call()
        if self.server.body is None:
            raise NotFound(status=404, reason="NotFound", message=f"leases {name} not found")
        return copy.deepcopy(self.server.body)

    async def create(self, resource: Resource, body: Body, *, namespace: str | None = None, name: str | None = None,
                     subresource: str | None = None) -> Body:
        await self._call()
        assert resource == LEASES
        if self.server.body is not None:
            raise Conflict(status=409, reason="AlreadyExists", message="already exists")
        return self.server.write(body)

    async def replace(self, resource: Resource, body: Body, *, name: str, namespace: str | None = None,
                      subresource: str | None = None) -> Body:
        await self._call()
        current = self.server.body
        if current is None:
            raise NotFound(status=404, reason="NotFound", message=f"leases {name} not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(status=409, reason="Conflict", message="the object has been modified")
        return self.server.write(body)


@dataclass
class Terms:
    """Records who runs the leader's work when: `active` must never hold two names."""

    active: list[str] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    overlaps: int = 0

    def lead(self, name: str) -> Lead:
        async def work() -> None:
            self.overlaps += bool(self.active)
            self.active.append(name)
            self.started.append(name)
            try:
                await asyncio.Event().wait()
            finally:
                self.active.remove(name)

        return work


def campaigning(elector: LeaderElector, lead: Lead) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    return background(elector.run(lead))


def elector(server: LeaseServer, name: str, settings: LeaderElectionSettings = FAST) -> tuple[LeaderElector, FakeApi]:
    api = FakeApi(server)
    return LeaderElector(api, settings=settings, identity=name), api


def holder(server: LeaseServer) -> str | None:
    return None if server.body is None else str(server.body["spec"]["holderIdentity"])


async def test_a_single_candidate_creates_the_lease_and_leads() -> None:
    server, terms = LeaseServer(), Terms()
    a, _ = elector(server, "a")
    async with campaigning(a, terms.lead("a")):
        await eventually(lambda: terms.active == ["a"])
        assert holder(server) == "a" and a.leading
        assert server.body is not None and server.body["spec"]["leaseDurationSeconds"] == 30
        await eventually(lambda: len(server.holders) >= 3)  # renewing every retry period
    assert terms.active == [] and holder(server) == ""  # released on the way out


async def test_two_candidates_exactly_one_leads_and_the_other_takes_over_at_once_on_release() -> None:
    server, terms = LeaseServer(), Terms()
    a, _ = elector(server, "a")
    b, _ = elector(server, "b")
    async with campaigning(a, terms.lead("a")) as run_a, campaigning(b, terms.lead("b")):
        await eventually(lambda: terms.active == ["a"])
        await eventually(lambda: len(server.holders) >= 5)
        assert terms.active == ["a"] and not b.leading and set(server.holders) == {"a"}
        run_a.cancel()  # SIGTERM: stop, release; b need not wait the 30 s lease duration
        await eventually(lambda: terms.active == ["b"], within=1.0)
    assert terms.overlaps == 0 and terms.started == ["a", "b"]


async def test_a_cut_off_leader_stops_at_its_renew_deadline_before_the_other_takes_over() -> None:
    server, terms = LeaseServer(), Terms()
    short = replace(FAST, lease_duration=0.6)  # written as 1 s
    a, api_a = elector(server, "a", short)
    b, _ = elector(server, "b", short)
    async with campaigning(a, terms.lead("a")), campaigning(b, terms.lead("b")):
        await eventually(lambda: terms.active == ["a"])
        api_a.reachable = False  # the leader's node loses the API server: it cannot renew, nor release
        await eventually(lambda: terms.active == [], within=1.0)
        assert holder(server) == "a"  # it stopped while the Lease was still its own
        await eventually(lambda: terms.active == ["b"], within=3.0)
        api_a.reachable = True
        await eventually(lambda: len(server.holders) >= server.holders.index("b") + 5)
        assert terms.active == ["b"] and not a.leading  # back, it finds b's live Lease and waits
    assert terms.overlaps == 0 and terms.started == ["a", "b"]


async def test_a_leader_whose_renewal_hangs_stops_by_its_renew_deadline() -> None:
    server, terms = LeaseServer(), Terms()
    a, api_a = elector(server, "a")
    async with campaigning(a, terms.lead("a")):
        await eventually(lambda: terms.active == ["a"])
        api_a.hanging = True
        # Renewed at most a retry period ago: the hanging request is cut off at the renew deadline.
        await eventually(lambda: terms.active == [], within=FAST.renew_deadline + FAST.retry_period + 0.1)
        assert not a.leading and holder(server) == "a"
    assert holder(server) == "a"  # not released on the way out: it was no longer leading


async def test_leader_stops_at_once_when_the_lease_changes_hands_while_it_renews() -> None:
    server, terms = LeaseServer(), Terms()
    a, _ = elector(server, "a")
    async with campaigning(a, terms.lead("a")):
        await eventually(lambda: terms.active == ["a"])
        server.take("intruder")  # a's next renewal meets a conflict, re-reads, finds another holder
        await eventually(lambda: terms.active == [], within=FAST.renew_deadline)
        assert not a.leading and holder(server) == "intruder"  # its 30 s Lease is live: a waits
    assert holder(server) == "intruder" and terms.started == ["a"]


async def test_leader_whose_lease_is_deleted_stops_and_recreates_it() -> None:
    server, terms = LeaseServer(), Terms()
    a, _ = elector(server, "a")
    async with campaigning(a, terms.lead("a")):
        await eventually(lambda: terms.active == ["a"])
        server.body = None
        await eventually(lambda: terms.started == ["a", "a"] and terms.active == ["a"])
        assert holder(server) == "a"
    assert terms.overlaps == 0


async def test_candidate_waits_for_a_dead_holders_lease_to_expire_by_its_own_clock() -> None:
    server, terms = LeaseServer(), Terms()
    # A Lease left by a process that died: renewTime says it is a day in the future (a skewed clock).
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    server.write({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "lock"},
                  "spec": held("dead", renewed=tomorrow, duration=1).spec()})
    a, _ = elector(server, "a")
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with campaigning(a, terms.lead("a")):
        await eventually(lambda: terms.active == ["a"], within=3.0)
        assert loop.time() - started >= 1.0  # a full lease duration after it first saw the Lease
    assert server.body is not None and server.body["spec"]["leaseTransitions"] == 4


async def test_work_that_fails_ends_the_campaign_and_releases_the_lease() -> None:
    server = LeaseServer()
    a, _ = elector(server, "a")

    async def broken() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await asyncio.wait_for(a.run(broken), timeout=5)
    assert holder(server) == "" and not a.leading


# -- flags -----------------------------------------------------------------------------------------------------------


def _election(*flags: str) -> LeaderElectionSettings | None:
    args = _parser().parse_args(["controller", "--api-address", "127.0.0.1", *flags])
    return controller_settings(args).leader_election


def test_leader_election_is_off_unless_asked_for() -> None:
    assert _election() is None


def test_leader_election_flags_land_in_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "sluice-system")
    assert _election("--leader-elect") == LeaderElectionSettings(namespace="sluice-system")
    assert _election("--leader-elect", "--leader-election-namespace", "ops", "--leader-election-name", "lock",
                     "--leader-election-lease-duration", "4s", "--leader-election-renew-deadline", "3",
                     "--leader-election-retry-period", "500ms") == LeaderElectionSettings(
        namespace="ops", name="lock", lease_duration=4, renew_deadline=3, retry_period=0.5)


def test_leader_election_namespace_defaults_to_default_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    election = _election("--leader-elect")
    assert election is not None and election.namespace == "default" and election.name == "sluice-controller"


@pytest.mark.parametrize(("flags", "message"), [
    (["--leader-election-lease-duration", "10s"], "renew-deadline must be shorter"),
    (["--leader-election-retry-period", "10s"], "retry-period must be shorter"),
])
def test_leader_election_timings_that_could_overlap_two_leaders_are_refused(flags: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _election("--leader-elect", *flags)


@pytest.mark.parametrize("value", ["soon", "-1s", "0", "nan", "1h"])
def test_leader_election_durations_must_be_positive_seconds(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["controller", "--leader-election-lease-duration", value])
    assert "duration" in capsys.readouterr().err

