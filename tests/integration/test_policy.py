"""In-cluster guardrails (issue 7) on the real control plane: the controller checks a new revision's pod template
before it gets pods or traffic, with the cluster's modes (`--policy RULE=MODE`) tightened by the Rollout's
`spec.policy` and loosened only by an override annotation the chart's ValidatingAdmissionPolicy lets only holders of
the verb `override-policy` set. sluice owns a PodDisruptionBudget for `spec.disruptionBudget`, which the real eviction
API honours, and adds pod anti-affinity for `spec.spread`, which the real scheduler honours, without changing the
revision. Tests read conditions, Events, ReplicaSets, Pods and the PodDisruptionBudget.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devcluster import ControlPlane, helm
from rollout.kube import (
    EVENTS,
    NAMESPACES,
    PODDISRUPTIONBUDGETS,
    REPLICASETS,
    ROLLOUTS,
    SERVICES,
    VIRTUALSERVICES,
    ApiError,
    Body,
    KubeClient,
    NotFound,
)
from rollout.settings import RetrySettings
from strategies.guardrails import OVERRIDE_ANNOTATION, OVERRIDE_BY_ANNOTATION
from strategies.model import HASH_LABEL, template_hash
from strategies.policy import HOSTNAME_KEY, MODES, RULES, Mode
from tests.integration.kit import (
    PODS,
    ROLE_BINDINGS,
    ROLES,
    ControllerProcess,
    condition,
    get_rollout,
    paused_at,
    rollout_body,
    set_image,
    status,
    wait_for,
    wait_status,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


V1 = "registry.example/web:1"
V2 = "registry.example/web:2"
QUICK_STEPS: list[Body] = [{"setWeight": 50}]  # one step, no pause: v2 completes on its own
CONTAINER = "spec.template.spec.containers[0]"
# Where each rule's violation (made by `_violate`) is reported.
FIELDS = {
    "resources": f"{CONTAINER}.resources.requests.cpu",
    "readiness-probe": f"{CONTAINER}.readinessProbe",
    "liveness-probe": f"{CONTAINER}.livenessProbe",
    "pinned-image": f"{CONTAINER}.image",
    "privileged": f"{CONTAINER}.securityContext.privileged",
    "run-as-non-root": "spec.template.spec.securityContext.runAsNonRoot",
    "disruption-budget": "spec.selector",
    "spread": "spec.template.spec.affinity.podAntiAffinity",
}

_ids = itertools.count()


# -- objects ------------------------------------------------------------------------------------------------------


def good_template(app: str, image: str = V1) -> Body:
    """A pod template that passes every rule (with a disruption budget and spread on the Rollout)."""
    probe = {"httpGet": {"path": "/healthz", "port": 8080}}
    return {"metadata": {"labels": {"app": app}}, "spec": {
        "securityContext": {"runAsNonRoot": True},
        "containers": [{
            "name": "web", "image": image, "ports": [{"containerPort": 8080}],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}},
            "readinessProbe": probe, "livenessProbe": probe,
            "securityContext": {"allowPrivilegeEscalation": False},
        }],
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    }}


def good_rollout(name: str, *, replicas: int = 2, steps: list[Body] | None = None, **spec: Any) -> Body:
    """A canary Rollout named `name` over pods labelled app=`name`, behind its own Services `<name>-stable`,
    `<name>-canary` and VirtualService `<name>`; with a disruption budget and spread, it passes every rule."""
    body = rollout_body(name, replicas=replicas, steps=QUICK_STEPS if steps is None else steps, **spec)
    body["spec"]["selector"] = {"matchLabels": {"app": name}}
    body["spec"]["template"] = good_template(name)
    canary = body["spec"]["strategy"]["canary"]
    canary.update(stableService=f"{name}-stable", canaryService=f"{name}-canary")
    canary["trafficRouting"]["istio"]["virtualService"]["name"] = name
    return body


async def create_app(kube: KubeClient, ns: str, rollout: Body) -> Body:
    """The Rollout with its two Services and VirtualService (named after it)."""
    name = rollout["metadata"]["name"]
    app = rollout["spec"]["selector"]["matchLabels"]["app"]
    for svc in (f"{name}-stable", f"{name}-canary"):
        await kube.create(SERVICES, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": svc},
                                     "spec": {"selector": {"app": app},
                                              "ports": [{"port": 80, "targetPort": 8080}]}}, namespace=ns)
    await kube.create(VIRTUALSERVICES, {
        "apiVersion": "networking.istio.io/v1", "kind": "VirtualService", "metadata": {"name": name},
        "spec": {"hosts": [f"{name}.example"], "http": [{"name": "primary", "route": [
            {"destination": {"host": f"{name}-stable"}, "weight": 100},
            {"destination": {"host": f"{name}-canary"}, "weight": 0}]}]}}, namespace=ns)
    return await kube.create(ROLLOUTS, rollout, namespace=ns)


def _violate(rule: str, template: Body) -> list[Body]:
    """JSON patch ops for v2: a new image tag plus one violation of `rule` (and nothing else)."""
    template = copy.deepcopy(template)
    container = template["spec"]["containers"][0]
    container["image"] = V2
    ops: list[Body] = []
    if rule == "resources":
        del container["resources"]
    elif rule == "readiness-probe":
        del container["readinessProbe"]
    elif rule == "liveness-probe":
        del container["livenessProbe"]
    elif rule == "pinned-image":
        container["image"] = "registry.example/web:latest"
    elif rule == "privileged":
        # Without allowPrivilegeEscalation: false, which the API server refuses next to privileged: true.
        container["securityContext"] = {"privileged": True}
    elif rule == "run-as-non-root":
        del template["spec"]["securityContext"]
    elif rule == "disruption-budget":
        ops.append({"op": "remove", "path": "/spec/disruptionBudget"})
    elif rule == "spread":
        ops.append({"op": "remove", "path": "/spec/spread"})
    else:
        raise AssertionError(f"no violation written for rule {rule}")
    return [{"op": "replace", "path": "/spec/template", "value": template}, *ops]


# -- reading what the controller did -------------------------------------------------------------------------------


def _healthy_on(hash_: str | None = None) -> Callable[[Body], bool]:
    return lambda st: st.get("phase") == "Healthy" and (hash_ is None or st.get("stableHash") == hash_)


def _policy(st: Body) -> Body:
    return condition(st, "PolicyViolation")


def _blocked(st: Body) -> bool:
    cond = _policy(st)
    return cond.get("status") == "True" and cond.get("reason") == "PolicyViolation" and st.get("phase") == "Degraded"


async def _current_hash(kube: KubeClient, ns: str, name: str) -> str:
    """The revision the Rollout's template is now: the hash of the template as stored (no spread in it)."""
    return template_hash((await get_rollout(kube, ns, name))["spec"]["template"])


async def _rollout_events(kube: KubeClient, ns: str, name: str) -> list[Body]:
    items, _ = await kube.list(EVENTS, namespace=ns)
    mine = [e for e in items if e["involvedObject"].get("kind") == "Rollout" and e["involvedObject"]["name"] == name]
    return sorted(mine, key=lambda e: e["metadata"]["creationTimestamp"])


async def _events(kube: KubeClient, ns: str, name: str, reason: str) -> list[Body]:
    """The Rollout's Events with `reason`, once there is one (Events follow the status patch)."""
    async def listed() -> list[Body] | None:
        return [e for e in await _rollout_events(kube, ns, name) if e["reason"] == reason] or None

    return await wait_for(listed, what=f"a {reason} Event on {ns}/{name}", timeout=15)


async def _replica_sets(kube: KubeClient, ns: str, app: str) -> dict[str, Body]:
    items, _ = await kube.list(REPLICASETS, namespace=ns, label_selector=f"app={app}")
    return {rs["metadata"]["labels"][HASH_LABEL]: rs for rs in items if HASH_LABEL in rs["metadata"]["labels"]}


async def _assert_stable_keeps_serving(kube: KubeClient, ns: str, name: str, *, stable: str, blocked: str,
                                       replicas: int) -> None:
    """The blocked revision has no ReplicaSet at all; the stable one is full and available."""
    sets = await _replica_sets(kube, ns, name)
    assert blocked not in sets, f"a ReplicaSet was created for the blocked revision {blocked}: {sets[blocked]}"
    assert sets[stable]["spec"]["replicas"] == replicas
    assert (sets[stable].get("status") or {}).get("availableReplicas") == replicas
    vs = await kube.get(VIRTUALSERVICES, name=name, namespace=ns)
    weights = {d["destination"]["host"]: d.get("weight", 0) for d in vs["spec"]["http"][0]["route"]}
    assert weights == {f"{name}-stable": 100, f"{name}-canary": 0}


# -- fixtures -----------------------------------------------------------------------------------------------------


StartController = Callable[..., ControllerProcess]


@pytest.fixture
def start_controller(control_plane: ControlPlane, tmp_path: Path) -> Iterator[StartController]:
    """`start_controller(ns, "rule=mode", ...)`: the real controller watching `ns` with those cluster defaults."""
    started: list[ControllerProcess] = []

    def start(ns: str, *policy: str) -> ControllerProcess:
        proc = ControllerProcess(kubeconfig=control_plane.kubeconfig, namespace=ns,
                                 log_path=tmp_path / f"controller-{len(started)}.log",
                                 extra_args=[arg for p in policy for arg in ("--policy", p)])
        proc.start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop_and_show_log(f"controller {proc.log_path.name}")


@pytest.fixture
async def make_namespace(kube: KubeClient, namespace: str) -> AsyncIterator[Callable[[str], Awaitable[str]]]:
    """`await make_namespace(suffix)`: another namespace for this test, deleted afterwards."""
    made: list[str] = []

    async def make(suffix: str) -> str:
        name = f"{namespace}-{suffix}"[:63].rstrip("-")
        await kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        made.append(name)
        return name

    yield make
    for name in made:
        await kube.delete(NAMESPACES, name=name)


# -- 1. every rule in every mode ----------------------------------------------------------------------------------


async def _one_rule_in_one_mode(kube: KubeClient, ns: str, rule: str, mode: Mode) -> None:
    """v1 passes every rule and becomes Healthy; v2 violates `rule` only, which the cluster sets to `mode`."""
    name = rule
    await create_app(kube, ns, good_rollout(name, disruptionBudget={"maxUnavailable": 1}, spread="preferred"))
    st = await wait_status(kube, ns, _healthy_on(), what="v1 Healthy", name=name, timeout=90)
    v1 = str(st["stableHash"])
    assert (_policy(st).get("status"), _policy(st).get("reason")) == ("False", "PolicyPassed"), _policy(st)
    template = (await get_rollout(kube, ns, name))["spec"]["template"]
    await kube.patch(ROLLOUTS, name=name, namespace=ns, patch_type="json", patch=_violate(rule, template))
    v2 = await _current_hash(kube, ns, name)
    finding = f"{rule} ({mode}): "
    if mode == "enforce":
        st = await wait_status(kube, ns, _blocked, what="blocked by PolicyViolation", name=name)
        message = _policy(st)["message"]
        assert finding in message and f"[{FIELDS[rule]}]" in message, message
        assert condition(st, "Degraded").get("reason") == "PolicyViolation"
        assert not st.get("abort") and st["stableHash"] == v1
        [event] = await _events(kube, ns, name, "PolicyViolation")
        assert event["type"] == "Warning" and rule in event["message"]
        await _assert_stable_keeps_serving(kube, ns, name, stable=v1, blocked=v2, replicas=2)
        return
    st = await wait_status(kube, ns, _healthy_on(v2), what="v2 completed", name=name, timeout=90)
    cond = _policy(st)
    if mode == "warn":
        assert (cond.get("status"), cond.get("reason")) == ("True", "PolicyWarning"), cond
        assert finding in cond["message"] and f"[{FIELDS[rule]}]" in cond["message"], cond["message"]
        [event] = await _events(kube, ns, name, "PolicyWarning")
        assert event["type"] == "Warning" and rule in event["message"]
    else:
        assert cond.get("status") != "True", cond
        reasons = [e["reason"] for e in await _rollout_events(kube, ns, name)]
        assert not {"PolicyViolation", "PolicyWarning"} & set(reasons), reasons


async def test_each_rule_blocks_when_enforced_warns_when_warned_and_is_silent_when_off(
        kube: KubeClient, make_namespace: Callable[[str], Awaitable[str]],
        start_controller: StartController) -> None:
    # One controller per mode (every rule set to it), each in its own namespace; the 24 Rollouts walk at once.
    cases: list[tuple[str, Mode, str]] = []
    for mode in MODES:
        ns = await make_namespace(mode)
        start_controller(ns, *(f"{rule}={mode}" for rule in RULES))
        cases += [(rule, mode, ns) for rule in RULES]
    results = await asyncio.gather(*(_one_rule_in_one_mode(kube, ns, rule, mode) for rule, mode, ns in cases),
                                   return_exceptions=True)
    failures = [f"{rule} in mode {mode}: {type(result).__name__}: {result}"
                for (rule, mode, _), result in zip(cases, results, strict=True) if isinstance(result, BaseException)]
    assert not failures, f"{len(failures)} of {len(cases)} failed:\n\n" + "\n\n".join(failures)


# -- 2. spec.policy only tightens --------------------------------------------------------------------------------


async def _violate_pinned_image(kube: KubeClient, ns: str) -> None:
    await set_image(kube, ns, "registry.example/web:latest")


async def _violate_liveness_probe(kube: KubeClient, ns: str) -> None:
    template = (await get_rollout(kube, ns, "web"))["spec"]["template"]
    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch_type="json",
                     patch=_violate("liveness-probe", template))


@pytest.mark.parametrize(("cluster", "asked", "violate", "said"), [
    # The Rollout tightens a rule the cluster only warns about.
    ("liveness-probe=warn", {"liveness-probe": "enforce"}, _violate_liveness_probe, "liveness-probe (enforce): "),
    # The Rollout asks to loosen an enforced rule: ignored, and the message says so.
    ("pinned-image=enforce", {"pinned-image": "off"}, _violate_pinned_image, "ignored: looser than the cluster's"),
], ids=["tightened", "loosening-ignored"])
async def test_spec_policy_tightens_and_never_loosens(
        kube: KubeClient, namespace: str, start_controller: StartController, cluster: str, asked: dict[str, str],
        violate: Callable[[KubeClient, str], Awaitable[None]], said: str) -> None:
    ns = namespace
    start_controller(ns, cluster)
    body = good_rollout("web", disruptionBudget={"maxUnavailable": 1}, spread="preferred", policy=asked)
    await create_app(kube, ns, body)
    v1 = str((await wait_status(kube, ns, _healthy_on(), what="v1 Healthy"))["stableHash"])
    await violate(kube, ns)
    v2 = await _current_hash(kube, ns, "web")
    st = await wait_status(kube, ns, _blocked, what=f"blocked with the cluster at {cluster}, spec.policy {asked}")
    message = _policy(st)["message"]
    assert said in message and f"{cluster.split('=')[0]} (enforce): " in message, message
    await _events(kube, ns, "web", "PolicyViolation")
    await _assert_stable_keeps_serving(kube, ns, "web", stable=v1, blocked=v2, replicas=2)


# -- 3. loosening needs the verb override-policy -----------------------------------------------------------------


@pytest.fixture
async def override_admission(control_plane: ControlPlane, namespace: str) -> AsyncIterator[list[Body]]:
    """The chart's policy-override admission policy (with its binding and ClusterRole), rendered for this namespace
    under a release of its own; deleted after the test."""
    release = f"policy-{os.getpid() % 1000}-{next(_ids)}"
    admission = await asyncio.to_thread(helm.policy_override_admission, release=release, namespace=namespace)
    await asyncio.to_thread(helm.apply, control_plane.api, admission)
    try:
        yield admission
    finally:
        await asyncio.to_thread(helm.delete, control_plane.api, admission)


async def _user(kube: KubeClient, control_plane: ControlPlane, ns: str, user: str, verbs: list[str]) -> KubeClient:
    """A client-certificate user with `verbs` on rollouts in `ns` (a Role and a RoleBinding there)."""
    await kube.create(ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": user},
                              "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"], "verbs": verbs}]},
                      namespace=ns)
    await kube.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": user},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": user},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}]}, namespace=ns)
    kubeconfig = await asyncio.to_thread(control_plane.client_kubeconfig, user, [])
    return await KubeClient.connect(kubeconfig=str(kubeconfig), retry=RetrySettings(attempts=1))


async def _set_override(client: KubeClient, ns: str, name: str, override: str, by: str) -> None:
    await client.patch(ROLLOUTS, name=name, namespace=ns,
                       patch={"metadata": {"annotations": {OVERRIDE_ANNOTATION: override, OVERRIDE_BY_ANNOTATION: by}}})


async def _refusal(call: Awaitable[Any]) -> ApiError | None:
    try:
        await call
    except ApiError as exc:
        return exc
    return None


async def _wait_until_admission_refuses(client: KubeClient, ns: str, user: str) -> None:
    """Poll until the policy and binding are in effect: `user` (without the verb) is refused on a Rollout nobody
    depends on. Each attempt changes the override, as setting the same value again is not a change."""
    attempts = itertools.count()

    async def refused() -> ApiError | None:
        mode = ("warn", "off")[next(attempts) % 2]
        refusal = await _refusal(_set_override(client, ns, "probe", f"spread={mode}", user))
        # The admission policy's refusal, not RBAC's (the user's Role may be moments old).
        return refusal if refusal is not None and "override-policy" in refusal.message else None

    await wait_for(refused, what="the ValidatingAdmissionPolicy to refuse an override", timeout=30, interval=0.5)


async def test_only_a_user_with_override_policy_can_loosen_a_blocked_rollout(
        kube: KubeClient, control_plane: ControlPlane, namespace: str, override_admission: list[Body],
        start_controller: StartController) -> None:
    ns = namespace
    start_controller(ns, "pinned-image=enforce")
    mallory, alice = f"mallory-{ns}", f"alice-{ns}"
    without = await _user(kube, control_plane, ns, mallory, ["get", "patch"])
    holder = await _user(kube, control_plane, ns, alice, ["get", "patch", "override-policy"])
    try:
        # A Rollout the controller cannot act on (its VirtualService does not exist), to see the policy take effect.
        probe = good_rollout("probe")
        probe["spec"]["strategy"]["canary"]["trafficRouting"]["istio"]["virtualService"]["name"] = "missing"
        await kube.create(ROLLOUTS, probe, namespace=ns)
        await _wait_until_admission_refuses(without, ns, mallory)

        await create_app(kube, ns, good_rollout("web", disruptionBudget={"maxUnavailable": 1}, spread="preferred"))
        v1 = str((await wait_status(kube, ns, _healthy_on(), what="v1 Healthy"))["stableHash"])
        await set_image(kube, ns, "registry.example/web:latest")
        v2 = await _current_hash(kube, ns, "web")
        await wait_status(kube, ns, _blocked, what="blocked by pinned-image")

        refused = await _refusal(_set_override(without, ns, "web", "pinned-image=warn", mallory))
        assert refused is not None, f"{mallory} set the override without the verb override-policy"
        assert refused.status in (403, 422) and "override-policy" in refused.message, refused
        in_someone_elses_name = await _refusal(_set_override(holder, ns, "web", "pinned-image=warn", mallory))
        assert in_someone_elses_name is not None, f"{alice} set an override naming {mallory}"
        assert in_someone_elses_name.status in (403, 422) and alice in in_someone_elses_name.message
        annotations = (await get_rollout(kube, ns, "web"))["metadata"].get("annotations") or {}
        assert OVERRIDE_ANNOTATION not in annotations
        st = await status(kube, ns)
        assert _blocked(st) and st["stableHash"] == v1

        await _set_override(holder, ns, "web", "pinned-image=warn", alice)
        st = await wait_status(kube, ns, _healthy_on(v2), what="v2 completed under alice's override", timeout=90)
        assert alice in _policy(st).get("message", ""), _policy(st)
        [event] = await _events(kube, ns, "web", "PolicyOverridden")
        assert alice in event["message"] and "pinned-image" in event["message"], event["message"]
    finally:
        await without.close()
        await holder.close()


# -- 4. the PodDisruptionBudget sluice owns ----------------------------------------------------------------------


async def _pdb(kube: KubeClient, ns: str, name: str = "web") -> Body | None:
    try:
        return await kube.get(PODDISRUPTIONBUDGETS, name=name, namespace=ns)
    except NotFound:
        return None


async def _evict(client: KubeClient, ns: str, pod: str) -> ApiError | None:
    return await _refusal(client.create(PODS, {"apiVersion": "policy/v1", "kind": "Eviction",
                                               "metadata": {"name": pod, "namespace": ns}},
                                        namespace=ns, name=pod, subresource="eviction"))


@contextlib.asynccontextmanager
async def _no_new_pods(kube: KubeClient, control_plane: ControlPlane, ns: str) -> AsyncIterator[None]:
    """A ValidatingAdmissionPolicy (and binding) refusing every Pod CREATE in `ns`, in effect when entered, deleted
    on exit."""
    name = f"{ns}-no-new-pods"[:63].rstrip("-")
    admission: list[Body] = [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [
             {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}]},
             "validations": [{"expression": "false", "message": "no new pods while the test evicts"}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"], "matchResources": {"namespaceSelector": {
             "matchLabels": {"kubernetes.io/metadata.name": ns}}}}},
    ]
    await asyncio.to_thread(helm.apply, control_plane.api, admission)
    try:
        probes = itertools.count()

        async def refused() -> bool:
            # Created before the policy is in effect: a pod nothing selects, deleted at once.
            name = f"probe-{next(probes)}"
            error = await _refusal(kube.create(PODS, {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"role": "probe"}},
                "spec": {"containers": [{"name": "c", "image": "registry.example/probe:1"}]}}, namespace=ns))
            if error is None:
                await kube.delete(PODS, name=name, namespace=ns)
            return error is not None

        await wait_for(refused, what="Pod creation refused in the namespace", timeout=30, interval=0.3)
        yield
    finally:
        await asyncio.to_thread(helm.delete, control_plane.api, admission)


async def test_the_owned_disruption_budget_is_honoured_by_evictions_during_a_canary(
        kube: KubeClient, control_plane: ControlPlane, namespace: str,
        start_controller: StartController) -> None:
    ns = namespace
    start_controller(ns)
    body = good_rollout("web", replicas=4, steps=[{"setWeight": 25}, {"pause": {}}],
                        disruptionBudget={"maxUnavailable": 1}, spread="preferred")
    rollout = await create_app(kube, ns, body)
    await wait_status(kube, ns, _healthy_on(), what="v1 Healthy")
    await set_image(kube, ns, V2)
    await wait_status(kube, ns, paused_at(1), what="paused at 25% (4 stable and 1 canary pod)")

    pdb = await wait_for(lambda: _pdb(kube, ns), what="the PodDisruptionBudget")
    assert pdb["metadata"]["labels"]["sluice.dev/rollout"] == "web"
    [owner] = pdb["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"], owner.get("controller")) == (
        "Rollout", "web", rollout["metadata"]["uid"], True)
    assert pdb["spec"]["selector"] == body["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] == 3

    async def budget_known() -> Body | None:
        found = await _pdb(kube, ns)
        st = (found or {}).get("status") or {}
        current = found is not None and st.get("observedGeneration") == found["metadata"]["generation"]
        # Every pod counted (4 stable, 1 canary), not only those the disruption controller had seen so far.
        return found if current and st.get("currentHealthy") == 5 else None

    allowed = int((await wait_for(budget_known, what="the disruption controller to fill the PDB's status"))[
        "status"]["disruptionsAllowed"])
    assert allowed == 2, "5 healthy pods (4 stable, 1 canary) and minAvailable 3"
    pods, _ = await kube.list(PODS, namespace=ns, label_selector="app=web")
    names = sorted(p["metadata"]["name"] for p in pods if not p["metadata"].get("deletionTimestamp"))
    # As in a drain with nowhere to put replacements: KWOK would make a replacement ready within milliseconds and
    # the budget would recover between two evictions. One attempt per eviction: a 429 comes back as it is.
    evictor = await KubeClient.connect(kubeconfig=str(control_plane.kubeconfig), retry=RetrySettings(attempts=1))
    try:
        async with _no_new_pods(kube, control_plane, ns):
            for pod in names[:allowed]:
                refused = await _evict(evictor, ns, pod)
                assert refused is None, f"eviction of {pod} refused while the budget allowed it: {refused}"

            async def exhausted() -> bool:
                found = await _pdb(kube, ns)
                return found is not None and (found.get("status") or {}).get("disruptionsAllowed") == 0

            await wait_for(exhausted, what="disruptionsAllowed 0 after two evictions")
            refused = await _evict(evictor, ns, names[allowed])
            assert refused is not None, "an eviction beyond the budget was accepted"
            assert refused.status == 429 and "disruption budget" in refused.message, refused
    finally:
        await evictor.close()

    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch={"spec": {"replicas": 6}})

    async def follows() -> Body | None:
        found = await _pdb(kube, ns)
        return found if found is not None and found["spec"]["minAvailable"] == 5 else None

    await wait_for(follows, what="minAvailable 6 - 1 = 5 after scaling to 6")
    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch={"spec": {"disruptionBudget": None}})

    async def deleted() -> bool:
        return await _pdb(kube, ns) is None

    await wait_for(deleted, what="the PodDisruptionBudget deleted with spec.disruptionBudget")


# -- 5. spread -----------------------------------------------------------------------------------------------------


def _anti_affinity_terms(pod_spec: Body, spread: str) -> list[Body]:
    anti = (pod_spec.get("affinity") or {}).get("podAntiAffinity") or {}
    if spread == "required":
        return list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    return [p["podAffinityTerm"] for p in anti.get("preferredDuringSchedulingIgnoredDuringExecution") or []
            if p.get("weight") == 100]


def _repels_its_revision(pod_spec: Body, spread: str, *, app: str, hash_: str) -> bool:
    return any(t.get("topologyKey") == HOSTNAME_KEY and t.get("labelSelector") == {
        "matchLabels": {"app": app, HASH_LABEL: hash_}} for t in _anti_affinity_terms(pod_spec, spread))


async def test_required_spread_puts_each_pod_of_a_revision_on_its_own_node(
        kube: KubeClient, namespace: str, start_controller: StartController) -> None:
    ns = namespace
    start_controller(ns)
    await create_app(kube, ns, good_rollout("web", replicas=3, spread="required",
                                            disruptionBudget={"maxUnavailable": 1}))
    st = await wait_status(kube, ns, _healthy_on(), what="Healthy with required spread")
    stable = str(st["stableHash"])
    assert stable == await _current_hash(kube, ns, "web"), "the spread changed the revision"
    rs = (await _replica_sets(kube, ns, "web"))[stable]
    assert _repels_its_revision(rs["spec"]["template"]["spec"], "required", app="web", hash_=stable), rs

    async def placed() -> list[Body] | None:
        pods, _ = await kube.list(PODS, namespace=ns, label_selector=f"app=web,{HASH_LABEL}={stable}")
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live if len(live) == 3 and all(p["spec"].get("nodeName") for p in live) else None

    pods = await wait_for(placed, what="3 scheduled pods")
    for pod in pods:
        assert _repels_its_revision(pod["spec"], "required", app="web", hash_=stable), pod["spec"].get("affinity")
    assert len({p["spec"]["nodeName"] for p in pods}) == 3, [p["spec"]["nodeName"] for p in pods]


async def test_preferred_spread_added_later_patches_the_replica_set_without_a_new_revision(
        kube: KubeClient, namespace: str, start_controller: StartController) -> None:
    ns = namespace
    start_controller(ns)
    await create_app(kube, ns, good_rollout("web", replicas=3, disruptionBudget={"maxUnavailable": 1}))
    stable = str((await wait_status(kube, ns, _healthy_on(), what="Healthy without spread"))["stableHash"])
    before = await _replica_sets(kube, ns, "web")
    assert not _repels_its_revision(before[stable]["spec"]["template"]["spec"], "preferred", app="web",
                                    hash_=stable)
    await kube.patch(ROLLOUTS, name="web", namespace=ns, patch={"spec": {"spread": "preferred"}})

    async def patched() -> Body | None:
        rs = (await _replica_sets(kube, ns, "web")).get(stable)
        spec = rs["spec"]["template"]["spec"] if rs else {}
        return rs if _repels_its_revision(spec, "preferred", app="web", hash_=stable) else None

    await wait_for(patched, what="the existing ReplicaSet's pod template to get the preferred term")
    st = await wait_status(kube, ns, _healthy_on(), what="still Healthy")
    assert st["stableHash"] == stable == await _current_hash(kube, ns, "web")
    assert set(await _replica_sets(kube, ns, "web")) == set(before), "adding spread made a new revision"


@pytest.mark.parametrize(("spec", "message"), [
    ({"disruptionBudget": {"minAvailable": 1, "maxUnavailable": 1}},
     "disruptionBudget needs exactly one of minAvailable, maxUnavailable"),
    ({"disruptionBudget": {}}, "disruptionBudget needs exactly one of minAvailable, maxUnavailable"),
    ({"disruptionBudget": {"maxUnavailable": "150%"}}, "percentage from 0% to 100%"),
    ({"disruptionBudget": {"minAvailable": -1}}, "must be a non-negative integer"),
    ({"spread": "always"}, 'Unsupported value: "always"'),
    ({"policy": {"spread": "strict"}}, 'Unsupported value: "strict"'),
])
async def test_guardrail_fields_the_api_server_refuses(kube: KubeClient, namespace: str, spec: Body,
                                                       message: str) -> None:
    with pytest.raises(ApiError) as refused:
        await kube.create(ROLLOUTS, good_rollout("web", **spec), namespace=namespace)
    assert refused.value.status == 422
    assert message in refused.value.message


async def test_a_budget_of_the_same_name_sluice_does_not_own_is_reported_and_left_alone(
        kube: KubeClient, namespace: str, start_controller: StartController) -> None:
    ns = namespace
    theirs = await kube.create(PODDISRUPTIONBUDGETS, {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
                                      "metadata": {"name": "web"},
                                      "spec": {"maxUnavailable": 2, "selector": {"matchLabels": {"app": "web"}}}},
                               namespace=ns)
    start_controller(ns)
    await create_app(kube, ns, good_rollout("web", replicas=3, disruptionBudget={"maxUnavailable": 1},
                                            spread="preferred"))
    st = await wait_status(kube, ns, _healthy_on(), what="Healthy despite the budget it cannot keep")
    assert "spec.disruptionBudget not applied: PodDisruptionBudget" in _policy(st)["message"]
    [event] = await _events(kube, ns, "web", "DisruptionBudgetConflict")
    assert event["type"] == "Warning"
    pdb = await _pdb(kube, ns)
    assert pdb is not None and pdb["metadata"]["uid"] == theirs["metadata"]["uid"]
    assert pdb["spec"]["maxUnavailable"] == 2 and not pdb["metadata"].get("ownerReferences")
