"""The Helm chart, rendered by the pinned helm and judged by the real API server: it lints, and every object it
renders for the default values, a namespaced, a minimal and a full-monitoring install is accepted by a server-side
dry-run (the prometheus-operator CRDs installed for the ServiceMonitor and PrometheusRule). Rendering refuses moving
or empty image tags and values of the wrong type with a message saying why; the RBAC names no wildcards and reads
Secrets only when told; every alert fires on the series sluice exports (promtool) and has a runbook page. The
policy-override ValidatingAdmissionPolicy, installed for real, admits the override annotations only from a user who
holds the chart's override-policy role and names themself. What the controller can do under the rendered RBAC is
tests/integration/test_rbac.py's subject."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devcluster import ControlPlane, helm
from devcluster.controlplane import ApiClient
from devcluster.helm import Json
from devcluster.prometheus import prometheus_binary
from rollout.installing import CRDS
from rollout.kube import ApiError, KubeClient
from strategies.guardrails import OVERRIDE_ANNOTATION, OVERRIDE_BY_ANNOTATION
from tests.integration.kit import REPO, rollout_body

pytestmark = pytest.mark.integration

TEAMS = ("chart-team-a", "chart-team-b")
MONITORING_API_VERSIONS = ("monitoring.coreos.com/v1/ServiceMonitor", "monitoring.coreos.com/v1/PrometheusRule")
VARIANTS: dict[str, Json] = {
    "default": {},
    "namespaced": {"watchNamespaces": list(TEAMS), "analysis": {"secretRefs": True}},
    "minimal": {
        "replicas": 1, "leaderElection": {"enabled": False}, "api": {"allowPlainHttp": True},
        "crds": {"upgradeJob": {"enabled": False}}, "userRoles": {"create": False},
        "podDisruptionBudget": {"enabled": False}, "topologySpreadConstraints": [],
        "policy": {"overrideAdmission": {"enabled": False}},
        "trafficRouting": {"istio": {"enabled": False}, "smi": {"enabled": False}, "gatewayAPI": {"enabled": False}},
        "monitoring": {"serviceMonitor": {"enabled": False}, "prometheusRule": {"enabled": False}},
        "networkPolicy": {"enabled": False},
    },
    "full-monitoring": {
        "analysis": {"secretRefs": True},
        "api": {"webhook": {"secretName": "registry-hook"}},
        "policy": {"defaults": {"spread": "enforce", "pinned-image": "warn"}},
        "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                       "prometheusRule": {"enabled": True, "pausedTooLongSeconds": 1800},
                       "grafanaDashboard": {"enabled": True}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
            "apiServer": {"cidrs": ["10.0.0.1/32"]},
            "metricProviders": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
                "ports": [{"port": 9090, "protocol": "TCP"}]}],
        },
    },
}
ALERTS = ("SluiceRolloutAborted", "SluiceRolloutDegraded", "SluiceRolloutPausedTooLong", "SluiceAnalysisInconclusive",
          "SluiceProgressDeadlineExceeded", "SluiceReconcileErrors", "SluiceControllerDown", "SluiceNoLeader")
RUNBOOKS = REPO / "docs" / "runbooks"


def release_namespace(variant: str) -> str:
    return f"chart-{variant}"


def rendered(variant: str, **kwargs: Any) -> list[Json]:
    """The variant's documents (helm runs once per variant and arguments in a session: devcluster.helm caches)."""
    return helm.render(release="sluice", namespace=release_namespace(variant), values=VARIANTS[variant], **kwargs)


def kinds(docs: list[Json]) -> set[str]:
    return {d["kind"] for d in docs}


def names(docs: list[Json], kind: str) -> set[str]:
    return {d["metadata"]["name"] for d in helm.find(docs, kind)}


@pytest.fixture(scope="module")
def chart_cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The session's control plane with the namespaces the variants install into, and the prometheus-operator CRDs
    (ServiceMonitor and PrometheusRule only: the chart renders no other kind of theirs)."""
    control_plane.install_crd_documents(helm.prometheus_operator_crds(cwd=control_plane.workdir))
    created = [*TEAMS, *(release_namespace(v) for v in VARIANTS)]
    for name in created:
        control_plane.api.request("POST", "/api/v1/namespaces", body={
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield control_plane
    for name in created:
        control_plane.api.raw("DELETE", f"/api/v1/namespaces/{name}")


# -- helm lint and the API server's verdict ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_chart_lints(variant: str) -> None:
    out = helm.lint(values=VARIANTS[variant])
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_rendered_object_is_accepted_by_the_api_server(chart_cluster: ControlPlane, variant: str) -> None:
    docs = rendered(variant)
    answers = helm.apply(chart_cluster.api, docs, dry_run=True)
    assert [(a["kind"], a["metadata"]["name"]) for a in answers] == [
        (d["kind"], d["metadata"]["name"]) for d in docs]


def test_the_variants_render_what_they_turn_on() -> None:
    always = {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    admission = {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    default, namespaced, minimal, full = (rendered(v) for v in VARIANTS)
    assert kinds(default) == always | admission | {"Secret", "PodDisruptionBudget", "Role", "RoleBinding", "Job",
                                                   "NetworkPolicy"}
    assert names(default, "ClusterRole") == {"sluice-controller", "sluice-controller-cluster", "sluice-viewer",
                                             "sluice-operator", "sluice-deployer", "sluice-policy-override",
                                             "sluice-crds"}
    assert names(default, "ValidatingAdmissionPolicy") == names(default, "ValidatingAdmissionPolicyBinding") == {
        "sluice-policy-override"}
    assert kinds(minimal) == always
    assert names(minimal, "ClusterRole") == {"sluice-controller", "sluice-controller-cluster"}
    assert {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in helm.find(namespaced, "Role")} == {
        (TEAMS[0], "sluice-controller"), (TEAMS[1], "sluice-controller"),
        (release_namespace("namespaced"), "sluice-controller-self")}
    assert "sluice-controller" not in names(namespaced, "ClusterRole")
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "ConfigMap"} <= kinds(full)
    assert not {"ServiceMonitor", "PrometheusRule", "ConfigMap"} & kinds(default)
    [policy] = helm.find(default, "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {"port": 9090, "protocol": "TCP"} in policy["spec"]["egress"][-1]["ports"]


def test_monitoring_objects_render_when_the_cluster_serves_their_kinds() -> None:
    served = rendered("default", api_versions=MONITORING_API_VERSIONS)
    assert {"ServiceMonitor", "PrometheusRule"} <= kinds(served)
    assert not {"ServiceMonitor", "PrometheusRule"} & kinds(rendered("minimal", api_versions=MONITORING_API_VERSIONS))


# -- values that must not render -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "says"), [
    ("latest", 'image.tag must not be "latest": a moving tag'),
    ("LATEST", 'image.tag must not be "latest"'),
    ("", "image.tag must not be empty: leave it unset (null) to deploy the chart's appVersion"),
])
def test_a_moving_or_empty_image_tag_is_refused_with_the_reason(tag: str, says: str) -> None:
    assert says in helm.render_failure(values={"image": {"tag": tag}})


def test_the_image_tag_defaults_to_the_charts_app_version() -> None:
    chart = yaml.safe_load((helm.CHART_DIR / "Chart.yaml").read_text())
    [deployment] = helm.find(rendered("default"), "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"ghcr.io/sluice-dev/sluice:{chart['appVersion']}"


@pytest.mark.parametrize(("values", "says"), [
    ({"replicas": "two"}, "at '/replicas': got string, want integer"),
    ({"watchNamespaces": "shop"}, "at '/watchNamespaces': got string, want array"),
    ({"monitoring": {"serviceMonitor": {"enabled": "yes"}}}, "/monitoring/serviceMonitor/enabled"),
    ({"analysis": {"secretRefs": "true"}}, "at '/analysis/secretRefs': got string, want boolean"),
    ({"replica": 2}, "additional properties 'replica' not allowed"),
    ({"policy": {"defaults": {"spread": "strict"}}},
     "at '/policy/defaults/spread': value must be one of 'off', 'warn', 'enforce'"),
    ({"policy": {"defaults": {"no-latest": "enforce"}}}, "additional properties 'no-latest' not allowed"),
    ({"policy": {"overrideAdmission": {"enabled": "no"}}}, "at '/policy/overrideAdmission/enabled'"),
])
def test_values_of_the_wrong_type_are_refused_by_the_schema(values: Json, says: str) -> None:
    out = helm.render_failure(values=values)
    assert "values don't meet the specifications of the schema" in out
    assert says in out


# -- what the objects say --------------------------------------------------------------------------------------------


def test_the_controller_runs_hardened_with_probes_and_spread_over_nodes() -> None:
    [deployment] = helm.find(rendered("default"), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert pod["serviceAccountName"] == "sluice"
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert "--api-tls-cert=/etc/sluice/api-tls/tls.crt" in container["args"]
    assert "--leader-elect" in container["args"]


def test_policy_defaults_become_sorted_policy_flags_and_none_by_default() -> None:
    def policy_args(variant: str) -> list[str]:
        [deployment] = helm.find(rendered(variant), "Deployment")
        return [a for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
                if a.startswith("--policy")]

    assert policy_args("full-monitoring") == ["--policy=pinned-image=warn", "--policy=spread=enforce"]
    assert policy_args("default") == []


def test_the_override_admission_needs_kubernetes_1_30_or_is_turned_off_knowingly() -> None:
    args = ("template", "sluice", str(helm.CHART_DIR), "--kube-version", "1.29.0")
    refused = helm.run_helm(*args)
    assert refused.returncode != 0
    assert "policy.overrideAdmission.enabled needs Kubernetes 1.30 or newer" in refused.stderr
    assert helm.run_helm(*args, values={"policy": {"overrideAdmission": {"enabled": False}}}).returncode == 0


def test_the_override_admission_binds_only_where_the_controller_watches() -> None:
    [everywhere] = helm.find(rendered("default"), "ValidatingAdmissionPolicyBinding")
    assert "matchResources" not in everywhere["spec"]
    assert everywhere["spec"]["validationActions"] == ["Deny"]
    [watched] = helm.find(rendered("namespaced"), "ValidatingAdmissionPolicyBinding")
    assert watched["spec"]["matchResources"]["namespaceSelector"] == {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": list(TEAMS)}]}
    [policy] = helm.find(rendered("default"), "ValidatingAdmissionPolicy")
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert policy["spec"]["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["sluice.dev"], "apiVersions": ["*"], "operations": ["CREATE", "UPDATE"],
        "resources": ["rollouts"]}]


def test_the_controllers_flags_are_ones_it_knows() -> None:
    """Every flag the chart passes is in `sluice controller --help` (a renamed flag would crash-loop the pods)."""
    helptext = subprocess.run([sys.executable, "-m", "rollout", "controller", "--help"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    known = set(re.findall(r"--[a-z][a-z-]+", helptext))
    for variant in VARIANTS:
        [deployment] = helm.find(rendered(variant), "Deployment")
        flags = {a.split("=")[0] for a in deployment["spec"]["template"]["spec"]["containers"][0]["args"][1:]}
        assert flags <= known, f"{variant}: unknown flags {flags - known}"


def _rules(docs: list[Json]) -> list[Json]:
    return [rule for d in docs if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_rbac_names_no_wildcards(variant: str) -> None:
    for rule in _rules(rendered(variant)):
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert "*" not in rule.get(field, []), rule


def test_the_controller_reads_secrets_only_when_told_and_only_where_it_watches() -> None:
    def secret_rules(variant: str) -> list[tuple[str, str | None, tuple[str, ...], tuple[str, ...]]]:
        return [(d["kind"], d["metadata"].get("namespace"), tuple(r["verbs"]), tuple(r.get("resourceNames", ())))
                for d in helm.controller_rbac(rendered(variant)) if d["kind"] in ("Role", "ClusterRole")
                for r in d["rules"] if "secrets" in r["resources"]]

    assert secret_rules("default") == []
    assert secret_rules("minimal") == []
    assert secret_rules("namespaced") == [("Role", TEAMS[0], ("get",), ()), ("Role", TEAMS[1], ("get",), ())]
    full = release_namespace("full-monitoring")
    assert secret_rules("full-monitoring") == [
        ("ClusterRole", None, ("get",), ()),  # secretRefs, cluster-wide: every namespace is watched
        ("Role", full, ("get",), ("registry-hook",)),  # the webhook's key, by name
    ]


def test_the_roles_for_people_carry_the_operator_apis_verbs() -> None:
    docs = rendered("default")
    verbs = {d["metadata"]["name"]: {v for r in d["rules"] for v in r["verbs"]} for d in helm.find(docs, "ClusterRole")}
    assert verbs["sluice-viewer"] == {"get", "list", "watch"}
    assert verbs["sluice-operator"] == {"get", "list", "watch", "pause", "resume", "promote", "abort", "retry",
                                        "restart", "undo"}
    assert verbs["sluice-deployer"] == {"update-image"}
    assert verbs["sluice-policy-override"] == {"override-policy"}
    labels = {d["metadata"]["name"]: d["metadata"]["labels"] for d in helm.find(docs, "ClusterRole")}
    assert labels["sluice-viewer"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert labels["sluice-operator"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    # Loosening guardrails is never a side effect of being allowed to edit a namespace.
    assert not [k for k in labels["sluice-policy-override"] if k.startswith("rbac.authorization.k8s.io/aggregate")]


def test_the_controller_manages_disruption_budgets_where_it_manages_replica_sets() -> None:
    for variant in ("default", "namespaced"):
        docs = helm.controller_rbac(rendered(variant))
        scopes = {
            resource: {(d["kind"], d["metadata"].get("namespace"), tuple(r["verbs"])) for d in docs
                       if d["kind"] in ("Role", "ClusterRole") for r in d["rules"] if resource in r["resources"]}
            for resource in ("replicasets", "poddisruptionbudgets")}
        assert {(kind, ns) for kind, ns, _ in scopes["poddisruptionbudgets"]} == {
            (kind, ns) for kind, ns, _ in scopes["replicasets"]}, variant
        assert {verbs for *_, verbs in scopes["poddisruptionbudgets"]} == {
            ("get", "list", "watch", "create", "patch", "delete")}  # what rollout/applying.py uses, no more
    reviews = [r for d in helm.controller_rbac(rendered("default")) if d["kind"] == "ClusterRole"
               for r in d["rules"] if "subjectaccessreviews" in r["resources"]]
    assert reviews == [{"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"],
                        "verbs": ["create"]}]


def test_the_crd_hook_has_its_own_identity_limited_to_sluices_crds() -> None:
    docs = rendered("default")
    [job] = helm.find(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["crds", "apply"]
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "sluice-crds"
    [role] = helm.find(docs, "ClusterRole", "sluice-crds")
    crds = {yaml.safe_load(p.read_text())["metadata"]["name"] for p in (helm.CHART_DIR / "crds").glob("*.yaml")}
    assert role["rules"] == [
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["create"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
         "resourceNames": sorted(crds), "verbs": ["get", "patch"]},
    ]
    controller_rules = _rules(helm.controller_rbac(docs))
    assert not [r for r in controller_rules if "apiextensions.k8s.io" in r["apiGroups"]]


async def test_the_crd_hook_upgrades_sluices_crds_with_its_own_rights_and_no_others(
        chart_cluster: ControlPlane, tmp_path: Path) -> None:
    """`sluice crds apply` (what the hook Job runs) as the hook's ServiceAccount under the hook's rendered RBAC:
    it takes over and applies sluice's CRDs (here already installed, as after Helm's first install of crds/), and
    that identity may not change or delete any other CRD."""
    namespace = release_namespace("default")
    docs = helm.render(release="sluice-hook", namespace=namespace)
    hook = [d for d in docs if helm.is_hook(d) and d["kind"] != "Job"]
    assert {d["kind"] for d in hook} == {"ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    helm.apply(chart_cluster.api, hook)
    try:
        kubeconfig = helm.service_account_kubeconfig(chart_cluster, namespace=namespace, name="sluice-hook-crds",
                                                     path=tmp_path / "hook.kubeconfig")
        [job] = helm.find(docs, "Job")
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollout", *args, "--kubeconfig", str(kubeconfig), cwd=REPO,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        output = (await asyncio.wait_for(proc.communicate(), timeout=120))[0].decode()
        assert proc.returncode == 0, output
        assert f"{len(list((helm.CHART_DIR / 'crds').glob('*.yaml')))} CRDs Established" in output, output
        client = await KubeClient.connect(kubeconfig=str(kubeconfig))
        try:
            other = "virtualservices.networking.istio.io"
            with pytest.raises(ApiError) as patched:
                await client.patch(CRDS, name=other, patch={"metadata": {"labels": {"owned-by": "sluice"}}})
            assert patched.value.status == 403
            with pytest.raises(ApiError) as deleted:
                await client.delete(CRDS, name="rollouts.sluice.dev")
            assert deleted.value.status == 403
        finally:
            await client.close()
    finally:
        helm.delete(chart_cluster.api, [d for d in hook if d["kind"] != "ServiceAccount"])


def test_the_notes_say_how_to_reach_the_api_and_which_roles_to_bind(chart_cluster: ControlPlane) -> None:
    """`helm install --dry-run=server` against the real cluster: the NOTES, and `lookup` of the API's certificate."""
    namespace = release_namespace("default")
    result = helm.run_helm("install", "sluice", str(helm.CHART_DIR), "--namespace", namespace, "--dry-run=server",
                           "--kubeconfig", str(chart_cluster.kubeconfig))
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    for expected in (f"https://sluice.{namespace}.svc:8080", "port-forward svc/sluice 8080:8080",
                     "get secret sluice-api-tls", "--clusterrole=sluice-operator", "--clusterrole=sluice-deployer",
                     "--clusterrole=sluice-viewer", "istio on, SMI on, Gateway API on", "in every namespace",
                     "sluice-policy-override  override-policy"):
        assert expected in notes, f"{expected!r} not in the NOTES:\n{notes}"


# -- the policy-override admission, for real ------------------------------------------------------------------------

ROLLOUTS_PATH = "/apis/sluice.dev/v1alpha1/namespaces/{ns}/rollouts"
_admission_ids = itertools.count()


def _poll(probe: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """`probe()` until truthy, with a deadline; the last value in the failure."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}")


class _User:
    """A client-certificate user of the control plane (no groups): RBAC in the test's namespace decides."""

    def __init__(self, control_plane: ControlPlane, name: str, *, ns: str, workdir: Path) -> None:
        config = yaml.safe_load(control_plane.client_kubeconfig(name, []).read_text())
        creds = config["users"][0]["user"]
        cert, key = workdir / f"{name}.crt", workdir / f"{name}.key"
        cert.write_bytes(base64.b64decode(creds["client-certificate-data"]))
        key.write_bytes(base64.b64decode(creds["client-key-data"]))
        self.name = name
        self._ns = ns
        self._api = ApiClient(server=control_plane.server, ca_file=control_plane.ca_file, cert_file=cert,
                              key_file=key)

    def annotate(self, rollout: str, annotations: dict[str, str | None], *, dry_run: bool = False) -> tuple[int, str]:
        """Merge-patch the Rollout's annotations (None removes one); (HTTP status, the refusal's message)."""
        query = "?dryRun=All" if dry_run else ""
        status, payload = self._api.raw(
            "PATCH", f"{ROLLOUTS_PATH.format(ns=self._ns)}/{rollout}{query}",
            body=json.dumps({"metadata": {"annotations": annotations}}).encode(),
            content_type="application/merge-patch+json")
        return status, _message(status, payload)

    def create(self, body: Json) -> tuple[int, str]:
        status, payload = self._api.raw("POST", ROLLOUTS_PATH.format(ns=self._ns), body=json.dumps(body).encode())
        return status, _message(status, payload)


def _message(status: int, payload: bytes) -> str:
    return "" if 200 <= status < 300 else str(json.loads(payload).get("message", payload[:300]))


def _grant(api: ApiClient, ns: str, user: str, *, role_kind: str, role: str) -> None:
    api.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": f"{user}-{role}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]})


@pytest.fixture
def override_admission(control_plane: ControlPlane) -> Iterator[tuple[str, list[Json]]]:
    """A namespace of its own, and the chart's policy-override admission policy, binding and ClusterRole rendered
    under names unique to this test (they are cluster-scoped), bound to that namespace only (watchNamespaces)."""
    release = f"vap{os.getpid() % 1000}-{next(_admission_ids)}"
    ns = f"chart-{release}"
    control_plane.api.request("POST", "/api/v1/namespaces", body={
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    installed = helm.policy_override_admission(release=release, namespace=ns)
    try:
        helm.apply(control_plane.api, installed)
        yield ns, installed
    finally:
        helm.delete(control_plane.api, installed)
        control_plane.api.raw("DELETE", f"/api/v1/namespaces/{ns}")


@pytest.mark.timeout(120)
def test_only_a_user_with_override_policy_naming_themself_may_override_a_rollouts_guardrails(
        control_plane: ControlPlane, override_admission: tuple[str, list[Json]], tmp_path: Path) -> None:
    ns, installed = override_admission
    api = control_plane.api
    [override_role] = helm.find(installed, "ClusterRole")
    api.request("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles", body={
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "edit-rollouts"},
        "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"],
                   "verbs": ["get", "create", "update", "patch"]}]})
    dev, lead = (_User(control_plane, name, ns=ns, workdir=tmp_path) for name in (f"{ns}-dev", f"{ns}-lead"))
    for user in (dev, lead):
        _grant(api, ns, user.name, role_kind="Role", role="edit-rollouts")
    _grant(api, ns, lead.name, role_kind="ClusterRole", role=override_role["metadata"]["name"])
    api.request("POST", ROLLOUTS_PATH.format(ns=ns), body=rollout_body("web"))

    # The API server loads a new policy within a second or two: until then the dry-run is admitted.
    def refused_while_loading() -> str | None:
        status, message = dev.annotate("web", {OVERRIDE_ANNOTATION: "spread=off", OVERRIDE_BY_ANNOTATION: dev.name},
                                       dry_run=True)
        return message if status == 403 else None

    message = _poll(refused_while_loading, timeout=60, what="the policy-override admission policy to take effect")
    assert f"user {dev.name} may not set {OVERRIDE_ANNOTATION}: missing verb override-policy on rollouts" in message
    assert f"the ClusterRole {override_role['metadata']['name']}" in message
    [policy] = helm.find(installed, "ValidatingAdmissionPolicy")

    def type_checked() -> Json | None:
        found = api.request("GET", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/"
                            + policy["metadata"]["name"])
        done = found.get("status", {}).get("observedGeneration") == found["metadata"]["generation"]
        return found["status"] if done else None

    checked = _poll(type_checked, timeout=30, what="the API server to type-check the policy's expressions")
    assert not (checked.get("typeChecking") or {}).get("expressionWarnings"), checked

    # Patch rights alone do not loosen guardrails, nor does the verb with someone else's name (or none).
    status, message = dev.annotate("web", {OVERRIDE_ANNOTATION: "spread=off", OVERRIDE_BY_ANNOTATION: lead.name})
    assert (status, "missing verb override-policy" in message) == (403, True), message
    status, message = lead.annotate("web", {OVERRIDE_ANNOTATION: "spread=off", OVERRIDE_BY_ANNOTATION: dev.name})
    assert status == 403
    assert f"the annotation {OVERRIDE_BY_ANNOTATION} must be your username {lead.name} (it says {dev.name})" in message
    status, message = lead.annotate("web", {OVERRIDE_ANNOTATION: "spread=off"})
    assert (status, f"must be your username {lead.name} (it is missing)" in message) == (403, True), message

    # The verb and one's own name: admitted, and what the controller will read.
    assert lead.annotate("web", {OVERRIDE_ANNOTATION: "spread=off", OVERRIDE_BY_ANNOTATION: lead.name}) == (200, "")
    stored = api.request("GET", f"{ROLLOUTS_PATH.format(ns=ns)}/web")["metadata"]["annotations"]
    assert (stored[OVERRIDE_ANNOTATION], stored[OVERRIDE_BY_ANNOTATION]) == ("spread=off", lead.name)

    # Others keep working on the Rollout, but may not change the override or claim it.
    assert dev.annotate("web", {"team": "shop"}) == (200, "")
    assert dev.annotate("web", {OVERRIDE_ANNOTATION: "spread=off,pinned-image=off"})[0] == 403
    assert dev.annotate("web", {OVERRIDE_BY_ANNOTATION: dev.name})[0] == 403
    assert dev.annotate("web", {OVERRIDE_BY_ANNOTATION: None})[0] == 403

    # Removing the override tightens: anyone who may patch the Rollout may.
    assert dev.annotate("web", {OVERRIDE_ANNOTATION: None, OVERRIDE_BY_ANNOTATION: None}) == (200, "")
    stored = api.request("GET", f"{ROLLOUTS_PATH.format(ns=ns)}/web")["metadata"].get("annotations") or {}
    assert not {OVERRIDE_ANNOTATION, OVERRIDE_BY_ANNOTATION} & set(stored)

    # A CREATE carrying an override is judged the same way (there is no object before it).
    def overridden(name: str, by: str) -> Json:
        body = rollout_body(name)
        body["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "pinned-image=warn", OVERRIDE_BY_ANNOTATION: by}
        return body

    status, message = dev.create(overridden("api", dev.name))
    assert (status, "missing verb override-policy" in message) == (403, True), message
    assert lead.create(overridden("api", lead.name)) == (201, "")


# -- alerts ----------------------------------------------------------------------------------------------------------


def _rule_groups() -> list[Json]:
    [rule] = helm.find(rendered("full-monitoring"), "PrometheusRule")
    groups: list[Json] = rule["spec"]["groups"]
    return groups


def test_every_alert_has_a_runbook_page() -> None:
    alerts = {r["alert"]: r for g in _rule_groups() for r in g["rules"]}
    assert set(alerts) == set(ALERTS)
    base = "https://github.com/sluice-dev/sluice/blob/main/docs/runbooks"
    for name, rule in alerts.items():
        page = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", name).lower() + ".md"
        assert rule["annotations"]["runbook_url"] == f"{base}/{page}"
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        if RUNBOOKS.is_dir():  # the pages are written next to the alerts; once there, every alert needs its own
            assert (RUNBOOKS / page).is_file(), f"{name}: no runbook page docs/runbooks/{page}"


def _promtool() -> str:
    beside = Path(prometheus_binary()).with_name("promtool")
    found = str(beside) if beside.is_file() else shutil.which("promtool")
    if found is None:
        raise AssertionError("promtool is needed (it comes with the Debian `prometheus` package)")
    return found


JOB = 'job="sluice", namespace="chart-full-monitoring"'
BASELINE: list[Json] = [{"series": f"up{{{JOB}, instance=\"a\"}}", "values": "1x60"},
                        {"series": f"sluice_leader{{{JOB}, instance=\"a\"}}", "values": "1x60"}]
COND = 'sluice_rollout_condition_since_timestamp_seconds{job="sluice", namespace="shop", rollout="web", '
# One scenario per alert: the series sluice exports while the situation lasts, and the alert expected after 40m
# (the value of a condition series is when it became True: 60, a minute into the test, here).
ALERT_TESTS: list[Json] = [
    {"series": COND + 'type="Degraded", reason="RolloutAborted"}', "values": "60x60",
     "alert": "SluiceRolloutAborted", "labels": {"severity": "warning", "namespace": "shop", "rollout": "web"}},
    {"series": COND + 'type="Degraded", reason="InvalidSpec"}', "values": "60x60", "alert": "SluiceRolloutDegraded",
     "labels": {"severity": "warning", "namespace": "shop", "rollout": "web", "reason": "InvalidSpec"}},
    {"series": COND + 'type="Paused", reason="CanaryPauseStep"}', "values": "60x60",
     "alert": "SluiceRolloutPausedTooLong",
     "labels": {"severity": "info", "namespace": "shop", "rollout": "web", "reason": "CanaryPauseStep"}},
    {"series": COND + 'type="Paused", reason="InconclusiveAnalysis"}', "values": "60x60",
     "alert": "SluiceAnalysisInconclusive", "labels": {"severity": "warning", "namespace": "shop", "rollout": "web"}},
    {"series": COND + 'type="Degraded", reason="ProgressDeadlineExceeded"}', "values": "60x60",
     "alert": "SluiceProgressDeadlineExceeded",
     "labels": {"severity": "warning", "namespace": "shop", "rollout": "web"}},
    {"series": COND + 'type="ReconcileError", reason="Forbidden"}', "values": "60x60",
     "alert": "SluiceReconcileErrors", "labels": {"severity": "warning", "namespace": "shop", "rollout": "web"}},
    {"series": f"up{{{JOB}, instance=\"a\"}}", "values": "0x60", "alert": "SluiceControllerDown",
     "labels": {"severity": "critical"}},
    {"series": f"sluice_leader{{{JOB}, instance=\"a\"}}", "values": "0x60", "alert": "SluiceNoLeader",
     "labels": {"severity": "critical"}},
]


def _promtool_test(tmp_path: Path, scenarios: list[tuple[list[Json], str | None, Json]]) -> None:
    """`promtool test rules` on the rendered alerts: per scenario (input series, the one alert expected at 40m with
    its labels, or None), every other alert must stay quiet."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": _rule_groups()}))
    checked = subprocess.run([_promtool(), "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr  # PromQL and the annotations' templates
    # promtool compares annotations too; these scenarios are about when each alert fires, and with which labels.
    quiet = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
             for g in _rule_groups()]
    rules.write_text(yaml.safe_dump({"groups": quiet}))
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [
            {"eval_time": "40m", "alertname": name,
             "exp_alerts": [{"exp_labels": labels}] if name == alert else []}
            for name in ALERTS
        ],
    } for series, alert, labels in scenarios]}
    spec = tmp_path / "tests.yaml"
    spec.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([_promtool(), "test", "rules", str(spec)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def _with_baseline(series: list[Json]) -> list[Json]:
    """A replica up and leading, unless the scenario says otherwise about `up` or `sluice_leader`."""
    given = {s["series"].split("{")[0] for s in series}
    return [*series, *(s for s in BASELINE if s["series"].split("{")[0] not in given)]


def test_each_alert_fires_on_the_series_sluice_exports(tmp_path: Path) -> None:
    _promtool_test(tmp_path, [
        (_with_baseline([{"series": t["series"], "values": t["values"]}]), t["alert"], t["labels"])
        for t in ALERT_TESTS])


def test_no_alert_fires_while_every_rollout_is_healthy_and_a_replica_leads(tmp_path: Path) -> None:
    _promtool_test(tmp_path, [(_with_baseline([
        {"series": 'sluice_rollouts{job="sluice", phase="Healthy"}', "values": "3x60"},
        {"series": COND + 'type="Paused", reason="PausedByUser"}', "values": "2100x60"},  # paused for 5 minutes
    ]), None, {})])
