"""The AnalysisRuns both planners start and judge (strategies/canary.py: steps and background analysis;
strategies/bluegreen.py: pre- and post-promotion), on the shared `Context` and `Draft` of strategies/common.py.

- One run per slot and walk: `run_name` (`<rollout>-<hash>-<walk>-<step|bg|pre|post>[.<attempt>]`), `ensure_run`
  (the run that speaks for a slot now, or a new attempt when sluice terminated the last one).
- A verdict over the runs that gate the current phase: `judge_runs` (Failed/Error aborts, Inconclusive pauses until
  a human resumes, which accepts exactly the runs that pause named).
- `tend_analysis_runs`: terminate what is no longer wanted, prune finished runs past the history limit, and list this
  walk's runs in status.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from strategies.common import C, Context, Draft, Hold
from strategies.decision import CreateAnalysisRun, DeleteAnalysisRun, TerminateAnalysisRun
from strategies.model import POST_PROMOTION, PRE_PROMOTION, AnalysisRef, AnalysisRunState, RunSlot, format_time

INCONCLUSIVE_REASON = "InconclusiveAnalysis"

_SLOT_SUFFIX: dict[RunSlot, str] = {None: "bg", PRE_PROMOTION: "pre", POST_PROMOTION: "post"}
_SLOT_KIND: dict[RunSlot, str] = {None: "Background", PRE_PROMOTION: "PrePromotion", POST_PROMOTION: "PostPromotion"}


def run_name(rollout: str, hash_: str, walk: int, slot: RunSlot, attempt: int = 1) -> str:
    base = f"{rollout}-{hash_}-{walk}-{_SLOT_SUFFIX.get(slot, slot)}"
    return base if attempt == 1 else f"{base}.{attempt}"


def _slot_order(slot: RunSlot) -> tuple[int, int]:
    """Background first, then the steps in order, then pre- and post-promotion."""
    if isinstance(slot, int):
        return 1, slot
    return (0, 0) if slot is None else (2, 0 if slot == PRE_PROMOTION else 1)


def _attempts(ctx: Context, slot: RunSlot) -> list[AnalysisRunState]:
    """This walk's runs for `slot`, oldest attempt first."""
    base = run_name(ctx.rollout.name, ctx.desired, ctx.walk, slot)

    def attempt(run: AnalysisRunState) -> int:
        suffix = run.name[len(base) + 1:]
        return int(suffix) if suffix.isdigit() else 1

    runs = [r for r in ctx.obs.analysis_runs if r.name == base or r.name.startswith(base + ".")]
    return sorted(runs, key=attempt)


def _current_run(ctx: Context, slot: RunSlot) -> tuple[AnalysisRunState | None, int]:
    """The run that speaks for `slot` now, and the attempt number a new one would take.

    A run sluice terminated (its step was left, the rollout paused or superseded half way) never counts as a
    verdict, whatever phase it ended in; nor does a background run whose Inconclusive result a human accepted (the
    background analysis goes on with a fresh run). Either way the next attempt is a new run."""
    attempts = _attempts(ctx, slot)
    if not attempts:
        return None, 1
    latest = attempts[-1]
    spent = latest.terminating or (slot is None and latest.phase == "Inconclusive" and latest.name in ctx.accepted)
    return (None if spent else latest), len(attempts) + 1


def ensure_run(ctx: Context, draft: Draft, *, slot: RunSlot, ref: AnalysisRef,
               create: bool = True) -> list[AnalysisRunState]:
    """The run speaking for `slot` in this walk (kept running), or none yet: then one is created when `create`."""
    run, attempt = _current_run(ctx, slot)
    if run is not None:
        draft.keep_runs.add(run.name)
        return [run]
    if not create:
        return []
    name = run_name(ctx.rollout.name, ctx.desired, ctx.walk, slot, attempt)
    draft.keep_runs.add(name)
    action = CreateAnalysisRun(name=name, hash=ctx.desired, stable_hash=ctx.stable, walk=ctx.walk, step=slot,
                               analysis=ref)
    draft.act(action)
    draft.created_runs.append(action)
    return []


def passed(ctx: Context, run: AnalysisRunState) -> bool:
    """Successful, or Inconclusive and accepted by a human."""
    return run.phase == "Successful" or run.name in ctx.accepted


def judge_runs(ctx: C, draft: Draft, runs: list[AnalysisRunState], *, abort: Callable[[C, Draft], None],
               stay: Hold[C]) -> C | None:
    """The verdict of the runs gating where the rollout is. A Failed or Error run aborts at once; an Inconclusive one
    pauses for a human, whose resume accepts it. Returns None when it decided the path, else the context."""
    st = ctx.status
    failed = next((r for r in runs if r.phase in ("Failed", "Error")), None)
    if failed is not None:
        reason = f"analysis {failed.name} {failed.phase.lower()}: {failed.message or 'no message'}"
        draft.restart(runs=True)
        abort(replace(ctx, abort=True, abort_reason=reason), draft)
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
            stay(replace(ctx, accepted=accepted), draft, phase="Progressing", paused=None,
                 message=f"inconclusive analysis {', '.join(r.name for r in seen)} accepted by a user; continuing")
            return None
    ours = next((p for p in st.pause_conditions if p.reason == INCONCLUSIVE_REASON), None)
    if not st.controller_pause or ours is None:
        draft.event("AnalysisInconclusive", f"paused: analysis {names} inconclusive: {waiting[0].message}",
                    warning=True)
    draft.status["controllerPause"] = True
    draft.status["pauseConditions"] = [{"reason": INCONCLUSIVE_REASON,
                                        "startTime": format_time(ours.start_time if ours else ctx.now)}]
    stay(ctx, draft, phase="Paused", paused=INCONCLUSIVE_REASON,
         message=f"paused: analysis {names} inconclusive ({waiting[0].message}); resume (remove "
                 "status.pauseConditions) to accept it and continue, or abort")
    return None


def tend_analysis_runs(ctx: Context, draft: Draft, *, completed: bool) -> None:
    """Terminate the runs this decision no longer wants, prune old finished ones, and list this walk's runs in
    status. `completed`: this decision finished the rollout."""
    for run in ctx.obs.analysis_runs:
        if run.terminal or run.terminating or run.name in draft.keep_runs:
            continue
        if draft.summary == "Aborted":
            why = "the rollout was aborted"
        elif run.hash != ctx.desired or run.walk != ctx.walk:
            why = f"superseded (revision {ctx.desired}, walk {ctx.walk})"
        elif ctx.desired == ctx.stable or completed:
            why = "the rollout completed"
        else:
            why = "its step is over"
        draft.act(TerminateAnalysisRun(run.name, why))
    current = sorted(
        [*(r for r in ctx.obs.analysis_runs if r.walk == ctx.walk and r.hash == ctx.desired),
         *(AnalysisRunState(a.name, a.hash, a.walk, a.step, "Pending", "", False, ctx.now)
           for a in draft.created_runs)],
        key=lambda r: _slot_order(r.step),
    )
    finished = sorted((r for r in ctx.obs.analysis_runs if r.terminal and r not in current),
                      key=lambda r: (r.walk, r.created), reverse=True)
    for run in finished[ctx.rollout.spec.analysis_run_history_limit:]:
        draft.act(DeleteAnalysisRun(run.name))
    draft.status.setdefault("walk", ctx.walk)
    draft.status.setdefault("acceptedAnalysisRuns", sorted(ctx.accepted))
    draft.status.setdefault("analysisRuns", [
        {"name": r.name, "kind": "Step" if isinstance(r.step, int) else _SLOT_KIND[r.step],
         **({"step": r.step} if isinstance(r.step, int) else {}), "phase": r.phase, "message": r.message}
        for r in current
    ])
