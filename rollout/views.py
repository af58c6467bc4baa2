"""The JSON view of a Rollout that the operator API answers with (docs/api.md, "Reading"), built purely from the
Rollout body and its AnalysisRun bodies as the informers hold them.

A view shows whatever is there: a Rollout the controller has not seen yet (no status), a spec the controller refuses
(InvalidSpec: the steps are shown as written, or not at all), fields of odd types. It never raises on a body.

Decisions: `strategy` is "blueGreen" or "canary" (for blue-green, "canary" in revision and replicas is the new
revision behind the preview Service, and there are no steps). `paused` is `spec.paused` or a step pause still in
force (`controllerPause` with pauseConditions), so it agrees with what `resume` answers 409 to. Step states follow
the planner: every step is `done` when no canary is in progress, every one `pending` while aborted or before the
controller's first reconcile, and a template the controller has not picked up yet (its hash is not
`status.canaryHash`) starts at step 0. `currentStep` is null when no step is
current. An AnalysisRun's phase and message come from the run itself when it is given (fresher than the Rollout's
copy in `status.analysisRuns`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from strategies.model import template_hash

_ACTIONS = ("setWeight", "pause", "analysis")


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int = 0) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        return default


def _str(value: Any) -> str:
    return "" if value is None else str(value)


def rollout_view(rollout: Mapping[str, Any], analysis_runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    meta, spec, status = _map(rollout.get("metadata")), _map(rollout.get("spec")), _map(rollout.get("status"))
    stable, canary = _str(status.get("stableHash")) or None, _str(status.get("canaryHash")) or None
    weight = max(0, min(100, _int(status.get("canaryWeight"))))
    pod = _map(_map(spec.get("template")).get("spec"))
    images = {_str(c.get("name")): _str(c.get("image"))
              for key in ("containers", "initContainers") for c in _list(pod.get(key)) if isinstance(c, Mapping)}
    strategy = _map(spec.get("strategy"))
    raw_steps = _list(_map(strategy.get("canary")).get("steps"))
    current = _current_step(spec, status, len(raw_steps))
    return {
        "namespace": _str(meta.get("namespace")),
        "name": _str(meta.get("name")),
        "strategy": "blueGreen" if strategy.get("blueGreen") is not None else "canary",
        "phase": _str(status.get("phase")) or "Pending",
        "message": _str(status.get("message")) if status else "waiting for the controller's first reconcile",
        "paused": spec.get("paused") is True
        or (status.get("controllerPause") is True and bool(status.get("pauseConditions"))),
        "aborted": status.get("abort") is True,
        "revision": {"stable": stable, "canary": canary},
        "images": images,
        "weights": {"stable": 100 - weight, "canary": weight},
        "replicas": {
            "desired": _int(spec.get("replicas"), 1),
            "stable": _int(status.get("stableReplicas")),
            "stableAvailable": _int(status.get("stableAvailableReplicas")),
            "canary": _int(status.get("canaryReplicas")),
            "canaryAvailable": _int(status.get("canaryAvailableReplicas")),
        },
        "currentStep": current if isinstance(current, int) else None,
        "steps": [_step(i, raw, _state(i, current)) for i, raw in enumerate(raw_steps)],
        "analysisRuns": _runs(status, analysis_runs, _str(meta.get("namespace"))),
        "conditions": [
            {"type": _str(c.get("type")),
             "status": c.get("status") if c.get("status") in ("True", "False") else "Unknown",
             "reason": _str(c.get("reason")), "message": _str(c.get("message"))}
            for c in _list(status.get("conditions")) if isinstance(c, Mapping)
        ],
    }


def list_view(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {"items": sorted(items, key=lambda v: (_str(v.get("namespace")), _str(v.get("name"))))}


# -- steps -------------------------------------------------------------------------------------------------------


def _current_step(spec: Mapping[str, Any], status: Mapping[str, Any], total: int) -> int | str:
    """The current step's index, or "done" / "pending" when every step is in that state."""
    stable, canary = _str(status.get("stableHash")) or None, _str(status.get("canaryHash")) or None
    if stable is None:
        return "pending"  # the controller has not reconciled it yet
    if status.get("abort") is True:
        return "pending"  # retry walks from the first step
    desired = template_hash(_map(spec.get("template")))
    if desired == stable:
        return "done"  # healthy, or a rollback to stable the controller has yet to do: the steps are skipped
    if desired != canary:
        return 0 if total else "done"  # a new revision the controller has not picked up: the walk starts over
    index = _int(status.get("currentStepIndex"))
    return index if 0 <= index < total else "done"


def _state(index: int, current: int | str) -> str:
    if isinstance(current, str):
        return current
    return "done" if index < current else "current" if index == current else "pending"


def _step(index: int, raw: Any, state: str) -> dict[str, Any]:
    step = _map(raw)
    actions = [a for a in _ACTIONS if a in step]
    action = actions[0] if len(actions) == 1 else "invalid"
    if action == "setWeight" and (isinstance(step["setWeight"], bool) or not isinstance(step["setWeight"], int)):
        action = "invalid"
    view: dict[str, Any] = {"index": index, "action": action}
    if action == "setWeight":
        view["weight"] = step["setWeight"]
    elif view["action"] == "pause":
        duration = _map(step["pause"]).get("duration")
        view["duration"] = None if duration is None else str(duration)
    elif view["action"] == "analysis":
        templates = _list(_map(step["analysis"]).get("templates"))
        view["templates"] = [_str(_map(t).get("templateName")) for t in templates]
    view["state"] = state
    return view


# -- analysis runs -----------------------------------------------------------------------------------------------


def _runs(status: Mapping[str, Any], bodies: Sequence[Mapping[str, Any]], namespace: str) -> list[dict[str, Any]]:
    by_name: dict[str, Mapping[str, Any]] = {}
    for body in bodies:
        meta = _map(body.get("metadata"))
        if meta.get("namespace") in (None, namespace):
            by_name[_str(meta.get("name"))] = body
    views: list[dict[str, Any]] = []
    for listed in _list(status.get("analysisRuns")):
        entry = _map(listed)
        name = _str(entry.get("name"))
        run_status = _map(by_name.get(name, {}).get("status"))
        kind = entry.get("kind")
        view: dict[str, Any] = {"name": name,
                                "kind": kind if kind in ("Background", "PrePromotion", "PostPromotion") else "Step"}
        if "step" in entry and view["kind"] == "Step":
            view["step"] = _int(entry.get("step"))
        view["phase"] = _str(run_status.get("phase") or entry.get("phase")) or "Pending"
        view["message"] = _str(run_status.get("message") if "message" in run_status else entry.get("message"))
        view["metrics"] = [_metric(_map(m)) for m in _list(run_status.get("metricResults"))]
        views.append(view)
    return views


def _metric(raw: Mapping[str, Any]) -> dict[str, Any]:
    measurements = [m for m in _list(raw.get("measurements")) if isinstance(m, Mapping)]
    latest = measurements[-1] if measurements else None
    return {
        "name": _str(raw.get("name")),
        "phase": _str(raw.get("phase")) or "Pending",
        "count": max(0, _int(raw.get("count"))),
        "failed": max(0, _int(raw.get("failed"))),
        "inconclusive": max(0, _int(raw.get("inconclusive"))),
        "error": max(0, _int(raw.get("error"))),
        "latest": None if latest is None else {
            "phase": _str(latest.get("phase")), "value": _str(latest.get("value")),
            "finishedAt": _str(latest.get("finishedAt") or latest.get("startedAt")) or None,
            "message": _str(latest.get("message")),
        },
    }
