"""The client commands of `sluice` (get, pause, resume, promote, abort, retry, restart, undo, set image) against a
fake operator API that follows docs/api.md: the right method, path, token and body go out, the answer is printed as
one line, and refusals and outages map to exit codes 1 and 3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from rollout import cli

TOKEN = "s3cret-token"

SAMPLE_VIEW: dict[str, Any] = {
    "namespace": "shop", "name": "web",
    "phase": "Paused", "message": "paused at step 2/6 until resumed (remove status.pauseConditions)",
    "paused": True, "aborted": False,
    "revision": {"stable": "5e3501315e", "canary": "2c9aea118d"},
    "images": {"web": "registry.example/web:1.1.0"},
    "weights": {"stable": 90, "canary": 10},
    "replicas": {"desired": 10, "stable": 10, "stableAvailable": 10, "canary": 1, "canaryAvailable": 1},
    "currentStep": 1,
    "steps": [
        {"index": 0, "action": "setWeight", "weight": 10, "state": "done"},
        {"index": 1, "action": "pause", "duration": None, "state": "current"},
        {"index": 2, "action": "analysis", "templates": ["success-rate"], "state": "pending"},
    ],
    "analysisRuns": [
        {"name": "web-2c9aea118d-2-2", "kind": "Step", "step": 2, "phase": "Running", "message": "",
         "metrics": [{"name": "success-rate", "phase": "Running", "count": 1, "failed": 0, "inconclusive": 0,
                      "error": 0, "latest": {"phase": "Successful", "value": "[1]", "finishedAt": "...",
                                             "message": ""}}]},
    ],
    "conditions": [{"type": "Paused", "status": "True", "reason": "CanaryPauseStep", "message": "..."}],
}

HEALTHY_VIEW: dict[str, Any] = {
    **SAMPLE_VIEW, "namespace": "billing", "name": "api", "phase": "Healthy", "message": "", "paused": False,
    "revision": {"stable": "77aa01", "canary": "77aa01"}, "weights": {"stable": 100, "canary": 0},
    "currentStep": 3, "analysisRuns": [],
}


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None
    body: Any


Handler = Callable[[Seen], tuple[int, Any]]


@dataclass
class FakeApi:
    """The operator API as docs/api.md describes it, answering from `routes`: {(method, path): (status, body)}."""

    url: str = ""
    routes: dict[tuple[str, str], tuple[int, Any] | Handler] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        seen = Seen(request.method, request.path, request.headers.get("Authorization"),
                    json.loads(raw) if raw else None)
        if raw:
            assert request.content_type == "application/json"
        self.seen.append(seen)
        if seen.authorization != f"Bearer {TOKEN}":
            return _error(401, "no valid bearer token")
        answer = self.routes.get((seen.method, seen.path))
        if answer is None:
            return _error(404, f"no such route {seen.method} {seen.path}")
        status, body = answer(seen) if callable(answer) else answer
        if isinstance(body, str):
            return web.Response(status=status, text=body, content_type="text/html")
        return web.json_response(body, status=status)


def _error(code: int, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=code)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeApi]:
    """A fake API on 127.0.0.1 in its own thread and loop, since `main()` runs its own `asyncio.run`."""
    for name in ("SLUICE_SERVER", "SLUICE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    yield fake
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
    loop.close()


def run(api: FakeApi, *argv: str) -> int:
    return cli.main([*argv, "--server", api.url, "--token", TOKEN])


ROLLOUT = "/api/v1/namespaces/shop/rollouts/web"


# -- reading -----------------------------------------------------------------------------------------------------


def test_get_lists_the_namespace_as_a_table(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/v1/namespaces/shop/rollouts")] = (200, {"items": [SAMPLE_VIEW]})
    assert run(api, "get", "-n", "shop") == 0
    assert capsys.readouterr().out == (
        "NAME   PHASE    STEP   WEIGHT   STABLE       CANARY       MESSAGE\n"
        "web    Paused   2/3    10%      5e3501315e   2c9aea118d   "
        "paused at step 2/6 until resumed (remove status.pauseCondit…\n"
    )
    assert [(s.method, s.path, s.authorization) for s in api.seen] == [
        ("GET", "/api/v1/namespaces/shop/rollouts", f"Bearer {TOKEN}")]


def test_get_all_namespaces_adds_the_namespace_column(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/v1/rollouts")] = (200, {"items": [HEALTHY_VIEW, SAMPLE_VIEW]})
    assert run(api, "get", "-A") == 0
    assert capsys.readouterr().out == (
        "NAMESPACE   NAME   PHASE     STEP   WEIGHT   STABLE       CANARY       MESSAGE\n"
        "billing     api    Healthy   3/3    0%       77aa01       -\n"
        "shop        web    Paused    2/3    10%      5e3501315e   2c9aea118d   "
        "paused at step 2/6 until resumed (remove status.pauseCondit…\n"
    )


def test_get_of_an_empty_namespace_says_so(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", "/api/v1/namespaces/default/rollouts")] = (200, {"items": []})
    assert run(api, "get") == 0
    assert capsys.readouterr().out == "No rollouts in namespace default.\n"


DETAIL = """\
Name:       shop/web
Phase:      Paused
Message:    paused at step 2/6 until resumed (remove status.pauseConditions)
Revisions:  stable 5e3501315e, canary 2c9aea118d
Images:     web=registry.example/web:1.1.0
Weights:    stable 90% [░░░░░░░░░░░░░░░░░░██] canary 10%
Replicas:   desired 10, stable 10/10 available, canary 1/1 available

Steps (2/3):
  ✓ 1 setWeight 10%
  ▶ 2 pause (until resumed)
    3 analysis success-rate

Analysis runs:
  web-2c9aea118d-2-2 (Step at step 3): Running
    success-rate: Running (1 measured, 0 failed, 0 inconclusive, 0 error); latest Successful [1]
"""


def test_get_name_shows_the_detail_view(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", ROLLOUT)] = (200, SAMPLE_VIEW)
    assert run(api, "get", "web", "-n", "shop") == 0
    assert capsys.readouterr().out == DETAIL


def test_get_json_prints_the_view_as_the_api_sent_it(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", ROLLOUT)] = (200, SAMPLE_VIEW)
    assert run(api, "get", "web", "-n", "shop", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out) == SAMPLE_VIEW


def test_get_watch_prints_each_change_until_ctrl_c(api: FakeApi, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "WATCH_INTERVAL", 0.01)
    promoted = {**SAMPLE_VIEW, "phase": "Progressing", "message": "", "paused": False, "currentStep": 2}

    def answer(seen: Seen) -> tuple[int, Any]:
        reads = len(api.seen)
        if reads == 6:
            os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C
        return 200, {"items": [SAMPLE_VIEW if reads <= 3 else promoted]}

    api.routes[("GET", "/api/v1/namespaces/shop/rollouts")] = answer
    assert run(api, "get", "-n", "shop", "--watch") == 0
    blocks = capsys.readouterr().out.split("\n\n")
    assert len(blocks) == 2  # stdout is not a TTY: a new block only when the view changed
    assert "Paused" in blocks[0] and "Progressing" in blocks[1]
    assert len(api.seen) >= 6


def test_get_name_with_all_namespaces_is_a_usage_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "get", "web", "-A") == 2
    assert "do not go together" in capsys.readouterr().err
    assert api.seen == []


# -- operating ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "method", "path", "body", "line"), [
    (["pause", "web"], "POST", f"{ROLLOUT}/pause", None, "web: paused (phase Paused)"),
    (["resume", "web"], "POST", f"{ROLLOUT}/resume", None, "web: resumed (phase Paused)"),
    (["abort", "web"], "POST", f"{ROLLOUT}/abort", None, "web: aborted (phase Paused)"),
    (["retry", "web"], "POST", f"{ROLLOUT}/retry", None, "web: retried (phase Paused)"),
    (["restart", "web"], "POST", f"{ROLLOUT}/restart", None, "web: restarted (phase Paused)"),
    (["promote", "web"], "POST", f"{ROLLOUT}/promote", {"full": False}, "web: promoted (phase Paused)"),
    (["promote", "web", "--full"], "POST", f"{ROLLOUT}/promote", {"full": True},
     "web: promoted fully (phase Paused)"),
    (["undo", "web"], "POST", f"{ROLLOUT}/undo", {}, "web: rolled back (phase Paused)"),
    (["undo", "web", "--to-revision", "3"], "POST", f"{ROLLOUT}/undo", {"toRevision": 3},
     "web: rolled back to revision 3 (phase Paused)"),
    (["set", "image", "web", "web=registry.example/web:1.4.2"], "PUT", f"{ROLLOUT}/image",
     {"container": "web", "image": "registry.example/web:1.4.2"},
     "web: image set web=registry.example/web:1.4.2 (phase Paused)"),
])
def test_operation_sends_the_contract_request_and_prints_one_line(
        api: FakeApi, capsys: pytest.CaptureFixture[str], argv: list[str], method: str, path: str, body: Any,
        line: str) -> None:
    api.routes[(method, path)] = (200, SAMPLE_VIEW)
    assert run(api, *argv, "-n", "shop") == 0
    assert capsys.readouterr().out == line + "\n"
    assert api.seen == [Seen(method, path, f"Bearer {TOKEN}", body)]


@pytest.mark.parametrize(("status", "exit_code"), [(400, 1), (401, 1), (403, 1), (404, 1), (409, 1), (500, 3),
                                                   (503, 3)])
def test_an_api_error_prints_its_message_on_one_line(api: FakeApi, capsys: pytest.CaptureFixture[str], status: int,
                                                     exit_code: int) -> None:
    message = f"cannot resume web: it is not paused\n(status {status})"
    api.routes[("POST", f"{ROLLOUT}/resume")] = (status, {"error": {"code": status, "message": message}})
    assert run(api, "resume", "web", "-n", "shop") == exit_code
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"sluice: cannot resume web: it is not paused (status {status})\n"


def test_a_wrong_token_is_refused_with_exit_1(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pause", "web", "--server", api.url, "--token", "wrong"]) == 1
    assert capsys.readouterr().err == "sluice: no valid bearer token\n"


def test_a_proxy_error_page_becomes_its_status_line(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    api.routes[("GET", ROLLOUT)] = (502, "<html>bad gateway</html>")
    assert run(api, "get", "web", "-n", "shop") == 3
    assert capsys.readouterr().err == "sluice: HTTP 502 Bad Gateway\n"


def test_an_unreachable_server_exits_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert cli.main(["pause", "web", "--server", url, "--token", TOKEN]) == 3
    err = capsys.readouterr().err
    assert err.startswith(f"sluice: cannot reach the sluice API at {url}: ")
    assert err.count("\n") == 1


# -- server and token --------------------------------------------------------------------------------------------


def test_server_and_token_come_from_the_environment(api: FakeApi, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SLUICE_SERVER", api.url)
    monkeypatch.setenv("SLUICE_TOKEN", TOKEN)
    api.routes[("POST", "/api/v1/namespaces/default/rollouts/web/pause")] = (200, SAMPLE_VIEW)
    assert cli.main(["pause", "web"]) == 0
    assert capsys.readouterr().out == "web: paused (phase Paused)\n"


def test_no_server_is_a_usage_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pause", "web", "--token", TOKEN]) == 2
    assert capsys.readouterr().err == "sluice: no --server given (or set SLUICE_SERVER to the sluice API's URL)\n"


def _kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "dev",
        "clusters": [{"name": "dev", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "contexts": [{"name": "dev", "context": {"cluster": "dev", "user": "alice"}}],
        "users": [{"name": "alice", "user": user}],
    }))
    return path


@pytest.mark.parametrize("source", ["token", "tokenFile", "exec"])
def test_the_token_defaults_to_the_kubeconfig_users(api: FakeApi, tmp_path: Path, source: str) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    plugin = tmp_path / "credential-plugin"
    credential = {"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                  "status": {"token": TOKEN}}
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(credential)}'\n")
    plugin.chmod(0o755)
    users: dict[str, dict[str, Any]] = {
        "token": {"token": TOKEN},
        "tokenFile": {"tokenFile": str(token_file)},
        "exec": {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": str(plugin),
                          "interactiveMode": "Never"}},
    }
    user = users[source]
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", user)
    api.routes[("POST", "/api/v1/namespaces/default/rollouts/web/pause")] = (200, SAMPLE_VIEW)
    assert cli.main(["pause", "web", "--server", api.url, "--kubeconfig", str(kubeconfig)]) == 0
    assert api.seen[0].authorization == f"Bearer {TOKEN}"


def test_a_kubeconfig_user_without_a_token_is_a_usage_error(api: FakeApi, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", {"username": "alice", "password": "pw"})
    assert cli.main(["pause", "web", "--server", api.url, "--kubeconfig", str(kubeconfig)]) == 2
    assert "no token: pass --token or set SLUICE_TOKEN" in capsys.readouterr().err
    assert api.seen == []


def test_no_kubeconfig_and_no_token_is_a_usage_error(api: FakeApi, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pause", "web", "--server", api.url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluice: no token: pass --token or set SLUICE_TOKEN (kubeconfig ")
    assert err.endswith("no-kubeconfig does not exist)\n")


def test_a_malformed_image_assignment_is_a_usage_error(api: FakeApi) -> None:
    with pytest.raises(SystemExit) as info:
        run(api, "set", "image", "web", "registry.example/web:1.4.2")
    assert info.value.code == 2


@pytest.mark.parametrize("extra", [["--server", "http://[::1"], ["--server", "ftp://x"],
                                   ["--server", "http://127.0.0.1:1", "--ca-file", "/no/such/ca.pem"]])
def test_a_malformed_server_or_missing_ca_file_is_a_usage_error(extra: list[str],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "--token", "t", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sluice:") and "\n" not in err
