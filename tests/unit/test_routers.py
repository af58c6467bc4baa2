"""Traffic routers without a cluster: finding the stable and canary backends, reading and writing weights, the
guarded patches (applied here by a small JSON Patch implementation), SMI version handling, and the routers end to end
against an in-memory API that answers as the API server does (404, 409 on a stale resourceVersion, 422 on a failed
`test`). The same routers run against the real control plane in tests/integration/test_routers.py."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from rollout.kube import (
    DESTINATIONRULES,
    HTTPROUTES,
    SERVICES,
    TRAFFICSPLITS,
    VIRTUALSERVICES,
    ApiError,
    Body,
    Conflict,
    KubeClient,
    NotFound,
    Resource,
)
from rollout.routers import (
    UNKNOWN_WEIGHT,
    RouterError,
    RouterTarget,
    SubsetRouter,
    gateway_api,
    istio,
    make_router,
    smi,
)
from rollout.routers import backends as b
from strategies.model import HASH_LABEL, ROLLOUT_LABEL

NS = "shop"
ROLLOUT: Body = {"apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout",
                 "metadata": {"name": "web", "namespace": NS, "uid": "uid-1"}}


# -- a JSON Patch (RFC 6902) subset: test and add, what the routers send --------------------------------------------


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def apply_json_patch(doc: Body, ops: list[dict[str, Any]]) -> Body:
    out = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [_unescape(p) for p in op["path"].split("/")[1:]]
        node: Any = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if op["op"] == "test":
            present = (0 <= key < len(node)) if isinstance(node, list) else key in node
            if not present or node[key] != op["value"]:
                raise ApiError(status=422, reason="Invalid", message=f"test failed at {op['path']}")
        elif op["op"] == "add":
            node[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"unexpected op {op}")
    return out


# -- backends: shared by Istio and Gateway API -------------------------------------------------------------------


def test_pointer_escapes_slash_and_tilde() -> None:
    assert b.pointer("spec", "subsets", 0, "labels", HASH_LABEL) == (
        "/spec/subsets/0/labels/sluice.dev~1pod-template-hash")
    assert b.pointer("a~b") == "/a~0b"


@pytest.mark.parametrize(("pairs", "expected"), [
    ([(90, 10)], 10),
    ([(90, 10), (90, 10)], 10),
    ([(100, 0)], 0),
    ([(0, 100)], 100),
    ([(90, 10), (80, 20)], UNKNOWN_WEIGHT),  # routes disagree
    ([(1, 1)], UNKNOWN_WEIGHT),  # Gateway API's default weights: not a percentage
    ([(120, -20)], UNKNOWN_WEIGHT),
    ([], UNKNOWN_WEIGHT),
])
def test_agreed_weight(pairs: list[tuple[int, int]], expected: int) -> None:
    assert b.agreed_weight(pairs) == expected


def _vs(*routes: Body) -> Body:
    return {"metadata": {"name": "web"}, "spec": {"hosts": ["web.example"], "http": list(routes)}}


def _dest(host: str, weight: int | None = None, subset: str | None = None) -> Body:
    dest: Body = {"destination": {"host": host, **({"subset": subset} if subset else {})}}
    if weight is not None:
        dest["weight"] = weight
    return dest


HOSTS = (istio.service_backend("web-stable", NS), istio.service_backend("web-canary", NS))


def _resolve_vs(body: Body, names: tuple[str, ...] = ()) -> tuple[b.SplitRef, ...]:
    return b.resolve(body, istio.LAYOUT, names=names, stable=HOSTS[0], canary=HOSTS[1], where="VirtualService x/web")


def test_resolve_finds_each_side_in_the_named_routes_only() -> None:
    body = _vs({"name": "other", "route": [_dest("unrelated")]},
               {"name": "primary", "route": [_dest("web-canary", 0), _dest("web-stable.shop.svc.cluster.local", 100)]})
    assert _resolve_vs(body, ("primary",)) == (b.SplitRef(index=1, name="primary", stable=1, canary=0),)


def test_resolve_reports_missing_routes_with_the_names_there_are() -> None:
    body = _vs({"name": "primary", "route": [_dest("web-stable"), _dest("web-canary")]})
    with pytest.raises(RouterError, match=r"x/web has no HTTP route named 'nope' \(routes: \['primary'\]\)"):
        _resolve_vs(body, ("nope",))
    with pytest.raises(RouterError, match="has no HTTP routes"):
        _resolve_vs(_vs())


def test_resolve_reports_the_route_and_side_without_a_backend() -> None:
    body = _vs({"name": "primary", "route": [_dest("web-stable")]}, {"route": [_dest("web-stable")]})
    with pytest.raises(RouterError, match="route 'primary' of VirtualService x/web has no destination for Service "
                                          "'web-canary'"):
        _resolve_vs(body)


def test_resolve_refuses_one_backend_for_both_sides() -> None:
    same = istio.service_backend("web", NS)
    body = _vs({"name": "primary", "route": [_dest("web")]})
    with pytest.raises(RouterError, match="the stable and canary sides are the same destination"):
        b.resolve(body, istio.LAYOUT, names=(), stable=same, canary=same, where="VirtualService x/web")


def test_weight_patch_sets_both_weights_and_nothing_else() -> None:
    body = _vs({"name": "other", "route": [_dest("unrelated")]},
               {"name": "primary", "route": [_dest("web-stable", 100), _dest("web-canary")]},
               {"name": "third", "route": [_dest("web-canary", 50), _dest("web-stable", 50)]})
    refs = _resolve_vs(body, ("primary", "third"))
    patched = apply_json_patch(body, b.weight_patch(body, istio.LAYOUT, refs, 30))
    assert b.current_weight(patched, istio.LAYOUT, refs) == 30
    expected = copy.deepcopy(body)
    expected["spec"]["http"][1]["route"] = [_dest("web-stable", 70), _dest("web-canary", 30)]
    expected["spec"]["http"][2]["route"] = [_dest("web-canary", 30), _dest("web-stable", 70)]
    assert patched == expected


def test_weight_patch_fails_when_a_backend_moved_since_the_read() -> None:
    body = _vs({"name": "primary", "route": [_dest("web-stable", 100), _dest("web-canary", 0)]})
    patch = b.weight_patch(body, istio.LAYOUT, _resolve_vs(body), 30)
    moved = copy.deepcopy(body)
    moved["spec"]["http"][0]["route"].reverse()
    with pytest.raises(ApiError) as info:
        apply_json_patch(moved, patch)
    assert info.value.status == 422


def test_current_weight_reads_disagreeing_routes_as_unknown() -> None:
    body = _vs({"route": [_dest("web-stable", 90), _dest("web-canary", 10)]},
               {"route": [_dest("web-stable", 50), _dest("web-canary", 50)]})
    assert b.current_weight(body, istio.LAYOUT, _resolve_vs(body)) == UNKNOWN_WEIGHT
    assert b.current_weight(body, istio.LAYOUT, _resolve_vs(body)[:1]) == 10


class _Attempts:
    def __init__(self, failures: list[ApiError]) -> None:
        self.failures = failures
        self.reads = 0
        self.writes = 0
        self.kept: list[Body] = []

    async def read(self) -> None:
        self.reads += 1

    async def write(self) -> Body:
        self.writes += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"written": self.writes}

    async def run(self, *, fresh: bool) -> None:
        await b.write_optimistically(read=self.read, write=self.write, keep=self.kept.append, fresh=fresh)


async def test_write_retries_conflicts_after_reading_again() -> None:
    attempts = _Attempts([ApiError(status=422, reason="Invalid", message="test"), Conflict(status=409, reason="C",
                                                                                          message="rv")])
    await attempts.run(fresh=True)
    assert (attempts.reads, attempts.writes, attempts.kept) == (2, 3, [{"written": 3}])


async def test_write_gives_up_after_three_conflicts_and_never_retries_other_errors() -> None:
    attempts = _Attempts([Conflict(status=409, reason="C", message="rv") for _ in range(3)])
    with pytest.raises(Conflict):
        await attempts.run(fresh=True)
    assert attempts.writes == 3 and not attempts.kept
    forbidden = _Attempts([ApiError(status=403, reason="Forbidden", message="no")])
    with pytest.raises(ApiError):
        await forbidden.run(fresh=False)
    assert (forbidden.reads, forbidden.writes) == (1, 1)


# -- Gateway API -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "route_ns", "matches"), [
    ({"name": "web-stable", "port": 80}, NS, True),
    ({"group": "", "kind": "Service", "name": "web-stable", "port": 80}, NS, True),
    ({"name": "web-stable", "namespace": NS, "port": 80}, "gateways", True),
    ({"name": "web-stable", "port": 80}, "gateways", False),  # no namespace: the route's, not the Rollout's
    ({"name": "web-stable", "namespace": "other"}, NS, False),
    ({"name": "web-canary"}, NS, False),
    ({"group": "multicluster.x-k8s.io", "kind": "ServiceImport", "name": "web-stable"}, NS, False),
    ({"kind": "Backend", "name": "web-stable"}, NS, False),
])
def test_backend_ref_matches_only_our_service(ref: Body, route_ns: str, matches: bool) -> None:
    assert gateway_api.is_service_ref(ref, "web-stable", namespace=NS, route_namespace=route_ns) is matches


def _route(*rules: Body, parent: Body | None = None) -> Body:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": NS, "resourceVersion": "1"},
            "spec": {"parentRefs": [parent or {"name": "gw"}], "rules": list(rules)}}


def _ref(name: str, weight: int | None = None) -> Body:
    return {"name": name, "port": 80, **({"weight": weight} if weight is not None else {})}


# -- Istio -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["web", "web.shop", "web.shop.svc", "web.shop.svc.cluster.local"])
def test_subset_destination_matches_any_form_of_the_rule_host(host: str) -> None:
    backend = istio.subset_backend("canary", "web.shop.svc.cluster.local", NS)
    assert backend.matches(_dest(host, subset="canary"))
    assert not backend.matches(_dest(host, subset="stable"))
    assert not backend.matches(_dest(host))
    assert not istio.subset_backend("canary", "web.other", NS).matches(_dest(host, subset="canary"))


def _rule(*subsets: Body) -> Body:
    return {"metadata": {"name": "web", "resourceVersion": "1"}, "spec": {"host": "web", "subsets": list(subsets)}}


def test_subset_hash_patch_adds_the_label_beside_others() -> None:
    rule = _rule({"name": "stable", "labels": {"app": "web"}}, {"name": "canary", "labels": {"app": "web"}})
    patch = istio.subset_hash_patch(rule, 1, "abc")
    assert patch[0] == {"op": "test", "path": "/spec/subsets/1/name", "value": "canary"}
    assert patch[-1]["path"] == "/spec/subsets/1/labels/sluice.dev~1pod-template-hash"
    patched = apply_json_patch(rule, patch)
    assert patched["spec"]["subsets"][1]["labels"] == {"app": "web", HASH_LABEL: "abc"}
    assert patched["spec"]["subsets"][0] == rule["spec"]["subsets"][0]


def test_subset_hash_patch_creates_labels_and_fails_if_someone_added_them() -> None:
    rule = _rule({"name": "stable"}, {"name": "canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}})
    patch = istio.subset_hash_patch(rule, 1, "abc")
    assert apply_json_patch(rule, patch)["spec"]["subsets"][1] == {
        "name": "canary", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}, "labels": {HASH_LABEL: "abc"}}
    meanwhile = copy.deepcopy(rule)
    meanwhile["spec"]["subsets"][1]["labels"] = {"version": "v2"}
    with pytest.raises(ApiError):
        apply_json_patch(meanwhile, patch)


# -- SMI ---------------------------------------------------------------------------------------------------------


def _group(preferred: str, *served: str) -> Body:
    return {"kind": "APIGroup", "name": "split.smi-spec.io",
            "versions": [{"groupVersion": f"split.smi-spec.io/{v}", "version": v} for v in served or (preferred,)],
            "preferredVersion": {"groupVersion": f"split.smi-spec.io/{preferred}", "version": preferred}}


@pytest.mark.parametrize(("group", "version"), [
    (_group("v1alpha4"), "v1alpha4"),
    (_group("v1alpha2", "v1alpha1", "v1alpha2"), "v1alpha2"),  # Linkerd's SMI extension
    (_group("v1beta1", "v1beta1", "v1alpha3", "v1alpha1"), "v1alpha3"),  # preferred one sluice does not speak
    (_group("v1beta1"), None),
])
def test_version_is_the_preferred_one_sluice_speaks(group: Body, version: str | None) -> None:
    assert smi.choose_version(group) == version


@pytest.mark.parametrize(("value", "parsed"), [
    (90, 90), ("90", 90), ("0", 0), (90.0, 90), ("1k", 1000), ("100000m", 100),
    ("500m", None), (0.5, None), ("ninety", None), (True, None), (None, None), ("1.2.3", None),
])
def test_weights_parse_as_integers_or_quantities(value: Any, parsed: int | None) -> None:
    assert smi.parse_weight(value) == parsed


def test_v1alpha1_writes_quantity_strings_and_later_versions_integers() -> None:
    old = smi.split_spec(root="web", stable="web-stable", canary="web-canary", weight=20, version="v1alpha1")
    new = smi.split_spec(root="web", stable="web-stable", canary="web-canary", weight=20, version="v1alpha4")
    assert old["backends"] == [{"service": "web-stable", "weight": "80"}, {"service": "web-canary", "weight": "20"}]
    assert new == {"service": "web", "backends": [{"service": "web-stable", "weight": 80},
                                                  {"service": "web-canary", "weight": 20}]}
    for spec in (old, new):
        assert smi.split_weight(spec, root="web", stable="web-stable", canary="web-canary") == 20


@pytest.mark.parametrize("change", [
    lambda s: s["backends"].append({"service": "extra", "weight": 0}),
    lambda s: s["backends"][1].update(service="someone-else"),
    lambda s: s["backends"][1].update(weight=30),
    lambda s: s["backends"].pop(),
    lambda s: s.update(service="other-root"),
    lambda s: s["backends"][0].update(weight="a lot"),
])
def test_a_split_changed_by_someone_reads_as_unknown(change: Callable[[Body], None]) -> None:
    spec = smi.split_spec(root="web", stable="web-stable", canary="web-canary", weight=20, version="v1alpha4")
    change(spec)
    assert smi.split_weight(spec, root="web", stable="web-stable", canary="web-canary") == UNKNOWN_WEIGHT


# -- the routers against an in-memory API ------------------------------------------------------------------------


class FakeApi:
    """Objects by (plural, namespace, name), with the API server's answers: 404, 409 on a stale resourceVersion
    or an existing name, 422 when a JSON Patch `test` fails."""

    def __init__(self, groups: dict[str, Body] | None = None) -> None:
        self.objects: dict[tuple[str, str, str], Body] = {}
        self.groups = groups or {}
        self.calls: list[str] = []
        self.before_write: Callable[[], Awaitable[None]] | None = None
        self._version = 0

    def put(self, resource: Resource, body: Body) -> Body:
        self._version += 1
        body = copy.deepcopy(body)
        body.setdefault("metadata", {})["resourceVersion"] = str(self._version)
        self.objects[(resource.plural, body["metadata"].get("namespace", NS), body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    def stored(self, resource: Resource, name: str) -> Body:
        return self.objects[(resource.plural, NS, name)]

    def _find(self, resource: Resource, name: str, namespace: str | None) -> Body:
        found = self.objects.get((resource.plural, namespace or "", name))
        if found is None:
            raise NotFound(status=404, reason="NotFound", message=f"{resource.plural} {name} not found")
        return found

    async def get(self, resource: Resource, *, name: str, namespace: str | None = None) -> Body:
        self.calls.append(f"get {resource.plural}/{resource.version}")
        return copy.deepcopy(self._find(resource, name, namespace))

    async def get_path(self, path: str) -> Body:
        self.calls.append(f"discover {path}")
        group = self.groups.get(path)
        if group is None:
            raise NotFound(status=404, reason="NotFound", message=path)
        return group

    async def create(self, resource: Resource, body: Body, *, namespace: str | None = None) -> Body:
        self.calls.append(f"create {resource.plural}/{resource.version}")
        if (resource.plural, namespace or "", body["metadata"]["name"]) in self.objects:
            raise Conflict(status=409, reason="AlreadyExists", message="exists")
        return self.put(resource, body)

    async def patch(self, resource: Resource, *, name: str, namespace: str | None = None, patch: Any,
                    patch_type: str = "merge") -> Body:
        self.calls.append(f"patch {resource.plural}")
        if self.before_write is not None:
            hook, self.before_write = self.before_write, None
            await hook()
        current = self._find(resource, name, namespace)
        if patch_type == "json":
            return self.put(resource, apply_json_patch(current, patch))
        wanted = patch.get("metadata", {}).get("resourceVersion")
        if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
            raise Conflict(status=409, reason="Conflict", message="the object has been modified")
        merged = copy.deepcopy(current)
        merged["spec"] = {**merged.get("spec", {}), **patch.get("spec", {})}
        return self.put(resource, merged)


def _target(config: Body, *, services: bool = True) -> RouterTarget:
    return RouterTarget(rollout=ROLLOUT, namespace=NS, config=config,
                        stable_service="web-stable" if services else None,
                        canary_service="web-canary" if services else None)


def _client(api: FakeApi) -> KubeClient:
    return cast(KubeClient, api)


def test_only_the_subset_router_is_a_subset_router() -> None:
    api = FakeApi()
    host = make_router("istio", _client(api), _target({"virtualService": {"name": "web"}}))
    subsets = make_router("istio", _client(api), _target(
        {"virtualService": {"name": "web"},
         "destinationRule": {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}},
        services=False))
    assert not isinstance(host, SubsetRouter)
    assert isinstance(subsets, SubsetRouter)
    assert isinstance(make_router("smi", _client(api), _target({})), smi.SmiRouter)
    assert isinstance(make_router("gatewayAPI", _client(api), _target({})), gateway_api.GatewayApiRouter)


async def test_gateway_router_writes_weights_into_every_rule_of_a_service_parent_route() -> None:
    api = FakeApi()
    parent = {"group": "", "kind": "Service", "name": "web", "port": 80}
    api.put(HTTPROUTES, _route({"backendRefs": [_ref("web-stable"), _ref("web-canary")]},
                               {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                                "backendRefs": [_ref("web-canary", 0), _ref("web-stable", 100), _ref("mirror", 0)]},
                               parent=parent))
    before = copy.deepcopy(api.stored(HTTPROUTES, "web"))
    router = gateway_api.GatewayApiRouter(_client(api), _target({"httpRoute": "web"}))
    await router.verify()
    assert await router.current_weight() == UNKNOWN_WEIGHT  # absent weights are 1 and 1
    await router.set_weight(20)
    await router.set_weight(60)  # against the body the first write returned: no read in between
    assert api.calls == ["get httproutes/v1", "patch httproutes", "patch httproutes"]
    assert await router.current_weight() == 60
    after = api.stored(HTTPROUTES, "web")
    rules = after["spec"]["rules"]
    assert [r.get("weight") for r in rules[0]["backendRefs"]] == [40, 60]
    assert [r.get("weight") for r in rules[1]["backendRefs"]] == [60, 40, 0]
    for rule in (*rules, *before["spec"]["rules"]):
        for ref in rule["backendRefs"]:
            ref.pop("weight", None)
    after["metadata"].pop("resourceVersion")
    before["metadata"].pop("resourceVersion")
    assert after == before


async def test_gateway_router_names_what_is_missing() -> None:
    api = FakeApi()
    router = gateway_api.GatewayApiRouter(_client(api), _target({"httpRoute": "web", "rules": ["primary"]}))
    with pytest.raises(RouterError, match=f"HTTPRoute {NS}/web not found"):
        await router.verify()
    api.put(HTTPROUTES, _route({"name": "main", "backendRefs": [_ref("web-stable")]}))
    with pytest.raises(RouterError, match=r"has no rule named 'primary' \(rules: \['main'\]\)"):
        await router.verify()
    router = gateway_api.GatewayApiRouter(_client(api), _target({"httpRoute": "web"}))
    with pytest.raises(RouterError, match=f"rule 'main' of HTTPRoute {NS}/web has no backendRef for Service "
                                          "'web-canary'"):
        await router.verify()


async def test_gateway_router_retries_when_the_route_changes_between_read_and_write() -> None:
    api = FakeApi()
    api.put(HTTPROUTES, _route({"name": "main", "backendRefs": [_ref("web-stable", 100), _ref("web-canary", 0)]}))
    router = gateway_api.GatewayApiRouter(_client(api), _target({"httpRoute": "web"}))
    await router.verify()

    async def reorder() -> None:
        route = api.stored(HTTPROUTES, "web")
        route["spec"]["rules"][0]["backendRefs"].reverse()

    api.before_write = reorder
    await router.set_weight(25)
    assert api.stored(HTTPROUTES, "web")["spec"]["rules"][0]["backendRefs"] == [_ref("web-canary", 25),
                                                                               _ref("web-stable", 75)]


async def test_subset_router_reads_and_writes_hashes_and_weights() -> None:
    api = FakeApi()
    api.put(DESTINATIONRULES, _rule({"name": "stable", "labels": {"app": "web", HASH_LABEL: "v1"}}, {"name": "canary"}))
    api.put(VIRTUALSERVICES, _vs({"name": "primary", "route": [_dest("web.shop.svc.cluster.local", 100, "stable"),
                                                               _dest("web", 0, "canary")]}))
    config = {"virtualService": {"name": "web", "routes": ["primary"]},
              "destinationRule": {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}}
    router = istio.istio_router(_client(api), _target(config, services=False))
    assert isinstance(router, istio.IstioSubsetRouter)
    await router.verify()
    assert (router.selected_hash("stable"), router.selected_hash("canary")) == ("v1", None)
    assert await router.current_weight() == 0
    await router.set_hash("canary", "v2")
    await router.set_weight(20)
    assert router.selected_hash("canary") == "v2"
    assert api.stored(DESTINATIONRULES, "web")["spec"]["subsets"][1]["labels"] == {HASH_LABEL: "v2"}
    route = api.stored(VIRTUALSERVICES, "web")["spec"]["http"][0]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("stable", 80), ("canary", 20)]
    await router.set_hash("stable", "v2")
    await router.reset()
    assert api.stored(DESTINATIONRULES, "web")["spec"]["subsets"][0]["labels"] == {"app": "web", HASH_LABEL: "v2"}
    assert await router.current_weight() == 0


async def test_subset_router_names_a_missing_rule_subset_or_destination() -> None:
    api = FakeApi()
    config = {"virtualService": {"name": "web"},
              "destinationRule": {"name": "web", "stableSubsetName": "stable", "canarySubsetName": "canary"}}
    router = istio.istio_router(_client(api), _target(config, services=False))
    with pytest.raises(RouterError, match=f"DestinationRule {NS}/web not found"):
        await router.verify()
    api.put(DESTINATIONRULES, _rule({"name": "stable"}, {"name": "v2"}))
    with pytest.raises(RouterError, match=r"has no subset named 'canary' \(subsets: \['stable', 'v2'\]\)"):
        await router.verify()
    api.put(DESTINATIONRULES, _rule({"name": "stable"}, {"name": "canary"}))
    api.put(VIRTUALSERVICES, _vs({"name": "primary", "route": [_dest("web", 100, "stable"), _dest("other", 0,
                                                                                                  "canary")]}))
    with pytest.raises(RouterError, match="route 'primary' of VirtualService shop/web has no destination for subset "
                                          "'canary' of host 'web'"):
        await router.verify()


def _smi_api(preferred: str = "v1alpha4") -> FakeApi:
    api = FakeApi({"/apis/split.smi-spec.io": _group(preferred)})
    api.put(SERVICES, {"metadata": {"name": "web", "namespace": NS}})
    return api


SMI_CONFIG = {"trafficSplitName": "web-split", "rootService": "web"}


async def test_smi_router_creates_its_split_owned_by_the_rollout_then_updates_it() -> None:
    api = _smi_api()
    router = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    await router.verify()
    assert await router.current_weight() == UNKNOWN_WEIGHT
    await router.set_weight(0)
    await router.set_weight(20)
    split = api.objects[("trafficsplits", NS, "web-split")]
    assert split["apiVersion"] == "split.smi-spec.io/v1alpha4"
    assert split["metadata"]["labels"] == {ROLLOUT_LABEL: "web"}
    assert split["metadata"]["ownerReferences"] == [{
        "apiVersion": "sluice.dev/v1alpha1", "kind": "Rollout", "name": "web", "uid": "uid-1", "controller": True,
        "blockOwnerDeletion": True}]
    assert split["spec"] == {"service": "web", "backends": [{"service": "web-stable", "weight": 80},
                                                            {"service": "web-canary", "weight": 20}]}
    assert await router.current_weight() == 20
    fresh = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    await fresh.verify()
    assert await fresh.current_weight() == 20


async def test_smi_router_speaks_v1alpha1_with_quantity_weights() -> None:
    api = _smi_api("v1alpha1")
    router = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    await router.verify()
    await router.set_weight(10)
    split = api.objects[("trafficsplits", NS, "web-split")]
    assert split["apiVersion"] == "split.smi-spec.io/v1alpha1"
    assert [b["weight"] for b in split["spec"]["backends"]] == ["90", "10"]
    assert await router.current_weight() == 10


async def test_smi_router_refuses_a_split_it_does_not_control() -> None:
    api = _smi_api()
    api.put(TRAFFICSPLITS, {"metadata": {"name": "web-split", "namespace": NS}, "spec": {}})
    router = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    with pytest.raises(RouterError, match=f"TrafficSplit {NS}/web-split exists and is not controlled by this Rollout"):
        await router.verify()


async def test_smi_router_names_a_missing_root_service_or_api() -> None:
    api = FakeApi()
    router = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    with pytest.raises(RouterError, match=f"TrafficSplit root Service {NS}/web not found"):
        await router.verify()
    api.put(SERVICES, {"metadata": {"name": "web", "namespace": NS}})
    with pytest.raises(RouterError, match=r"SMI TrafficSplit API .* is not served .* install the Linkerd SMI"):
        await router.verify()


async def test_smi_router_rewrites_after_a_concurrent_change() -> None:
    api = _smi_api()
    router = smi.SmiRouter(_client(api), _target(SMI_CONFIG))
    await router.verify()
    await router.set_weight(20)

    async def hand_edit() -> None:
        split = api.stored(TRAFFICSPLITS, "web-split")
        split["spec"]["backends"].append({"service": "extra", "weight": 50})
        api.put(TRAFFICSPLITS, split)

    api.before_write = hand_edit
    await router.set_weight(60)
    assert api.stored(TRAFFICSPLITS, "web-split")["spec"]["backends"] == [
        {"service": "web-stable", "weight": 40}, {"service": "web-canary", "weight": 60}]


async def test_smi_discovery_is_asked_once_a_minute_per_client() -> None:
    api = _smi_api()
    for _ in range(3):
        await smi.SmiRouter(_client(api), _target(SMI_CONFIG)).verify()
    assert api.calls.count("discover /apis/split.smi-spec.io") == 1
    other = _smi_api()
    await smi.SmiRouter(_client(other), _target(SMI_CONFIG)).verify()
    assert other.calls.count("discover /apis/split.smi-spec.io") == 1
