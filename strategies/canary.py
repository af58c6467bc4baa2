"""The canary planner: `plan(rollout, observed) -> Decision`, pure.

One call looks at the Rollout (spec + status) and what the reconciler observed (ReplicaSets, the Services' current
selectors, the router's current weight) and returns what should happen next. Everything it needs to continue lives in
the status and in ReplicaSet labels/annotations, so a restarted controller reaches the same decision.

Paths, by what the template hash says:
- template == stable: steady state, first version, or fast rollback (steps skipped): all traffic on stable.
- abort requested (or progress deadline with progressDeadlineAbort): traffic to stable first, canary scaled down later.
- otherwise walk the steps from `currentStepIndex`: setWeight scales the canary, waits for its pods, then moves
  traffic; pause waits for its duration (from a start time kept in status) or for a human; after the last step the
  canary is scaled to full size, the stable Service switches to it, and the old stable is scaled down after a delay.

Invariants (tested with hypothesis in tests/unit): the canary weight never decreases except on abort, a new revision
or a rollback; the canary never has more replicas than `spec.replicas`; no traffic moves to pods that are not
available.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from strategies.decision import (
    Action,
    CreateAnalysisRun,
    CreateReplicaSet,
    Decision,
    DeleteAnalysisRun,
    DeleteReplicaSet,
    Event,
    MarkScaleDown,
    ScaleReplicaSet,
    SetRevision,
    SetServiceSelector,
    SetWeight,
    TerminateAnalysisRun,
    condition,
)
from strategies.model import (
    AnalysisRef,
    AnalysisRunState,
    AnalysisStep,
    Observed,
    PauseStep,
    ReplicaSetState,
    Rollout,
    RolloutStatus,
    SetWeightStep,
    Step,
    format_time,
    seconds_until,
    steps_hash,
)

PAUSE_REASON = "CanaryPauseStep"
INCONCLUSIVE_REASON = "InconclusiveAnalysis"


def canary_replicas(weight: int, replicas: int) -> int:
    """ceil(weight% of replicas): the canary pods a weight needs."""
    return (weight * replicas + 99) // 100


@dataclass(frozen=True)
class _Ctx:
    rollout: Rollout
    obs: Observed
    now: datetime
    desired: str
    stable: str
    new_revision: bool
    index: int
    held_weight: int  # the weight this revision already reached; never lowered except on abort/supersede
    abort: bool
    abort_reason: str
    last_progress: datetime
    walk: int  # this walk of the steps; names its AnalysisRuns
    accepted: frozenset[str]  # Inconclusive runs a human resumed past, in this walk

    @property
    def status(self) -> RolloutStatus:
        return self.rollout.status

    @property
    def canary_rs(self) -> ReplicaSetState | None:
        return self.obs.by_hash.get(self.desired)

    @property
    def stable_rs(self) -> ReplicaSetState | None:
        return self.obs.by_hash.get(self.stable)


@dataclass
class _Draft:
    summary: str = "Progressing"
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    wake: list[float] = field(default_factory=list)
    keep_runs: set[str] = field(default_factory=set)  # AnalysisRuns this decision wants running
    created_runs: list[CreateAnalysisRun] = field(default_factory=list)
    step_run: AnalysisRunState | None = None  # the current step's run, once it exists

    def act(self, action: Action) -> None:
        # The reconciler reports an action (Event + log line) as soon as it is applied, so `events` holds only
        # what happened to the Rollout as a whole (steps, pauses, aborts).
        self.actions.append(action)

    def event(self, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append(Event(reason, message, warning))


def plan(rollout: Rollout, observed: Observed) -> Decision:
    ctx, draft = _context(rollout, observed), _Draft()
    if rollout.status.stable_hash and ctx.stable != rollout.status.stable_hash:
        draft.event("StableReplicaSetMissing", f"no ReplicaSet for stable {rollout.status.stable_hash}; "
                    f"revision {ctx.stable} is taken as stable", warning=True)
    if ctx.desired == ctx.stable:
        _plan_stable(ctx, draft)
    elif ctx.abort:
        _plan_abort(ctx, draft)
    else:
        _plan_canary(ctx, draft)
    _tend_analysis_runs(ctx, draft)
    if any(isinstance(a, SetWeight) for a in draft.actions) and _changed_outside(rollout, observed):
        draft.events.insert(0, Event(
            "TrafficWeightDrift", f"the traffic router was changed outside sluice (canary "
            f"{'weights that disagree' if observed.canary_weight < 0 else observed.canary_weight}, sluice had set "
            f"{rollout.status.canary_weight}); putting sluice's weight back", warning=True))
    wake = min([*draft.wake, observed.resync])
    return Decision(summary=draft.summary, actions=tuple(draft.actions), status=draft.status,
                    events=tuple(draft.events), requeue_after=wake)


def _context(rollout: Rollout, obs: Observed) -> _Ctx:
    spec, st = rollout.spec, rollout.status
    desired = spec.template_hash
    # The stable revision: from status; if status lost it (restored from a backup), the one the stable Service
    # selects; only when neither has a ReplicaSet does the current template become stable.
    stable = next((h for h in (st.stable_hash, obs.stable_service_hash) if h and h in obs.by_hash), desired)
    new_revision = st.canary_hash != desired
    reset = new_revision or st.current_step_hash != steps_hash(spec.canary.steps)
    index = 0 if reset else st.current_step_index
    # What the router sends to this canary counts as reached (a crash after writing the weight, before the status)
    # but never beyond what the steps so far allow: a weight raised by someone else is corrected, not adopted.
    watched = obs.canary_weight if obs.canary_service_hash == desired else 0
    steps_edited = not new_revision and st.current_step_hash != steps_hash(spec.canary.steps)
    watched = min(watched, 100 if steps_edited else _weight_allowed(spec.canary.steps, index))
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
    return _Ctx(
        rollout=rollout, obs=obs, now=obs.now, desired=desired, stable=stable, new_revision=new_revision,
        index=index,
        held_weight=0 if new_revision else max(st.canary_weight, watched),
        abort=st.abort and not new_revision, abort_reason="requested by a user",
        last_progress=(obs.now if new_revision or retry or unpaused or st.last_progress_time is None
                       else st.last_progress_time),
        walk=walk, accepted=frozenset() if walk != st.walk else frozenset(st.accepted_runs),
    )


def _changed_outside(rollout: Rollout, obs: Observed) -> bool:
    """A router weight sluice cannot have written itself: not what status records, not 0, and not a weight the
    current step could have written just before a crash (or a lost status race) kept it out of the status."""
    st, steps = rollout.status, rollout.spec.canary.steps
    if st.canary_hash is None:
        return False  # a new Rollout, or a status restored without its history: nothing to compare with
    weight = obs.canary_weight
    if weight < 0:
        return True
    if weight in (st.canary_weight, 0):
        return False
    same_steps = st.current_step_hash == steps_hash(steps)
    reachable = _weight_allowed(steps, st.current_step_index) if same_steps else 100
    return not st.canary_weight < weight <= reachable


def _weight_allowed(steps: tuple[Step, ...], index: int) -> int:
    """The highest weight the steps up to and including `index` set (100 once every step is done)."""
    if index >= len(steps):
        return 100
    return max((s.weight for s in steps[: index + 1] if isinstance(s, SetWeightStep)), default=0)


# -- the three paths ---------------------------------------------------------------------------------------------


def _plan_stable(ctx: _Ctx, draft: _Draft) -> None:
    spec, st = ctx.rollout.spec, ctx.status
    if ctx.new_revision and st.canary_hash is not None and st.stable_hash == ctx.desired:
        draft.summary = "FastRollback"
        draft.event("RolloutRolledBack", f"template is back to stable {ctx.stable}: steps skipped, canary "
                    f"{st.canary_hash} loses its traffic")
    _ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas})
    _set_stable_selector(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=0, canary_hash=ctx.stable)
    _retire_replica_sets(ctx, draft, keep={ctx.stable}, delay=spec.canary.abort_scale_down_delay)
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
    _progress(ctx, draft, index=len(spec.canary.steps), weight=0, abort=False, clear_pause=True)
    _finish(ctx, draft, phase=phase, message=message,
            progressing=(True, "RolloutCompleted" if healthy else "ReplicaSetUpdated"),
            paused="PausedByUser" if spec.paused else None)


def _stable_short(ctx: _Ctx, draft: _Draft, *, available: int) -> None:
    """Stable has fewer available pods than replicas (a first version coming up, a bad image, lost nodes): the
    progress deadline applies as for a canary, counted from when it fell short or last gained a pod."""
    spec, st = ctx.rollout.spec, ctx.status
    was_available = st.condition("Available")
    since = ctx.now if was_available is None or was_available.status == "True" else max(
        ctx.last_progress, was_available.last_transition_time)
    if available > st.stable_available_replicas:
        since = ctx.now
    deadline = since + timedelta(seconds=spec.progress_deadline)
    _progress(ctx, draft, index=len(spec.canary.steps), weight=0, abort=False, clear_pause=True, last_progress=since)
    if deadline > ctx.now:
        draft.wake.append(seconds_until(deadline, ctx.now))
        _finish(ctx, draft, phase="Progressing", progressing=(True, "ReplicaSetUpdated"),
                message=f"waiting for stable pods: {available}/{spec.replicas} available")
        return
    message = (f"ProgressDeadlineExceeded: stable {ctx.stable} has {available}/{spec.replicas} available pods "
               f"after {spec.progress_deadline:g}s")
    previous = st.condition("Degraded")
    if previous is None or previous.reason != "ProgressDeadlineExceeded" or previous.status != "True":
        draft.event("ProgressDeadlineExceeded", message, warning=True)
    draft.summary = "Degraded"
    _finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "ProgressDeadlineExceeded"),
            degraded=("ProgressDeadlineExceeded", message))


def _plan_abort(ctx: _Ctx, draft: _Draft) -> None:
    spec, st = ctx.rollout.spec, ctx.status
    draft.summary = "Aborted"
    _ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas})
    _set_stable_selector(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=0, canary_hash=ctx.stable)
    _retire_replica_sets(ctx, draft, keep={ctx.stable}, delay=spec.canary.abort_scale_down_delay)
    first = not st.abort or st.aborted_at is None
    if first:
        message = (f"Rollout aborted: {ctx.abort_reason}. All traffic is on stable {ctx.stable}; "
                   "set status.abort=false to retry.")
        draft.event("RolloutAborted", f"rollout of {ctx.desired} aborted ({ctx.abort_reason}): 100% of traffic "
                    f"back on stable {ctx.stable}", warning=True)
    else:
        message = st.message
    _progress(ctx, draft, index=0, weight=0, abort=True, clear_pause=True)
    draft.status["abortedAt"] = format_time(st.aborted_at or ctx.now)
    _finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "RolloutAborted"),
            degraded=("RolloutAborted", message))


def _plan_canary(ctx: _Ctx, draft: _Draft) -> None:
    spec = ctx.rollout.spec
    steps, index = spec.canary.steps, ctx.index
    if ctx.status.promote_full and not ctx.new_revision:
        index = len(steps)
    step = steps[index] if index < len(steps) else None
    target_weight = step.weight if isinstance(step, SetWeightStep) else (100 if step is None else ctx.held_weight)
    needed = spec.replicas if step is None else canary_replicas(max(target_weight, ctx.held_weight), spec.replicas)
    _ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas, ctx.desired: needed})
    canary = ctx.canary_rs
    available = canary.available if canary else 0
    # The canary Service moves to the canary's pods only when they can carry the weight it holds, and back to the
    # stable pods when none is available (a crashed canary); in between it stays, so an HPA scale-up that the
    # canary has not caught up with yet does not take the canary out of traffic.
    if ctx.obs.canary_service_hash == ctx.desired:
        route_to = ctx.desired if available > 0 else ctx.stable
    else:
        enough = max(1, canary_replicas(ctx.held_weight, spec.replicas))
        route_to = ctx.desired if available >= enough else ctx.stable
    ready = canary is not None and available >= needed and canary.replicas >= needed
    gated = _analysis_gate(ctx, draft, index=index, step=step, ready=ready, route_to=route_to)
    if gated is None:
        return
    ctx = gated
    if spec.paused or not ready or step is not None:
        # Not when promoting: _promote points the stable Service at the canary (after a crash half way through
        # a promotion it may already be there, and must not be moved back in the same decision).
        _set_stable_selector(ctx, draft, ctx.stable)
    if spec.paused:
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
        _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _hold(ctx, draft, index=index, phase="Paused", message="paused by a user (spec.paused)", paused="PausedByUser")
    elif not ready:
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
        _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _wait_for_canary(ctx, draft, index=index, available=available, needed=needed)
    elif step is None:
        _promote(ctx, draft)
    elif isinstance(step, SetWeightStep):
        _route(ctx, draft, weight=max(step.weight, ctx.held_weight), canary_hash=ctx.desired)
        _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _advance(ctx, draft, index=index, weight=max(step.weight, ctx.held_weight),
                 what=f"setWeight {step.weight}")
    elif isinstance(step, AnalysisStep):
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=ctx.desired)
        _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _analysis_step(ctx, draft, index=index)
    else:
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=ctx.desired)
        _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _pause_step(ctx, draft, index=index, step=step)


# -- analysis ----------------------------------------------------------------------------------------------------


def run_name(rollout: str, hash_: str, walk: int, step: int | None, attempt: int = 1) -> str:
    base = f"{rollout}-{hash_}-{walk}-{'bg' if step is None else step}"
    return base if attempt == 1 else f"{base}.{attempt}"


def _attempts(ctx: _Ctx, step: int | None) -> list[AnalysisRunState]:
    """This walk's runs for `step` (None: background), oldest attempt first."""
    base = run_name(ctx.rollout.name, ctx.desired, ctx.walk, step)

    def attempt(run: AnalysisRunState) -> int:
        suffix = run.name[len(base) + 1:]
        return int(suffix) if suffix.isdigit() else 1

    runs = [r for r in ctx.obs.analysis_runs if r.name == base or r.name.startswith(base + ".")]
    return sorted(runs, key=attempt)


def _current_run(ctx: _Ctx, step: int | None) -> tuple[AnalysisRunState | None, int]:
    """The run that speaks for `step` now, and the attempt number a new one would take.

    A run sluice terminated (its step was left, the rollout paused or superseded half way) never counts as a
    verdict, whatever phase it ended in; nor does a background run whose Inconclusive result a human accepted (the
    background analysis goes on with a fresh run). Either way the next attempt is a new run."""
    attempts = _attempts(ctx, step)
    if not attempts:
        return None, 1
    latest = attempts[-1]
    spent = latest.terminating or (step is None and latest.phase == "Inconclusive" and latest.name in ctx.accepted)
    return (None if spent else latest), len(attempts) + 1


def _ensure_run(ctx: _Ctx, draft: _Draft, *, step: int | None, ref: AnalysisRef,
                create: bool = True) -> list[AnalysisRunState]:
    run, attempt = _current_run(ctx, step)
    if run is not None:
        draft.keep_runs.add(run.name)
        return [run]
    if not create:
        return []
    name = run_name(ctx.rollout.name, ctx.desired, ctx.walk, step, attempt)
    draft.keep_runs.add(name)
    action = CreateAnalysisRun(name=name, hash=ctx.desired, stable_hash=ctx.stable, walk=ctx.walk, step=step,
                               analysis=ref)
    draft.act(action)
    draft.created_runs.append(action)
    return []


def _analysis_gate(ctx: _Ctx, draft: _Draft, *, index: int, step: Step | None, ready: bool,
                   route_to: str) -> _Ctx | None:
    """Background analysis (from its starting step) and the current step's analysis (started once the canary is
    ready for it, and kept while the rollout is paused or the canary waits for pods). A Failed or Error run aborts at
    once, whatever the steps are doing; an Inconclusive one pauses for a human, whose resume accepts it. Returns
    None when it decided the path, else the context."""
    spec, st = ctx.rollout.spec, ctx.status
    runs: list[AnalysisRunState] = []
    background = spec.canary.analysis
    if background is not None and index >= background.starting_step:
        runs += _ensure_run(ctx, draft, step=None, ref=background.analysis)
    if isinstance(step, AnalysisStep):
        step_runs = _ensure_run(ctx, draft, step=index, ref=step.analysis, create=ready and not spec.paused)
        draft.step_run = step_runs[0] if step_runs else None
        runs += step_runs
    failed = next((r for r in runs if r.phase in ("Failed", "Error")), None)
    if failed is not None:
        reason = f"analysis {failed.name} {failed.phase.lower()}: {failed.message or 'no message'}"
        draft.actions.clear()
        draft.events.clear()
        draft.wake.clear()
        draft.keep_runs.clear()
        draft.created_runs.clear()
        _plan_abort(replace(ctx, abort=True, abort_reason=reason), draft)
        return None
    waiting = [r for r in runs if r.phase == "Inconclusive" and r.name not in ctx.accepted]
    if not waiting:
        return ctx
    names = ", ".join(r.name for r in waiting)
    shown = st.condition("Paused")
    if st.controller_pause and not st.pause_conditions and shown is not None and shown.reason == INCONCLUSIVE_REASON:
        # A human resumed the pause that showed them these runs: accept exactly the runs that pause named. Decide
        # the rest next time, so a pause step that was interrupted starts again rather than ending with this resume.
        seen = [r for r in waiting if r.name in shown.message]
        if seen:
            accepted = ctx.accepted | {r.name for r in seen}
            draft.event("RolloutResumed", f"inconclusive analysis {', '.join(r.name for r in seen)} accepted by a "
                        "user")
            draft.status["controllerPause"] = False
            draft.status["pauseConditions"] = []
            draft.status["acceptedAnalysisRuns"] = sorted(accepted)
            draft.wake.append(0.0)
            _hold_traffic(ctx, draft, route_to=route_to)
            _hold(replace(ctx, accepted=accepted), draft, index=index, phase="Progressing",
                  message=f"inconclusive analysis {', '.join(r.name for r in seen)} accepted by a user; continuing")
            return None
    ours = next((p for p in st.pause_conditions if p.reason == INCONCLUSIVE_REASON), None)
    if not st.controller_pause or ours is None:
        draft.event("AnalysisInconclusive", f"paused: analysis {names} inconclusive: {waiting[0].message}",
                    warning=True)
    draft.status["controllerPause"] = True
    draft.status["pauseConditions"] = [{"reason": INCONCLUSIVE_REASON,
                                        "startTime": format_time(ours.start_time if ours else ctx.now)}]
    _hold_traffic(ctx, draft, route_to=route_to)
    _hold(ctx, draft, index=index, phase="Paused", paused=INCONCLUSIVE_REASON,
          message=f"paused: analysis {names} inconclusive ({waiting[0].message}); resume (remove "
                  "status.pauseConditions) to accept it and continue, or abort")
    return None


def _hold_traffic(ctx: _Ctx, draft: _Draft, *, route_to: str) -> None:
    _set_stable_selector(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
    _retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired},
                         delay=ctx.rollout.spec.canary.abort_scale_down_delay)


def _analysis_step(ctx: _Ctx, draft: _Draft, *, index: int) -> None:
    run = draft.step_run
    if run is not None and (run.phase == "Successful" or run.name in ctx.accepted):
        what = f"analysis {run.name} " + ("successful" if run.phase == "Successful" else "inconclusive, accepted")
        _advance(ctx, draft, index=index, weight=ctx.held_weight, what=what)
        return
    total = len(ctx.rollout.spec.canary.steps)
    name = run.name if run is not None else next((a.name for a in draft.created_runs if a.step == index), "")
    _hold(ctx, draft, index=index, phase="Progressing",
          message=f"step {index + 1}/{total}: waiting for analysis {name} ({run.phase if run else 'Pending'})")


def _tend_analysis_runs(ctx: _Ctx, draft: _Draft) -> None:
    """Terminate the runs this decision no longer wants, prune old finished ones, and list this walk's runs in
    status."""
    for run in ctx.obs.analysis_runs:
        if run.terminal or run.terminating or run.name in draft.keep_runs:
            continue
        if draft.summary == "Aborted":
            why = "the rollout was aborted"
        elif run.hash != ctx.desired or run.walk != ctx.walk:
            why = f"superseded (revision {ctx.desired}, walk {ctx.walk})"
        elif ctx.desired == ctx.stable or draft.summary == "Promoted":
            why = "the rollout completed"
        else:
            why = "its step is over"
        draft.act(TerminateAnalysisRun(run.name, why))
    current = sorted(
        [*(r for r in ctx.obs.analysis_runs if r.walk == ctx.walk and r.hash == ctx.desired),
         *(AnalysisRunState(a.name, a.hash, a.walk, a.step, "Pending", "", False, ctx.now)
           for a in draft.created_runs)],
        key=lambda r: (-1 if r.step is None else r.step),
    )
    finished = sorted((r for r in ctx.obs.analysis_runs if r.terminal and r not in current),
                      key=lambda r: (r.walk, r.created), reverse=True)
    for run in finished[ctx.rollout.spec.analysis_run_history_limit:]:
        draft.act(DeleteAnalysisRun(run.name))
    draft.status.setdefault("walk", ctx.walk)
    draft.status.setdefault("acceptedAnalysisRuns", sorted(ctx.accepted))
    draft.status.setdefault("analysisRuns", [
        {"name": r.name, "kind": "Background" if r.step is None else "Step",
         **({} if r.step is None else {"step": r.step}), "phase": r.phase, "message": r.message}
        for r in current
    ])


# -- canary step handling ----------------------------------------------------------------------------------------


def _pause_step(ctx: _Ctx, draft: _Draft, *, index: int, step: PauseStep) -> None:
    st, total = ctx.status, len(ctx.rollout.spec.canary.steps)
    fresh = ctx.index != st.current_step_index or ctx.new_revision or not st.controller_pause
    if fresh:
        draft.summary = "Paused"
        draft.event("RolloutPaused", f"step {index + 1}/{total}: pause "
                    + (f"for {step.duration:g}s" if step.duration is not None else "until resumed"))
        draft.status["controllerPause"] = True
        draft.status["pauseConditions"] = [{"reason": PAUSE_REASON, "startTime": format_time(ctx.now)}]
        if step.duration is not None:
            draft.wake.append(step.duration)
        _hold(ctx, draft, index=index, phase="Paused", message=_pause_message(step, index, total, ctx.now),
              paused=PAUSE_REASON)
        return
    if not st.pause_conditions:
        draft.event("RolloutResumed", f"step {index + 1}/{total}: pause released by a user")
        _advance(ctx, draft, index=index, weight=ctx.held_weight, what="pause (resumed)")
        return
    started = st.pause_conditions[0].start_time
    if step.duration is not None:
        ends = started + timedelta(seconds=step.duration)
        if ends <= ctx.now:
            _advance(ctx, draft, index=index, weight=ctx.held_weight, what=f"pause of {step.duration:g}s")
            return
        draft.wake.append(seconds_until(ends, ctx.now))
    draft.summary = "Paused"
    _hold(ctx, draft, index=index, phase="Paused", message=_pause_message(step, index, total, started),
          paused=PAUSE_REASON)


def _pause_message(step: PauseStep, index: int, total: int, started: datetime) -> str:
    if step.duration is None:
        return f"paused at step {index + 1}/{total} until resumed (remove status.pauseConditions)"
    ends = started + timedelta(seconds=step.duration)
    return f"paused at step {index + 1}/{total} until {format_time(ends)}"


def _advance(ctx: _Ctx, draft: _Draft, *, index: int, weight: int, what: str) -> None:
    total = len(ctx.rollout.spec.canary.steps)
    draft.summary = "StepCompleted"
    draft.event("RolloutStepCompleted", f"step {index + 1}/{total} completed: {what}")
    draft.wake.append(0.0)
    _progress(ctx, draft, index=index + 1, weight=weight, abort=False, last_progress=ctx.now, clear_pause=True)
    _finish(ctx, draft, phase="Progressing", message=f"step {index + 1}/{total} completed: {what}",
            progressing=(True, "RolloutStepCompleted"))


def _wait_for_canary(ctx: _Ctx, draft: _Draft, *, index: int, available: int, needed: int) -> None:
    spec, st = ctx.rollout.spec, ctx.status
    last_progress = ctx.last_progress
    if available > st.canary_available_replicas and not ctx.new_revision:
        last_progress = ctx.now
    deadline = last_progress + timedelta(seconds=spec.progress_deadline)
    total = len(spec.canary.steps)
    where = f"step {index + 1}/{total}" if index < total else "full promotion"
    if deadline > ctx.now:
        draft.wake.append(seconds_until(deadline, ctx.now))
        _hold(ctx, draft, index=index, phase="Progressing", last_progress=last_progress,
              message=f"{where}: waiting for canary pods: {available}/{needed} available")
        return
    message = (f"ProgressDeadlineExceeded: canary {ctx.desired} has {available}/{needed} available pods after "
               f"{spec.progress_deadline:g}s at {where}")
    if spec.progress_deadline_abort:
        aborted = replace(ctx, abort=True, abort_reason=message)
        # Decide afresh: the canary path's actions so far (scaling the canary, holding its weight, retiring with
        # the canary kept) would be repeated or contradicted by the abort's.
        draft.actions.clear()
        draft.events.clear()
        draft.wake.clear()
        draft.event("ProgressDeadlineExceeded", message, warning=True)
        _plan_abort(aborted, draft)
        return
    previous = st.condition("Degraded")
    if previous is None or previous.reason != "ProgressDeadlineExceeded" or previous.status != "True":
        draft.event("ProgressDeadlineExceeded", message, warning=True)
    draft.summary = "Degraded"
    _progress(ctx, draft, index=index, weight=ctx.held_weight, abort=False, last_progress=last_progress)
    _finish(ctx, draft, phase="Degraded", message=message, progressing=(False, "ProgressDeadlineExceeded"),
            degraded=("ProgressDeadlineExceeded", message))


def _promote(ctx: _Ctx, draft: _Draft) -> None:
    spec = ctx.rollout.spec
    draft.summary = "Promoted"
    old_stable = ctx.stable_rs
    # The canary is already at full size: _plan_canary ensured it (and promotes only when it is ready).
    _set_stable_selector(ctx, draft, ctx.desired)
    _route(ctx, draft, weight=0, canary_hash=ctx.desired)
    keep = {ctx.desired}
    if old_stable is not None and old_stable.replicas > 0 and old_stable.scale_down_at is None:
        draft.act(MarkScaleDown(old_stable.name, ctx.now + timedelta(seconds=spec.canary.scale_down_delay)))
        keep.add(old_stable.hash)
    _retire_replica_sets(ctx, draft, keep=keep, delay=spec.canary.abort_scale_down_delay)
    draft.event("RolloutCompleted", f"revision {ctx.desired} promoted: it is the new stable, old stable "
                f"{ctx.stable} scales down in {spec.canary.scale_down_delay:g}s")
    draft.wake.append(0.0)
    draft.status["stableHash"] = ctx.desired
    _progress(ctx, draft, index=len(spec.canary.steps), weight=0, abort=False, last_progress=ctx.now,
              clear_pause=True)
    _finish(ctx, draft, phase="Healthy", message=f"revision {ctx.desired} is fully promoted",
            progressing=(True, "RolloutCompleted"))


def _hold(ctx: _Ctx, draft: _Draft, *, index: int, phase: str, message: str, paused: str | None = None,
          last_progress: datetime | None = None) -> None:
    if paused is not None and draft.summary == "Progressing":
        draft.summary = "Paused"
    if last_progress is None:
        last_progress = ctx.last_progress
    _progress(ctx, draft, index=index, weight=ctx.held_weight, abort=False, last_progress=last_progress)
    _finish(ctx, draft, phase=phase, message=message, progressing=(True, "ReplicaSetUpdated"), paused=paused)


# -- shared pieces -----------------------------------------------------------------------------------------------


def _route(ctx: _Ctx, draft: _Draft, *, weight: int, canary_hash: str) -> None:
    """Traffic leaves before the canary Service's pods change, and arrives only after.

    When the canary Service still selects a superseded revision (neither stable nor this canary), its traffic goes
    to zero first: not one request more to pods that lost the rollout.
    """
    current = ctx.obs.canary_weight
    moving = ctx.obs.canary_service_hash != canary_hash
    if moving and ctx.obs.canary_service_hash not in (ctx.stable, ctx.desired) and current != 0:
        draft.act(SetWeight(0, current))
        current = 0
    if weight < current:
        draft.act(SetWeight(weight, current))
        current = weight
    target = ctx.obs.by_hash.get(canary_hash)
    if moving and target is not None and target.available > 0:
        draft.act(SetServiceSelector(ctx.rollout.spec.canary.canary_service, canary_hash))
    if weight > current:
        draft.act(SetWeight(weight, current))


def _set_stable_selector(ctx: _Ctx, draft: _Draft, hash_: str) -> None:
    """The stable Service takes all the traffic it gets: it moves only to a revision whose pods are all available
    (on a first version it keeps selecting whatever it selected before, e.g. a Deployment's pods, until then)."""
    current, target = ctx.obs.stable_service_hash, ctx.obs.by_hash.get(hash_)
    if current == hash_ or target is None:
        return
    # Selecting pods that no longer exist (their ReplicaSet is gone): any available pod is better than none.
    orphaned = current is not None and current not in ctx.obs.by_hash
    if target.available >= ctx.rollout.spec.replicas or (orphaned and target.available > 0):
        draft.act(SetServiceSelector(ctx.rollout.spec.canary.stable_service, hash_))


def _ensure_replica_sets(ctx: _Ctx, draft: _Draft, wanted: dict[str, int]) -> None:
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


def _retire_replica_sets(ctx: _Ctx, draft: _Draft, *, keep: set[str], delay: float) -> None:
    """Scale down every other ReplicaSet after its deadline; prune zero-sized ones past revisionHistoryLimit."""
    idle: list[ReplicaSetState] = []
    for rs in ctx.obs.replica_sets:
        if rs.hash in keep:
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


def _progress(ctx: _Ctx, draft: _Draft, *, index: int, weight: int, abort: bool,
              last_progress: datetime | None = None, clear_pause: bool = False) -> None:
    spec, obs = ctx.rollout.spec, ctx.obs
    total = len(spec.canary.steps)
    rs_all = obs.replica_sets
    canary = ctx.canary_rs if ctx.desired != ctx.stable else None
    stable = ctx.stable_rs
    values: dict[str, Any] = {
        "observedGeneration": ctx.rollout.generation,
        "currentStepIndex": index,
        "currentStepHash": steps_hash(spec.canary.steps),
        # 1-based like the messages: the step being worked on, or total/total once every step is done.
        "stepDisplay": f"{min(index + 1, total)}/{total}",
        "canaryWeight": weight,
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
    # A step pause belongs to the walk that started it: a new revision or new steps must not inherit its start time.
    if clear_pause or ctx.new_revision or ctx.status.current_step_hash != values["currentStepHash"]:
        values["controllerPause"] = False
        values["pauseConditions"] = []
    if not abort:
        values["abortedAt"] = None
    for key, value in values.items():
        draft.status.setdefault(key, value)


def _finish(ctx: _Ctx, draft: _Draft, *, phase: str, message: str, progressing: tuple[bool, str],
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
    ]
    draft.status.setdefault("phase", phase)
    draft.status.setdefault("message", message)
    draft.status.setdefault("conditions", conditions)


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
