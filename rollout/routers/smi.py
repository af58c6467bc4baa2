"""SMI traffic split (Linkerd's SMI extension, and other meshes that serve `split.smi-spec.io`).

Unlike the Istio and Gateway API routers, sluice creates and owns this object: a TrafficSplit named
`trafficSplitName`, controlled by the Rollout (so it goes when the Rollout goes), whose apex is `rootService` and whose
two backends are the stable and canary Services. A missing TrafficSplit, or one whose backends someone changed, reads
as UNKNOWN_WEIGHT, so the planner writes it (again). One that exists but is not controlled by this Rollout is the
user's to rename or delete: a RouterError.

Which version of the API to speak is asked from discovery (`/apis/split.smi-spec.io`, the group's preferred version),
kept per client for a minute so a reconcile does not cost an extra GET. v1alpha1 carries weights as quantity strings
("500m"), v1alpha2 and later as integers; sluice writes what the version wants and reads both.
"""

from __future__ import annotations

import dataclasses
import re
import time
import weakref
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from rollout.kube import SERVICES, TRAFFICSPLITS, Body, KubeClient, NotFound, Resource, owner_reference
from rollout.routers import UNKNOWN_WEIGHT, RouterError, RouterTarget
from rollout.routers.backends import agreed_weight, write_optimistically
from strategies.model import ROLLOUT_LABEL

GROUP = TRAFFICSPLITS.group
VERSIONS = ("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1")  # newest first; the ones sluice can speak
DISCOVERY_TTL = 60.0  # seconds a client's answer is reused; installing the extension is noticed within it

_discovered: weakref.WeakKeyDictionary[KubeClient, tuple[float, str | None]] = weakref.WeakKeyDictionary()
_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_SUFFIXES = {None: Decimal(1), "m": Decimal("0.001"), "k": Decimal(10) ** 3, "M": Decimal(10) ** 6,
             "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
             "Ki": Decimal(2) ** 10, "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40,
             "Pi": Decimal(2) ** 50, "Ei": Decimal(2) ** 60}


def choose_version(group: Mapping[str, Any]) -> str | None:
    """From an APIGroup discovery document: the preferred version when sluice speaks it, else the newest served one
    it speaks; None when it speaks none of them."""
    preferred = str((group.get("preferredVersion") or {}).get("version", ""))
    if preferred in VERSIONS:
        return preferred
    served = {str(v.get("version", "")) for v in group.get("versions") or [] if isinstance(v, Mapping)}
    return next((v for v in VERSIONS if v in served), None)


def parse_weight(value: Any) -> int | None:
    """A backend weight as an integer: an int (v1alpha2+), or a quantity string (v1alpha1: "90", "500m"); None when
    it is neither or not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    match = _QUANTITY.match(str(value).strip())
    if not match:
        return None
    try:
        number = Decimal(match.group(1)) * _SUFFIXES[match.group(2)]
    except InvalidOperation:
        return None
    return int(number) if number == number.to_integral_value() else None


def format_weight(weight: int, version: str) -> int | str:
    return str(weight) if version == "v1alpha1" else weight


def split_spec(*, root: str, stable: str, canary: str, weight: int, version: str) -> Body:
    return {"service": root, "backends": [
        {"service": stable, "weight": format_weight(100 - weight, version)},
        {"service": canary, "weight": format_weight(weight, version)},
    ]}


def split_weight(spec: Mapping[str, Any], *, root: str, stable: str, canary: str) -> int:
    """The canary weight of a TrafficSplit spec: UNKNOWN_WEIGHT unless it splits `root` between exactly the two
    Services with weights that add up to 100."""
    backends = spec.get("backends") or []
    if spec.get("service") != root or len(backends) != 2:
        return UNKNOWN_WEIGHT
    weights: dict[str, int | None] = {}
    for backend in backends:
        if not isinstance(backend, Mapping):
            return UNKNOWN_WEIGHT
        weights[str(backend.get("service", ""))] = parse_weight(backend.get("weight"))
    stable_w, canary_w = weights.get(stable), weights.get(canary)
    if set(weights) != {stable, canary} or stable_w is None or canary_w is None:
        return UNKNOWN_WEIGHT
    return agreed_weight([(stable_w, canary_w)])


async def served_version(client: KubeClient) -> str | None:
    """The TrafficSplit version to speak on this client's cluster (None: the group is not served), from discovery
    at most once per DISCOVERY_TTL."""
    now = time.monotonic()
    cached = _discovered.get(client)
    if cached is not None and now - cached[0] < DISCOVERY_TTL:
        return cached[1]
    try:
        version = choose_version(await client.get_path(f"/apis/{GROUP}"))
    except NotFound:
        version = None
    _discovered[client] = (now, version)
    return version


class SmiRouter:
    def __init__(self, client: KubeClient, target: RouterTarget) -> None:
        self._client = client
        self._namespace = target.namespace
        self._rollout = target.rollout
        self._name = str(target.config.get("trafficSplitName", ""))
        self._root = str(target.config.get("rootService", ""))
        self._stable = target.stable_service or ""
        self._canary = target.canary_service or ""
        self._resource: Resource | None = None
        self._body: Body | None = None  # None after verify(): there is no TrafficSplit yet

    @property
    def _where(self) -> str:
        return f"TrafficSplit {self._namespace}/{self._name}"

    async def verify(self) -> None:
        try:
            await self._client.get(SERVICES, name=self._root, namespace=self._namespace)
        except NotFound as exc:
            raise RouterError(f"TrafficSplit root Service {self._namespace}/{self._root} not found") from exc
        version = await served_version(self._client)
        if version is None:
            raise RouterError(f"the SMI TrafficSplit API ({GROUP}, one of {', '.join(reversed(VERSIONS))}) is not "
                              "served by this cluster; install the Linkerd SMI extension (linkerd-smi)")
        self._resource = dataclasses.replace(TRAFFICSPLITS, version=version)
        try:
            body = await self._client.get(self._resource, name=self._name, namespace=self._namespace)
        except NotFound:
            self._body = None
            return
        self._check_owner(body)
        self._body = body

    def _check_owner(self, body: Body) -> None:
        uid = self._rollout["metadata"].get("uid")
        owners = (body.get("metadata") or {}).get("ownerReferences") or []
        if not any(o.get("controller") and o.get("uid") == uid for o in owners):
            raise RouterError(f"{self._where} exists and is not controlled by this Rollout; delete it or choose "
                              "another trafficSplitName (sluice creates and owns its TrafficSplit)")

    async def current_weight(self) -> int:
        if self._resource is None:
            await self.verify()
        if self._body is None:
            return UNKNOWN_WEIGHT
        return split_weight(self._body.get("spec") or {}, root=self._root, stable=self._stable, canary=self._canary)

    async def set_weight(self, weight: int) -> None:
        async def write() -> Body:
            assert self._resource is not None
            spec = split_spec(root=self._root, stable=self._stable, canary=self._canary, weight=weight,
                              version=self._resource.version)
            if self._body is None:
                return await self._client.create(self._resource, self._new_split(spec), namespace=self._namespace)
            # The resourceVersion makes this a conditional update: 409 if the split changed since it was read.
            patch = {"metadata": {"resourceVersion": self._body["metadata"]["resourceVersion"]}, "spec": spec}
            return await self._client.patch(self._resource, name=self._name, namespace=self._namespace, patch=patch)

        await write_optimistically(read=self.verify, write=write, keep=self._keep, fresh=self._resource is not None)

    def _keep(self, body: Body) -> None:
        self._body = body

    def _new_split(self, spec: Body) -> Body:
        assert self._resource is not None
        return {
            "apiVersion": self._resource.api_version,
            "kind": self._resource.kind,
            "metadata": {
                "name": self._name,
                "namespace": self._namespace,
                "labels": {ROLLOUT_LABEL: str(self._rollout["metadata"]["name"])},
                "ownerReferences": [owner_reference(self._rollout)],
            },
            "spec": spec,
        }

    async def reset(self) -> None:
        await self.set_weight(0)
