"""The blue-green planner: `plan(rollout, observed) -> Decision`, pure.

The new revision comes up behind the preview Service while the stable one keeps serving through the active Service;
promotion switches the active Service's selector to the new pods, and the old ReplicaSet keeps its pods until
`scaleDownDelaySeconds` after the rollout completed, so a switch back is instant. There is no traffic router and no
step list; what it shares with the canary planner is in strategies/common.py (ReplicaSets, status, the stable and
abort paths) and strategies/runs.py (AnalysisRuns).

Level-triggered: where a rollout is comes from the status, the ReplicaSets, the Services' selectors and the
AnalysisRuns, never from memory, so a restarted controller reaches the same decision. Paths:
- template == stable: steady state, first version, or a rollback (also half way through post-promotion): the active
  and preview Services on stable, every other ReplicaSet retired.
- abort (a user, a failed analysis, the progress deadline with progressDeadlineAbort): the active and preview Services
  back on stable at once (its ReplicaSet never shrank), the new revision scaled down after abortScaleDownDelaySeconds.
- preview (the active Service does not select the new revision): the new ReplicaSet at previewReplicaCount, the
  preview Service on it once those pods are available, then prePromotionAnalysis (run `<rollout>-<hash>-<walk>-pre`),
  then the promotion gate: `promoteFull` (it skips the pause, never the analysis; spec.paused holds even that), a
  pause until a human promotes (autoPromotionEnabled false) or until autoPromotionSeconds have passed (both a
  `BlueGreenPause` pause condition with its start time), or at once. A
  granted promotion is kept in the status as `controllerPause` with no pause conditions (what `sluice promote` leaves
  behind) until the switch, so the new ReplicaSet can be scaled to spec.replicas over several reconciles; the active
  Service switches once all of them are available: the only place it moves to a new revision.
- promoted (the active Service selects the new revision, status.stableHash is still the old one): postPromotionAnalysis
  (`-post`); Failed or Error aborts, which switches back; Successful, or none configured, completes: stableHash
  becomes the new revision and the old ReplicaSet's scale-down is scheduled.

Before promotion the active Service is left where it is: on stable, or on a revision that was promoted and then
superseded by a newer template during its post-promotion analysis (that ReplicaSet keeps its pods while it serves).

Invariants (tested with hypothesis in tests/unit/test_bluegreen_planner.py): the active Service never moves to a
revision with fewer than spec.replicas available pods, nor to a new revision before its pre-promotion analysis
passed; no ReplicaSet is scaled above spec.replicas; an abort leaves the active and preview Services on stable.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from strategies import common
from strategies import runs as analysis_runs
from strategies.common import Context, Draft, Hold
from strategies.decision import CreateAnalysisRun, Decision, MarkScaleDown, ScaleReplicaSet, SetBackend
from strategies.model import (
    POST_PROMOTION,
    PRE_PROMOTION,
    AnalysisRunState,
    BlueGreenStrategy,
    Observed,
    Rollout,
    format_time,
    seconds_until,
)

PAUSE_REASON = "BlueGreenPause"


@dataclass(frozen=True)
class _Gate:
    """Whether the preview, ready and past its analysis, is promoted now, and why; or since when it waits."""

    promote: bool
    why: str
    paused_since: datetime | None = None  # the BlueGreenPause's start time, once it exists
    expired: bool = False  # the auto-promotion time of an existing pause has come
    released: bool = False  # a human removed the pause conditions (or an expired pause was kept as granted)


def plan(rollout: Rollout, observed: Observed) -> Decision:
    reset = rollout.status.canary_hash != rollout.spec.template_hash
    ctx, draft = common.make_context(Context, rollout, observed, reset=reset), Draft()
    common.warn_missing_stable(ctx, draft)
    if ctx.preflight.blocked and ctx.desired == ctx.stable:
        # Nothing of this revision serves: create nothing, keep what the active Service selects.
        common.settle_blocked(ctx, draft, keep={observed.stable_service_hash},
                              delay=_strategy(ctx).abort_scale_down_delay)
    elif ctx.desired == ctx.stable:
        _plan_stable(ctx, draft)
    elif ctx.abort or ctx.preflight.blocked:
        _plan_abort(ctx, draft)
    elif observed.stable_service_hash == ctx.desired:
        _plan_promoted(ctx, draft)
    else:
        _plan_preview(ctx, draft)
    analysis_runs.tend_analysis_runs(ctx, draft, completed=draft.summary == "Completed")
    common.tend_guardrails(ctx, draft)
    return common.decide(draft, observed)


def _strategy(ctx: Context) -> BlueGreenStrategy:
    strategy = ctx.rollout.spec.blue_green
    if strategy is None:
        raise TypeError("not a blue-green Rollout")
    return strategy


def _preview_replicas(ctx: Context) -> int:
    return _strategy(ctx).preview_replicas or ctx.rollout.spec.replicas


# -- stable and abort --------------------------------------------------------------------------------------------


def _plan_stable(ctx: Context, draft: Draft) -> None:
    common.ensure_replica_sets(ctx, draft, {ctx.stable: ctx.rollout.spec.replicas})
    serving = _back_to_stable(ctx, draft)
    _position(draft, "stable")
    common.settle_stable(ctx, draft, keep={ctx.stable, serving}, delay=_strategy(ctx).abort_scale_down_delay,
                         dropped=f"the active and preview Services return to it, revision {ctx.status.canary_hash} "
                         "is dropped")


def _plan_abort(ctx: Context, draft: Draft) -> None:
    draft.summary = "Aborted"
    common.ensure_replica_sets(ctx, draft, {ctx.stable: ctx.rollout.spec.replicas})
    serving = _back_to_stable(ctx, draft)
    _position(draft, "blocked" if ctx.preflight.blocked else "aborted")
    common.settle_abort(ctx, draft, keep={ctx.stable, serving}, delay=_strategy(ctx).abort_scale_down_delay)


def _back_to_stable(ctx: Context, draft: Draft) -> str | None:
    """Both Services to stable (each once its pods are all available); returns the revision the active Service
    serves after this decision, whose ReplicaSet must keep its pods."""
    on_stable = common.set_stable_backend(ctx, draft, ctx.stable)
    _set_preview(ctx, draft, ctx.stable, needed=ctx.rollout.spec.replicas)
    return ctx.stable if on_stable else ctx.obs.stable_service_hash


# -- preview -----------------------------------------------------------------------------------------------------


def _plan_preview(ctx: Context, draft: Draft) -> None:
    spec, bg = ctx.rollout.spec, _strategy(ctx)
    needed, new, pre = _preview_replicas(ctx), ctx.canary_rs, bg.pre_promotion
    ready = new is not None and new.available >= needed and new.replicas >= needed
    runs = analysis_runs.ensure_run(ctx, draft, slot=PRE_PROMOTION, ref=pre, create=False) if pre else []
    analysed = pre is None or (bool(runs) and analysis_runs.passed(ctx, runs[0]))
    gate = _gate(ctx, bg) if ready and analysed and not spec.paused else None
    full = new is not None and new.replicas >= spec.replicas and new.available >= spec.replicas
    _place(ctx, draft, promoting=gate is not None and gate.promote, full=full)
    if pre is not None and not runs:
        # Created after the preview Service moved to the new pods (in this decision's order), so it measures them.
        analysis_runs.ensure_run(ctx, draft, slot=PRE_PROMOTION, ref=pre, create=ready and not spec.paused)
    draft.step_run = runs[0] if runs else None
    if _made_progress(ctx, draft):
        ctx = replace(ctx, last_progress=ctx.now)
    if analysis_runs.judge_runs(ctx, draft, runs, abort=_plan_abort, stay=_stay("preview")) is None:
        return
    if gate is None:
        _wait_in_preview(ctx, draft, ready=ready)
    elif gate.promote:
        _promote(ctx, draft, gate=gate, full=full)
    else:
        _pause(ctx, draft, gate=gate)


def _place(ctx: Context, draft: Draft, *, promoting: bool, full: bool) -> None:
    """The ReplicaSets and Services of the preview phase; the active Service switches when `promoting` and `full`."""
    spec, new = ctx.rollout.spec, ctx.canary_rs
    needed = _preview_replicas(ctx)
    # Before promotion the new ReplicaSet keeps what it has (up to spec.replicas): a promotion held by spec.paused,
    # or an edited previewReplicaCount, does not take pods away that the switch needs again.
    kept = min(new.replicas, spec.replicas) if new is not None else 0
    common.ensure_replica_sets(ctx, draft, {ctx.stable: spec.replicas,
                                            ctx.desired: spec.replicas if promoting else max(needed, kept)})
    switching = promoting and full
    if switching:
        common.set_stable_backend(ctx, draft, ctx.desired)
    else:
        _keep_active(ctx, draft)
    _set_preview(ctx, draft, ctx.desired, needed=needed)
    serving = ctx.desired if switching else ctx.obs.stable_service_hash
    common.retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired, serving},
                               delay=_strategy(ctx).abort_scale_down_delay)


def _wait_in_preview(ctx: Context, draft: Draft, *, ready: bool) -> None:
    """Not at the promotion gate yet: held by spec.paused, waiting for the preview pods, or for the analysis."""
    _position(draft, "preview")
    if ctx.rollout.spec.paused:
        common.hold(ctx, draft, phase="Paused", message="paused by a user (spec.paused)", paused="PausedByUser")
    elif not ready:
        new = ctx.canary_rs
        common.wait_for_pods(ctx, draft, available=new.available if new else 0, needed=_preview_replicas(ctx),
                             where="preview", noun="new revision", abort=_plan_abort)
    else:
        common.hold(ctx, draft, phase="Progressing", message=f"preview of {ctx.desired} ready: waiting for "
                    f"pre-promotion analysis {_run_shown(draft)}")


def _keep_active(ctx: Context, draft: Draft) -> None:
    """Before promotion the active Service stays where it is; only when it selects no live pods (a first version
    not yet available when this revision came, its ReplicaSet gone or empty) is it pointed at stable."""
    current = ctx.obs.by_hash.get(ctx.obs.stable_service_hash or "")
    if current is None or current.available == 0:
        common.set_stable_backend(ctx, draft, ctx.stable)


def _set_preview(ctx: Context, draft: Draft, hash_: str, *, needed: int) -> None:
    """The preview Service moves to a revision once `needed` of its pods are available (or at once when it selects
    pods that no longer exist), and stays there while they come and go."""
    service, current = ctx.rollout.spec.services[1], ctx.obs.canary_service_hash
    target = ctx.obs.by_hash.get(hash_)
    if service is None or current == hash_ or target is None:
        return
    orphaned = current is not None and current not in ctx.obs.by_hash
    if target.available >= needed or (orphaned and target.available > 0):
        draft.act(SetBackend("canary", service, hash_))


def _made_progress(ctx: Context, draft: Draft) -> bool:
    """This decision moves the rollout on (the preview Service switches, an analysis starts, the new revision is
    scaled up): the progress deadline counts from now."""
    name = ctx.canary_rs.name if ctx.canary_rs else None
    return any(isinstance(a, SetBackend | CreateAnalysisRun)
               or (isinstance(a, ScaleReplicaSet) and a.name == name and a.replicas > a.previous)
               for a in draft.actions)


def _run_shown(draft: Draft) -> str:
    run = draft.step_run
    if run is not None:
        return f"{run.name} ({run.phase})"
    return next((f"{a.name} (Pending)" for a in draft.created_runs), "(not started)")


def _gate(ctx: Context, bg: BlueGreenStrategy) -> _Gate:
    st = ctx.status
    if st.promote_full and not ctx.new_revision:
        return _Gate(True, "promoteFull")
    if st.controller_pause and not st.pause_conditions and not ctx.new_revision:
        return _Gate(True, "promotion released", released=True)
    if bg.auto_promotion and bg.auto_promotion_seconds == 0:
        return _Gate(True, "auto-promotion")
    ours = next((p for p in st.pause_conditions if p.reason == PAUSE_REASON), None)
    since = ours.start_time if ours is not None and st.controller_pause and not ctx.new_revision else None
    if since is not None and bg.auto_promotion and since + timedelta(seconds=bg.auto_promotion_seconds) <= ctx.now:
        return _Gate(True, f"auto-promotion after {bg.auto_promotion_seconds:g}s in preview", since, expired=True)
    return _Gate(False, "", since)


def _pause(ctx: Context, draft: Draft, *, gate: _Gate) -> None:
    """Wait for a human (autoPromotionEnabled false) or for autoPromotionSeconds, from a start time kept in the
    status, so a restarted controller neither restarts nor skips the wait."""
    bg = _strategy(ctx)
    since = gate.paused_since or ctx.now
    if gate.paused_since is None:
        until = f"promoting in {bg.auto_promotion_seconds:g}s" if bg.auto_promotion else "paused until promoted"
        draft.event("RolloutPaused", f"preview of {ctx.desired} ready: {until}")
        draft.status["controllerPause"] = True
        draft.status["pauseConditions"] = [{"reason": PAUSE_REASON, "startTime": format_time(since)}]
        ctx = replace(ctx, last_progress=ctx.now)
    if bg.auto_promotion:
        ends = since + timedelta(seconds=bg.auto_promotion_seconds)
        draft.wake.append(seconds_until(ends, ctx.now))
        message = f"preview of {ctx.desired} ready: promoted automatically at {format_time(ends)} (or promote now)"
    else:
        message = f"preview of {ctx.desired} ready: paused until promoted (remove status.pauseConditions: promote)"
    _position(draft, "preview")
    common.hold(ctx, draft, phase="Paused", message=message, paused=PAUSE_REASON)


def _promote(ctx: Context, draft: Draft, *, gate: _Gate, full: bool) -> None:
    """Promotion granted: scale the new revision to spec.replicas, then switch the active Service (the decision's
    actions already hold the switch when `full`)."""
    spec, st = ctx.rollout.spec, ctx.status
    shown = st.condition("Paused")
    if gate.released and shown is not None and shown.status == "True" and shown.reason == PAUSE_REASON:
        draft.event("RolloutResumed", f"preview of {ctx.desired} released by a user: promoting")
        ctx = replace(ctx, last_progress=ctx.now)
    elif gate.expired:
        draft.event("RolloutResumed", f"preview of {ctx.desired} kept {_strategy(ctx).auto_promotion_seconds:g}s: "
                    "promoting")
    if not full:
        if gate.expired:
            # The granted promotion outlives this decision in the status, as a human's release would.
            draft.status["controllerPause"] = True
            draft.status["pauseConditions"] = []
        new = ctx.canary_rs
        _position(draft, "promoting")
        common.wait_for_pods(ctx, draft, available=new.available if new else 0, needed=spec.replicas,
                             where="promotion", noun="new revision", abort=_plan_abort)
        return
    draft.summary = "Promoted"
    active = spec.services[0]
    draft.event("RolloutPromoted", f"active Service {active} switched from {ctx.obs.stable_service_hash} to "
                f"{ctx.desired} ({gate.why}); {ctx.stable} keeps its pods until the rollout completes")
    draft.wake.append(0.0)
    _position(draft, "promoted")
    common.progress(ctx, draft, abort=False, last_progress=ctx.now, clear_pause=True)
    common.finish(ctx, draft, phase="Progressing", progressing=(True, "RolloutPromoted"),
                  message=f"revision {ctx.desired} is active ({gate.why}); previous revision {ctx.stable} kept")


# -- promoted ----------------------------------------------------------------------------------------------------


def _plan_promoted(ctx: Context, draft: Draft) -> None:
    spec, bg = ctx.rollout.spec, _strategy(ctx)
    runs: list[AnalysisRunState] = []
    if bg.post_promotion is not None:
        runs = analysis_runs.ensure_run(ctx, draft, slot=POST_PROMOTION, ref=bg.post_promotion)
    draft.step_run = runs[0] if runs else None
    analysed = bg.post_promotion is None or (bool(runs) and analysis_runs.passed(ctx, runs[0]))
    completing = analysed and not spec.paused
    # Until it completes the previous revision stays at full size, so a switch back finds all its pods.
    common.ensure_replica_sets(ctx, draft, {ctx.desired: spec.replicas} if completing
                               else {ctx.stable: spec.replicas, ctx.desired: spec.replicas})
    _set_preview(ctx, draft, ctx.desired, needed=_preview_replicas(ctx))
    common.retire_replica_sets(ctx, draft, keep={ctx.stable, ctx.desired}, delay=bg.abort_scale_down_delay)
    if analysis_runs.judge_runs(ctx, draft, runs, abort=_plan_abort, stay=_stay("promoted")) is None:
        return
    if completing:
        _complete(ctx, draft)
        return
    _position(draft, "promoted")
    if spec.paused:
        common.hold(ctx, draft, phase="Paused", message="paused by a user (spec.paused)", paused="PausedByUser")
    else:
        common.hold(ctx, draft, phase="Progressing", message=f"revision {ctx.desired} is active: waiting for "
                    f"post-promotion analysis {_run_shown(draft)}; {ctx.stable} kept for a switch back")


def _complete(ctx: Context, draft: Draft) -> None:
    bg = _strategy(ctx)
    draft.summary = "Completed"
    old = ctx.stable_rs
    if old is not None and old.replicas > 0 and old.scale_down_at is None:
        draft.act(MarkScaleDown(old.name, ctx.now + timedelta(seconds=bg.scale_down_delay)))
    draft.event("RolloutCompleted", f"revision {ctx.desired} promoted: it is the new stable, previous revision "
                f"{ctx.stable} scales down in {bg.scale_down_delay:g}s")
    draft.wake.append(0.0)
    draft.status["stableHash"] = ctx.desired
    _position(draft, "stable")
    common.progress(ctx, draft, abort=False, last_progress=ctx.now, clear_pause=True)
    common.finish(ctx, draft, phase="Healthy", message=f"revision {ctx.desired} is fully promoted",
           progressing=(True, "RolloutCompleted"))


# -- status ------------------------------------------------------------------------------------------------------


def _position(draft: Draft, display: str) -> None:
    """Blue-green's own status fields (before common.progress's): where it is, and no canary weight."""
    draft.status.setdefault("stepDisplay", display)
    draft.status.setdefault("canaryWeight", 0)


def _stay(display: str) -> Hold[Context]:
    """How a pause on an Inconclusive analysis holds: the Services are where this decision put them already."""

    def stay(ctx: Context, draft: Draft, *, phase: str, message: str, paused: str | None) -> None:
        _position(draft, display)
        common.hold(ctx, draft, phase=phase, message=message, paused=paused)

    return stay
