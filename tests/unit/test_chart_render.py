"""The chart's static files against the code they describe, without helm: the appVersion is sluice's version, every
value in values.yaml is declared in values.schema.json, the guardrail rules and modes the schema accepts are
strategies/policy.py's, the policy-override admission policy checks the annotations the controller reads, and the
alerts and the Grafana dashboard query only series the controller exports (rollout/metrics.py), with labels those
series carry. Rendering and the API server's verdict are tests/integration/test_chart.py's."""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from rollout.metrics import Metrics
from rollout.watching import Store
from strategies import policy
from strategies.guardrails import OVERRIDE_ANNOTATION, OVERRIDE_BY_ANNOTATION

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "sluice"
# Labels Prometheus adds to every scraped series (the ServiceMonitor keeps sluice's own `namespace`: honorLabels).
TARGET_LABELS = {"job", "instance", "namespace"}
SELECTOR = re.compile(r"\b(sluice_[a-z_]+|up)\{([^}]*)\}")
GROUPING = re.compile(r"\bby \(([^)]*)\)")


def exported_series() -> dict[str, set[str]]:
    """Series name -> label names, from the exposition of a controller that has seen one Rollout of each kind of
    trouble and done one of everything it counts."""
    store = Store()
    store.put({"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
               "metadata": {"namespace": "shop", "name": "web", "resourceVersion": "1"},
               "status": {"phase": "Paused", "canaryWeight": 20, "conditions": [
                   {"type": "Paused", "status": "True", "reason": "CanaryPauseStep",
                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    metrics = Metrics(store)
    metrics.observe_reconcile(0.1, "ok")
    metrics.count_kube_error("Forbidden")
    metrics.count_measurement("prometheus", "Successful")
    metrics.observe_request("/healthz", 200, 0.01)
    metrics.count_review("TokenReview")
    text = metrics.exposition()[0].decode()
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        match = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ", line)
        assert match, line
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', match.group(2) or ""))
        series.setdefault(match.group(1), set()).update(labels)
    series["up"] = set()
    return series


def dashboard_queries() -> Iterator[str]:
    dashboard = json.loads((CHART / "dashboards" / "sluice.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield str(target["expr"])


def test_the_app_version_is_sluices_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield (*prefix, key)
            yield from _paths(item, (*prefix, key))


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _declared(schema: dict[str, Any], path: tuple[str, ...]) -> bool:
    node = schema
    for key in path:
        properties = node.get("properties")
        if properties is None:  # a free-form map (labels, selectors, resources): any key
            return node.get("type") == "object" or "additionalProperties" in node
        if key not in properties:
            return False
        node = _resolve(schema, properties[key])
    return True


def test_every_value_is_declared_in_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undeclared = [".".join(p) for p in _paths(values) if not _declared(schema, p)]
    assert undeclared == []


def test_the_policy_values_accept_exactly_the_rules_and_modes_the_controller_knows() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = schema["properties"]["policy"]["properties"]["defaults"]
    assert defaults["additionalProperties"] is False
    assert set(defaults["properties"]) == set(policy.RULES)
    assert {_resolve(schema, rule)["enum"] == list(policy.MODES) for rule in defaults["properties"].values()} == {True}


def test_the_override_admission_checks_the_annotations_the_controller_reads() -> None:
    admission = (CHART / "templates" / "policy-override.yaml").read_text()
    assert {OVERRIDE_ANNOTATION, OVERRIDE_BY_ANNOTATION} <= set(re.findall(r"'(sluice\.dev/[a-z-]+)'", admission))
    assert "check('override-policy')" in admission
    assert "verbs: [override-policy]" in (CHART / "templates" / "user-roles.yaml").read_text()


def test_the_dashboard_and_the_alerts_query_only_what_the_controller_exports() -> None:
    series = exported_series()
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    used = set(re.findall(r"\b(sluice_[a-z_]+)", rules + "\n".join(dashboard_queries())))
    assert used - set(series) == set()
    assert {"sluice_rollouts", "sluice_rollout_canary_weight", "sluice_analysis_measurements_total"} <= used


def test_the_dashboards_selectors_and_groupings_name_labels_the_series_carry() -> None:
    series = exported_series()
    for expr in dashboard_queries():
        for name, selector in SELECTOR.findall(expr):
            labels = set(re.findall(r"([a-zA-Z_]+)\s*[=!~]", selector))
            assert labels <= series[name] | TARGET_LABELS, (expr, labels - series[name])
        metrics = {name for name, _ in SELECTOR.findall(expr)}
        for grouping in GROUPING.findall(expr):
            wanted = {label.strip() for label in grouping.split(",")}
            carried = set().union(*(series[m] for m in metrics)) | TARGET_LABELS
            assert wanted <= carried, (expr, wanted - carried)


def test_the_alerts_on_conditions_use_the_labels_the_condition_series_carry() -> None:
    labels = exported_series()["sluice_rollout_condition_since_timestamp_seconds"]
    assert labels == {"namespace", "rollout", "type", "reason"}
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    for grouping in GROUPING.findall(rules):
        assert {label.strip() for label in grouping.split(",")} <= labels


def test_the_dashboard_shows_phases_weights_and_analysis_outcomes() -> None:
    dashboard = json.loads((CHART / "dashboards" / "sluice.json").read_text())
    titles = {panel["title"] for panel in dashboard["panels"]}
    assert {"Rollouts by phase", "Canary weight", "Analysis measurements by outcome"} <= titles
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in dashboard["panels"])
