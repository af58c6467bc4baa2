"""Analysis templates and runs as plain, frozen data: metrics, args, and `{{args.NAME}}` substitution.

A template (AnalysisTemplate or ClusterAnalysisTemplate) names `args` and `metrics`. When a Rollout uses templates,
their metrics are merged, every `{{args.NAME}}` is replaced by the arg's value, and the result is frozen into the
AnalysisRun's spec: the run never looks at a template again, so editing a template does not change a running
analysis.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from analysis.jsonpath import JsonPathError, extract
from strategies.model import AnalysisArg, SpecError, parse_duration

NO_DATA_POLICIES = ("Inconclusive", "Fail", "Pass")


@dataclass(frozen=True)
class Header:
    """A request header for a provider: a literal value or a key of a Secret in the run's namespace."""

    name: str
    value: str | None = None
    secret: tuple[str, str] | None = None  # (Secret name, key)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    provider: str  # "prometheus" | "web"
    provider_config: Mapping[str, Any]  # the provider's block as written, args substituted
    interval: float | None = None  # seconds between measurements; None: measure once
    initial_delay: float = 0.0
    count: int | None = None  # measurements wanted (Error ones do not count); None: 1, or forever with an interval
    success_condition: str | None = None
    failure_condition: str | None = None
    failure_limit: int = 0
    inconclusive_limit: int = 0
    consecutive_error_limit: int = 4
    no_data_policy: str = "Inconclusive"  # one of NO_DATA_POLICIES
    timeout: float = 10.0  # seconds one measurement may take
    headers: tuple[Header, ...] = ()

    @property
    def wanted(self) -> int | None:
        """How many (non-Error) measurements finish the metric; None: it runs until the run is terminated."""
        if self.count is not None:
            return self.count
        return None if self.interval is not None else 1



# -- parsing -----------------------------------------------------------------------------------------------------

PROVIDERS = ("prometheus", "web")
_PLACEHOLDER = re.compile(r"\{\{\s*args\.([A-Za-z0-9_.-]+)\s*\}\}")


def _duration(raw: Mapping[str, Any], key: str, where: str) -> float | None:
    value = raw.get(key)
    return None if value is None else parse_duration(str(value), field_name=f"{where}.{key}")


def _limit(raw: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = raw.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SpecError(f"{where}.{key}: must be a non-negative integer")
    return value


def _headers(raw: Any, where: str) -> tuple[Header, ...]:
    headers = []
    for i, h in enumerate(raw or ()):
        name = str((h or {}).get("name", ""))
        secret = ((h.get("valueFrom") or {}).get("secretKeyRef") or {}) if isinstance(h, Mapping) else {}
        if not name or ("value" in h) == bool(secret):
            raise SpecError(f"{where}.headers[{i}]: needs a name and exactly one of value, valueFrom.secretKeyRef")
        if secret and not (secret.get("name") and secret.get("key")):
            raise SpecError(f"{where}.headers[{i}].valueFrom.secretKeyRef: needs name and key")
        headers.append(Header(name, str(h["value"]) if "value" in h else None,
                              (str(secret["name"]), str(secret["key"])) if secret else None))
    return tuple(headers)


def parse_metric(raw: Mapping[str, Any], *, where: str) -> MetricSpec:
    """One metric as written in a template (args already substituted); SpecError names the field."""
    name = str(raw.get("name", ""))
    if not name:
        raise SpecError(f"{where}.name: required")
    where = f"{where} ({name})"
    provider_raw = raw.get("provider") or {}
    kinds = [k for k in PROVIDERS if provider_raw.get(k) is not None]
    if len(kinds) != 1:
        raise SpecError(f"{where}.provider: needs exactly one of {', '.join(PROVIDERS)}")
    block = dict(provider_raw[kinds[0]])
    provider_where = f"{where}.provider.{kinds[0]}"
    timeout = _duration(block, "timeout", provider_where)
    if timeout is not None and timeout <= 0:
        raise SpecError(f"{provider_where}.timeout: must be more than zero")
    headers = _headers(block.pop("headers", None), provider_where)
    block.pop("timeout", None)
    if not raw.get("successCondition") and not raw.get("failureCondition"):
        raise SpecError(f"{where}: needs a successCondition, a failureCondition, or both")
    count = raw.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise SpecError(f"{where}.count: must be a positive integer")
    policy = str(raw.get("noDataPolicy", "Inconclusive"))
    if policy not in NO_DATA_POLICIES:
        raise SpecError(f"{where}.noDataPolicy: one of {', '.join(NO_DATA_POLICIES)}")
    interval = _duration(raw, "interval", where)
    if interval is not None and interval <= 0:
        raise SpecError(f"{where}.interval: must be more than zero")
    return MetricSpec(
        name=name, provider=kinds[0], provider_config=block, interval=interval,
        initial_delay=_duration(raw, "initialDelay", where) or 0.0, count=count,
        success_condition=raw.get("successCondition") or None, failure_condition=raw.get("failureCondition") or None,
        failure_limit=_limit(raw, "failureLimit", 0, where),
        inconclusive_limit=_limit(raw, "inconclusiveLimit", 0, where),
        consecutive_error_limit=_limit(raw, "consecutiveErrorLimit", 4, where),
        no_data_policy=policy, timeout=10.0 if timeout is None else timeout, headers=headers,
    )


def parse_run_metrics(run_spec: Mapping[str, Any]) -> tuple[MetricSpec, ...]:
    """The metrics frozen into an AnalysisRun's spec."""
    return tuple(parse_metric(m, where=f"spec.metrics[{i}]") for i, m in enumerate(run_spec.get("metrics") or ()))


def substitute(value: Any, args: Mapping[str, str], *, where: str) -> Any:
    """Replace every `{{args.NAME}}` in the strings of `value` (recursively); an unknown NAME is a SpecError."""
    if isinstance(value, str):
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in args:
                known = ", ".join(sorted(args)) or "none"
                raise SpecError(f"{where}: {{{{args.{name}}}}} names no arg (known: {known})")
            return args[name]
        return _PLACEHOLDER.sub(one, value)
    if isinstance(value, Mapping):
        return {k: substitute(v, args, where=where) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, args, where=where) for v in value]
    return value


@dataclass(frozen=True)
class NamedTemplate:
    """A template's spec with where it came from, for messages: 'AnalysisTemplate ns/name'."""

    source: str
    spec: Mapping[str, Any]


def build_run_spec(templates: Sequence[NamedTemplate], given: Mapping[str, str]) -> dict[str, Any]:
    """Merge templates into an AnalysisRun spec: resolve args (given values over template defaults), substitute them
    into the metrics, and check every metric parses. SpecError names the template, metric and field."""
    declared: dict[str, str | None] = {}
    for template in templates:
        for a in template.spec.get("args") or ():
            name = str(a.get("name", ""))
            default = a.get("value")
            if declared.get(name) is None:
                declared[name] = None if default is None else str(default)
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise SpecError(f"args {', '.join(unknown)}: not declared by any of the templates "
                        f"({', '.join(t.source for t in templates)})")
    values = {name: given.get(name, default) for name, default in declared.items()}
    missing = sorted(name for name, value in values.items() if value is None)
    if missing:
        raise SpecError(f"args {', '.join(missing)}: no value (give it in the Rollout's analysis args)")
    resolved = {k: str(v) for k, v in values.items()}
    metrics: list[Any] = []
    seen: dict[str, str] = {}
    for template in templates:
        for i, raw in enumerate(template.spec.get("metrics") or ()):
            where = f"{template.source} spec.metrics[{i}]"
            metric = substitute(raw, resolved, where=where)
            parse_metric(metric, where=where)
            name = metric["name"]
            if name in seen:
                raise SpecError(f"{where}: metric {name} is also defined by {seen[name]}")
            seen[name] = template.source
            metrics.append(metric)
    return {"args": [{"name": k, "value": v} for k, v in sorted(resolved.items())], "metrics": metrics}


def rollout_arg_values(args: Sequence[AnalysisArg], rollout: Mapping[str, Any], *, stable_hash: str,
                       canary_hash: str) -> dict[str, str]:
    """The values of a Rollout's analysis args: literals, pod-template hashes, or fields of the Rollout."""
    values: dict[str, str] = {}
    for arg in args:
        if arg.value is not None:
            values[arg.name] = arg.value
            continue
        source = arg.value_from or {}
        if "podTemplateHashValue" in source:
            values[arg.name] = stable_hash if source["podTemplateHashValue"] == "Stable" else canary_hash
            continue
        path = str((source.get("fieldRef") or {}).get("fieldPath", ""))
        try:
            found = extract(rollout, "$." + path)
        except JsonPathError as exc:
            raise SpecError(f"arg {arg.name}: fieldRef {path}: {exc}") from None
        if isinstance(found, Mapping | list) or found is None:
            raise SpecError(f"arg {arg.name}: fieldRef {path} is not a single value")
        values[arg.name] = str(found).lower() if isinstance(found, bool) else str(found)
    return values
