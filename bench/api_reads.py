"""What does reading through the operator API cost at 200 requests/s with 100 Rollouts, and how many reviews reach
the API server? (requirement: p50/p99 latency and TokenReview/SubjectAccessReview calls per 1,000 requests)

Starts the local control plane and the controller as a subprocess (`python -m rollout controller`, watching one
namespace, its API on a free port read from its log), creates a fleet of Rollouts (default 100, bench/fleet.py) and
waits until they are Healthy, and creates a few ServiceAccounts (default 5) bound to a reader Role (get, list), each
with a TokenRequest token, as several dashboards polling at once. Then two phases against the same fleet and the same
controller, each starting with the review cache expired:
- the baseline: `--baseline-rate` (default 20) requests/s;
- the case: `--rate` (default 200) requests/s;
each for `--duration` s (default 30). A request is `GET .../namespaces/NS/rollouts/{name}` for a random Rollout, or
with probability `--list-share` (default 0.1) `GET .../namespaces/NS/rollouts`, from user i mod users.

The load is open-loop: request i is scheduled at start + i/rate and sent then whether or not earlier ones have been
answered, and its latency runs from the scheduled instant to the last byte of the answer, so a slow controller (or a
slow load generator: `send lag` reports it) shows up as latency instead of as fewer requests (coordinated omission).

Reported per phase: achieved rate, non-200 answers, latency p50/p99/max (all, and gets and lists apart), the reviews
the controller sent (`sluice_auth_reviews_total{kind}` from its /metrics, before and after) per 1,000 requests, and
the controller's CPU (% of one core, /proc/<pid>/stat) and RSS; then case/baseline ratios (machines are shared and
noisy: compare ratios, not milliseconds). Usage: `.venv/bin/python bench/api_reads.py [--rollouts 100] [--users 5]
[--rate 200] [--baseline-rate 20] [--duration 30] [--list-share 0.1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import re
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from fleet import app_objects, cpu_seconds, memory_mb, percentile, wait_until

from devcluster.controlplane import REPO_ROOT, Component, ControlPlane, spawn
from rollout.kube import NAMESPACES, ROLLOUTS, KubeClient, Resource

NAMESPACE = "bench-api"
CACHE_SECONDS = 5.0  # the Reviewer's default: each phase starts after this much quiet, so both start cold
REQUEST_TIMEOUT = 10.0  # a request unanswered this long counts as an error
REVIEW_KINDS = ("TokenReview", "SubjectAccessReview")
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles", "Role")
ROLE_BINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
_LISTENING = re.compile(r"operator API listening on (http://[\d.]+:\d+)")
_REVIEWS = re.compile(r'^sluice_auth_reviews_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.MULTILINE)


# -- setting up ---------------------------------------------------------------------------------------------------


async def _reader(admin: KubeClient, name: str) -> str:
    """A ServiceAccount allowed get and list on Rollouts in the namespace, and a token for it."""
    await admin.create(SERVICE_ACCOUNTS, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                       namespace=NAMESPACE)
    await admin.create(ROLES, {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
                               "rules": [{"apiGroups": ["sluice.dev"], "resources": ["rollouts"],
                                          "verbs": ["get", "list"]}]}, namespace=NAMESPACE)
    await admin.create(ROLE_BINDINGS, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]}, namespace=NAMESPACE)
    request = await admin.create(SERVICE_ACCOUNTS, {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                                    "spec": {"expirationSeconds": 3600}},
                                 namespace=NAMESPACE, name=name, subresource="token")
    return str(request["status"]["token"])


async def _fleet(admin: KubeClient, size: int) -> list[str]:
    names = [f"app{i}" for i in range(size)]
    for name in names:
        for kind, body in app_objects(name, [{"setWeight": 50}, {"pause": {}}]):
            await admin.create(kind, body, namespace=NAMESPACE)

    async def healthy() -> bool:
        items, _ = await admin.list(ROLLOUTS, namespace=NAMESPACE)
        return sum(1 for ro in items if (ro.get("status") or {}).get("phase") == "Healthy") == size

    await wait_until(f"{size} Rollouts not Healthy", 60 + size, healthy)
    return names


@contextlib.asynccontextmanager
async def _controller(kubeconfig: str, workdir: Path) -> AsyncIterator[tuple[Component, str]]:
    log_path = workdir / "controller.log"
    component = spawn("controller", [
        sys.executable, "-m", "rollout", "controller", "--namespace", NAMESPACE, "--kubeconfig", kubeconfig,
        "--api-address", "127.0.0.1", "--api-port", "0", "--metrics-address", "127.0.0.1", "--metrics-port", "0",
        "--log-level", "info",
    ], log_path=log_path, cwd=REPO_ROOT)
    try:
        url = ""

        async def listening() -> bool:
            nonlocal url
            component.check_alive()
            found = _LISTENING.findall(log_path.read_text(errors="replace"))
            url = found[-1] if found else ""
            return bool(url)

        await wait_until("the operator API not listening", 60, listening)
        yield component, url
    finally:
        component.stop(grace=10.0)


# -- one phase ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    url: str
    tokens: list[str]
    names: list[str]
    list_share: float
    duration: float


@dataclass(frozen=True)
class Outcome:
    route: str  # "get" or "list"
    code: str  # the HTTP status, or the exception's name
    latency: float  # from the scheduled send to the last byte of the answer
    send_lag: float  # from the scheduled send to the request task starting


async def _reviews(session: aiohttp.ClientSession, url: str) -> Counter[str]:
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    return Counter({kind: int(float(value)) for kind, value in _REVIEWS.findall(text)})


async def _one(session: aiohttp.ClientSession, url: str, token: str, route: str, at: float) -> Outcome:
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
            await response.read()
            code = str(response.status)
    except (aiohttp.ClientError, TimeoutError) as exc:
        code = type(exc).__name__
    return Outcome(route, code, loop.time() - at, started - at)


async def _drive(session: aiohttp.ClientSession, load: Load, rate: float, seed: int) -> list[Outcome]:
    """Open loop: request i is started at start + i/rate, whatever happened to the ones before it."""
    choose = random.Random(seed)
    loop = asyncio.get_running_loop()
    base = f"{load.url}/api/v1/namespaces/{NAMESPACE}/rollouts"
    start = loop.time() + 0.1
    tasks = []
    for i in range(round(rate * load.duration)):
        at = start + i / rate
        if at > loop.time():
            await asyncio.sleep(at - loop.time())
        is_list = choose.random() < load.list_share
        url = base if is_list else f"{base}/{choose.choice(load.names)}"
        token = load.tokens[i % len(load.tokens)]
        tasks.append(asyncio.create_task(_one(session, url, token, "list" if is_list else "get", at)))
    return list(await asyncio.gather(*tasks))


async def _phase(load: Load, controller: Component, rate: float, seed: int) -> dict[str, float]:
    await asyncio.sleep(CACHE_SECONDS + 1)  # every cached review from before has expired
    pid = controller.process.pid
    connector = aiohttp.TCPConnector(limit=0)  # open loop: never queue behind a connection limit
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        reviews0 = await _reviews(session, load.url)
        cpu0, own0, wall0 = cpu_seconds(pid), _own_cpu_seconds(), time.monotonic()
        outcomes = await _drive(session, load, rate, seed)
        cpu1, own1, wall1 = cpu_seconds(pid), _own_cpu_seconds(), time.monotonic()
        reviews1 = await _reviews(session, load.url)
    controller.check_alive()
    return _summary(outcomes, reviews1 - reviews0, window=wall1 - wall0, cpu=cpu1 - cpu0, own_cpu=own1 - own0,
                    rss=memory_mb(pid).get("VmRSS", float("nan")))


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _summary(outcomes: list[Outcome], reviews: Counter[str], *, window: float, cpu: float, own_cpu: float,
             rss: float) -> dict[str, float]:
    def latencies(route: str | None = None) -> list[float]:
        return [o.latency for o in outcomes if route is None or o.route == route]

    done = len(outcomes)
    summary = {
        "requests": done, "achieved req/s": done / window,
        "non-200": sum(1 for o in outcomes if o.code != "200"),
        "p50 ms": 1000 * percentile(latencies(), 50), "p99 ms": 1000 * percentile(latencies(), 99),
        "max ms": 1000 * max(latencies(), default=float("nan")),
        "get p50 ms": 1000 * percentile(latencies("get"), 50), "get p99 ms": 1000 * percentile(latencies("get"), 99),
        "list p50 ms": 1000 * percentile(latencies("list"), 50),
        "list p99 ms": 1000 * percentile(latencies("list"), 99),
        "send lag p99 ms": 1000 * percentile([o.send_lag for o in outcomes], 99),
    }
    for kind in REVIEW_KINDS:
        summary[f"{kind}s"] = reviews[kind]
        summary[f"{kind}s /1k req"] = 1000 * reviews[kind] / max(done, 1)
    summary |= {"controller CPU %": 100 * cpu / window, "controller RSS MB": rss,
                "bench CPU %": 100 * own_cpu / window}
    errors = Counter(o.code for o in outcomes if o.code != "200")
    if errors:
        print(f"non-200 answers: {dict(errors)}", file=sys.stderr)
    return summary


# -- main ---------------------------------------------------------------------------------------------------------


async def _bench(kubeconfig: str, args: argparse.Namespace, workdir: Path) -> tuple[dict[str, float], ...]:
    admin = await KubeClient.connect(kubeconfig=kubeconfig)
    try:
        await admin.create(NAMESPACES, {"metadata": {"name": NAMESPACE}})
        try:
            tokens = [await _reader(admin, f"reader{i}") for i in range(args.users)]
            async with _controller(kubeconfig, workdir) as (controller, url):
                names = await _fleet(admin, args.rollouts)
                load = Load(url=url, tokens=tokens, names=names, list_share=args.list_share,
                            duration=args.duration)
                base = await _phase(load, controller, args.baseline_rate, seed=1)
                case = await _phase(load, controller, args.rate, seed=2)
        finally:
            await admin.delete(NAMESPACES, name=NAMESPACE)
    finally:
        await admin.close()
    return base, case


def main(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="sluice-bench-api-"))
    with ControlPlane() as control_plane:
        base, case = asyncio.run(_bench(str(control_plane.kubeconfig), args, workdir))
    print(f"{args.rollouts} Rollouts, {args.users} users, {args.duration:g} s per phase, "
          f"{100 * args.list_share:g} % lists")
    print(f"{'metric':<28}{f'{args.baseline_rate:g}/s':>12}{f'{args.rate:g}/s':>12}{'ratio':>8}")
    for key, value in base.items():
        ratio = case[key] / value if value else float("nan")
        print(f"{key:<28}{value:>12.2f}{case[key]:>12.2f}{ratio:>8.2f}")
    print(f"controller log: {workdir / 'controller.log'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=100, help="Rollouts in the fleet")
    parser.add_argument("--users", type=int, default=5, help="ServiceAccounts (reader Role) sending the requests")
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s in the case")
    parser.add_argument("--baseline-rate", type=float, default=20.0, help="requests/s in the baseline")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each phase runs")
    parser.add_argument("--list-share", type=float, default=0.1, help="share of requests that list the namespace")
    try:
        main(parser.parse_args())
    except KeyboardInterrupt:  # the namespace, the controller and the control plane are gone by now
        sys.exit("interrupted")
