"""The canary planner: `plan(rollout, observed) -> Decision`, pure.

One call looks at the Rollout (spec + status) and what the reconciler observed (ReplicaSets, the Services' current
selectors, the router's current weight) and returns what should happen next. Everything it needs to continue lives in
the status and in ReplicaSet labels/annotations, so a restarted controller reaches the same decision. What it shares
with the blue-green planner (ReplicaSets, status, the stable and abort paths) is in strategies/common.py, the
AnalysisRuns in strategies/runs.py; here are the steps, the weights and the traffic router.

Paths, by what the template hash says:
- template == stable: steady state, first version, or fast rollback (steps skipped): all traffic on stable.
- abort requested (or progress deadline with progressDeadlineAbort), or the template failed an enforced guardrail
  (strategies/preflight.py): traffic to stable first, canary scaled down later; a blocked first version gets nothing.
- otherwise walk the steps from `currentStepIndex`: setWeight scales the canary, waits for its pods, then moves
  traffic; pause waits for its duration (from a start time kept in status) or for a human; after the last step the
  canary is scaled to full size, the stable Service switches to it, and the old stable is scaled down after a delay.

Invariants (tested with hypothesis in tests/unit): the canary weight never decreases except on abort, a new revision
or a rollback; the canary never has more replicas than `spec.replicas`; no traffic moves to pods that are not
available.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from strategies.common import (
    Context,
    Draft,
    decide,
    ensure_replica_sets,
    finish,
    hold,
    make_context,
    progress,
    retire_replica_sets,
    set_stable_backend,
    settle_abort,
    settle_blocked,
    settle_stable,
    tend_guardrails,
    wait_for_pods,
    warn_missing_stable,
)
from strategies.common import invalid as invalid
from strategies.decision import Decision, Event, MarkScaleDown, SetBackend, SetWeight
from strategies.model import (
    AnalysisRunState,
    AnalysisStep,
    Observed,
    PauseStep,
    Rollout,
    SetWeightStep,
    Step,
    format_time,
    seconds_until,
    steps_hash,
)
from strategies.runs import INCONCLUSIVE_REASON as INCONCLUSIVE_REASON
from strategies.runs import ensure_run, judge_runs, passed, tend_analysis_runs

PAUSE_REASON = "CanaryPauseStep"


def canary_replicas(weight: int, replicas: int) -> int:
    """ceil(weight% of replicas): the canary pods a weight needs."""
    return (weight * replicas + 99) // 100


@dataclass(frozen=True)
class _Ctx(Context):
    index: int = 0
    held_weight: int = 0  # the weight this revision already reached; never lowered except on abort/supersede


def plan(rollout: Rollout, observed: Observed) -> Decision:
    ctx, draft = _context(rollout, observed), Draft()
    warn_missing_stable(ctx, draft)
    if ctx.preflight.blocked and ctx.desired == ctx.stable:
        # Nothing of this revision serves: create nothing, keep what the stable Service selects.
        settle_blocked(ctx, draft, keep={observed.stable_service_hash},
                       delay=rollout.spec.canary.abort_scale_down_delay)
    elif ctx.desired == ctx.stable:
        _plan_stable(ctx, draft)
    elif ctx.abort or ctx.preflight.blocked:
        _plan_abort(ctx, draft)
    else:
        _plan_canary(ctx, draft)
    tend_analysis_runs(ctx, draft, completed=draft.summary == "Promoted")
    tend_guardrails(ctx, draft)
    if any(isinstance(a, SetWeight) for a in draft.actions) and _changed_outside(rollout, observed):
        draft.events.insert(0, Event(
            "TrafficWeightDrift", f"the traffic router was changed outside sluice (canary "
            f"{'weights that disagree' if observed.canary_weight < 0 else observed.canary_weight}, sluice had set "
            f"{rollout.status.canary_weight}); putting sluice's weight back", warning=True))
    return decide(draft, observed)


def _context(rollout: Rollout, obs: Observed) -> _Ctx:
    spec, st = rollout.spec, rollout.status
    desired = spec.template_hash
    new_revision = st.canary_hash != desired
    reset = new_revision or st.current_step_hash != steps_hash(spec.canary.steps)
    index = 0 if reset else st.current_step_index
    # What the router sends to this canary counts as reached (a crash after writing the weight, before the status)
    # but never beyond what the steps so far allow: a weight raised by someone else is corrected, not adopted.
    watched = obs.canary_weight if obs.canary_service_hash == desired else 0
    steps_edited = not new_revision and st.current_step_hash != steps_hash(spec.canary.steps)
    watched = min(watched, 100 if steps_edited else _weight_allowed(spec.canary.steps, index))
    return replace(make_context(_Ctx, rollout, obs, reset=reset), index=index,
                   held_weight=0 if new_revision else max(st.canary_weight, watched))


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


def _plan_stable(ctx: _Ctx, draft: Draft) -> None:
    spec = ctx.rollout.spec
    ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas})
    set_stable_backend(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=0, canary_hash=ctx.stable)
    _position(ctx, draft, index=len(spec.canary.steps), weight=0)
    settle_stable(ctx, draft, keep={ctx.stable}, delay=spec.canary.abort_scale_down_delay,
                  dropped=f"steps skipped, canary {ctx.status.canary_hash} loses its traffic")


def _plan_abort(ctx: _Ctx, draft: Draft) -> None:
    spec = ctx.rollout.spec
    draft.summary = "Aborted"
    ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas})
    set_stable_backend(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=0, canary_hash=ctx.stable)
    _position(ctx, draft, index=0, weight=0)
    settle_abort(ctx, draft, keep={ctx.stable}, delay=spec.canary.abort_scale_down_delay)


def _plan_canary(ctx: _Ctx, draft: Draft) -> None:
    spec = ctx.rollout.spec
    steps, index = spec.canary.steps, ctx.index
    if ctx.status.promote_full and not ctx.new_revision:
        index = len(steps)
    step = steps[index] if index < len(steps) else None
    target_weight = step.weight if isinstance(step, SetWeightStep) else (100 if step is None else ctx.held_weight)
    needed = spec.replicas if step is None else canary_replicas(max(target_weight, ctx.held_weight), spec.replicas)
    ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas, ctx.desired: needed})
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
        set_stable_backend(ctx, draft, ctx.stable)
    if spec.paused:
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
        retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _hold(ctx, draft, index=index, phase="Paused", message="paused by a user (spec.paused)", paused="PausedByUser")
    elif not ready:
        _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
        retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        _wait_for_canary(ctx, draft, index=index, available=available, needed=needed)
    elif step is None:
        _promote(ctx, draft)
    else:
        weight = max(step.weight, ctx.held_weight) if isinstance(step, SetWeightStep) else ctx.held_weight
        _route(ctx, draft, weight=weight, canary_hash=ctx.desired)
        retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=spec.canary.abort_scale_down_delay)
        if isinstance(step, SetWeightStep):
            _advance(ctx, draft, index=index, weight=weight, what=f"setWeight {step.weight}")
        elif isinstance(step, AnalysisStep):
            _analysis_step(ctx, draft, index=index)
        else:
            _pause_step(ctx, draft, index=index, step=step)


# -- analysis ----------------------------------------------------------------------------------------------------


def _analysis_gate(ctx: _Ctx, draft: Draft, *, index: int, step: Step | None, ready: bool,
                   route_to: str) -> _Ctx | None:
    """Background analysis (from its starting step) and the current step's analysis (started once the canary is
    ready for it, and kept while the rollout is paused or the canary waits for pods). Returns None when the runs'
    verdict decided the path (common.judge_runs), else the context."""
    spec = ctx.rollout.spec
    runs: list[AnalysisRunState] = []
    background = spec.canary.analysis
    if background is not None and index >= background.starting_step:
        runs += ensure_run(ctx, draft, slot=None, ref=background.analysis)
    if isinstance(step, AnalysisStep):
        step_runs = ensure_run(ctx, draft, slot=index, ref=step.analysis, create=ready and not spec.paused)
        draft.step_run = step_runs[0] if step_runs else None
        runs += step_runs

    def stay(ctx: _Ctx, draft: Draft, *, phase: str, message: str, paused: str | None) -> None:
        _hold_traffic(ctx, draft, route_to=route_to)
        _hold(ctx, draft, index=index, phase=phase, message=message, paused=paused)

    return judge_runs(ctx, draft, runs, abort=_plan_abort, stay=stay)


def _hold_traffic(ctx: _Ctx, draft: Draft, *, route_to: str) -> None:
    set_stable_backend(ctx, draft, ctx.stable)
    _route(ctx, draft, weight=ctx.held_weight, canary_hash=route_to)
    retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired},
                        delay=ctx.rollout.spec.canary.abort_scale_down_delay)


def _analysis_step(ctx: _Ctx, draft: Draft, *, index: int) -> None:
    run = draft.step_run
    if run is not None and passed(ctx, run):
        what = f"analysis {run.name} " + ("successful" if run.phase == "Successful" else "inconclusive, accepted")
        _advance(ctx, draft, index=index, weight=ctx.held_weight, what=what)
        return
    total = len(ctx.rollout.spec.canary.steps)
    name = run.name if run is not None else next((a.name for a in draft.created_runs if a.step == index), "")
    _hold(ctx, draft, index=index, phase="Progressing",
          message=f"step {index + 1}/{total}: waiting for analysis {name} ({run.phase if run else 'Pending'})")


# -- canary step handling ----------------------------------------------------------------------------------------


def _pause_step(ctx: _Ctx, draft: Draft, *, index: int, step: PauseStep) -> None:
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


def _advance(ctx: _Ctx, draft: Draft, *, index: int, weight: int, what: str) -> None:
    total = len(ctx.rollout.spec.canary.steps)
    draft.summary = "StepCompleted"
    draft.event("RolloutStepCompleted", f"step {index + 1}/{total} completed: {what}")
    draft.wake.append(0.0)
    _progress(ctx, draft, index=index + 1, weight=weight, abort=False, last_progress=ctx.now, clear_pause=True)
    finish(ctx, draft, phase="Progressing", message=f"step {index + 1}/{total} completed: {what}",
           progressing=(True, "RolloutStepCompleted"))


def _wait_for_canary(ctx: _Ctx, draft: Draft, *, index: int, available: int, needed: int) -> None:
    total = len(ctx.rollout.spec.canary.steps)
    _position(ctx, draft, index=index, weight=ctx.held_weight)
    wait_for_pods(ctx, draft, available=available, needed=needed, noun="canary", abort=_plan_abort,
                  where=f"step {index + 1}/{total}" if index < total else "full promotion")


def _promote(ctx: _Ctx, draft: Draft) -> None:
    spec = ctx.rollout.spec
    draft.summary = "Promoted"
    old_stable = ctx.stable_rs
    # The canary is already at full size: _plan_canary ensured it (and promotes only when it is ready).
    set_stable_backend(ctx, draft, ctx.desired)
    _route(ctx, draft, weight=0, canary_hash=ctx.desired)
    keep = {ctx.desired}
    if old_stable is not None and old_stable.replicas > 0 and old_stable.scale_down_at is None:
        draft.act(MarkScaleDown(old_stable.name, ctx.now + timedelta(seconds=spec.canary.scale_down_delay)))
        keep.add(old_stable.hash)
    retire_replica_sets(ctx, draft, keep=keep, delay=spec.canary.abort_scale_down_delay)
    draft.event("RolloutCompleted", f"revision {ctx.desired} promoted: it is the new stable, old stable "
                f"{ctx.stable} scales down in {spec.canary.scale_down_delay:g}s")
    draft.wake.append(0.0)
    draft.status["stableHash"] = ctx.desired
    _progress(ctx, draft, index=len(spec.canary.steps), weight=0, abort=False, last_progress=ctx.now,
              clear_pause=True)
    finish(ctx, draft, phase="Healthy", message=f"revision {ctx.desired} is fully promoted",
           progressing=(True, "RolloutCompleted"))


def _hold(ctx: _Ctx, draft: Draft, *, index: int, phase: str, message: str, paused: str | None = None,
          last_progress: datetime | None = None) -> None:
    _position(ctx, draft, index=index, weight=ctx.held_weight)
    hold(ctx, draft, phase=phase, message=message, paused=paused, last_progress=last_progress)


# -- shared pieces -----------------------------------------------------------------------------------------------


def _route(ctx: _Ctx, draft: Draft, *, weight: int, canary_hash: str) -> None:
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
        draft.act(SetBackend("canary", ctx.rollout.spec.canary.canary_service, canary_hash))
    if weight > current:
        draft.act(SetWeight(weight, current))


def _position(ctx: _Ctx, draft: Draft, *, index: int, weight: int) -> None:
    """The canary's own status fields: the step and the weight (written before common.progress's)."""
    steps = ctx.rollout.spec.canary.steps
    total, current_hash = len(steps), steps_hash(steps)
    values = {
        "currentStepIndex": index,
        "currentStepHash": current_hash,
        # 1-based like the messages: the step being worked on, or total/total once every step is done.
        "stepDisplay": f"{min(index + 1, total)}/{total}",
        "canaryWeight": weight,
    }
    # A step pause belongs to the steps that started it: new steps must not inherit its start time.
    if ctx.status.current_step_hash != current_hash:
        values |= {"controllerPause": False, "pauseConditions": []}
    for key, value in values.items():
        draft.status.setdefault(key, value)


def _progress(ctx: _Ctx, draft: Draft, *, index: int, weight: int, abort: bool,
              last_progress: datetime | None = None, clear_pause: bool = False) -> None:
    _position(ctx, draft, index=index, weight=weight)
    progress(ctx, draft, abort=abort, last_progress=last_progress, clear_pause=clear_pause)
