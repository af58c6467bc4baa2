"""`sluice lint` (rollout/linting.py): manifests of every kind checked offline, text and JSON output, exit codes,
stdin, and errors that name the file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import yaml

from rollout import linting
from rollout.cli import main
from strategies import policy

MANIFESTS = Path(__file__).resolve().parent / "manifests"
GOOD = ["good-rollout.yaml", "good-deployment.yaml", "good-statefulset.yaml", "good-daemonset.yaml"]
BAD = ["bad-rollout.yaml", "bad-deployment.yaml", "bad-statefulset.yaml", "bad-daemonset.yaml"]


def manifest(name: str) -> str:
    return str(MANIFESTS / name)


def lint_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["lint", "--output", "json", *args])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    jsonschema_rs.Draft202012Validator(dict(linting.OUTPUT_SCHEMA)).validate(document)
    return code, document


def violations(document: dict[str, Any]) -> set[tuple[str, str, str | None]]:
    return {(v["rule"], v["mode"], v["container"]) for o in document["objects"] for v in o["violations"]}


@pytest.mark.parametrize("name", GOOD)
def test_good_manifests_of_every_kind_pass(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = lint_json(capsys, manifest(name))
    assert code == 0
    assert document["blocked"] is False
    [obj] = document["objects"]
    assert obj["violations"] == []
    assert obj["file"] == manifest(name)


@pytest.mark.parametrize(("name", "expected"), [
    ("bad-rollout.yaml", {
        ("resources", "enforce", "migrate"), ("readiness-probe", "enforce", "web"), ("pinned-image", "enforce", "web"),
        ("liveness-probe", "warn", "web"), ("run-as-non-root", "warn", None), ("disruption-budget", "warn", None),
        ("spread", "warn", None),
    }),
    ("bad-deployment.yaml", {
        ("resources", "enforce", "api"), ("pinned-image", "enforce", "api"), ("liveness-probe", "warn", "api"),
        ("run-as-non-root", "warn", None), ("disruption-budget", "warn", None), ("spread", "warn", None),
    }),
    ("bad-statefulset.yaml", {
        ("resources", "enforce", "db"), ("readiness-probe", "enforce", "db"), ("pinned-image", "enforce", "db"),
        ("liveness-probe", "warn", "db"), ("run-as-non-root", "warn", None), ("disruption-budget", "warn", None),
        ("spread", "warn", None),
    }),
    ("bad-daemonset.yaml", {("resources", "enforce", "exporter"), ("pinned-image", "enforce", "setup")}),
])
def test_bad_manifests_of_every_kind_fail_with_exit_code_1(name: str, expected: set[tuple[str, str, str | None]],
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, document = lint_json(capsys, manifest(name))
    assert code == 1
    assert document["blocked"] is True
    assert violations(document) == expected


def test_a_daemonset_is_never_asked_for_a_budget_or_spread(capsys: pytest.CaptureFixture[str]) -> None:
    _, document = lint_json(capsys, "--policy", "disruption-budget=enforce", "--policy", "spread=enforce",
                            manifest("good-daemonset.yaml"))
    assert document["objects"][0]["violations"] == []


def test_warnings_alone_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = lint_json(capsys, manifest("warn-deployment.yaml"))
    assert code == 0
    assert not document["blocked"]
    assert violations(document) == {("liveness-probe", "warn", "tool"), ("privileged", "warn", "tool"),
                                    ("run-as-non-root", "warn", None)}
    assert document["objects"][0]["namespace"] == "default"


def test_json_violations_carry_the_field_and_the_fix(capsys: pytest.CaptureFixture[str]) -> None:
    _, document = lint_json(capsys, manifest("bad-rollout.yaml"))
    by_rule = {v["rule"]: v for v in document["objects"][0]["violations"]}
    assert by_rule["pinned-image"]["field"] == "spec.template.spec.containers[0].image"
    assert "registry.example:5000/web" in by_rule["pinned-image"]["message"]
    assert by_rule["disruption-budget"]["field"] == "spec.selector"
    assert "topologySpreadConstraint" in by_rule["spread"]["fix"]


def test_the_schema_refuses_what_the_output_must_not_contain() -> None:
    validator = jsonschema_rs.Draft202012Validator(dict(linting.OUTPUT_SCHEMA))
    assert not validator.is_valid({"objects": []})
    assert not validator.is_valid({"blocked": False, "objects": [{"file": "f", "kind": "Service", "namespace": "d",
                                                                  "name": "n", "violations": []}]})


def test_text_output_is_one_line_per_violation_then_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest("bad-deployment.yaml")
    assert main(["lint", path, manifest("good-rollout.yaml")]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"{path}: Deployment shop/api: container api: resources (enforce): no memory limit; "
                        "fix: set resources.limits.memory (e.g. equal to the memory request)")
    assert f"{path}: Deployment shop/api: run-as-non-root (warn): may run as root; fix: " in lines[3]
    assert len(lines) == 7
    assert lines[-1] == "2 objects in 2 files checked: 2 enforce failures, 4 warnings: blocked"


def test_policy_flags_loosen_and_tighten(capsys: pytest.CaptureFixture[str]) -> None:
    code, document = lint_json(capsys, "--policy", "pinned-image=warn", "--policy", "resources=off",
                               "--policy", "spread=enforce", manifest("bad-deployment.yaml"))
    assert code == 1
    assert {(r, m) for r, m, _ in violations(document)} == {
        ("pinned-image", "warn"), ("liveness-probe", "warn"), ("run-as-non-root", "warn"),
        ("disruption-budget", "warn"), ("spread", "enforce"),
    }


@pytest.mark.parametrize("flag", ["pinned-image", "nope=warn", "spread=strict"])
def test_bad_policy_flags_are_usage_errors(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lint", "--policy", flag, manifest("good-rollout.yaml")])
    assert info.value.code == 2
    assert "--policy" in capsys.readouterr().err


def test_a_pdb_in_another_file_of_the_input_covers_matching_pods(monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pdb = ("apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: api, namespace: shop}\n"
           "spec: {maxUnavailable: 1, selector: {matchLabels: {app: api}}}\n")
    _, alone = lint_json(capsys, manifest("bad-deployment.yaml"))
    monkeypatch.setattr("sys.stdin", io.StringIO(pdb))
    _, together = lint_json(capsys, manifest("bad-deployment.yaml"), "-")
    assert ("disruption-budget", "warn", None) in violations(alone)
    assert ("disruption-budget", "warn", None) not in violations(together)


def test_other_kinds_and_other_api_versions_are_ignored() -> None:
    text = (MANIFESTS / "bad-deployment.yaml").read_text().replace("apps/v1", "example.com/v1")
    text += "\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n42\n---\n"
    assert linting.lint([linting.Source("x.yaml", text)], policy.default_modes()) == []


def test_a_kubectl_list_is_read_item_by_item() -> None:
    rollout = (MANIFESTS / "good-rollout.yaml").read_text()
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": list(yaml.safe_load_all(rollout))})
    [result] = linting.lint([linting.Source("list.json", listing)], policy.default_modes())
    assert result.workload.kind == "Rollout"


def test_stdin_is_read_with_a_dash(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((MANIFESTS / "bad-statefulset.yaml").read_text()))
    code, document = lint_json(capsys, manifest("good-rollout.yaml"), "-")
    assert code == 1
    assert [o["file"] for o in document["objects"]] == [manifest("good-rollout.yaml"), "<stdin>"]


def test_piped_stdin_is_read_without_a_file(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO((MANIFESTS / "good-deployment.yaml").read_text()))
    assert main(["lint"]) == 0
    assert capsys.readouterr().out.strip() == "1 object in 1 file checked: 0 enforce failures, 0 warnings: ok"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_no_file_and_a_terminal_is_a_usage_error(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal())
    assert main(["lint"]) == 2
    assert "wants FILE arguments" in capsys.readouterr().err


def test_bad_yaml_is_exit_2_with_one_line_naming_the_file(capsys: pytest.CaptureFixture[str]) -> None:
    path = manifest("broken.yaml")
    assert main(["lint", manifest("good-rollout.yaml"), path]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"sluice: {path}: not valid YAML (line 4)")


def test_an_unreadable_file_is_exit_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert main(["lint", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"sluice: {missing}: cannot read: No such file or directory"


def test_a_binary_file_is_exit_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert main(["lint", str(binary)]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sluice: {binary}: cannot read: ")


def test_empty_input_checks_nothing_and_passes() -> None:
    results = linting.lint(linting.read_sources(["-"], io.StringIO("")), policy.default_modes())
    assert results == []
    assert linting.render_text(results, files=1) == "0 objects in 1 file checked: 0 enforce failures, 0 warnings: ok"


def _rollout_without_budget_or_spread() -> dict[str, Any]:
    """good-rollout.yaml without its PodDisruptionBudget and topology spread: both warn rules fail."""
    rollout: dict[str, Any] = next(yaml.safe_load_all((MANIFESTS / "good-rollout.yaml").read_text()))
    del rollout["spec"]["template"]["spec"]["topologySpreadConstraints"]
    return rollout


def _lint_rollout(rollout: dict[str, Any], modes: dict[str, policy.Mode] | None = None) -> set[tuple[str, str]]:
    [result] = linting.lint([linting.Source("r.yaml", yaml.safe_dump(rollout))], modes or policy.default_modes())
    return {(v.rule, mode) for mode, v in result.report.findings()}


def test_a_rollouts_own_budget_and_spread_count_as_the_controller_counts_them() -> None:
    rollout = _rollout_without_budget_or_spread()
    assert _lint_rollout(rollout) == {("disruption-budget", "warn"), ("spread", "warn")}
    rollout["spec"] |= {"disruptionBudget": {"maxUnavailable": 1}, "spread": "preferred"}
    assert _lint_rollout(rollout) == set()


def test_a_rollouts_spec_policy_tightens_and_its_override_sets_modes() -> None:
    rollout = _rollout_without_budget_or_spread()
    rollout["spec"]["policy"] = {"spread": "enforce", "disruption-budget": "off"}  # off is looser: ignored
    assert _lint_rollout(rollout) == {("disruption-budget", "warn"), ("spread", "enforce")}
    rollout["metadata"]["annotations"] = {"sluice.dev/policy-override": "spread=off,disruption-budget=off",
                                          "sluice.dev/policy-override-by": "alice"}
    assert _lint_rollout(rollout) == set()


def test_an_unreadable_rollout_guardrail_field_is_exit_2_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rollout = _rollout_without_budget_or_spread()
    rollout["spec"]["disruptionBudget"] = {"minAvailable": "150%"}
    path = tmp_path / "app.yaml"
    path.write_text(yaml.safe_dump(rollout))
    assert main(["lint", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: Rollout shop/web: spec.disruptionBudget.minAvailable" in err and len(err.splitlines()) == 1
