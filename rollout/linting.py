"""`sluice lint`: the pre-flight guardrails (strategies/policy.py) run offline on manifests, for CI.

Reads multi-document YAML (files and stdin), turns Rollouts (sluice.dev/v1alpha1) and apps/v1 Deployments,
StatefulSets and DaemonSets into `policy.Workload`s, and ignores every other kind, except PodDisruptionBudgets: a PDB
anywhere in the input, in the same namespace, whose selector matches a workload's pod labels covers that workload.
A Rollout is judged as the controller judges it (strategies/preflight.py): its `spec.disruptionBudget` and
`spec.spread` count, its `spec.policy` tightens the modes given on the command line, and its
`sluice.dev/policy-override` annotation sets them (the admission policy checks who may set it; lint only reads it).
DaemonSets run one pod per node, so the rules about several replicas (disruption-budget, spread) do not apply to
them.

`read_sources` is the only function here that does I/O; the rest turns text into results and results into text, so
rollout/cli.py prints and picks the exit code. The JSON output's shape is `OUTPUT_SCHEMA` (JSON Schema 2020-12).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from strategies import policy
from strategies.guardrails import Guardrails, parse_guardrails
from strategies.preflight import modes_for

STDIN = "-"
STDIN_NAME = "<stdin>"
ROLLOUT_API = "sluice.dev/v1alpha1"
WORKLOAD_KINDS = {"Deployment": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Rollout": ROLLOUT_API}

_VIOLATION_SCHEMA = {
    "type": "object",
    "required": ["rule", "mode", "container", "field", "message", "fix"],
    "additionalProperties": False,
    "properties": {
        "rule": {"enum": list(policy.RULES)},
        "mode": {"enum": ["enforce", "warn"]},
        "container": {"type": ["string", "null"], "description": "null: the pod as a whole"},
        "field": {"type": "string", "description": "path in the object, e.g. spec.template.spec.containers[0].image"},
        "message": {"type": "string"},
        "fix": {"type": "string"},
    },
}
OUTPUT_SCHEMA: Mapping[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "sluice lint --output json",
    "type": "object",
    "required": ["blocked", "objects"],
    "additionalProperties": False,
    "properties": {
        "blocked": {"type": "boolean", "description": "an enforce rule failed (exit code 1)"},
        "objects": {
            "type": "array",
            "description": "every workload checked, in input order, with or without violations",
            "items": {
                "type": "object",
                "required": ["file", "kind", "namespace", "name", "violations"],
                "additionalProperties": False,
                "properties": {
                    "file": {"type": "string", "description": "the file name, or <stdin>"},
                    "kind": {"enum": list(WORKLOAD_KINDS)},
                    "namespace": {"type": "string"},
                    "name": {"type": "string"},
                    "violations": {"type": "array", "items": _VIOLATION_SCHEMA},
                },
            },
        },
    },
}


class LintInputError(Exception):
    """Input that cannot be linted (unreadable file, bad YAML): one line naming the file; exit code 2."""


@dataclass(frozen=True)
class Source:
    name: str  # the file name as given, or <stdin>
    text: str


@dataclass(frozen=True)
class Result:
    file: str
    workload: policy.Workload
    report: policy.Report


def read_sources(paths: Sequence[str], stdin: TextIO) -> list[Source]:
    """The files in order; `-` is stdin (read once, wherever it appears)."""
    sources = []
    for path in paths:
        if path == STDIN:
            sources.append(Source(STDIN_NAME, stdin.read()))
            continue
        try:
            sources.append(Source(path, Path(path).read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise LintInputError(f"{path}: cannot read: {reason}") from exc
    return sources


def _documents(source: Source) -> Iterator[Mapping[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(source.text))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise LintInputError(f"{source.name}: not valid YAML{where}: {problem}") from exc
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            yield from (item for item in doc["items"] if isinstance(item, Mapping))  # kubectl get -o yaml
        elif isinstance(doc, Mapping):
            yield doc


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _namespace(doc: Mapping[str, Any]) -> str:
    return str(_mapping(doc.get("metadata")).get("namespace") or "default")


def _replicas(spec: Mapping[str, Any]) -> int:
    value = spec.get("replicas", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) else 1


def _covered_by_pdb(doc: Mapping[str, Any], template: Mapping[str, Any], pdbs: Sequence[Mapping[str, Any]]) -> bool:
    labels = _mapping(_mapping(template.get("metadata")).get("labels"))
    return any(_namespace(pdb) == _namespace(doc) and policy.selector_matches(_mapping(pdb.get("spec")).get("selector"),
                                                                               labels)
               for pdb in pdbs)


def workload(doc: Mapping[str, Any], pdbs: Sequence[Mapping[str, Any]]) -> policy.Workload | None:
    """The Workload a document describes, or None for a kind `sluice lint` does not check."""
    kind = doc.get("kind")
    if not isinstance(kind, str) or WORKLOAD_KINDS.get(kind) != doc.get("apiVersion"):
        return None
    spec = _mapping(doc.get("spec"))
    template = _mapping(spec.get("template"))
    guard = guardrails(doc)
    return policy.Workload(
        kind=kind,
        namespace=_namespace(doc),
        name=str(_mapping(doc.get("metadata")).get("name") or "?"),
        replicas=None if kind == "DaemonSet" else _replicas(spec),
        template=template,
        disruption_budget=guard.budget is not None or _covered_by_pdb(doc, template, pdbs),
        spread=guard.spread,
    )


def guardrails(doc: Mapping[str, Any]) -> Guardrails:
    """A Rollout's guardrail fields (none for other kinds); LintInputError names what cannot be read."""
    if doc.get("kind") != "Rollout":
        return Guardrails()
    meta = _mapping(doc.get("metadata"))
    try:
        return parse_guardrails(_mapping(doc.get("spec")), _mapping(meta.get("annotations")))
    except policy.PolicyError as exc:
        raise LintInputError(f"Rollout {_namespace(doc)}/{meta.get('name') or '?'}: {exc}") from None


def lint(sources: Sequence[Source], modes: Mapping[str, policy.Mode]) -> list[Result]:
    """Every workload in the sources, checked; LintInputError for a source that is not YAML."""
    parsed = [(source.name, doc) for source in sources for doc in _documents(source)]
    pdbs = [doc for _, doc in parsed if doc.get("kind") == "PodDisruptionBudget"]
    results = []
    for name, doc in parsed:
        try:
            found = workload(doc, pdbs)
            if found is not None:
                results.append(Result(name, found, policy.check(found, modes_for(modes, guardrails(doc))[0])))
        except LintInputError as exc:
            raise LintInputError(f"{name}: {exc}") from None
    return results


def blocked(results: Sequence[Result]) -> bool:
    return any(r.report.blocked for r in results)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def render_text(results: Sequence[Result], *, files: int) -> str:
    """One line per violation, `FILE: Kind ns/name: container C: rule (mode): message; fix: ...`, then a summary."""
    lines = []
    for r in results:
        w = r.workload
        for mode, v in r.report.findings():
            container = f"container {v.container}: " if v.container is not None else ""
            lines.append(f"{r.file}: {w.kind} {w.namespace}/{w.name}: {container}{v.rule} ({mode}): {v.message}; "
                         f"fix: {v.fix}")
    enforced = sum(len(r.report.enforced) for r in results)
    warned = sum(len(r.report.warned) for r in results)
    verdict = "blocked" if enforced else "ok"
    lines.append(f"{_count(len(results), 'object')} in {_count(files, 'file')} checked: "
                 f"{_count(enforced, 'enforce failure')}, {_count(warned, 'warning')}: {verdict}")
    return "\n".join(lines)


def as_json(results: Sequence[Result]) -> dict[str, Any]:
    """The `--output json` document (OUTPUT_SCHEMA)."""
    objects = [{
        "file": r.file, "kind": r.workload.kind, "namespace": r.workload.namespace, "name": r.workload.name,
        "violations": [{"rule": v.rule, "mode": mode, "container": v.container, "field": v.field,
                        "message": v.message, "fix": v.fix} for mode, v in r.report.findings()],
    } for r in results]
    return {"blocked": blocked(results), "objects": objects}


def render_json(results: Sequence[Result]) -> str:
    return json.dumps(as_json(results), indent=2)
