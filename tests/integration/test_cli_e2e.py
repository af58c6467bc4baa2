"""The `sluice` CLI end to end: each command runs as its own process (`python -m rollout ...`) against the real
controller's operator API, which authenticates real ServiceAccount tokens and authorises them through RBAC Roles on the
real control plane. What a command prints is checked, and what it did is checked again through the Kubernetes API.

Personas and their Roles come from tests/integration/test_api.py: an SRE operates, CI may only set images, a reader
may only read.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

import aiohttp
import pytest

from rollout.kube import EVENTS, KubeClient
from tests.integration.kit import (
    REPO,
    ControllerProcess,
    create_app,
    get_rollout,
    paused_at,
    rollout_body,
    wait_for,
    wait_status,
    weights,
)
from tests.integration.test_api import PERSONAS, _persona

V2 = "registry.example/web:2"
CLI_TIMEOUT = 30.0  # seconds one command may take before the test gives up on it


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any SLUICE_* the developer may have set, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SLUICE_")}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


async def sluice(*args: str, env: dict[str, str] | None = None) -> Run:
    """`sluice ARGS...` as a real process; its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "rollout", *args, cwd=REPO, env=_env(env),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"sluice {' '.join(args)} did not finish in {CLI_TIMEOUT:g}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class Cli:
    """The CLI aimed at one controller's API and one namespace, run as one of the personas."""

    url: str
    ns: str
    tokens: dict[str, str]

    def flags(self, who: str) -> list[str]:
        return ["--server", self.url, "--token", self.tokens[who], "-n", self.ns]

    async def __call__(self, *args: str, who: str = "sre") -> Run:
        return await sluice(*args, *self.flags(who))

    async def ok(self, *args: str, who: str = "sre") -> str:
        """Runs a command that must succeed; its stdout."""
        run = await self(*args, who=who)
        assert run.code == 0, (args, run)
        assert run.err == "", (args, run)
        return run.out

    async def refused(self, *args: str, who: str = "sre") -> str:
        """Runs a command the API must refuse: exit 1 and one line on stderr, nothing on stdout; that line."""
        run = await self(*args, who=who)
        assert run.code == 1, (args, run)
        assert run.out == "", (args, run)
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sluice: "), (args, run)
        return lines[0]


@pytest.fixture
async def cli(kube: KubeClient, namespace: str, controller: ControllerProcess) -> Cli:
    tokens = {who: await _persona(kube, namespace, who, PERSONAS[who]) for who in ("sre", "ci", "reader")}
    url = await controller.api_url()
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            async with session.get(url + "/readyz") as response:
                return response.status == 200

        await wait_for(ready, what="/readyz", timeout=30)
    return Cli(url, namespace, tokens)


async def _healthy(kube: KubeClient, ns: str) -> str:
    st = await wait_status(kube, ns, lambda s: s.get("phase") == "Healthy", what="Healthy")
    return str(st["stableHash"])


def _table_row(out: str, name: str) -> dict[str, str]:
    """The row of `name` in `sluice get`'s table, by column (MESSAGE is free text: everything after WEIGHT..CANARY)."""
    header, *rows = out.splitlines()
    columns = header.split()
    assert columns[:4] == ["NAME", "PHASE", "STEP", "WEIGHT"], header
    for row in rows:
        cells = row.split(maxsplit=len(columns) - 1)
        if cells and cells[0] == name:
            return dict(zip(columns, cells, strict=False))
    raise AssertionError(f"no row for {name} in:\n{out}")


async def test_ci_sets_the_image_and_the_sre_walks_the_steps_with_the_cli(kube: KubeClient, cli: Cli) -> None:
    await create_app(kube, cli.ns)
    v1 = await _healthy(kube, cli.ns)
    row = _table_row(await cli.ok("get", who="reader"), "web")
    assert (row["PHASE"], row["STEP"], row["WEIGHT"], row["STABLE"]) == ("Healthy", "6/6", "0%", v1)

    out = await cli.ok("set", "image", "web", f"web={V2}", who="ci")
    assert out.startswith(f"web: image set web={V2} (phase "), out
    body = await get_rollout(kube, cli.ns)
    assert body["spec"]["template"]["spec"]["containers"][0]["image"] == V2
    await wait_status(kube, cli.ns, paused_at(1), what="the first pause")
    assert await weights(kube, cli.ns) == (90, 10)

    row = _table_row(await cli.ok("get", who="reader"), "web")
    assert (row["PHASE"], row["STEP"], row["WEIGHT"], row["STABLE"]) == ("Paused", "2/6", "10%", v1)
    assert row["CANARY"] not in ("-", v1)
    detail = await cli.ok("get", "web", who="reader")
    assert f"Name:       {cli.ns}/web" in detail and "Phase:      Paused" in detail
    assert f"Images:     web={V2}" in detail
    assert "stable 90% [" in detail and "] canary 10%" in detail
    assert "Steps (2/6):" in detail
    assert "  ✓ 1 setWeight 10%" in detail and "  ▶ 2 pause (until resumed)" in detail
    assert "    3 setWeight 50%" in detail
    view = json.loads(await cli.ok("get", "web", "-o", "json", who="reader"))
    assert view["phase"] == "Paused" and view["currentStep"] == 1
    assert view["weights"] == {"stable": 90, "canary": 10} and view["images"] == {"web": V2}
    assert [s["state"] for s in view["steps"]] == ["done", "current", "pending", "pending", "pending", "pending"]

    assert (await cli.ok("promote", "web")).startswith("web: promoted (phase ")
    await wait_status(kube, cli.ns, paused_at(3), what="promoted to the pause at 50%")
    assert await weights(kube, cli.ns) == (50, 50)

    assert (await cli.ok("pause", "web")).strip() == "web: paused (phase Paused)"
    assert (await get_rollout(kube, cli.ns))["spec"]["paused"] is True
    assert (await cli.ok("pause", "web")).startswith("web: paused (phase ")  # already paused: fine
    # Resume lifts the user's pause and releases the pause step the rollout waits at.
    assert (await cli.ok("resume", "web")).startswith("web: resumed (phase ")
    assert (await get_rollout(kube, cli.ns))["spec"].get("paused") in (False, None)
    await wait_status(kube, cli.ns, paused_at(5), what="resumed to the pause at 100%")
    assert await weights(kube, cli.ns) == (0, 100)

    assert (await cli.ok("abort", "web")).startswith("web: aborted (phase ")
    await wait_status(kube, cli.ns, lambda s: s.get("phase") == "Degraded", what="aborted")
    assert await weights(kube, cli.ns) == (100, 0)
    row = _table_row(await cli.ok("get"), "web")
    assert (row["PHASE"], row["WEIGHT"]) == ("Degraded", "0%")

    assert (await cli.ok("retry", "web")).startswith("web: retried (phase ")
    await wait_status(kube, cli.ns, paused_at(1), what="retried from the first step")
    assert await weights(kube, cli.ns) == (90, 10)

    assert (await cli.ok("promote", "web", "--full")).startswith("web: promoted fully (phase ")
    st = await wait_status(kube, cli.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                           what="fully promoted")
    assert await weights(kube, cli.ns) == (100, 0)
    row = _table_row(await cli.ok("get"), "web")
    assert (row["PHASE"], row["STEP"], row["WEIGHT"], row["STABLE"]) == ("Healthy", "6/6", "0%", st["stableHash"])

    events, _ = await kube.list(EVENTS, namespace=cli.ns)
    requested = [e["message"] for e in events if e["reason"] == "OperationRequested"]
    for who, op in (("ci", "image"), ("sre", "promote"), ("sre", "pause"), ("sre", "resume"), ("sre", "abort"),
                    ("sre", "retry")):
        assert any(f"system:serviceaccount:{cli.ns}:{who}" in m and op in m for m in requested), (who, op, requested)


async def test_undo_and_restart_with_the_cli_and_each_refusal_exits_1_with_its_reason(kube: KubeClient,
                                                                                      cli: Cli) -> None:
    await create_app(kube, cli.ns, rollout_body(steps=[{"setWeight": 50}]))
    v1 = await _healthy(kube, cli.ns)

    # Refusals by the API: exit 1, one line saying why.
    assert "cannot resume web" in await cli.refused("resume", "web")
    assert "abort" in await cli.refused("abort", "web", who="reader")
    assert "pause" in await cli.refused("pause", "web", who="ci")
    assert "missing" in await cli.refused("get", "missing")
    assert "missing" in await cli.refused("pause", "missing")
    bad_token = await sluice("get", "web", "--server", cli.url, "--token", "not-a-real-token", "-n", cli.ns)
    assert bad_token.code == 1 and bad_token.out == "" and len(bad_token.err.splitlines()) == 1, bad_token
    assert bad_token.err.startswith("sluice: ")
    assert (await get_rollout(kube, cli.ns))["status"].get("abort") in (False, None)

    # The server and token from the environment, as CI would set them.
    run = await sluice("set", "image", "web", f"web={V2}", "-n", cli.ns,
                       env={"SLUICE_SERVER": cli.url, "SLUICE_TOKEN": cli.tokens["ci"]})
    assert run.code == 0 and run.out.startswith(f"web: image set web={V2}"), run
    v2 = str((await wait_status(kube, cli.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") != v1,
                                what="v2 promoted"))["stableHash"])

    assert (await cli.ok("undo", "web")).startswith("web: rolled back (phase ")
    body = await get_rollout(kube, cli.ns)
    assert body["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/web:1"
    await wait_status(kube, cli.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") == v1,
                      what="back on v1")
    assert "99" in await cli.refused("undo", "web", "--to-revision", "99")

    assert (await cli.ok("restart", "web")).startswith("web: restarted (phase ")
    body = await get_rollout(kube, cli.ns)
    assert "sluice.dev/restartedAt" in (body["spec"]["template"]["metadata"].get("annotations") or {})
    st = await wait_status(kube, cli.ns, lambda s: s.get("phase") == "Healthy" and s.get("stableHash") not in (v1, v2),
                           what="restarted as a new revision", timeout=60)
    detail = await cli.ok("get", "web", who="reader")
    assert f"Revisions:  stable {st['stableHash']}, canary -" in detail


async def test_without_a_server_or_a_reachable_one_the_cli_says_so() -> None:
    run = await sluice("get", "web", "--token", "t")
    assert run.code == 2 and run.out == "" and "no --server" in run.err and len(run.err.splitlines()) == 1, run
    # Port 1 on the loopback: nothing listens there, the connection is refused at once.
    run = await sluice("pause", "web", "--server", "http://127.0.0.1:1", "--token", "t")
    assert run.code == 3 and run.out == "" and "cannot reach the sluice API" in run.err, run
    assert len(run.err.splitlines()) == 1, run


async def _read_until(stream: asyncio.StreamReader, seen: list[str], needle: str, *, timeout: float) -> None:
    """Reads lines into `seen` until one contains `needle`."""
    deadline = time.monotonic() + timeout
    while not any(needle in line for line in seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {needle!r} in the watch's output after {timeout:g}s:\n" + "".join(seen))
        try:
            line = await asyncio.wait_for(stream.readline(), left)
        except TimeoutError:
            continue
        if not line:
            raise AssertionError(f"the watch ended before showing {needle!r}:\n" + "".join(seen))
        seen.append(line.decode())


async def test_get_watch_redraws_as_the_rollout_moves_and_ctrl_c_ends_it_cleanly(kube: KubeClient,
                                                                                   cli: Cli) -> None:
    await create_app(kube, cli.ns)
    await _healthy(kube, cli.ns)
    await cli.ok("set", "image", "web", f"web={V2}", who="ci")
    await wait_status(kube, cli.ns, paused_at(1), what="the first pause")

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollout", "get", "web", "--watch", *cli.flags("reader"), cwd=REPO, env=_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    seen: list[str] = []
    try:
        await _read_until(proc.stdout, seen, "▶ 2 pause (until resumed)", timeout=CLI_TIMEOUT)
        assert any("Steps (2/6):" in line for line in seen), seen
        await cli.ok("resume", "web")
        await wait_status(kube, cli.ns, paused_at(3), what="the pause at 50%")
        await _read_until(proc.stdout, seen, "▶ 4 pause (until resumed)", timeout=CLI_TIMEOUT)
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, (proc.returncode, err.decode())
    assert b"Traceback" not in err, err.decode()
    output = "".join(seen) + rest.decode()
    assert "Steps (4/6):" in output and "stable 50% [" in output
    # Not a terminal: a view is printed only when it changed, each one whole.
    assert output.count("Name:       ") >= 2
    views = [view.strip() for view in output.split("Name:       ")[1:]]
    assert all(before != after for before, after in itertools.pairwise(views)), views


