"""The examples users copy stay true to the code: the Rollout parses, and its analysis step's args resolve against
the example template into a run spec whose metrics parse and whose conditions compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from analysis.run import preflight
from analysis.spec import NamedTemplate, build_run_spec, parse_run_metrics, rollout_arg_values
from strategies.model import AnalysisStep, parse_rollout

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _documents(name: str) -> dict[str, Any]:
    return {d["kind"]: d for d in yaml.safe_load_all((EXAMPLES / name).read_text())}


def test_example_rollout_and_template_make_a_runnable_analysis() -> None:
    body = _documents("rollout.yaml")["Rollout"]
    body["metadata"]["namespace"] = "default"
    rollout = parse_rollout(body)
    [step] = [s for s in rollout.spec.canary.steps if isinstance(s, AnalysisStep)]
    template = _documents("analysis-template.yaml")["AnalysisTemplate"]
    assert [t.name for t in step.analysis.templates] == [template["metadata"]["name"]]
    given = rollout_arg_values(step.analysis.args, body, stable_hash="s", canary_hash="c")
    spec = build_run_spec([NamedTemplate("AnalysisTemplate default/success-rate", template["spec"])], given)
    assert preflight(parse_run_metrics(spec)) is None
    assert spec["metrics"][0]["provider"]["prometheus"]["address"] == "http://prometheus.monitoring:9090"
