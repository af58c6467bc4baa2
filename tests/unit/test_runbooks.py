"""The operations docs stay usable: every alert has its runbook page (the chart's PrometheusRule points at them),
every `sluice` command they show is one the CLI accepts, and their links lead somewhere."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from rollout.cli import _parser

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
RUNBOOKS = DOCS / "runbooks"
ALERTS = (
    "SluiceRolloutAborted", "SluiceRolloutDegraded", "SluiceRolloutPausedTooLong", "SluiceAnalysisInconclusive",
    "SluiceProgressDeadlineExceeded", "SluiceControllerDown", "SluiceNoLeader", "SluiceReconcileErrors",
)
PAGES = [DOCS / "operations.md", DOCS / "troubleshooting.md", *sorted(RUNBOOKS.glob("*.md"))]
OPERATORS = {"|", "||", "&", "&&", ";", "(", ")", "$(", "<", ">"}


def kebab(alert: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "-", alert).lower()


@pytest.mark.parametrize("alert", ALERTS)
def test_every_alert_has_a_runbook_that_says_what_it_means_how_to_diagnose_and_fix(alert: str) -> None:
    page = RUNBOOKS / f"{kebab(alert)}.md"
    assert page.is_file(), f"missing runbook {page.relative_to(REPO)}"
    text = page.read_text()
    assert text.startswith(f"# {alert}\n")
    for section in ("## What it means", "## Diagnose", "## Fix"):
        assert f"\n{section}\n" in text, f"{page.name} has no {section!r}"
    assert "sluice " in text and "kubectl " in text


def test_the_charts_alerts_are_the_ones_with_runbooks() -> None:
    rule = REPO / "charts" / "sluice" / "templates" / "prometheusrule.yaml"
    if not rule.is_file():
        pytest.skip("the chart has no PrometheusRule")
    assert set(re.findall(r"alert: (\w+)", rule.read_text())) == set(ALERTS)
    assert {page.stem for page in RUNBOOKS.glob("*.md")} == {kebab(alert) for alert in ALERTS}


# -- commands --------------------------------------------------------------------------------------------------


def shell_commands(text: str) -> list[str]:
    """The lines of the ```sh blocks, with continuations joined."""
    commands: list[str] = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, flags=re.DOTALL):
        current = ""
        for line in block.splitlines():
            current += line.removesuffix("\\")
            if not line.endswith("\\"):
                commands.append(current.removeprefix("$ ").strip())
                current = ""
    return commands


def sluice_invocations(command: str) -> list[list[str]]:
    """The argument lists of every `sluice ...` in a shell line (after pipes, `&&`, `$(`, variable assignments)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    found: list[list[str]] = []
    segment: list[str] = []
    for token in [*lexer, ";"]:
        if token in OPERATORS or token.startswith(("|", "&", ";")):
            if segment and segment[0] == "sluice":
                found.append(segment[1:])
            segment = []
        elif segment or not re.fullmatch(r"[A-Za-z_]\w*=.*", token):  # not a leading VAR=value
            segment.append(token)
    return found


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


SHOWN = [(page.name, args) for page in PAGES for command in shell_commands(page.read_text())
         for args in sluice_invocations(command)]


def test_the_docs_show_sluice_commands() -> None:
    assert {name for name, _ in SHOWN} >= {"operations.md", "troubleshooting.md", "sluice-rollout-aborted.md"}
    assert {args[0] for _, args in SHOWN} >= {"get", "promote", "resume", "abort", "retry", "undo", "set", "crds"}


@pytest.mark.parametrize(("page", "args"), SHOWN, ids=[f"{p}: sluice {' '.join(a)}" for p, a in SHOWN])
def test_every_command_in_a_shell_block_parses(page: str, args: list[str]) -> None:
    try:
        _parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{page}: `sluice {' '.join(args)}` is refused by the CLI's parser (exit {exc.code})")


def test_every_inline_sluice_command_names_real_subcommands() -> None:
    for page in PAGES:
        for span in re.findall(r"`(sluice [^`]+)`", page.read_text()):
            words = [w for w in span.split()[1:] if not w.startswith("-")]
            parser = _parser()
            for word in words[:2]:
                choices = subcommands(parser)
                if not choices:
                    break
                assert word in choices, f"{page.name}: `{span}`: no subcommand {word!r}"
                parser = choices[word]


# -- links -----------------------------------------------------------------------------------------------------


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_lead_to_files_and_headings_that_exist() -> None:
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"\w+://", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            assert path.exists(), f"{page.name}: link to {target} leads nowhere"
            if anchor and path.suffix == ".md":
                assert anchor in anchors(path), f"{page.name}: {path.name} has no heading #{anchor}"
