"""Pre-flight guardrails: pure checks of a pod template before a revision gets pods or traffic.

One table, `RULES`, maps a rule id to its default mode, its check and a one-line description; a new rule is one
check function and one row. A check gets a `Workload` (the pod template plus what covers its pods: a disruption
budget, a spread setting) and yields `Problem`s; `check()` runs the rules that are not `off` and groups what they
found by mode into a `Report`, which is `blocked` when an `enforce` rule failed.

Modes come from two layers (`resolve_modes`): the cluster's defaults (the table's defaults, overridden by the
operator), then a Rollout's own choices, which may only tighten (off < warn < enforce). What a Rollout asked to
loosen is returned, not applied, so the controller can honour it later under an explicit override.

Two callers share this module: `sluice lint` (rollout/linting.py, offline, for CI) and the planners, through
strategies/preflight.py, before a new revision gets pods. Nothing here does I/O; field paths in violations are
relative to the object (`spec.template.spec.containers[0].resources.limits.memory`) so both can point at the line to
change.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

Mode = Literal["off", "warn", "enforce"]
MODES: tuple[Mode, ...] = ("off", "warn", "enforce")  # in order of strictness
HOSTNAME_KEY = "kubernetes.io/hostname"
SPREAD_VALUES = ("preferred", "required")

# An OCI digest: algorithm ":" encoded (distribution/reference's grammar).
_DIGEST = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_TAG = re.compile(r"[\w][\w.-]{0,127}")


class PolicyError(ValueError):
    """An unknown rule id or mode; the message names it and lists the valid ones."""


@dataclass(frozen=True, kw_only=True)
class Workload:
    """What the rules look at. `replicas` is None for a DaemonSet (one pod per node): the rules about several
    replicas (disruption-budget, spread) do not apply to it. `disruption_budget` is True when a PodDisruptionBudget
    covers the pods (a PDB known to select them); `spread` is a sluice-added spread (preferred / required), None when
    there is none (sluice does not add one yet: docs/policy.md)."""

    kind: str
    namespace: str
    name: str
    replicas: int | None
    template: Mapping[str, Any]
    disruption_budget: bool = False
    spread: str | None = None
    template_path: str = "spec.template"


@dataclass(frozen=True)
class Problem:
    """What a check found: the container (None for the pod as a whole), the field to change, why, and how."""

    container: str | None
    field: str
    message: str
    fix: str


@dataclass(frozen=True)
class Violation:
    rule: str
    container: str | None
    field: str
    message: str
    fix: str


Check = Callable[[Workload], Iterator[Problem]]


class Rule(NamedTuple):
    default: Mode
    check: Check
    description: str


@dataclass(frozen=True)
class Report:
    """Violations grouped by mode; `off` rules never ran. Blocked when an `enforce` rule failed."""

    enforced: tuple[Violation, ...] = ()
    warned: tuple[Violation, ...] = ()

    @property
    def blocked(self) -> bool:
        return bool(self.enforced)

    def findings(self) -> Iterator[tuple[Mode, Violation]]:
        """Every violation with its mode, enforced ones first."""
        for violation in self.enforced:
            yield "enforce", violation
        for violation in self.warned:
            yield "warn", violation


@dataclass(frozen=True)
class Loosening:
    """A Rollout asked for a weaker mode than the cluster's: not applied."""

    rule: str
    cluster: Mode
    asked: Mode


@dataclass(frozen=True)
class ResolvedModes:
    modes: Mapping[str, Mode]
    loosenings: tuple[Loosening, ...] = ()


# -- the pod template --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Container:
    path: str  # e.g. spec.template.spec.initContainers[1]
    body: Mapping[str, Any]
    init: bool

    @property
    def name(self) -> str:
        return str(self.body.get("name") or "?")

    @property
    def sidecar(self) -> bool:
        """A native sidecar: an init container that keeps running (restartPolicy Always), so it may serve."""
        return self.init and self.body.get("restartPolicy") == "Always"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _pod_spec(workload: Workload) -> Mapping[str, Any]:
    return _mapping(_mapping(workload.template).get("spec"))


def _containers(workload: Workload) -> Iterator[_Container]:
    spec = _pod_spec(workload)
    for key, init in (("initContainers", True), ("containers", False)):
        items = spec.get(key)
        for index, body in enumerate(items if isinstance(items, list) else []):
            yield _Container(f"{workload.template_path}.spec.{key}[{index}]", _mapping(body), init)


def _pod_labels(workload: Workload) -> Mapping[str, Any]:
    return _mapping(_mapping(_mapping(workload.template).get("metadata")).get("labels"))


def selector_matches(selector: Any, labels: Mapping[str, Any]) -> bool:
    """A Kubernetes LabelSelector against labels: a missing selector matches nothing, an empty one everything."""
    if not isinstance(selector, Mapping):
        return False
    if any(labels.get(k) != v for k, v in _mapping(selector.get("matchLabels")).items()):
        return False
    expressions = selector.get("matchExpressions")
    for raw in expressions if isinstance(expressions, list) else []:
        expr = _mapping(raw)
        key, op, values = str(expr.get("key", "")), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if (op == "NotIn" and present and labels[key] in values) or (op == "Exists" and not present):
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False  # the API server refuses it; matching nothing is the safe reading
    return True


def image_problem(image: str) -> str | None:
    """Why an image reference is not pinned, None when it is: pinned is a digest (`app@sha256:...`) or a tag other
    than `latest` (any case). No tag means `latest`; a registry port is not a tag (`host:5000/app` has none)."""
    name, at, digest = image.partition("@")
    if at:
        return None if _DIGEST.fullmatch(digest) else f"digest {digest!r} is not algorithm:hex"
    colon = name.rfind(":")
    if colon <= name.rfind("/"):
        return "it has no tag, which means latest"
    tag = name[colon + 1:]
    if not _TAG.fullmatch(tag):
        return f"tag {tag!r} is not a valid tag"
    return "latest moves" if tag.lower() == "latest" else None


def image_pinned(image: str) -> bool:
    return image_problem(image) is None


# -- rules -------------------------------------------------------------------------------------------------------


_RESOURCE_FIELDS = (
    ("requests", "cpu", "no CPU request", "set resources.requests.cpu (e.g. 100m)"),
    ("requests", "memory", "no memory request", "set resources.requests.memory (e.g. 128Mi)"),
    ("limits", "memory", "no memory limit", "set resources.limits.memory (e.g. equal to the memory request)"),
)


def _resources(workload: Workload) -> Iterator[Problem]:
    for c in _containers(workload):
        resources = _mapping(c.body.get("resources"))
        limits = _mapping(resources.get("limits"))
        for section, resource, message, fix in _RESOURCE_FIELDS:
            given = _mapping(resources.get(section)).get(resource)
            # The API server defaults a missing request to the limit, so a limit alone is a request too.
            if given in (None, "") and (section == "limits" or limits.get(resource) in (None, "")):
                yield Problem(c.name, f"{c.path}.resources.{section}.{resource}", message, fix)


def _serving(workload: Workload) -> Iterator[_Container]:
    """Containers that take traffic: they declare ports (regular containers and native sidecars)."""
    for c in _containers(workload):
        if (not c.init or c.sidecar) and c.body.get("ports"):
            yield c


def _readiness_probe(workload: Workload) -> Iterator[Problem]:
    for c in _serving(workload):
        if not c.body.get("readinessProbe"):
            yield Problem(c.name, f"{c.path}.readinessProbe", "serves ports but has no readiness probe",
                          "add a readinessProbe (httpGet, tcpSocket or grpc) so traffic waits until it is ready")


def _liveness_probe(workload: Workload) -> Iterator[Problem]:
    for c in _serving(workload):
        if not c.body.get("livenessProbe"):
            yield Problem(c.name, f"{c.path}.livenessProbe", "serves ports but has no liveness probe",
                          "add a livenessProbe so a stuck container is restarted")


def _pinned_image(workload: Workload) -> Iterator[Problem]:
    for c in _containers(workload):
        image = c.body.get("image")
        if not isinstance(image, str) or not image:
            yield Problem(c.name, f"{c.path}.image", "has no image", "set image to a pinned tag or digest")
        elif (why := image_problem(image)) is not None:
            yield Problem(c.name, f"{c.path}.image", f"image {image} is not pinned: {why}",
                          "use a version tag (app:1.4.2) or a digest (app@sha256:...)")


def _privileged(workload: Workload) -> Iterator[Problem]:
    for c in _containers(workload):
        security = _mapping(c.body.get("securityContext"))
        if security.get("privileged") is True:
            yield Problem(c.name, f"{c.path}.securityContext.privileged", "runs privileged",
                          "remove securityContext.privileged (or set it to false)")
        if security.get("allowPrivilegeEscalation") is True:
            yield Problem(c.name, f"{c.path}.securityContext.allowPrivilegeEscalation", "allows privilege escalation",
                          "set securityContext.allowPrivilegeEscalation: false")


def _run_as_non_root(workload: Workload) -> Iterator[Problem]:
    pod = _mapping(_pod_spec(workload).get("securityContext")).get("runAsNonRoot")
    containers = list(_containers(workload))
    own = [_mapping(c.body.get("securityContext")).get("runAsNonRoot") for c in containers]
    if pod is not True and True not in own:
        yield Problem(None, f"{workload.template_path}.spec.securityContext.runAsNonRoot", "may run as root",
                      "set spec.template.spec.securityContext.runAsNonRoot: true (and a non-root user in the image)")
        return
    for c, value in zip(containers, own, strict=True):
        if value is False or (value is None and pod is not True):
            yield Problem(c.name, f"{c.path}.securityContext.runAsNonRoot", "may run as root",
                          "set securityContext.runAsNonRoot: true")


def _several(workload: Workload) -> bool:
    return workload.replicas is not None and workload.replicas >= 2


def _disruption_budget(workload: Workload) -> Iterator[Problem]:
    if not _several(workload) or workload.disruption_budget:
        return
    yield Problem(None, "spec.selector", f"{workload.replicas} replicas but no PodDisruptionBudget selects the pods",
                  "add a PodDisruptionBudget (e.g. maxUnavailable: 1) whose selector matches the pod labels")


def _spreads_over_hosts(term: Any, labels: Mapping[str, Any]) -> bool:
    term = _mapping(term)
    return term.get("topologyKey") == HOSTNAME_KEY and selector_matches(term.get("labelSelector"), labels)


def _spread(workload: Workload) -> Iterator[Problem]:
    if not _several(workload) or workload.spread in SPREAD_VALUES:
        return
    spec, labels = _pod_spec(workload), _pod_labels(workload)
    anti = _mapping(_mapping(spec.get("affinity")).get("podAntiAffinity"))
    required = anti.get("requiredDuringSchedulingIgnoredDuringExecution")
    preferred = anti.get("preferredDuringSchedulingIgnoredDuringExecution")
    constraints = spec.get("topologySpreadConstraints")
    terms = [
        *(required if isinstance(required, list) else []),
        *(_mapping(p).get("podAffinityTerm") for p in (preferred if isinstance(preferred, list) else [])),
        *(constraints if isinstance(constraints, list) else []),
    ]
    if not any(_spreads_over_hosts(term, labels) for term in terms):
        fix = ("add a topologySpreadConstraint (topologyKey kubernetes.io/hostname) or podAntiAffinity selecting "
               "the pod labels")
        yield Problem(None, f"{workload.template_path}.spec.affinity.podAntiAffinity",
                      f"{workload.replicas} replicas may all land on one node", fix)


RULES: Mapping[str, Rule] = {
    "resources": Rule("enforce", _resources, "every container has CPU and memory requests and a memory limit"),
    "readiness-probe": Rule("enforce", _readiness_probe, "every serving container (one with ports) has a readiness "
                                                         "probe"),
    "liveness-probe": Rule("warn", _liveness_probe, "every serving container has a liveness probe"),
    "pinned-image": Rule("enforce", _pinned_image, "every image has a tag other than latest, or a digest"),
    "privileged": Rule("warn", _privileged, "no privileged container, no allowPrivilegeEscalation: true"),
    "run-as-non-root": Rule("warn", _run_as_non_root, "the pod or every container sets runAsNonRoot: true"),
    "disruption-budget": Rule("warn", _disruption_budget, "with 2 or more replicas, a PodDisruptionBudget covers "
                                                          "the pods"),
    "spread": Rule("warn", _spread, "with 2 or more replicas, anti-affinity or a topology spread constraint spreads "
                                    "the pods across nodes"),
}


# -- modes and the report ----------------------------------------------------------------------------------------


def parse_mode(value: str, *, rule: str) -> Mode:
    if rule not in RULES:
        raise PolicyError(f"unknown rule {rule!r} (rules: {', '.join(RULES)})")
    for mode in MODES:
        if value == mode:
            return mode
    raise PolicyError(f"{rule}: unknown mode {value!r} (modes: {', '.join(MODES)})")


def default_modes() -> dict[str, Mode]:
    return {rule_id: rule.default for rule_id, rule in RULES.items()}


def resolve_modes(cluster_defaults: Mapping[str, str], rollout_tightening: Mapping[str, str]) -> ResolvedModes:
    """The table's defaults, overridden by the cluster's (any direction), then a Rollout's (only tighter).
    PolicyError names an unknown rule or mode in either."""
    modes = default_modes()
    for rule, value in cluster_defaults.items():
        modes[rule] = parse_mode(value, rule=rule)
    loosenings = []
    for rule, value in rollout_tightening.items():
        asked = parse_mode(value, rule=rule)
        if MODES.index(asked) >= MODES.index(modes[rule]):
            modes[rule] = asked
        else:
            loosenings.append(Loosening(rule, modes[rule], asked))
    return ResolvedModes(modes, tuple(loosenings))


def parse_modes(text: str, *, where: str) -> dict[str, Mode]:
    """`rule=mode[,rule=mode...]` (the override annotation, the `--policy` flags joined): PolicyError naming `where`."""
    modes: dict[str, Mode] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        rule, eq, value = part.partition("=")
        if not eq:
            raise PolicyError(f"{where}: {part!r} is not RULE=MODE")
        try:
            modes[rule.strip()] = parse_mode(value.strip(), rule=rule.strip())
        except PolicyError as exc:
            raise PolicyError(f"{where}: {exc}") from None
    return modes


def format_modes(modes: Mapping[str, str]) -> str:
    return ",".join(f"{rule}={mode}" for rule, mode in sorted(modes.items()))


def check(workload: Workload, modes: Mapping[str, Mode]) -> Report:
    """Run every rule whose mode (from `modes`, else its default) is not `off`."""
    enforced: list[Violation] = []
    warned: list[Violation] = []
    for rule_id, rule in RULES.items():
        mode = modes.get(rule_id, rule.default)
        if mode == "off":
            continue
        found = (Violation(rule_id, p.container, p.field, p.message, p.fix) for p in rule.check(workload))
        (enforced if mode == "enforce" else warned).extend(found)
    return Report(tuple(enforced), tuple(warned))
