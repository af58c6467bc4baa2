"""What a Rollout asks of the pre-flight guardrails, parsed: its own rule modes, the override of the cluster's modes,
the disruption budget sluice keeps for it and the spread sluice adds to its pods.

- `spec.policy` may only tighten the cluster's modes (strategies/policy.py `resolve_modes`).
- The annotations `sluice.dev/policy-override` (`rule=mode,...`) and `sluice.dev/policy-override-by` (a username)
  set modes in any direction. The annotations are trustworthy because the chart's ValidatingAdmissionPolicy lets a
  request add or change them only when `-by` is the requesting user and that user may `override-policy` on the
  Rollout (a SubjectAccessReview the API server runs; charts/sluice/templates/policy-override.yaml).
- `spec.disruptionBudget` becomes a PodDisruptionBudget whose `minAvailable` is an absolute number computed from
  `spec.replicas` (`min_available`): the canary's extra pods never loosen it, and it follows the replica count.
- `spec.spread` becomes one podAntiAffinity term per ReplicaSet (`with_spread`), written into the ReplicaSet's pod
  template, never the Rollout's, so the template hash (the revision) does not change.

Pure: parsed by strategies/model.py, used by strategies/preflight.py (the planners' check) and rollout/ (applying,
`sluice lint`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from strategies.policy import HOSTNAME_KEY, SPREAD_VALUES, Mode, PolicyError, parse_mode, parse_modes

OVERRIDE_ANNOTATION = "sluice.dev/policy-override"
OVERRIDE_BY_ANNOTATION = "sluice.dev/policy-override-by"
SPREAD_ANNOTATION = "sluice.dev/spread"  # on ReplicaSets: the spread their pod template carries


@dataclass(frozen=True)
class DisruptionBudget:
    """Exactly one of the two, each an integer or a percentage string ("25%")."""

    min_available: int | str | None = None
    max_unavailable: int | str | None = None

    def min_available_for(self, replicas: int) -> int:
        """The budget as an absolute minAvailable for `replicas` pods; percentages round up, as Kubernetes does."""
        if self.min_available is not None:
            return min(_scaled(self.min_available, replicas), replicas) if isinstance(self.min_available, str) \
                else self.min_available
        return max(replicas - _scaled(self.max_unavailable or 0, replicas), 0)


@dataclass(frozen=True)
class Guardrails:
    tighten: Mapping[str, Mode] = field(default_factory=dict)  # spec.policy
    budget: DisruptionBudget | None = None
    spread: str | None = None
    override: Mapping[str, Mode] = field(default_factory=dict)
    override_by: str | None = None
    override_error: str | None = None  # an override that cannot be honoured, and why (reported, not applied)


def _scaled(value: int | str, replicas: int) -> int:
    if isinstance(value, int):
        return value
    return math.ceil(int(value.rstrip("%")) * replicas / 100)


def _int_or_percent(value: Any, where: str) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PolicyError(f"{where}: must be an integer or a percentage")
    if isinstance(value, int):
        if value < 0:
            raise PolicyError(f"{where}: must not be negative")
        return value
    number = value[:-1] if value.endswith("%") else ""
    if not number.isdigit() or int(number) > 100:
        raise PolicyError(f"{where}: {value!r} is not a percentage (0% to 100%)")
    return value


def _budget(raw: Any) -> DisruptionBudget | None:
    if raw is None:
        return None
    where = "spec.disruptionBudget"
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where}: must be an object with minAvailable or maxUnavailable")
    given = [k for k in ("minAvailable", "maxUnavailable") if raw.get(k) is not None]
    if len(given) != 1:
        raise PolicyError(f"{where}: needs exactly one of minAvailable, maxUnavailable")
    value = _int_or_percent(raw[given[0]], f"{where}.{given[0]}")
    return DisruptionBudget(min_available=value) if given[0] == "minAvailable" else DisruptionBudget(
        max_unavailable=value)


def parse_guardrails(spec: Mapping[str, Any], annotations: Mapping[str, Any]) -> Guardrails:
    """PolicyError names the spec field that cannot be read; a malformed override is kept as `override_error`
    instead, so it never stops the Rollout's other work (it only is not honoured)."""
    raw_policy = spec.get("policy") or {}
    if not isinstance(raw_policy, Mapping):
        raise PolicyError("spec.policy: must map rule names to off, warn or enforce")
    tighten = {str(rule): parse_mode(str(mode), rule=str(rule)) for rule, mode in raw_policy.items()}
    spread = spec.get("spread")
    if spread is not None and spread not in SPREAD_VALUES:
        raise PolicyError(f"spec.spread: {spread!r} is not one of {', '.join(SPREAD_VALUES)}")
    override: dict[str, Mode] = {}
    override_by, error = None, None
    text = annotations.get(OVERRIDE_ANNOTATION)
    if text is not None:
        by = str(annotations.get(OVERRIDE_BY_ANNOTATION) or "").strip()
        try:
            override = parse_modes(str(text), where=f"annotation {OVERRIDE_ANNOTATION}")
        except PolicyError as exc:
            override, error = {}, str(exc)
        if not by and error is None:
            override, error = {}, f"annotation {OVERRIDE_ANNOTATION} ignored: {OVERRIDE_BY_ANNOTATION} is missing"
        override_by = by or None
    return Guardrails(tighten=tighten, budget=_budget(spec.get("disruptionBudget")), spread=spread,
                      override=override, override_by=override_by, override_error=error)


# -- spread ------------------------------------------------------------------------------------------------------


def spread_term(selector: Mapping[str, Any], hash_label: str, hash_: str) -> dict[str, Any]:
    """Pods of one revision repel each other across nodes: the Rollout's selector, and the revision's hash."""
    term: dict[str, Any] = {"matchLabels": {**(selector.get("matchLabels") or {}), hash_label: hash_}}
    if selector.get("matchExpressions"):
        term["matchExpressions"] = [dict(e) for e in selector["matchExpressions"]]
    return {"topologyKey": HOSTNAME_KEY, "labelSelector": term}


def with_spread(pod_spec: Mapping[str, Any], *, term: Mapping[str, Any], spread: str | None) -> dict[str, Any]:
    """The pod spec's affinity with sluice's term (required or preferred) and no other copy of it; `spread` None
    removes it. Everything else in the user's affinity is kept as written."""
    affinity = dict(pod_spec.get("affinity") or {})
    anti = dict(affinity.get("podAntiAffinity") or {})
    required_key = "requiredDuringSchedulingIgnoredDuringExecution"
    preferred_key = "preferredDuringSchedulingIgnoredDuringExecution"
    required = [t for t in anti.get(required_key) or [] if t != term]
    preferred = [t for t in anti.get(preferred_key) or [] if (t or {}).get("podAffinityTerm") != term]
    if spread == "required":
        required.append(dict(term))
    elif spread == "preferred":
        preferred.append({"weight": 100, "podAffinityTerm": dict(term)})
    for key, terms in ((required_key, required), (preferred_key, preferred)):
        if terms:
            anti[key] = terms
        else:
            anti.pop(key, None)
    if anti:
        affinity["podAntiAffinity"] = anti
    else:
        affinity.pop("podAntiAffinity", None)
    return affinity
