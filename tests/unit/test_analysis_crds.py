"""The three analysis CRDs carry one metric schema (they were generated from one source): keep them identical, and
keep the parser (analysis/spec.py) accepting what the schema's examples describe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from analysis.spec import parse_metric

CRDS = Path(__file__).resolve().parents[2] / "charts" / "sluice" / "crds"


def _spec_schema(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / f"{name}.sluice.dev.yaml").read_text())
    schema: dict[str, Any] = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_templates_and_runs_share_one_metric_schema() -> None:
    metrics = [_spec_schema(n)["properties"]["metrics"]
               for n in ("analysistemplates", "clusteranalysistemplates", "analysisruns")]
    assert metrics[0] == metrics[1] == metrics[2]


def test_every_metric_field_in_the_schema_is_read_by_the_parser() -> None:
    fields = set(_spec_schema("analysistemplates")["properties"]["metrics"]["items"]["properties"])
    raw = {"name": "m", "interval": "5s", "initialDelay": "1s", "count": 3, "successCondition": "result[0] > 0",
           "failureCondition": "result[0] < 0", "failureLimit": 1, "inconclusiveLimit": 2,
           "consecutiveErrorLimit": 3, "noDataPolicy": "Fail",
           "provider": {"prometheus": {"address": "http://p:9090", "query": "up", "timeout": "2s",
                                       "headers": [{"name": "X", "value": "y"}]}}}
    assert set(raw) == fields
    metric = parse_metric(raw, where="m")
    assert (metric.interval, metric.initial_delay, metric.count, metric.failure_limit, metric.inconclusive_limit,
            metric.consecutive_error_limit, metric.no_data_policy, metric.timeout) == (5, 1, 3, 1, 2, 3, "Fail", 2)
    assert metric.provider_config == {"address": "http://p:9090", "query": "up"}
    assert metric.headers[0].name == "X" and metric.headers[0].value == "y"
