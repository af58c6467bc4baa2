"""The container image's Dockerfile, checked statically (no registry is reachable where the tests run): a pinned slim
Python 3.11 base, a builder stage and a runtime stage that only copies the virtualenv, a numeric non-root user, the
`sluice` entry point, nothing written at run time, and a .dockerignore that lets in exactly what is copied.

It is built for real only where docker runs and already has the base image (then nothing is pulled but PyPI)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rollout.cli import _parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
BASE = re.compile(r"python:3\.11\.\d+-slim-bookworm")


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def all(self, instruction: str) -> list[str]:
        return [args for name, args in self.instructions if name == instruction]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [(parts[0].upper(), parts[1] if len(parts) > 1 else "") for parts in (s.split(None, 1) for s in logical)]


def _parse() -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, and the stages in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for name, rest in _instructions(DOCKERFILE.read_text()):
        if name == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), words[0])
            stages.append(Stage(base=base, name=words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif not stages and name == "ARG":
            key, _, default = rest.partition("=")
            args[key.strip()] = default.strip()
        elif stages:
            stages[-1].instructions.append((name, rest))
    return args, stages


def test_the_base_is_a_pinned_slim_python_3_11_and_never_latest() -> None:
    args, stages = _parse()
    assert BASE.fullmatch(args["PYTHON_IMAGE"].split("@")[0]), args["PYTHON_IMAGE"]
    assert [stage.base for stage in stages] == [args["PYTHON_IMAGE"]] * 2  # the venv needs the same interpreter
    assert "latest" not in DOCKERFILE.read_text()


def test_a_builder_stage_builds_and_the_runtime_stage_only_copies_the_virtualenv() -> None:
    _, (builder, runtime) = _parse()
    assert builder.name == "builder" and runtime.name is None
    build = " ".join(builder.all("RUN"))
    assert "pip wheel" in build and "/opt/sluice/bin/pip install /wheels/" in build
    assert "PIP_NO_CACHE_DIR=1" in " ".join(builder.all("ENV"))  # no pip cache in the layers
    assert runtime.all("COPY") == ["--from=builder /opt/sluice /opt/sluice"]
    for run in runtime.all("RUN"):  # removing the base image's installers is all the runtime stage runs
        assert "install " not in run.replace("uninstall ", ""), run
        assert "apt-get" not in run, run


def test_the_runtime_runs_sluice_controller_as_a_numeric_non_root_user_and_writes_nothing() -> None:
    _, (_, runtime) = _parse()
    [user] = runtime.all("USER")
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), user
    assert runtime.all("ENTRYPOINT") == ['["sluice"]'] and runtime.all("CMD") == ['["controller"]']
    env = " ".join(runtime.all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PATH=/opt/sluice/bin:" in env
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "sluice" in scripts
    assert _parser().parse_args(["controller"]).command == "controller"


def test_everything_copied_exists_and_the_dockerignore_lets_it_in() -> None:
    _, (builder, _) = _parse()
    sources = [s for copy in builder.all("COPY") for s in shlex.split(copy)[:-1] if not s.startswith("--")]
    assert sources, "the builder copies nothing"
    for source in sources:
        assert (REPO / source).exists(), source
    rules = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*"  # everything else stays out of the context
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    assert {source.rstrip("/") for source in sources} == allowed
    # the CRDs reach the wheel through the rollout/crds symlink, which needs its target in the context
    assert (REPO / "rollout" / "crds").resolve() == (REPO / "charts" / "sluice" / "crds").resolve()


def _docker_unavailable(base: str) -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed"
    if subprocess.run([docker, "info"], capture_output=True, timeout=30).returncode != 0:
        return "the docker daemon is not running"
    if subprocess.run([docker, "image", "inspect", base], capture_output=True, timeout=30).returncode != 0:
        return f"the base image {base} is not present locally (no registry is reachable to pull it)"
    return None


def test_the_image_builds_where_docker_and_the_base_image_are_present() -> None:
    args, _ = _parse()
    reason = _docker_unavailable(args["PYTHON_IMAGE"])
    if reason is not None:
        pytest.skip(reason)
    tag = "sluice-dockerfile-test:local"
    built = subprocess.run(["docker", "build", "--pull=false", "-t", tag, str(REPO)], capture_output=True,
                           text=True, timeout=900)
    assert built.returncode == 0, built.stderr[-4000:]
    try:
        ran = subprocess.run(["docker", "run", "--rm", "--read-only", tag, "crds", "--help"], capture_output=True,
                             text=True, timeout=120)
        assert ran.returncode == 0, ran.stderr
        user = subprocess.run(["docker", "run", "--rm", "--entrypoint", "id", tag, "-u"], capture_output=True,
                              text=True, timeout=120)
        assert user.stdout.strip() == "65532"
    finally:
        subprocess.run(["docker", "image", "rm", "-f", tag], capture_output=True, timeout=120)
