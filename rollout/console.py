"""What the `sluice` CLI prints: pure functions from Rollout views (docs/api.md, fetched by rollout/apiclient.py)
to text. rollout/cli.py decides when to print; nothing here does I/O, so every rendering is tested as a string.

Views come from a server that may be newer or older than this CLI: every field is read with a default, and an
unknown step action is shown by its name and fields rather than refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

View = Mapping[str, Any]

MESSAGE_WIDTH = 60
BAR_WIDTH = 20

_PAST_TENSE = {
    "pause": "paused", "resume": "resumed", "promote": "promoted", "abort": "aborted", "retry": "retried",
    "restart": "restarted", "undo": "rolled back", "image": "image set",
}


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _dash(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def step_progress(view: View) -> str:
    """"2/6": the current step, counted from 1; "6/6" once every step is done, "0/6" before the first, "-" without
    steps."""
    steps = view.get("steps") or []
    current = view.get("currentStep")
    if not steps:
        return "-"
    if isinstance(current, int):
        return f"{min(current + 1, len(steps))}/{len(steps)}"
    done = all(step.get("state") == "done" for step in steps)
    return f"{len(steps) if done else 0}/{len(steps)}"


def canary_weight(view: View) -> str:
    weight = (view.get("weights") or {}).get("canary")
    return "-" if weight is None else f"{weight}%"


def _canary_revision(view: View) -> str:
    revision = view.get("revision") or {}
    canary = revision.get("canary")
    return "-" if not canary or canary == revision.get("stable") else str(canary)


def render_table(views: Sequence[View], *, all_namespaces: bool = False) -> str:
    """The `sluice get` list: one row per Rollout, columns padded to their widest cell."""
    header = ["NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANARY", "MESSAGE"]
    rows = [[
        _dash(view.get("name")), _dash(view.get("phase")), step_progress(view), canary_weight(view),
        _dash((view.get("revision") or {}).get("stable")), _canary_revision(view),
        _truncate(str(view.get("message") or ""), MESSAGE_WIDTH),
    ] for view in views]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
        for row, view in zip(rows, views, strict=True):
            row.insert(0, _dash(view.get("namespace")))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def _step_text(step: Mapping[str, Any]) -> str:
    action = str(step.get("action", "?"))
    if action == "setWeight":
        return f"setWeight {step.get('weight')}%"
    if action == "pause":
        duration = step.get("duration")
        if duration is None:
            return "pause (until resumed)"
        seconds = isinstance(duration, int | float) or str(duration).isdigit()
        return f"pause ({duration}s)" if seconds else f"pause ({duration})"
    if action == "analysis":
        return f"analysis {', '.join(str(t) for t in step.get('templates') or [])}".rstrip()
    extra = [f"{key}={value}" for key, value in step.items() if key not in ("index", "action", "state")]
    return " ".join([action, *extra])


def render_steps(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    marks = {"done": "✓", "current": "▶"}
    return [f"  {marks.get(str(step.get('state')), ' ')} {int(step.get('index', i)) + 1} {_step_text(step)}"
            for i, step in enumerate(steps)]


def _weights_bar(weights: Mapping[str, Any]) -> str:
    stable, canary = weights.get("stable"), weights.get("canary")
    if not isinstance(canary, int | float) or not isinstance(stable, int | float):
        return "-"
    filled = round(BAR_WIDTH * canary / 100)
    return f"stable {stable}% [{'░' * (BAR_WIDTH - filled)}{'█' * filled}] canary {canary}%"


def _replicas(replicas: Mapping[str, Any], *, new: str = "canary") -> str:
    if not replicas:
        return "-"
    return (f"desired {_dash(replicas.get('desired'))}, "
            f"stable {_dash(replicas.get('stableAvailable'))}/{_dash(replicas.get('stable'))} available, "
            f"{new} {_dash(replicas.get('canaryAvailable'))}/{_dash(replicas.get('canary'))} available")


def _metric_line(metric: Mapping[str, Any]) -> str:
    counts = ", ".join(f"{metric.get(key, 0)} {key}" for key in ("failed", "inconclusive", "error"))
    line = f"    {metric.get('name')}: {metric.get('phase')} ({metric.get('count', 0)} measured, {counts})"
    latest = metric.get("latest")
    if latest:
        line += f"; latest {latest.get('phase')} {_dash(latest.get('value'))}"
        if latest.get("message"):
            line += f" ({_truncate(str(latest['message']), MESSAGE_WIDTH)})"
    return line


def render_analysis_runs(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    lines: list[str] = []
    for run in runs:
        where = f" at step {int(run['step']) + 1}" if isinstance(run.get("step"), int) else ""
        line = f"  {run.get('name')} ({run.get('kind', '?')}{where}): {run.get('phase')}"
        if run.get("message"):
            line += f": {_truncate(str(run['message']), MESSAGE_WIDTH)}"
        lines.append(line)
        lines.extend(_metric_line(metric) for metric in run.get("metrics") or [])
    return lines


def render_detail(view: View) -> str:
    """The `sluice get NAME` view: state, revisions, traffic, replicas, the step plan and the analysis runs."""
    phase = _dash(view.get("phase"))
    flags = [flag for flag in ("paused", "aborted") if view.get(flag) and flag.capitalize() != phase]
    revision = view.get("revision") or {}
    images = view.get("images") or {}
    lines = [
        f"Name:       {view.get('namespace')}/{view.get('name')}",
        f"Phase:      {phase}" + (f" ({', '.join(flags)})" if flags else ""),
    ]
    if view.get("message"):
        lines.append(f"Message:    {' '.join(str(view['message']).split())}")
    if view.get("strategy") == "blueGreen":
        lines += [
            f"Strategy:   blue-green (active: stable {_dash(revision.get('stable'))}, preview: new "
            f"{_canary_revision(view)})",
            f"Images:     {', '.join(f'{c}={i}' for c, i in sorted(images.items())) or '-'}",
            f"Replicas:   {_replicas(view.get('replicas') or {}, new='new')}",
        ]
    else:
        lines += [
            f"Revisions:  stable {_dash(revision.get('stable'))}, canary {_canary_revision(view)}",
            f"Images:     {', '.join(f'{c}={i}' for c, i in sorted(images.items())) or '-'}",
            f"Weights:    {_weights_bar(view.get('weights') or {})}",
            f"Replicas:   {_replicas(view.get('replicas') or {})}",
        ]
    steps = view.get("steps") or []
    if steps:
        lines += ["", f"Steps ({step_progress(view)}):", *render_steps(steps)]
    runs = view.get("analysisRuns") or []
    if runs:
        lines += ["", "Analysis runs:", *render_analysis_runs(runs)]
    return "\n".join(lines)


def operation_line(name: str, op: str, view: View, *, detail: str = "") -> str:
    """The one line an operation prints: what was done and where the Rollout is now ("web: paused (phase Paused)")."""
    done = " ".join(part for part in (_PAST_TENSE.get(op, op), detail) if part)
    return f"{name}: {done} (phase {_dash(view.get('phase'))})"
