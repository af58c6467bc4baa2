"""What both planners decide with: the context of one decision, the draft it is built in, and the pieces that do not
depend on how a strategy moves traffic (strategies/canary.py walks weighted steps, strategies/bluegreen.py switches
Services).

- `make_context` reads the status and the observed state into a `Context`: which revision is stable, whether this is
  a new walk (and its number, which names its AnalysisRuns), whether an abort is in force, when progress was last
  made. A strategy subclasses `Context` for what only it needs.
- ReplicaSets: `ensure_replica_sets` (create, scale, unmark the ones a decision needs), `retire_replica_sets` (scale
  the others down after a delay, prune past revisionHistoryLimit).
- The "stable" side (canary: the stable Service; blue-green: the active Service) moves only to a revision whose
  pods are all available: `set_stable_backend`.
- Status: a strategy writes its own fields first (the step, the weight, a display), then `progress` the shared ones
  and `finish` phase, message and conditions. Every write is a `setdefault`, so the first writer of a field wins and a
  path that decides a field early (a pause) is not overwritten by the generic write after it.
- Paths both strategies share: `settle_stable` (steady state, first version, rollback), `settle_abort`,
  `settle_blocked` (a template the guardrails refuse), `wait_for_pods` (the progress deadline), `hold`.
- The guardrails (strategies/preflight.py): `make_context` gets their verdict on the template, `finish` writes it as
  the PolicyViolation condition, `tend_guardrails` reports it and keeps sluice's PodDisruptionBudget and the spread
  in the ReplicaSets' pod templates.
- AnalysisRuns live next door, in strategies/runs.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from strategies import preflight
from strategies.decision import (
    Action,
    ApplyDisruptionBudget,
    CreateAnalysisRun,
    CreateReplicaSet,
    Decision,
    DeleteDisruptionBudget,
    DeleteReplicaSet,
    Event,
    MarkScaleDown,
    ScaleReplicaSet,
    SetBackend,
    SetRevision,
    SetSpread,
    condition,
)
from strategies.model import (
    AnalysisRunState,
    Observed,
    ReplicaSetState,
    Rollout,
    RolloutStatus,
    format_time,
    seconds_until,
)


@dataclass(frozen=True)
class Context:
    rollout: Rollout
    obs: Observed
    now: datetime
    desired: str
    stable: str
    new_revision: bool
    abort: bool
    abort_reason: str
    last_progress: datetime
    walk: int  # this walk (a new revision, edited steps, a retry); names its AnalysisRuns
    accepted: frozenset[str]  # Inconclusive runs a human resumed past, in this walk
    preflight: preflight.Preflight  # the guardrails' verdict on the template (strategies/preflight.py)

    @property
    def status(self) -> RolloutStatus:
        return self.rollout.status

    @property
    def canary_rs(self) -> ReplicaSetState | None:
        """The desired revision's ReplicaSet: the canary, or blue-green's new revision."""
        return self.obs.by_hash.get(self.desired)

    @property
    def stable_rs(self) -> ReplicaSetState | None:
        return self.obs.by_hash.get(self.stable)


C = TypeVar("C", bound=Context)
C_contra = TypeVar("C_contra", bound=Context, contravariant=True)


@dataclass
class Draft:
    summary: str = "Progressing"
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    wake: list[float] = field(default_factory=list)
    keep_runs: set[str] = field(default_factory=set)  # AnalysisRuns this decision wants running
    created_runs: list[CreateAnalysisRun] = field(default_factory=list)
    step_run: AnalysisRunState | None = None  # the run gating the current step or phase, once it exists

    def act(self, action: Action) -> None:
        # The reconciler reports an action (Event + log line) as soon as it is applied, so `events` holds only
        # what happened to the Rollout as a whole (steps, pauses, aborts).
        self.actions.append(action)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(Event(reason, message, warning))

    def restart(self, *, runs: bool) -> None:
        """Forget what was decided so far, to decide afresh (an abort found half way); `runs` also forgets the runs
        kept and created so far."""
        self.actions.clear()
        self.events.clear()
        self.wake.clear()
        self.status.clear()
        if runs:
            self.keep_runs.clear()
            self.created_runs.clear()


class Hold(Protocol[C_contra]):
    """A strategy's way of holding where it is (traffic and status) while it waits: for a human, for analysis."""

    def __call__(self, ctx: C_contra, draft: Draft, *, phase: str, message: str, paused: str | None) -> None: ...


def make_context(cls: type[C], rollout: Rollout, obs: Observed, *, reset: bool) -> C:
    """The context of one decision; `reset` says the strategy starts a new walk (a new revision, edited steps)."""
    spec, st = rollout.spec, rollout.status
    desired = spec.template_hash
    # The stable revision: from status; if status lost it (restored from a backup), the one the stable (active)
    # Service selects; only when neither has a ReplicaSet does the current template become stable.
    stable = next((h for h in (st.stable_hash, obs.stable_service_hash) if h and h in obs.by_hash), desired)
    new_revision = st.canary_hash != desired
    # A retry (status.abort set back to false while abortedAt is still there) starts the walk again: time spent
    # aborted is not lack of progress.
    retry = not st.abort and st.aborted_at is not None
    # A new walk (new revision, edited steps, retry) gets fresh AnalysisRuns: their names carry the walk number,
    # above every walk a run of this Rollout carries (a status restored from a backup, or a CRD without the field,
    # must not reuse an old run). A live run of this revision at the top walk was created by this very start in a
    # decision whose status write was lost (a 409, a crash): that walk is kept, so the run is not created twice.
    top = max([st.walk, *(r.walk for r in obs.analysis_runs)])
    started_here = any(r.walk == top > st.walk and r.hash == desired and not r.terminal and not r.terminating
                       for r in obs.analysis_runs)
    walk = (top if started_here else top + 1) if reset or retry else st.walk
    # Time spent paused by a user does not count against the progress deadline: the clock restarts on unpause.
    paused_before = st.condition("Paused")
    unpaused = (not spec.paused and paused_before is not None and paused_before.status == "True"
                and paused_before.reason == "PausedByUser")
    # The guardrails judge the template unless it already serves: recorded as stable, or selected by the stable
    # Service (never merely "the only ReplicaSet left", which a blocked revision's may be).
    running = desired in obs.by_hash and desired in (st.stable_hash, obs.stable_service_hash)
    verdict = preflight.review(rollout, obs, running=running)
    # A block lifted (template fixed, override, looser settings) starts the walk again, like a retry: time spent
    # blocked is not lack of progress, and no analysis from before the block counts.
    blocked_before = st.condition(preflight.CONDITION)
    unblocked = (not verdict.blocked and blocked_before is not None and blocked_before.status == "True"
                 and blocked_before.reason == preflight.BLOCKED)
    if unblocked and not (reset or retry):
        walk = top if started_here else top + 1
    return cls(
        preflight=verdict,
        rollout=rollout, obs=obs, now=obs.now, desired=desired, stable=stable, new_revision=new_revision,
        abort=st.abort and not new_revision, abort_reason="requested by a user",
        last_progress=(obs.now if new_revision or retry or unpaused or unblocked or st.last_progress_time is None
                       else st.last_progress_time),
        walk=walk, accepted=frozenset() if walk != st.walk else frozenset(st.accepted_runs),
    )


def warn_missing_stable(ctx: Context, draft: Draft) -> None:
    stable_hash = ctx.status.stable_hash
    if stable_hash and ctx.stable != stable_hash:
        draft.event("StableReplicaSetMissing", f"no ReplicaSet for stable {stable_hash}; revision {ctx.stable} is "
                    "taken as stable", warning=True)


def decide(draft: Draft, obs: Observed) -> Decision:
    wake = min([*draft.wake, obs.resync])
    return Decision(summary=draft.summary, actions=tuple(draft.actions), status=draft.status,
                    events=tuple(draft.events), requeue_after=wake)


# -- replica sets and the stable side ----------------------------------------------------------------------------


def ensure_replica_sets(ctx: Context, draft: Draft, wanted: dict[str, int]) -> None:
    top = max((rs.revision for rs in ctx.obs.replica_sets), default=0)
    for hash_, replicas in wanted.items():
        rs = ctx.obs.by_hash.get(hash_)
        if rs is None:
            top += 1
            draft.act(CreateReplicaSet(hash_, top, replicas))
            continue
        if rs.scale_down_at is not None:
            draft.act(MarkScaleDown(rs.name, None))
        if rs.replicas != replicas:
            draft.act(ScaleReplicaSet(rs.name, replicas, rs.replicas))
        if hash_ == ctx.desired and rs.revision < top:
            draft.act(SetRevision(rs.name, top + 1))


def retire_replica_sets(ctx: Context, draft: Draft, *, keep: Iterable[str | None], delay: float) -> None:
    """Scale down every other ReplicaSet after its deadline; prune zero-sized ones past revisionHistoryLimit."""
    kept = set(keep)
    idle: list[ReplicaSetState] = []
    for rs in ctx.obs.replica_sets:
        if rs.hash in kept:
            continue
        if rs.replicas == 0:
            if rs.ready == 0:
                idle.append(rs)
        elif rs.scale_down_at is None:
            draft.act(MarkScaleDown(rs.name, ctx.now + timedelta(seconds=delay)))
            draft.wake.append(delay)
        elif rs.scale_down_at <= ctx.now:
            draft.act(ScaleReplicaSet(rs.name, 0, rs.replicas))
        else:
            draft.wake.append(seconds_until(rs.scale_down_at, ctx.now))
    idle.sort(key=lambda rs: rs.revision, reverse=True)
    for rs in idle[ctx.rollout.spec.revision_history_limit:]:
        draft.act(DeleteReplicaSet(rs.name))


def set_stable_backend(ctx: Context, draft: Draft, hash_: str) -> bool:
    """The stable (active) Service takes all the traffic it gets: it moves only to a revision whose pods are all
    available (on a first version it keeps selecting whatever it selected before, e.g. a Deployment's pods, until
    then). Returns whether it selects `hash_` once this decision is applied."""
    current, target = ctx.obs.stable_service_hash, ctx.obs.by_hash.get(hash_)
    if current == hash_:
        return True
    if target is None:
        return False
    # Selecting pods that no longer exist (their ReplicaSet is gone): any available pod is better than none.
    orphaned = current is not None and current not in ctx.obs.by_hash
    if target.available >= ctx.rollout.spec.replicas or (orphaned and target.available > 0):
        draft.act(SetBackend("stable", ctx.rollout.spec.services[0], hash_))
        return True
    return False


# -- status ------------------------------------------------------------------------------------------------------


def progress(ctx: Context, draft: Draft, *, abort: bool, last_progress: datetime | None = None,
             clear_pause: bool = False) -> None:
    """The status fields both strategies write (after the strategy's own: see the module docstring)."""
    rs_all = ctx.obs.replica_sets
    canary = ctx.canary_rs if ctx.desired != ctx.stable else None
    stable = ctx.stable_rs
    values: dict[str, Any] = {
        "observedGeneration": ctx.rollout.generation,
        "stableHash": ctx.stable,
        "canaryHash": ctx.desired,
        "replicas": sum(rs.replicas for rs in rs_all),
        "updatedReplicas": ctx.canary_rs.replicas if ctx.canary_rs else 0,
        "readyReplicas": sum(rs.ready for rs in rs_all),
        "availableReplicas": sum(rs.available for rs in rs_all),
        "stableReplicas": stable.replicas if stable else 0,
        "stableAvailableReplicas": stable.available if stable else 0,
        "canaryReplicas": canary.replicas if canary else 0,
        "canaryAvailableReplicas": canary.available if canary else 0,
        "abort": abort,
        "promoteFull": ctx.status.promote_full and not ctx.new_revision and not abort and ctx.desired != ctx.stable,
        "lastProgressTime": format_time(last_progress or ctx.last_progress),
    }
    # A pause belongs to the walk that started it: a new revision must not inherit its start time.
    if clear_pause or ctx.new_revision:
        values["controllerPause"] = False
        values["pauseConditions"] = []
    if not abort:
        values["abortedAt"] = None
    for key, value in values.items():
        draft.status.setdefault(key, value)


def finish(ctx: Context, draft: Draft, *, phase: str, message: str, progressing: tuple[bool, str],
           degraded: tuple[str, str] | None = None, paused: str | None = None) -> None:
    previous, now, spec = ctx.status.conditions, ctx.now, ctx.rollout.spec
    stable_available = ctx.stable_rs.available if ctx.stable_rs else 0
    conditions = [
        condition(previous, type_="Progressing", status=progressing[0], reason=progressing[1], message=message,
                  now=now),
        condition(previous, type_="Available", status=stable_available >= spec.replicas,
                  reason="MinimumReplicasAvailable" if stable_available >= spec.replicas else "WaitingForReplicas",
                  message=f"{stable_available}/{spec.replicas} stable pods available", now=now),
        condition(previous, type_="Paused", status=paused is not None, reason=paused or "NotPaused",
                  message=message if paused else "", now=now),
        condition(previous, type_="Degraded", status=degraded is not None,
                  reason=degraded[0] if degraded else "AsExpected", message=degraded[1] if degraded else "", now=now),
        condition(previous, type_="InvalidSpec", status=False, reason="Valid", message="", now=now),
        condition(previous, type_=preflight.CONDITION, status=ctx.preflight.reason != preflight.PASSED,
                  reason=ctx.preflight.reason, message=ctx.preflight.message, now=now),
    ]
    draft.status.setdefault("phase", phase)
    draft.status.setdefault("message", message)
    draft.status.setdefault("conditions", conditions)


def hold(ctx: Context, draft: Draft, *, phase: str, message: str, paused: str | None = None,
         last_progress: datetime | None = None) -> None:
    """Stay where the rollout is: the strategy's fields are written already, traffic is held by the caller."""
    if paused is not None and draft.summary == "Progressing":
        draft.summary = "Paused"
    progress(ctx, draft, abort=False, last_progress=last_progress)
    finish(ctx, draft, phase=phase, message=message, progressing=(True, "ReplicaSetUpdated"), paused=paused)


# -- paths both strategies take ----------------------------------------------------------------------------------


def settle_stable(ctx: Context, draft: Draft, *, keep: Iterable[str | None], delay: float, dropped: str) -> None:
    """The template is the stable revision (steady state, first version, rollback), traffic is on it: retire the rest
    and report Healthy once every stable pod is available. `dropped` says what a rollback does to the revision that
    was in flight."""
    spec, st = ctx.rollout.spec, ctx.status
    if ctx.new_revision and st.canary_hash is not None and st.stable_hash == ctx.desired:
        draft.summary = "FastRollback"
        draft.event("RolloutRolledBack", f"template is back to stable {ctx.stable}: {dropped}")
    retire_replica_sets(ctx, draft, keep=keep, delay=delay)
    available = ctx.stable_rs.available if ctx.stable_rs else 0
    healthy = available >= spec.replicas
    if spec.paused:
        phase, message = "Paused", "paused by a user (spec.paused)"
    elif healthy:
        phase, message = "Healthy", f"revision {ctx.stable} is stable with {available}/{spec.replicas} available"
    else:
        _stable_short(ctx, draft, available=available)
        return
    if draft.summary == "Progressing":
        draft.summary = phase
    progress(ctx, draft, abort=False, clear_pause=True)
    finish(ctx, draft, phase=phase, message=message,
           progressing=(True, "RolloutCompleted" if healthy else "ReplicaSetUpdated"),
           paused="PausedByUser" if spec.paused else None)


def _stable_short(ctx: Context, draft: Draft, *, available: int) -> None:
    """Stable has fewer available pods than replicas (a first version coming up, a bad image, lost nodes): the
    progress deadline applies as for a new revision, counted from when it fell short or last gained a pod."""
    spec, st = ctx.rollout.spec, ctx.status
    was_available = st.condition("Available")
    since = ctx.now if was_available is None or was_available.status == "True" else max(
        ctx.last_progress, was_available.last_transition_time)
    if available > st.stable_available_replicas:
        since = ctx.now
    deadline = since + timedelta(seconds=spec.progress_deadline)
    progress(ctx, draft, abort=False, clear_pause=True, last_progress=since)
    if deadline > ctx.now:
        draft.wake.append(seconds_until(deadline, ctx.now))
        finish(ctx, draft, phase="Progressing", progressing=(True, "ReplicaSetUpdated"),
               message=f"waiting for stable pods: {available}/{spec.replicas} available")
        return
    message = (f"ProgressDeadlineExceeded: stable {ctx.stable} has {available}/{spec.replicas} available pods "
               f"after {spec.progress_deadline:g}s")
    _deadline_exceeded(ctx, draft, message=message)
    finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "ProgressDeadlineExceeded"),
           degraded=("ProgressDeadlineExceeded", message))


def _deadline_exceeded(ctx: Context, draft: Draft, *, message: str) -> None:
    previous = ctx.status.condition("Degraded")
    if previous is None or previous.reason != "ProgressDeadlineExceeded" or previous.status != "True":
        draft.event("ProgressDeadlineExceeded", message, warning=True)
    draft.summary = "Degraded"


def settle_abort(ctx: Context, draft: Draft, *, keep: Iterable[str | None], delay: float) -> None:
    """Traffic is back on stable (the caller moved it): retire the rest and report the abort (or the block; a user's
    abort stays recorded through a block, so lifting the block does not undo it)."""
    if ctx.preflight.blocked and not ctx.abort:
        settle_blocked(ctx, draft, keep=keep, delay=delay)
        return
    st = ctx.status
    draft.summary = "Aborted"
    retire_replica_sets(ctx, draft, keep=keep, delay=delay)
    first = not st.abort or st.aborted_at is None
    if first:
        message = (f"Rollout aborted: {ctx.abort_reason}. All traffic is on stable {ctx.stable}; "
                   "set status.abort=false to retry.")
        draft.event("RolloutAborted", f"rollout of {ctx.desired} aborted ({ctx.abort_reason}): 100% of traffic "
                    f"back on stable {ctx.stable}", warning=True)
    else:
        message = st.message
    progress(ctx, draft, abort=True, clear_pause=True)
    draft.status["abortedAt"] = format_time(st.aborted_at or ctx.now)
    finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "RolloutAborted"),
           degraded=("RolloutAborted", message))


def settle_blocked(ctx: Context, draft: Draft, *, keep: Iterable[str | None], delay: float) -> None:
    """The template failed an enforced guardrail: nothing is created for it, and a revision of it already in flight
    was taken out of service by the caller as for an abort. Unlike an abort nothing is recorded to undo: the next
    reconcile after the cause is gone proceeds."""
    draft.summary = "Blocked"
    retire_replica_sets(ctx, draft, keep=keep, delay=delay)
    draft.status["promoteFull"] = False  # a promotion asked for before the block does not outlive it
    if ctx.stable == ctx.desired:
        # Nothing else is left to call stable (a first version, a deleted stable ReplicaSet): the blocked revision
        # must not be recorded as stable, or the next reconcile would take it as running and let it through.
        draft.status["stableHash"] = ctx.status.stable_hash
    progress(ctx, draft, abort=False, clear_pause=True)
    message = f"{preflight.BLOCKED}: {ctx.preflight.message}"
    finish(ctx, draft, phase="Degraded", message=message, progressing=(False, preflight.BLOCKED),
           degraded=(preflight.BLOCKED, message))


def tend_guardrails(ctx: Context, draft: Draft) -> None:
    """Every decision: the guardrails' Events, sluice's PodDisruptionBudget and the spread in the ReplicaSets' pod
    templates, whatever the walk is doing (they protect the stable pods as much as the canary's)."""
    previous = ctx.status.condition(preflight.CONDITION)
    draft.events.extend(preflight.events(previous, ctx.preflight))
    spec, obs = ctx.rollout.spec, ctx.obs
    guard = spec.guardrails
    if obs.budget_conflict is not None:
        if previous is None or obs.budget_conflict not in previous.message:
            draft.event("DisruptionBudgetConflict", obs.budget_conflict, warning=True)
    elif guard.budget is not None:
        wanted = guard.budget.min_available_for(spec.replicas)
        current = obs.budget
        if (current is None or current.min_available != wanted or dict(current.match_labels) != dict(spec.match_labels)
                or tuple(current.match_expressions) != tuple(spec.match_expressions)):
            draft.act(ApplyDisruptionBudget(ctx.rollout.name, wanted, spec.replicas, create=current is None))
    elif obs.budget is not None:
        draft.act(DeleteDisruptionBudget(obs.budget.name))
    # Only ReplicaSets that have (or get, in this decision) pods; each just before this decision scales it, so the
    # pods it creates spread, and after the rest (traffic back to stable never waits on a spread). A new ReplicaSet
    # has it from its creation; an empty one gets it when it is scaled up again.
    sizes = {a.name: a.replicas for a in draft.actions if isinstance(a, ScaleReplicaSet)}
    for rs in obs.replica_sets:
        if rs.spread == guard.spread or sizes.get(rs.name, rs.replicas) == 0:
            continue
        scaled = next((i for i, a in enumerate(draft.actions) if isinstance(a, ScaleReplicaSet) and a.name == rs.name),
                      len(draft.actions))
        draft.actions.insert(scaled, SetSpread(rs.name, rs.hash, guard.spread))


def wait_for_pods(ctx: C, draft: Draft, *, available: int, needed: int, where: str, noun: str,
                  abort: Callable[[C, Draft], None]) -> None:
    """The desired revision has fewer available pods than `needed`: wait, within the progress deadline (counted
    from the last progress, or from now when it just gained a pod); past it, Degraded, or abort with
    progressDeadlineAbort. The strategy's own status fields are written already."""
    spec, st = ctx.rollout.spec, ctx.status
    last_progress = ctx.last_progress
    if available > st.canary_available_replicas and not ctx.new_revision:
        last_progress = ctx.now
    deadline = last_progress + timedelta(seconds=spec.progress_deadline)
    if deadline > ctx.now:
        draft.wake.append(seconds_until(deadline, ctx.now))
        hold(ctx, draft, phase="Progressing", last_progress=last_progress,
             message=f"{where}: waiting for {noun} pods: {available}/{needed} available")
        return
    message = (f"ProgressDeadlineExceeded: {noun} {ctx.desired} has {available}/{needed} available pods after "
               f"{spec.progress_deadline:g}s at {where}")
    if spec.progress_deadline_abort:
        # Decide afresh: the actions so far (scaling the new revision, holding traffic, retiring with it kept)
        # would be repeated or contradicted by the abort's.
        draft.restart(runs=False)
        draft.event("ProgressDeadlineExceeded", message, warning=True)
        abort(replace(ctx, abort=True, abort_reason=message), draft)
        return
    _deadline_exceeded(ctx, draft, message=message)
    progress(ctx, draft, abort=False, last_progress=last_progress)
    finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "ProgressDeadlineExceeded"),
           degraded=("ProgressDeadlineExceeded", message))


def invalid(rollout_status: RolloutStatus, *, generation: int, message: str, now: datetime) -> Decision:
    """The decision for a Rollout whose spec cannot be acted on: report it, change nothing else."""
    previous = rollout_status.conditions
    before = rollout_status.condition("InvalidSpec")
    events: tuple[Event, ...] = ()
    if before is None or before.status != "True" or before.message != message:
        events = (Event("InvalidSpec", message, warning=True),)
    kept = [
        {"type": c.type, "status": c.status, "reason": c.reason, "message": c.message,
         "lastTransitionTime": format_time(c.last_transition_time)}
        for c in previous if c.type not in ("InvalidSpec", "Degraded")
    ]
    conditions = [
        *kept,
        condition(previous, type_="InvalidSpec", status=True, reason="InvalidSpec", message=message, now=now),
        condition(previous, type_="Degraded", status=True, reason="InvalidSpec", message=message, now=now),
    ]
    status = {"observedGeneration": generation, "phase": "Degraded", "message": f"InvalidSpec: {message}",
              "conditions": conditions}
    return Decision(summary="InvalidSpec", status=status, events=events)
