"""The examples users copy stay true to the code: the Rollout parses, and its analysis step's args resolve against
the example template into a run spec whose metrics parse and whose conditions compile."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
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


@pytest.mark.parametrize("name", ["routing/gateway-api.yaml", "routing/smi.yaml", "routing/istio-subsets.yaml"])
def test_routing_examples_parse_and_name_objects_they_define(name: str) -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / name).read_text()))
    [body] = [d for d in docs if d["kind"] == "Rollout"]
    body["metadata"]["namespace"] = "default"
    rollout = parse_rollout(body)
    defined = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for service in rollout.spec.services:
        assert service is None or ("Service", service) in defined
    routing = rollout.spec.canary.traffic_routing
    config = routing.config
    if routing.router == "gatewayAPI":
        wanted = [("HTTPRoute", config["httpRoute"])]
    elif routing.router == "smi":
        wanted = [("Service", config["rootService"])]  # the TrafficSplit is sluice's to create
    else:
        wanted = [("VirtualService", config["virtualService"]["name"]),
                  ("DestinationRule", config["destinationRule"]["name"])]
    assert set(wanted) <= defined


def test_blue_green_example_parses_with_runnable_analysis() -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "blue-green.yaml").read_text()))
    [body] = [d for d in docs if d["kind"] == "Rollout"]
    body["metadata"]["namespace"] = "default"
    rollout = parse_rollout(body)
    blue_green = rollout.spec.blue_green
    assert blue_green is not None and blue_green.pre_promotion and blue_green.post_promotion
    assert {("Service", s) for s in rollout.spec.services if s} <= {(d["kind"], d["metadata"]["name"]) for d in docs}
    template = _documents("analysis-template.yaml")["AnalysisTemplate"]
    for ref in (blue_green.pre_promotion, blue_green.post_promotion):
        given = rollout_arg_values(ref.args, body, stable_hash="s", canary_hash="c")
        spec = build_run_spec([NamedTemplate("AnalysisTemplate default/success-rate", template["spec"])], given)
        assert preflight(parse_run_metrics(spec)) is None


def test_examples_pass_every_guardrail() -> None:
    """Examples are what people copy: they pass the warn rules too (budget and spread through sluice's fields)."""
    from rollout import linting
    from strategies import policy

    paths = sorted(str(p) for p in EXAMPLES.rglob("*.yaml"))
    sources = linting.read_sources(paths, io.StringIO())
    results = linting.lint(sources, policy.resolve_modes({}, {}).modes)
    assert results, "no workload found in examples/"
    assert not [(r.file, r.workload.name, list(r.report.findings())) for r in results if list(r.report.findings())]
