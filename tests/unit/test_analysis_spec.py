"""Templates into a run spec: args resolved (Rollout values over template defaults), substituted, and checked, with
errors that name the template, the metric and the field."""

from __future__ import annotations

from typing import Any

import pytest

from analysis.spec import NamedTemplate, build_run_spec, rollout_arg_values
from strategies.model import AnalysisArg, SpecError

ROLLOUT = {"metadata": {"name": "web", "namespace": "shop", "labels": {"team": "payments"}}, "spec": {"replicas": 3}}


def template(source: str, *, args: list[dict[str, Any]], query: str = 'rate(x{app="{{args.app}}"}[1m])',
             name: str = "m") -> NamedTemplate:
    return NamedTemplate(source, {"args": args, "metrics": [{
        "name": name, "successCondition": "result[0] > 0",
        "provider": {"prometheus": {"address": "http://p:9090", "query": query}}}]})


def test_given_args_win_over_template_defaults_and_are_substituted() -> None:
    spec = build_run_spec([template("AnalysisTemplate shop/t", args=[{"name": "app", "value": "default"}])],
                          {"app": "web"})
    assert spec["args"] == [{"name": "app", "value": "web"}]
    assert spec["metrics"][0]["provider"]["prometheus"]["query"] == 'rate(x{app="web"}[1m])'


def test_an_arg_without_a_value_is_an_error_naming_it() -> None:
    with pytest.raises(SpecError, match="args app: no value"):
        build_run_spec([template("AnalysisTemplate shop/t", args=[{"name": "app"}])], {})


def test_an_arg_no_template_declares_is_an_error() -> None:
    with pytest.raises(SpecError, match="args typo: not declared"):
        build_run_spec([template("AnalysisTemplate shop/t", args=[{"name": "app"}])], {"app": "a", "typo": "b"})


def test_a_placeholder_naming_no_arg_is_an_error_naming_the_template() -> None:
    with pytest.raises(SpecError, match=r"AnalysisTemplate shop/t spec.metrics\[0\].*args.nope"):
        build_run_spec([template("AnalysisTemplate shop/t", args=[], query="up{a='{{args.nope}}'}")], {})


def test_the_same_metric_name_in_two_templates_is_an_error() -> None:
    with pytest.raises(SpecError, match="also defined by AnalysisTemplate shop/a"):
        build_run_spec([template("AnalysisTemplate shop/a", args=[{"name": "app", "value": "x"}]),
                        template("AnalysisTemplate shop/b", args=[])], {})


def test_a_metric_that_does_not_parse_is_reported_when_the_run_is_built() -> None:
    metric = {"name": "m", "successCondition": "true", "interval": "soon", "provider": {"web": {"url": "x"}}}
    bad = NamedTemplate("ClusterAnalysisTemplate t", {"metrics": [metric]})
    with pytest.raises(SpecError, match=r"ClusterAnalysisTemplate t spec.metrics\[0\] \(m\).interval"):
        build_run_spec([bad], {})


def test_rollout_args_come_from_literals_hashes_and_fields() -> None:
    args = (AnalysisArg("a", "lit"), AnalysisArg("canary", value_from={"podTemplateHashValue": "Latest"}),
            AnalysisArg("stable", value_from={"podTemplateHashValue": "Stable"}),
            AnalysisArg("ns", value_from={"fieldRef": {"fieldPath": "metadata.namespace"}}),
            AnalysisArg("team", value_from={"fieldRef": {"fieldPath": "metadata.labels['team']"}}),
            AnalysisArg("replicas", value_from={"fieldRef": {"fieldPath": "spec.replicas"}}))
    assert rollout_arg_values(args, ROLLOUT, stable_hash="s1", canary_hash="c2") == {
        "a": "lit", "canary": "c2", "stable": "s1", "ns": "shop", "team": "payments", "replicas": "3"}


@pytest.mark.parametrize("path", ["metadata.missing", "metadata.labels", "spec..x"])
def test_a_field_ref_that_finds_no_single_value_is_an_error(path: str) -> None:
    with pytest.raises(SpecError, match="arg x: fieldRef"):
        rollout_arg_values((AnalysisArg("x", value_from={"fieldRef": {"fieldPath": path}}),), ROLLOUT,
                           stable_hash="s", canary_hash="c")
