"""`sluice crds apply`: install or upgrade the CRDs packaged with sluice, and wait until the API server serves them.

Helm installs a chart's `crds/` directory on the first install only and never upgrades it, so the chart runs this
command in a pre-install/pre-upgrade hook Job (docs/operations.md). The CRDs are those of charts/sluice/crds, their
single source of truth, shipped in the package as `rollout/crds/`: a symlink in the source tree, which the build
resolves into files (package-data in pyproject.toml), so a wheel and the container image carry them.

Each CRD is server-side applied with field manager "sluice" and `force`: sluice owns its CRDs' spec, and a value
another manager set (kubectl, Helm's first install of `crds/`) is taken over rather than refused as a conflict.
Forcing is not enough for a field the new CRD no longer has. `spec.versions` is an atomic list, so the schemas are
replaced whole, but the rest of spec merges field by field, and server-side apply removes only what the applier
owned: a `names.categories` or a `conversion` webhook that Helm's install created would stay for ever. So before
applying, the ownership of `spec` that `metadata.managedFields` gives other managers is moved to sluice's apply entry
(as `kubectl apply --server-side` does when it upgrades from client-side apply); labels, annotations and status stay
with their managers.

Then every CRD is polled until its Established condition is True (NamesAccepted False fails at once), and the report
says which were created, updated (with the paths that changed) or unchanged. An updated schema has no condition of
its own: the API server serves it within moments of the write.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

import yaml

from rollout.kube import Body, Conflict, KubeClient, NotFound, Resource

CRDS = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
                namespaced=False)
FIELD_MANAGER = "sluice"
POLL_INTERVAL = 0.5  # seconds between two looks at the CRDs' conditions
TAKE_OVER_ATTEMPTS = 3  # a CRD that keeps changing while its managedFields are rewritten fails after this many
MAX_PATHS = 20  # changed paths listed per CRD; more are counted


class CrdError(Exception):
    """A CRD that cannot be applied as packaged: missing from the package, names refused, never Established."""


@dataclass(frozen=True)
class Change:
    """What applying one CRD did. `paths` name what changed: "+ path" added, "- path" removed, "~ path" changed."""

    name: str
    action: Literal["created", "updated", "unchanged"]
    paths: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        lines = [f"customresourcedefinition/{self.name} {self.action}"]
        lines += [f"  {path}" for path in self.paths[:MAX_PATHS]]
        if len(self.paths) > MAX_PATHS:
            lines.append(f"  ... and {len(self.paths) - MAX_PATHS} more")
        return lines


def packaged_crds() -> list[Body]:
    """The CRD documents shipped in the package (`rollout/crds/*.yaml`), in file-name order."""
    directory = resources.files("rollout") / "crds"
    docs: list[Body] = []
    if directory.is_dir():
        for entry in sorted(directory.iterdir(), key=lambda e: e.name):
            if entry.name.endswith((".yaml", ".yml")):
                docs.extend(doc for doc in yaml.safe_load_all(entry.read_text(encoding="utf-8"))
                            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition")
    if not docs:
        raise CrdError(f"no CRDs are packaged with sluice (looked in {directory})")
    return docs


# -- pure helpers ------------------------------------------------------------------------------------------------


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Union of two managedFields field sets (nested dicts whose leaves are `{}`), into `into`."""
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
    return into


def _is_ours(entry: Mapping[str, Any], manager: str) -> bool:
    return entry.get("manager") == manager and entry.get("operation") == "Apply" and not entry.get("subresource")


def take_over_spec(entries: Sequence[Mapping[str, Any]], *, manager: str = FIELD_MANAGER,
                   api_version: str = CRDS.api_version) -> list[dict[str, Any]] | None:
    """`metadata.managedFields` with every other manager's ownership of `spec` moved into `manager`'s Apply entry
    (created if missing), so that applying a CRD without a field removes it. None when no one else owns any of spec.
    Entries for a subresource (status) and other managers' metadata are left as they are."""
    moved: dict[str, Any] = {}
    kept: list[dict[str, Any]] = []
    for entry in entries:
        fields = entry.get("fieldsV1") or {}
        if _is_ours(entry, manager) or entry.get("subresource") or "f:spec" not in fields:
            kept.append(dict(entry))
            continue
        _merge(moved, fields["f:spec"])
        rest = {key: value for key, value in fields.items() if key != "f:spec"}
        if rest:
            kept.append({**entry, "fieldsV1": rest})
    if not moved:
        return None
    for index, entry in enumerate(kept):
        if _is_ours(entry, manager):
            fields = copy.deepcopy(entry.get("fieldsV1") or {})
            fields["f:spec"] = _merge(fields.get("f:spec") or {}, moved)
            kept[index] = {**entry, "fieldsV1": fields}
            return kept
    kept.append({"manager": manager, "operation": "Apply", "apiVersion": api_version, "fieldsType": "FieldsV1",
                 "fieldsV1": {"f:spec": moved}})
    return kept


def _children(value: Any) -> dict[str, Any] | None:
    """A value's parts as path segments: ".key" for a mapping, "[name]" for a list of named items (CRD versions,
    printer columns); None for a leaf (scalars, other lists), which compares as a whole."""
    if isinstance(value, Mapping):
        return {f".{key}": item for key, item in value.items()}
    if isinstance(value, list) and value and all(isinstance(i, Mapping) and "name" in i for i in value):
        names = [str(i["name"]) for i in value]
        if len(set(names)) == len(names):
            return {f"[{name}]": item for name, item in zip(names, value, strict=True)}
    return None


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """What changed from `before` to `after`, as sorted "+ path", "- path" and "~ path" lines, each naming the
    outermost part that was added, removed or changed (`spec.versions[v1alpha1].schema...properties.walk`)."""
    old, new = _children(before), _children(after)
    if old is None or new is None:
        return [] if before == after else [f"~ {path.lstrip('.')}"]
    lines: list[str] = []
    for segment in sorted(old.keys() | new.keys()):
        where = path + segment
        if segment not in old:
            lines.append(f"+ {where.lstrip('.')}")
        elif segment not in new:
            lines.append(f"- {where.lstrip('.')}")
        else:
            lines.extend(differences(old[segment], new[segment], where))
    return lines


def _comparable(crd: Body) -> dict[str, Any]:
    meta = crd.get("metadata") or {}
    return {"metadata": {"labels": meta.get("labels") or {}, "annotations": meta.get("annotations") or {}},
            "spec": crd.get("spec") or {}}


# -- against the API server --------------------------------------------------------------------------------------


async def _get(client: KubeClient, name: str) -> Body | None:
    try:
        return await client.get(CRDS, name=name)
    except NotFound:
        return None


async def _take_over(client: KubeClient, crd: Body) -> None:
    """Rewrite managedFields so that sluice owns all of spec (resourceVersion precondition; re-read on conflict)."""
    name = crd["metadata"]["name"]
    for _ in range(TAKE_OVER_ATTEMPTS):
        entries = take_over_spec(crd["metadata"].get("managedFields") or [])
        if entries is None:
            return
        try:
            await client.patch(CRDS, name=name, patch={"metadata": {
                "resourceVersion": crd["metadata"]["resourceVersion"], "managedFields": entries}})
            return
        except Conflict:
            current = await _get(client, name)
            if current is None:
                return  # deleted meanwhile: the apply creates it
            crd = current
    raise CrdError(f"{name} kept changing while sluice took over its spec; try again")


async def apply_crd(client: KubeClient, doc: Body) -> Change:
    """Server-side apply one CRD as "sluice" (forced, spec taken over first) and say what changed."""
    name = doc["metadata"]["name"]
    before = await _get(client, name)
    if before is not None:
        await _take_over(client, before)
    after = await client.patch(CRDS, name=name, patch=doc, patch_type="apply", field_manager=FIELD_MANAGER,
                               force=True)
    if before is None:
        return Change(name, "created")
    paths = differences(_comparable(before), _comparable(after))
    return Change(name, "updated" if paths else "unchanged", tuple(paths))


async def wait_established(client: KubeClient, names: Sequence[str], *, wait_seconds: float) -> None:
    """Poll until every named CRD is Established; CrdError when its names are refused or after `wait_seconds`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    pending = list(names)
    while True:
        waiting = []
        for name in pending:
            crd = await client.get(CRDS, name=name)
            conditions = {c.get("type"): c for c in (crd.get("status") or {}).get("conditions") or []}
            names_accepted = conditions.get("NamesAccepted") or {}
            if names_accepted.get("status") == "False":
                raise CrdError(f"{name}: the API server refused its names: {names_accepted.get('message', '')}")
            if (conditions.get("Established") or {}).get("status") != "True":
                waiting.append(name)
        if not waiting:
            return
        if loop.time() >= deadline:
            raise CrdError(f"not Established after {wait_seconds:g}s: {', '.join(waiting)}")
        pending = waiting
        await asyncio.sleep(POLL_INTERVAL)


async def apply_crds(client: KubeClient, docs: Sequence[Body], *, wait_seconds: float) -> list[Change]:
    """Apply every CRD, then wait until all are Established. One CRD failing stops before the next."""
    changes = [await apply_crd(client, doc) for doc in docs]
    await wait_established(client, [change.name for change in changes], wait_seconds=wait_seconds)
    return changes
