"""What an operator operation (docs/api.md: pause, resume, promote, abort, retry, restart, undo, image) does to a
Rollout, decided purely: `plan_operation(op, rollout, params, ...) -> Outcome`, the JSON merge patches to write.

The HTTP API (rollout/api.py) reads the Rollout fresh from the API server, calls `plan_operation`, writes the patches
in order and records an Event with `Outcome.summary`; the controller's next reconcile (strategies/canary.py) does the
rest. Nothing here talks to Kubernetes. Every patch carries the resourceVersion it was decided on as a precondition,
so a concurrent change makes the write fail with 409 and the API re-reads and re-decides instead of overwriting it.
When an Outcome has two patches (resume: spec, then status), the second carries the same precondition and so
conflicts with the first one's own write: the API's re-read and re-plan then yields only what is still missing (or
the applier may carry the resourceVersion the first write returned over with `Patch.at`).

The words, as the planner reads the status:

- *in progress*: a canary is being walked (or aborted): `status.canaryHash != status.stableHash`, or the template's
  hash differs from `status.stableHash`. A Rollout the controller has not yet seen (no `stableHash`) is not.
- *paused at a step*: `status.controllerPause` with non-empty `status.pauseConditions` (a `pause` step, or an
  Inconclusive analysis). `controllerPause` with empty conditions is a release the controller has not acted on yet.

Decisions on edge cases:

- Repeats are 200 with no patch: pause on a paused Rollout, abort on an aborted one, promote full twice, an image
  already set, undo to the revision already in the template, and resume/promote/retry while the release they asked
  for is still waiting for the controller (controllerPause with empty pauseConditions; abortedAt with abort false).
- resume releases both kinds of pause at once: `spec.paused: false` (a spec patch) and the step pause (a status patch
  `pauseConditions: null`, which also accepts an Inconclusive analysis). promote never clears `spec.paused`: a hold a
  human put on the Rollout is not lifted by releasing a step; it answers 409 when the step is not paused.
- promote and abort need a canary in progress; promote on an aborted Rollout is 409 (retry first: the planner would
  drop promoteFull while aborted). restart needs the opposite (an aborted Rollout counts as in progress: its
  template is the aborted canary's, so "restart" would not bring back the stable pods).
- undo: `toRevision` is a ReplicaSet's `sluice.dev/revision`; the default is the highest revision below the current
  template's (all kept revisions when the template has no ReplicaSet yet). A revision that is not kept, or no
  earlier revision at all, is 409 (docs/api.md lists "no such revision kept" under 409; 404 there means no such
  Rollout). The template is the ReplicaSet's minus the hash label, sent as a merge patch that nulls every key the
  current template has and the target lacks, so the result is exactly the target (null values in the ReplicaSet's
  template are dropped: merge patches cannot carry them). The API server defaults a ReplicaSet's pod template
  (imagePullPolicy, dnsPolicy, ...), and a defaulted template hashes differently from what was applied: the exact
  template is taken from the ReplicaSet's TEMPLATE_ANNOTATION when it has one that hashes to its revision; without
  it the undo is a new revision with the same pods, walked through the steps, rather than a fast rollback.
- image: `containers` are searched before `initContainers`; the whole list is sent (a merge patch replaces lists).
  An image with whitespace, control or non-ASCII characters is 400; anything else the kubelet judges.
- Bodies: unknown fields are 400 naming them; a field of the wrong type is 400; null counts as absent.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from strategies.model import HASH_LABEL, REVISION_ANNOTATION, format_time, template_hash

OPERATIONS = ("pause", "resume", "promote", "abort", "retry", "restart", "undo", "image")
RESTARTED_AT_ANNOTATION = "sluice.dev/restartedAt"
# On a ReplicaSet: the Rollout's template exactly as it was applied (JSON), which the API server's defaulting of
# the ReplicaSet's own template loses. Read when present and when it hashes to the ReplicaSet's hash.
TEMPLATE_ANNOTATION = "sluice.dev/template"

# The body each operation takes: field -> (type, required).
_PARAMS: dict[str, dict[str, tuple[type, bool]]] = {
    "pause": {}, "resume": {}, "abort": {}, "retry": {}, "restart": {},
    "promote": {"full": (bool, False)},
    "undo": {"toRevision": (int, False)},
    "image": {"container": (str, True), "image": (str, True)},
}
_TYPE_NAMES = {bool: "a boolean", int: "an integer", str: "a string"}


class OperationError(Exception):
    """The operation cannot be done: 400 (bad parameters), 404 (no such thing), 409 (wrong state for it)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Patch:
    subresource: str | None  # None: the Rollout itself (spec, metadata); "status": the status subresource
    body: dict[str, Any]  # a JSON merge patch, with metadata.resourceVersion as a precondition

    def at(self, resource_version: str) -> Patch:
        """The same patch with another resourceVersion precondition (the one a previous write returned)."""
        body = copy.deepcopy(self.body)
        body.setdefault("metadata", {})["resourceVersion"] = resource_version
        return replace(self, body=body)


@dataclass(frozen=True)
class Outcome:
    patches: tuple[Patch, ...]  # empty: the effect is already in place, nothing to write
    summary: str  # one line for the Event: "pause", "promote (full)", "undo to revision 3", ...


def plan_operation(op: str, rollout: Mapping[str, Any], params: Mapping[str, Any], *,
                   replica_sets: Sequence[Mapping[str, Any]] = (), now: datetime) -> Outcome:
    """What `op` with `params` (the decoded JSON body) writes to `rollout` (the full body as read); raises
    OperationError when the parameters are wrong or the Rollout is in the wrong state for it."""
    if op not in _PARAMS:
        raise OperationError(400, f"unknown operation {op!r} (one of {', '.join(OPERATIONS)})")
    given = _validated(op, params)
    r = _View(rollout)
    match op:
        case "pause":
            return _pause(r)
        case "resume":
            return _resume(r)
        case "promote":
            return _promote(r, full=bool(given.get("full", False)))
        case "abort":
            return _abort(r)
        case "retry":
            return _retry(r)
        case "restart":
            return _restart(r, now)
        case "undo":
            return _undo(r, given.get("toRevision"), replica_sets)
        case _:
            return _image(r, str(given["container"]), str(given["image"]))


# -- reading the Rollout -----------------------------------------------------------------------------------------


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


class _View:
    """The parts of a Rollout body the operations read, tolerant of a missing status or an odd spec."""

    def __init__(self, body: Mapping[str, Any]) -> None:
        self.meta = _map(body.get("metadata"))
        self.spec = _map(body.get("spec"))
        self.status = _map(body.get("status"))
        self.name = str(self.meta.get("name", ""))
        self.template = _map(self.spec.get("template"))
        self.template_hash = template_hash(self.template)

    @property
    def stable(self) -> str | None:
        return self.status.get("stableHash") or None

    @property
    def canary(self) -> str | None:
        return self.status.get("canaryHash") or None

    @property
    def in_progress(self) -> bool:
        if self.stable is None:
            return False  # not reconciled yet: a first version goes straight to Healthy
        return (self.canary is not None and self.canary != self.stable) or self.template_hash != self.stable

    @property
    def paused(self) -> bool:
        return self.spec.get("paused") is True

    @property
    def controller_pause(self) -> bool:
        return self.status.get("controllerPause") is True

    @property
    def step_paused(self) -> bool:
        return self.controller_pause and bool(self.status.get("pauseConditions"))

    @property
    def release_pending(self) -> bool:
        """A step pause was released (pauseConditions removed) and the controller has not acted on it yet."""
        return self.controller_pause and not self.status.get("pauseConditions")

    @property
    def aborted(self) -> bool:
        return self.status.get("abort") is True

    def patch(self, subresource: str | None, changes: Mapping[str, Any]) -> Patch:
        body: dict[str, Any] = dict(changes)
        version = self.meta.get("resourceVersion")
        if version:
            body["metadata"] = {**_map(body.get("metadata")), "resourceVersion": str(version)}
        return Patch(subresource, body)


def _validated(op: str, params: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(params, Mapping):
        raise OperationError(400, f"the body of {op} must be a JSON object")
    allowed = _PARAMS[op]
    unknown = sorted(str(k) for k in params if k not in allowed)
    if unknown:
        takes = f"it takes {', '.join(allowed)}" if allowed else "it takes no fields"
        raise OperationError(400, f"unknown field{'s' if len(unknown) > 1 else ''} in the body of {op}: "
                             f"{', '.join(unknown)} ({takes})")
    given: dict[str, Any] = {}
    for field_name, (kind, required) in allowed.items():
        value = params.get(field_name)
        if value is None:
            if required:
                raise OperationError(400, f"{op}: {field_name} is required")
            continue
        # bool is an int in Python; JSON true is no revision number.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise OperationError(400, f"{op}: {field_name} must be {_TYPE_NAMES[kind]}, not {json_type(value)}")
        given[field_name] = value
    return given


def json_type(value: Any) -> str:
    """The JSON name of a decoded value's type, for messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


# -- the operations ----------------------------------------------------------------------------------------------


def _pause(r: _View) -> Outcome:
    if r.paused:
        return Outcome((), "pause")
    return Outcome((r.patch(None, {"spec": {"paused": True}}),), "pause")


def _resume(r: _View) -> Outcome:
    patches: list[Patch] = []
    if r.paused:
        patches.append(r.patch(None, {"spec": {"paused": False}}))
    if r.step_paused:
        patches.append(r.patch("status", {"status": {"pauseConditions": None}}))
    if not patches and not r.release_pending:
        raise OperationError(409, f"cannot resume {r.name}: it is not paused")
    return Outcome(tuple(patches), "resume")


def _need_canary(r: _View, op: str) -> None:
    if not r.in_progress:
        where = f" (revision {r.stable} is stable)" if r.stable else " (the controller has not rolled it out yet)"
        raise OperationError(409, f"cannot {op} {r.name}: no canary in progress{where}")
    if r.template_hash not in (r.canary, r.stable):
        # The planner drops abort and promoteFull on a revision it has not started yet (they belong to the canary
        # that was being walked): accepting them now would answer 200 and do nothing.
        raise OperationError(409, f"cannot {op} {r.name}: the controller has not picked up revision "
                             f"{r.template_hash} yet; retry in a moment")


def _promote(r: _View, *, full: bool) -> Outcome:
    _need_canary(r, "promote")
    if r.aborted:
        raise OperationError(409, f"cannot promote {r.name}: it is aborted (retry walks the steps again)")
    if full:
        if r.status.get("promoteFull") is True:
            return Outcome((), "promote (full)")
        return Outcome((r.patch("status", {"status": {"promoteFull": True}}),), "promote (full)")
    if r.step_paused:
        return Outcome((r.patch("status", {"status": {"pauseConditions": None}}),), "promote")
    if r.release_pending:
        return Outcome((), "promote")
    held = " (it is held by spec.paused: resume releases that)" if r.paused else ""
    raise OperationError(409, f"cannot promote {r.name}: it is not paused at a step{held}; use full to skip the "
                         "remaining steps (blue-green: the wait before the switch; analysis still decides)")


def _abort(r: _View) -> Outcome:
    _need_canary(r, "abort")
    if r.aborted:
        return Outcome((), "abort")
    return Outcome((r.patch("status", {"status": {"abort": True}}),), "abort")


def _retry(r: _View) -> Outcome:
    if r.aborted:
        return Outcome((r.patch("status", {"status": {"abort": False}}),), "retry")
    if r.status.get("abortedAt") and r.in_progress:
        return Outcome((), "retry")  # retry already requested; the controller has not started the walk yet
    raise OperationError(409, f"cannot retry {r.name}: it is not aborted")


def _restart(r: _View, now: datetime) -> Outcome:
    if r.in_progress:
        what = "is aborted (retry or undo first)" if r.aborted else "has a rollout in progress"
        raise OperationError(409, f"cannot restart {r.name}: it {what}")
    moment = now.astimezone(UTC) if now.tzinfo is not None else now
    stamp = {"metadata": {"annotations": {RESTARTED_AT_ANNOTATION: format_time(moment)}}}
    return Outcome((r.patch(None, {"spec": {"template": stamp}}),), "restart")


# -- undo --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Revision:
    number: int
    hash: str
    name: str
    template: Mapping[str, Any]


def _revisions(replica_sets: Sequence[Mapping[str, Any]]) -> list[_Revision]:
    """The kept revisions, oldest first; ReplicaSets without a readable revision or hash are skipped."""
    found: list[_Revision] = []
    for rs in replica_sets:
        meta, spec = _map(rs.get("metadata")), _map(rs.get("spec"))
        template = _map(spec.get("template"))
        labels = _map(meta.get("labels")) or _map(_map(template.get("metadata")).get("labels"))
        try:
            number = int(str(_map(meta.get("annotations")).get(REVISION_ANNOTATION)))
        except ValueError:
            continue
        hash_ = labels.get(HASH_LABEL)
        if number > 0 and isinstance(hash_, str) and hash_ and template:
            kept = _kept_template(_map(meta.get("annotations")).get(TEMPLATE_ANNOTATION), hash_)
            found.append(_Revision(number, hash_, str(meta.get("name", "")), kept or template))
    return sorted(found, key=lambda rev: (rev.number, rev.name))


def _kept_template(raw: Any, hash_: str) -> Mapping[str, Any] | None:
    if not isinstance(raw, str):
        return None
    try:
        template = json.loads(raw)
    except ValueError:
        return None
    return template if isinstance(template, Mapping) and template_hash(template) == hash_ else None


def _undo(r: _View, to_revision: int | None, replica_sets: Sequence[Mapping[str, Any]]) -> Outcome:
    revisions = _revisions(replica_sets)
    current = next((rev.number for rev in revisions if rev.hash == r.template_hash), None)
    if to_revision is not None:
        if to_revision <= 0:
            raise OperationError(400, f"undo: toRevision must be a revision number (1 or more), not {to_revision}")
        target = next((rev for rev in revisions if rev.number == to_revision), None)
        if target is None:
            kept = ", ".join(str(rev.number) for rev in revisions) or "none"
            raise OperationError(409, f"cannot undo {r.name} to revision {to_revision}: it is not kept "
                                 f"(kept revisions: {kept})")
    else:
        earlier = [rev for rev in revisions
                   if rev.hash != r.template_hash and (current is None or rev.number < current)]
        if not earlier:
            raise OperationError(409, f"cannot undo {r.name}: there is no earlier revision to go back to")
        target = earlier[-1]
    summary = f"undo to revision {target.number}"
    if target.hash == r.template_hash:
        return Outcome((), summary)
    template = _without_nulls(copy.deepcopy(dict(target.template)))
    labels = _map(template.get("metadata")).get("labels")
    if isinstance(labels, dict):
        labels.pop(HASH_LABEL, None)
    changes = _merge_diff(r.template, template)
    if not changes:
        return Outcome((), summary)
    return Outcome((r.patch(None, {"spec": {"template": changes}}),), summary)


def _without_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _merge_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into exactly `new` (which holds no nulls)."""
    diff: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            nested = _merge_diff(before, value)
            if nested:
                diff[key] = nested
        elif key not in old or before != value:
            diff[key] = copy.deepcopy(value)
    return diff


# -- image -------------------------------------------------------------------------------------------------------


def _image(r: _View, container: str, image: str) -> Outcome:
    if not container:
        raise OperationError(400, "image: container must not be empty")
    if not image or any(not "!" <= c <= "~" for c in image):
        raise OperationError(400, f"image: {image[:200]!r} is not an image reference (empty, or with whitespace or "
                             "characters outside ASCII)")
    pod = _map(r.template.get("spec"))
    summary = f"image {container}={image}"
    for key in ("containers", "initContainers"):
        listed = _as_list(pod.get(key))
        for i, entry in enumerate(listed):
            if isinstance(entry, Mapping) and entry.get("name") == container:
                if entry.get("image") == image:
                    return Outcome((), summary)
                changed = copy.deepcopy(listed)
                changed[i] = {**changed[i], "image": image}
                return Outcome((r.patch(None, {"spec": {"template": {"spec": {key: changed}}}}),), summary)
    names = [str(c.get("name")) for key in ("containers", "initContainers")
             for c in _as_list(pod.get(key)) if isinstance(c, Mapping)]
    raise OperationError(400, f"{r.name} has no container {container!r} "
                         f"(its containers: {', '.join(names) or 'none'})")
