"""The pre-flight guardrails (strategies/policy.py): each rule on a good and a bad template, image references,
init containers, modes and their resolution."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from strategies import policy
from strategies.policy import Workload

LABELS = {"app": "shop"}


def good_container(name: str = "app", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": "registry.example.com/shop:1.4.2",
        "ports": [{"containerPort": 8080}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}},
        "livenessProbe": {"httpGet": {"path": "/live", "port": 8080}},
        "securityContext": {"allowPrivilegeEscalation": False},
        **extra,
    }


def good_template() -> dict[str, Any]:
    return {
        "metadata": {"labels": dict(LABELS)},
        "spec": {
            "securityContext": {"runAsNonRoot": True},
            "containers": [good_container()],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": dict(LABELS)}}],
        },
    }


def workload(template: dict[str, Any] | None = None, **extra: Any) -> Workload:
    fields: dict[str, Any] = {"kind": "Deployment", "namespace": "shop", "name": "web", "replicas": 3,
                              "disruption_budget": True, **extra}
    return Workload(template=good_template() if template is None else template, **fields)


def found(w: Workload, rule: str) -> list[policy.Violation]:
    modes: dict[str, policy.Mode] = {rule_id: "warn" for rule_id in policy.RULES}
    report = policy.check(w, modes | {rule: "enforce"})
    return [v for v in report.enforced if v.rule == rule]


def with_container(container: dict[str, Any], *, init: bool = False) -> dict[str, Any]:
    template = good_template()
    template["spec"]["initContainers" if init else "containers"] = [container]
    return template


def test_a_good_template_passes_every_rule() -> None:
    report = policy.check(workload(), policy.default_modes())
    assert report == policy.Report()
    assert not report.blocked


# -- resources ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("resources", "missing"), [
    ({"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}, ["requests.cpu"]),
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}, ["requests.memory", "limits.memory"]),
    ({"requests": {"cpu": "1", "memory": "1Gi"}}, ["limits.memory"]),
])
def test_each_missing_resource_is_one_violation_naming_its_field(resources: dict[str, Any], missing: list[str]) -> None:
    violations = found(workload(with_container(good_container(resources=resources))), "resources")
    assert [v.field for v in violations] == [f"spec.template.spec.containers[0].resources.{f}" for f in missing]
    assert all(v.container == "app" for v in violations)


def test_a_container_without_resources_misses_all_three() -> None:
    container = good_container()
    del container["resources"]
    assert len(found(workload(with_container(container)), "resources")) == 3


def test_a_limit_alone_counts_as_the_request_as_the_api_server_defaults_it() -> None:
    container = good_container(resources={"limits": {"cpu": "1", "memory": "1Gi"}})
    assert found(workload(with_container(container)), "resources") == []


def test_init_containers_need_resources_too() -> None:
    template = good_template()
    template["spec"]["initContainers"] = [{"name": "migrate", "image": "shop-migrate:1.0"}]
    fields = {v.field for v in found(workload(template), "resources")}
    assert fields == {f"spec.template.spec.initContainers[0].resources.{f}"
                      for f in ("requests.cpu", "requests.memory", "limits.memory")}


# -- probes ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "probe"),
                         [("readiness-probe", "readinessProbe"), ("liveness-probe", "livenessProbe")])
def test_a_serving_container_without_a_probe_is_a_violation(rule: str, probe: str) -> None:
    container = good_container()
    del container[probe]
    [violation] = found(workload(with_container(container)), rule)
    assert violation.field == f"spec.template.spec.containers[0].{probe}"
    assert violation.container == "app"


@pytest.mark.parametrize("rule", ["readiness-probe", "liveness-probe"])
def test_a_container_without_ports_needs_no_probe(rule: str) -> None:
    container = good_container()
    for key in ("ports", "readinessProbe", "livenessProbe"):
        del container[key]
    assert found(workload(with_container(container)), rule) == []


def test_plain_init_containers_need_no_probe_but_serving_sidecars_do() -> None:
    init = good_container("migrate")
    del init["readinessProbe"]
    assert found(workload(with_container(init, init=True)), "readiness-probe") == []
    sidecar = good_container("proxy", restartPolicy="Always")
    del sidecar["readinessProbe"]
    [violation] = found(workload(with_container(sidecar, init=True)), "readiness-probe")
    assert violation.field == "spec.template.spec.initContainers[0].readinessProbe"


# -- images ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("image", "pinned"), [
    ("nginx:1.25", True),
    ("nginx", False),
    ("nginx:latest", False),
    ("nginx:LATEST", False),
    ("nginx:Latest", False),
    ("library/nginx:1.25.3-alpine", True),
    ("registry.example.com/team/app:v2", True),
    ("host:5000/app", False),
    ("host:5000/app:1.0", True),
    ("host:5000/team/app:latest", False),
    ("localhost:5000/app", False),
    ("app@sha256:" + "a" * 64, True),
    ("host:5000/app:latest@sha256:" + "0123456789abcdef" * 4, True),
    ("app@sha256:short", False),
    ("app@", False),
    ("app:", False),
    ("app:-bad", False),
    ("[::1]:5000/app", False),
    ("[::1]:5000/app:2", True),
])
def test_image_references(image: str, pinned: bool) -> None:
    assert policy.image_pinned(image) is pinned


def test_an_unpinned_image_in_an_init_container_is_a_violation() -> None:
    template = with_container(good_container("migrate", image="shop-migrate"), init=True)
    [violation] = found(workload(template), "pinned-image")
    assert (violation.container, violation.field) == ("migrate", "spec.template.spec.initContainers[0].image")
    assert "shop-migrate" in violation.message


def test_a_container_without_an_image_is_not_pinned() -> None:
    container = good_container()
    del container["image"]
    assert len(found(workload(with_container(container)), "pinned-image")) == 1


# -- security ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("setting", ["privileged", "allowPrivilegeEscalation"])
def test_privileged_or_escalating_containers_are_violations(setting: str) -> None:
    container = good_container(securityContext={setting: True})
    [violation] = found(workload(with_container(container, init=True)), "privileged")
    assert violation.field == f"spec.template.spec.initContainers[0].securityContext.{setting}"


def test_privileged_and_escalating_is_two_violations() -> None:
    container = good_container(securityContext={"privileged": True, "allowPrivilegeEscalation": True})
    assert len(found(workload(with_container(container)), "privileged")) == 2


def test_run_as_non_root_on_the_pod_covers_every_container() -> None:
    template = good_template()
    template["spec"]["initContainers"] = [good_container("init")]
    assert found(workload(template), "run-as-non-root") == []


def test_run_as_non_root_missing_everywhere_is_one_pod_violation() -> None:
    template = good_template()
    del template["spec"]["securityContext"]
    [violation] = found(workload(template), "run-as-non-root")
    assert violation.container is None
    assert violation.field == "spec.template.spec.securityContext.runAsNonRoot"


def test_run_as_non_root_on_some_containers_flags_the_others() -> None:
    template = good_template()
    del template["spec"]["securityContext"]
    template["spec"]["containers"] = [good_container("a", securityContext={"runAsNonRoot": True}), good_container("b")]
    assert [v.container for v in found(workload(template), "run-as-non-root")] == ["b"]


def test_a_container_turning_run_as_non_root_off_is_flagged_despite_the_pod() -> None:
    template = with_container(good_container(securityContext={"runAsNonRoot": False}))
    [violation] = found(workload(template), "run-as-non-root")
    assert violation.field == "spec.template.spec.containers[0].securityContext.runAsNonRoot"


# -- several replicas --------------------------------------------------------------------------------------------


def test_several_replicas_without_a_budget_is_a_violation() -> None:
    [violation] = found(workload(disruption_budget=False), "disruption-budget")
    assert "PodDisruptionBudget" in violation.fix


def unspread_template() -> dict[str, Any]:
    template = good_template()
    del template["spec"]["topologySpreadConstraints"]
    return template


def test_several_replicas_without_spreading_is_a_violation() -> None:
    assert len(found(workload(unspread_template()), "spread")) == 1


@pytest.mark.parametrize("replicas", [0, 1, None])
def test_fewer_than_two_replicas_or_a_daemonset_skip_budget_and_spread(replicas: int | None) -> None:
    w = workload(unspread_template(), replicas=replicas, disruption_budget=False)
    assert found(w, "disruption-budget") == found(w, "spread") == []


@pytest.mark.parametrize("spread", ["preferred", "required"])
def test_a_rollout_spread_setting_satisfies_spread(spread: str) -> None:
    assert found(workload(unspread_template(), kind="Rollout", spread=spread), "spread") == []


def anti_affinity(kind: str, *, topology_key: str = "kubernetes.io/hostname",
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    term = {"topologyKey": topology_key, "labelSelector": {"matchLabels": LABELS if labels is None else labels}}
    if kind == "required":
        return {"requiredDuringSchedulingIgnoredDuringExecution": [term]}
    return {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": term}]}


@pytest.mark.parametrize("kind", ["required", "preferred"])
def test_pod_anti_affinity_on_hostname_satisfies_spread(kind: str) -> None:
    template = unspread_template()
    template["spec"]["affinity"] = {"podAntiAffinity": anti_affinity(kind)}
    assert found(workload(template), "spread") == []


@pytest.mark.parametrize("affinity", [
    anti_affinity("required", topology_key="topology.kubernetes.io/zone"),
    anti_affinity("preferred", labels={"app": "other"}),
    {"requiredDuringSchedulingIgnoredDuringExecution": [{"topologyKey": "kubernetes.io/hostname"}]},
])
def test_anti_affinity_elsewhere_or_against_other_pods_does_not_spread_these(affinity: dict[str, Any]) -> None:
    template = unspread_template()
    template["spec"]["affinity"] = {"podAntiAffinity": affinity}
    assert len(found(workload(template), "spread")) == 1


def test_a_zone_spread_constraint_does_not_spread_across_nodes() -> None:
    template = good_template()
    template["spec"]["topologySpreadConstraints"][0]["topologyKey"] = "topology.kubernetes.io/zone"
    assert len(found(workload(template), "spread")) == 1


@pytest.mark.parametrize(("selector", "matches"), [
    (None, False),
    ({}, True),
    ({"matchLabels": {"app": "shop"}}, True),
    ({"matchLabels": {"app": "web"}}, False),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["shop", "web"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["shop"]}]}, False),
    ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["db"]}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, True),
    ({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}, False),
    ({"matchExpressions": [{"key": "app", "operator": "Bogus"}]}, False),
])
def test_label_selectors(selector: Any, matches: bool) -> None:
    assert policy.selector_matches(selector, LABELS) is matches


# -- modes -------------------------------------------------------------------------------------------------------


def test_defaults_enforce_the_basics_and_warn_about_the_rest() -> None:
    assert policy.default_modes() == {
        "resources": "enforce", "readiness-probe": "enforce", "liveness-probe": "warn", "pinned-image": "enforce",
        "privileged": "warn", "run-as-non-root": "warn", "disruption-budget": "warn", "spread": "warn",
    }


def test_every_rule_has_a_description() -> None:
    assert all(rule.description for rule in policy.RULES.values())


def bad_template() -> dict[str, Any]:
    template = copy.deepcopy(good_template())
    template["spec"]["containers"][0]["image"] = "shop"
    del template["spec"]["containers"][0]["livenessProbe"]
    return template


def test_an_enforce_failure_blocks_and_a_warning_does_not() -> None:
    report = policy.check(workload(bad_template()), policy.default_modes())
    assert [v.rule for v in report.enforced] == ["pinned-image"]
    assert [v.rule for v in report.warned] == ["liveness-probe"]
    assert report.blocked
    assert [mode for mode, _ in report.findings()] == ["enforce", "warn"]


def test_off_rules_do_not_run_and_warn_does_not_block() -> None:
    report = policy.check(workload(bad_template()), {"pinned-image": "warn", "liveness-probe": "off"})
    assert report.enforced == ()
    assert [v.rule for v in report.warned] == ["pinned-image"]
    assert not report.blocked


def test_cluster_defaults_may_loosen_or_tighten() -> None:
    resolved = policy.resolve_modes({"resources": "off", "spread": "enforce"}, {})
    assert resolved.modes["resources"] == "off"
    assert resolved.modes["spread"] == "enforce"
    assert resolved.modes["pinned-image"] == "enforce"
    assert resolved.loosenings == ()


def test_a_rollout_may_only_tighten_and_its_loosenings_are_returned_not_applied() -> None:
    resolved = policy.resolve_modes({"privileged": "off"}, {
        "privileged": "enforce", "liveness-probe": "warn", "resources": "warn", "pinned-image": "off",
        "spread": "off",
    })
    assert resolved.modes["privileged"] == "enforce"
    assert resolved.modes["liveness-probe"] == "warn"
    assert resolved.modes["resources"] == "enforce"
    assert resolved.modes["pinned-image"] == "enforce"
    assert resolved.loosenings == (
        policy.Loosening("resources", "enforce", "warn"),
        policy.Loosening("pinned-image", "enforce", "off"),
        policy.Loosening("spread", "warn", "off"),
    )


@pytest.mark.parametrize(("cluster", "rollout", "message"), [
    ({"nope": "warn"}, {}, "unknown rule 'nope'"),
    ({}, {"spread": "strict"}, "spread: unknown mode 'strict'"),
])
def test_unknown_rules_and_modes_are_refused(cluster: dict[str, str], rollout: dict[str, str], message: str) -> None:
    with pytest.raises(policy.PolicyError, match=message):
        policy.resolve_modes(cluster, rollout)


def test_malformed_templates_do_not_crash_the_checks() -> None:
    for template in ({}, {"spec": None}, {"spec": {"containers": "oops"}}, {"spec": {"containers": [None]}}):
        policy.check(workload(template), policy.default_modes())
