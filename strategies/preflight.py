"""The pre-flight check as the planners use it: the rules of strategies/policy.py applied to the Rollout's template
with the modes in force, before its revision gets any pods or traffic.

`review` resolves the modes (the cluster's defaults from the controller's configuration, `spec.policy` tightening,
an override from the annotations of strategies/guardrails.py), checks the template and says what the planners do:

- an `enforce` rule failed and the revision is not running yet: `blocked`. The planners then create nothing for it
  (a first version) or take it out of service like an abort (traffic back on stable, its ReplicaSet scaled down
  after the abort delay) without setting `status.abort`: the block lasts only as long as its cause, so a fixed
  template, an override or a looser cluster setting lets the same revision proceed at the next reconcile.
- only `warn` rules failed (or `enforce` ones on a revision already running, rolled out before the rules were
  tightened): it proceeds, reported.

The result is the `PolicyViolation` condition (`condition`) and, when that condition's reason or message changes,
an Event (`events`): PolicyViolation and PolicyWarning (warnings), PolicyOverridden naming who overrode what.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from strategies.decision import Event
from strategies.guardrails import Guardrails
from strategies.model import Condition, Observed, Rollout
from strategies.policy import RULES, Mode, PolicyError, Report, Violation, Workload, check, resolve_modes

CONDITION = "PolicyViolation"
BLOCKED, WARNED, PASSED = "PolicyViolation", "PolicyWarning", "PolicyPassed"


@dataclass(frozen=True)
class Preflight:
    report: Report
    blocked: bool
    reason: str  # BLOCKED, WARNED or PASSED
    message: str
    overridden: str = ""  # who overrode which rules, when an override is honoured


def workload(rollout: Rollout, obs: Observed) -> Workload:
    spec = rollout.spec
    return Workload(kind="Rollout", namespace=rollout.namespace, name=rollout.name, replicas=spec.replicas,
                    template=spec.template, spread=spec.guardrails.spread,
                    disruption_budget=(spec.guardrails.budget is not None and obs.budget_conflict is None)
                    or obs.budget_covered)


def review(rollout: Rollout, obs: Observed, *, running: bool) -> Preflight:
    """`running`: the template's revision already serves (it is stable and has its ReplicaSet), so it is never
    blocked, only reported."""
    guard = rollout.spec.guardrails
    modes, notes = modes_for(obs.policy_defaults, guard)
    if obs.budget_conflict:
        notes.append(obs.budget_conflict)
    report = check(workload(rollout, obs), modes)
    overridden = ""
    if guard.override:
        rules = ", ".join(f"{rule}={mode} (cluster: {obs.policy_defaults.get(rule, RULES[rule].default)})"
                          for rule, mode in sorted(guard.override.items()))
        overridden = f"{guard.override_by} overrode {rules} with annotation sluice.dev/policy-override"
        notes.append(overridden)
    desired = rollout.spec.template_hash
    found = "; ".join(describe(mode, v) for mode, v in report.findings())
    if report.blocked and not running:
        reason = BLOCKED
        message = f"revision {desired} is not rolled out: {found}"
    elif report.blocked:
        reason = WARNED
        message = f"revision {desired} runs already (rolled out before these rules applied; the next one is " \
                  f"checked): {found}"
    elif report.warned:
        reason, message = WARNED, f"revision {desired}: {found}"
    else:
        reason, message = PASSED, ""
    message = ". ".join(part for part in (message, *notes) if part)
    return Preflight(report=report, blocked=report.blocked and not running, reason=reason, message=message,
                     overridden=overridden)


def modes_for(defaults: Mapping[str, Mode], guard: Guardrails) -> tuple[dict[str, Mode], list[str]]:
    """The modes in force for a Rollout (the cluster's `defaults`, its spec.policy tightening, its override), and
    notes on what it asked that is not applied."""
    notes: list[str] = []
    try:
        resolved = resolve_modes(defaults, guard.tighten)
    except PolicyError as exc:  # the CRD's enum keeps this out; a Rollout written before it is read strictly
        resolved = resolve_modes(defaults, {})
        notes.append(f"spec.policy ignored: {exc}")
    modes = dict(resolved.modes)
    for loose in resolved.loosenings:
        if loose.rule not in guard.override:
            notes.append(f"spec.policy {loose.rule}={loose.asked} ignored: looser than the cluster's {loose.cluster} "
                         "(loosening needs the sluice.dev/policy-override annotation)")
    modes.update(guard.override)
    if guard.override_error:
        notes.append(guard.override_error)
    return modes, notes


def describe(mode: str, v: Violation) -> str:
    """`rule (mode): container c: message [field]`, as the condition lists violations."""
    container = f"container {v.container}: " if v.container is not None else ""
    return f"{v.rule} ({mode}): {container}{v.message} [{v.field}]"


def condition_changed(previous: Condition | None, preflight: Preflight) -> bool:
    if previous is None:
        return preflight.reason != PASSED or bool(preflight.message)
    return previous.reason != preflight.reason or previous.message != preflight.message


def events(previous: Condition | None, preflight: Preflight) -> Iterator[Event]:
    """What to tell users when the check's outcome changed (never on every reconcile)."""
    if not condition_changed(previous, preflight):
        return
    if preflight.reason == BLOCKED:
        yield Event("PolicyViolation", preflight.message, warning=True)
    elif preflight.reason == WARNED:
        yield Event("PolicyWarning", preflight.message, warning=True)
    if preflight.overridden and (previous is None or preflight.overridden not in previous.message):
        yield Event("PolicyOverridden", preflight.overridden)
