"""The Helm chart (charts/sluice) for the tests: render it with the pinned helm, and apply what it renders to a
`ControlPlane`.

`hack/build-helm.sh` builds helm from the Go module proxy into the same cache as the control-plane binaries (or
points at `SLUICE_HELM_BIN`); `render` runs `helm template` with values given as a mapping and returns the documents,
`render_failure` returns helm's message when rendering must fail. `apply` server-side-applies documents, dry-run or for
real, finding each kind's resource through discovery (there is no kubectl here). The chart's RBAC is the single source
of what the controller may do: `controller_rbac` picks the controller's ServiceAccount, Roles and bindings out of a
rendering, and `service_account_kubeconfig` mints a token for that ServiceAccount (TokenRequest), so a test runs the
controller with exactly the chart's rights. The prometheus-operator CRDs (for the ServiceMonitor and PrometheusRule)
come from their pinned Go module; tests install them themselves, the shared control plane does not.
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devcluster.controlplane import REPO_ROOT, ApiClient, ControlPlane, go_module_dir

CHART_DIR = REPO_ROOT / "charts" / "sluice"
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-helm.sh"
# Keep in step with PROMETHEUS_OPERATOR_VERSION in hack/build-helm.sh (the only version the Go proxy serves).
PROMETHEUS_OPERATOR_MODULE = "github.com/prometheus-operator/prometheus-operator@v0.85.0"
PROMETHEUS_OPERATOR_CRD_DIR = "example/prometheus-operator-crd"
MONITORING_KINDS = frozenset({"ServiceMonitor", "PrometheusRule"})
FIELD_MANAGER = "sluice-chart-tests"
HOOK_ANNOTATION = "helm.sh/hook"
RBAC_KINDS = frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})

Json = dict[str, Any]
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class HelmError(RuntimeError):
    """helm failed (or succeeded where it should not); the message carries its output."""


@functools.cache
def helm_binary() -> Path:
    """The pinned helm: built once into the cache by hack/build-helm.sh (a no-op when cached)."""
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=None, text=True, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise HelmError(f"{BUILD_SCRIPT} failed with code {result.returncode} (its output is above)")
    return Path(lines[-1])


def run_helm(*args: str, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm with `args` (and `values` as a values file); never raises on helm's exit code."""
    with tempfile.TemporaryDirectory(prefix="sluice-helm-") as tmp:
        extra: list[str] = []
        if values:
            path = Path(tmp) / "values.json"
            path.write_text(json.dumps(values))  # JSON is YAML
            extra = ["--values", str(path)]
        # A private home: no user's repositories, plugins or kubeconfig take part.
        env = {"HOME": tmp, "PATH": "/usr/bin:/bin", "HELM_CACHE_HOME": f"{tmp}/cache",
               "HELM_CONFIG_HOME": f"{tmp}/config", "HELM_DATA_HOME": f"{tmp}/data"}
        return subprocess.run([str(helm_binary()), *args, *extra], capture_output=True, text=True, env=env,
                              check=False)


def _template_args(*, release: str, namespace: str, api_versions: Sequence[str], chart: Path) -> list[str]:
    return ["template", release, str(chart), "--namespace", namespace,
            *(f"--api-versions={v}" for v in api_versions)]


@functools.lru_cache(maxsize=64)
def _render_cached(release: str, namespace: str, values_json: str, api_versions: tuple[str, ...],
                   chart: Path) -> tuple[Json, ...]:
    result = run_helm(*_template_args(release=release, namespace=namespace, api_versions=api_versions, chart=chart),
                      values=json.loads(values_json))
    if result.returncode != 0:
        raise HelmError(f"helm template {release} failed: {result.stderr.strip()}")
    docs = yaml.load_all(result.stdout, Loader=_YAML_LOADER)
    return tuple(doc for doc in docs if isinstance(doc, dict) and doc)


def render(*, release: str = "sluice", namespace: str = "sluice-system", values: Mapping[str, Any] | None = None,
           api_versions: Sequence[str] = (), chart: Path = CHART_DIR) -> list[Json]:
    """`helm template`'s documents (hooks included, CRDs not). Cached per arguments: each call gets its own copy."""
    docs = _render_cached(release, namespace, json.dumps(values or {}, sort_keys=True), tuple(api_versions), chart)
    return copy.deepcopy(list(docs))


def render_failure(*, release: str = "sluice", namespace: str = "sluice-system",
                   values: Mapping[str, Any] | None = None, chart: Path = CHART_DIR) -> str:
    """helm's error output for values that must not render; HelmError if they render."""
    result = run_helm(*_template_args(release=release, namespace=namespace, api_versions=(), chart=chart),
                      values=values)
    if result.returncode == 0:
        raise HelmError(f"helm template rendered values it should refuse: {values}")
    return result.stderr


def lint(*, values: Mapping[str, Any] | None = None, chart: Path = CHART_DIR) -> str:
    """`helm lint --strict`'s output; HelmError with it when the chart fails."""
    result = run_helm("lint", str(chart), "--strict", values=values)
    if result.returncode != 0:
        raise HelmError(f"helm lint failed:\n{result.stdout}{result.stderr}")
    return result.stdout


def find(docs: Iterable[Json], kind: str, name: str | None = None) -> list[Json]:
    """The documents of `kind` (and `name`)."""
    return [d for d in docs if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def is_hook(doc: Json) -> bool:
    return HOOK_ANNOTATION in (doc.get("metadata", {}).get("annotations") or {})


def controller_rbac(docs: Iterable[Json]) -> list[Json]:
    """The controller's identity in a rendering: its ServiceAccount, the bindings naming it, and the roles they
    bind (neither the CRD hook's identity nor the ClusterRoles for people)."""
    docs = [d for d in docs if not is_hook(d)]
    deployment = find(docs, "Deployment")[0]
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    namespace = deployment["metadata"]["namespace"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding") and any(
        s.get("kind") == "ServiceAccount" and s.get("name") == account and s.get("namespace") == namespace
        for s in d.get("subjects") or [])]
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole") and any(
        b["roleRef"]["kind"] == d["kind"] and b["roleRef"]["name"] == d["metadata"]["name"]
        and b["metadata"].get("namespace") == d["metadata"].get("namespace") for b in bindings)]
    return [*find(docs, "ServiceAccount", account), *roles, *bindings]


# -- applying -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiResource:
    base: str  # /api/v1 or /apis/<group>/<version>
    plural: str
    namespaced: bool

    def path(self, *, name: str, namespace: str | None) -> str:
        scope = f"/namespaces/{urllib.parse.quote(namespace, safe='')}" if self.namespaced and namespace else ""
        return f"{self.base}{scope}/{self.plural}/{urllib.parse.quote(name, safe='')}"


class Discovery:
    """Kind to resource, from the API server's discovery documents (one request per group version, cached)."""

    def __init__(self, api: ApiClient) -> None:
        self._api = api
        self._by_group_version: dict[str, dict[str, ApiResource]] = {}

    def resource(self, api_version: str, kind: str) -> ApiResource:
        if api_version not in self._by_group_version:
            base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
            listing = self._api.request("GET", base)
            self._by_group_version[api_version] = {
                r["kind"]: ApiResource(base=base, plural=r["name"], namespaced=bool(r["namespaced"]))
                for r in listing.get("resources") or [] if "/" not in r["name"]
            }
        found = self._by_group_version[api_version].get(kind)
        if found is None:
            raise KeyError(f"the API server does not serve {kind} in {api_version}")
        return found


def controller_rules(values: Mapping[str, Any] | None = None, *, watched: str = "watched") -> tuple[Json, ...]:
    """The controller's rules in one watched namespace as the chart renders them with `values` (its Role there and
    its ClusterRole): for tests that run the controller as a client-certificate user rather than as the chart's
    ServiceAccount."""
    docs = controller_rbac(render(values={**(values or {}), "watchNamespaces": [watched]}))
    return tuple(rule for d in docs if (d["kind"], d["metadata"].get("namespace")) in (
        ("Role", watched), ("ClusterRole", None)) for rule in d["rules"])


def apply(api: ApiClient, docs: Iterable[Json], *, dry_run: bool = False, discovery: Discovery | None = None,
          field_manager: str = FIELD_MANAGER) -> list[Json]:
    """Server-side apply each document (with dryRun=All: validated and admitted, not stored); returns what the
    API server answered. Raises devcluster's ApiError naming the object on the first refusal."""
    discovery = discovery or Discovery(api)
    query = urllib.parse.urlencode({"fieldManager": field_manager, "force": "true",
                                    **({"dryRun": "All"} if dry_run else {})})
    answers = []
    for doc in docs:
        meta = doc["metadata"]
        resource = discovery.resource(doc["apiVersion"], doc["kind"])
        path = resource.path(name=meta["name"], namespace=meta.get("namespace"))
        answers.append(api.request("PATCH", f"{path}?{query}", body=doc,
                                   content_type="application/apply-patch+yaml"))
    return answers


def delete(api: ApiClient, docs: Iterable[Json], *, discovery: Discovery | None = None) -> None:
    """Delete what `apply` created (missing objects are fine)."""
    discovery = discovery or Discovery(api)
    for doc in docs:
        meta = doc["metadata"]
        path = discovery.resource(doc["apiVersion"], doc["kind"]).path(name=meta["name"],
                                                                        namespace=meta.get("namespace"))
        status, payload = api.raw("DELETE", path)
        if status not in (200, 202, 404):
            raise HelmError(f"DELETE {path}: HTTP {status}: {payload[:500]!r}")


def service_account_kubeconfig(control_plane: ControlPlane, *, namespace: str, name: str, path: Path,
                               expiration_seconds: int = 3600) -> Path:
    """A kubeconfig whose user is the ServiceAccount `namespace/name`, with a token minted for it (TokenRequest)."""
    answer = control_plane.api.request(
        "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
        body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
              "spec": {"expirationSeconds": expiration_seconds}})
    token = answer["status"]["token"]
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "sluice-dev", "cluster": {
            "server": control_plane.server, "certificate-authority": str(control_plane.ca_file)}}],
        "users": [{"name": f"{namespace}-{name}", "user": {"token": token}}],
        "contexts": [{"name": "sluice-dev", "context": {"cluster": "sluice-dev", "user": f"{namespace}-{name}"}}],
        "current-context": "sluice-dev",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


class _CrdLoader(_YAML_LOADER):  # type: ignore[misc,valid-type]
    """YAML 1.1 gives a lone `=` the tag `value`, which PyYAML cannot construct; prometheus-operator's CRDs have one
    (an enum of PromQL operators): it is the string "="."""


_CrdLoader.add_constructor("tag:yaml.org,2002:value", lambda loader, node: loader.construct_scalar(node))


def prometheus_operator_crds(*, kinds: frozenset[str] = MONITORING_KINDS, cwd: Path | None = None) -> list[Json]:
    """The prometheus-operator CRDs for `kinds`, from the pinned module (example/prometheus-operator-crd/)."""
    directory = go_module_dir(PROMETHEUS_OPERATOR_MODULE, cwd=cwd) / PROMETHEUS_OPERATOR_CRD_DIR
    docs = []
    for path in sorted(directory.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(), Loader=_CrdLoader):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition" and \
                    doc["spec"]["names"]["kind"] in kinds:
                doc.pop("status", None)
                docs.append(doc)
    return docs


def policy_override_admission(*, release: str, namespace: str) -> list[Json]:
    """The chart's policy-override admission policy, its binding (to `namespace` only) and the ClusterRole granting
    the verb, rendered under names unique to `release` (they are cluster-scoped): for tests that install them."""
    docs = render(release=release, namespace=namespace, values={
        "fullnameOverride": release, "watchNamespaces": [namespace], "userRoles": {"namePrefix": release}})
    objects = [*find(docs, "ValidatingAdmissionPolicy"), *find(docs, "ValidatingAdmissionPolicyBinding"),
               *find(docs, "ClusterRole", f"{release}-policy-override")]
    if len(objects) != 3:
        raise HelmError(f"the chart renders {[d['kind'] for d in objects]}, not the policy-override admission policy, "
                        "its binding and its ClusterRole")
    return objects
