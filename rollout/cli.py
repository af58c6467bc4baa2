"""`sluice` command line.

`sluice controller` runs the controller (from a kubeconfig, or in-cluster) and, in the same process, the operator API
(docs/api.md); with --leader-elect several replicas can run, and only the holder of a Lease reconciles
(rollout/leader.py). Every other command is a client of that API, through rollout/apiclient.py: `get` shows Rollouts
(rendered by rollout/console.py), `pause`, `resume`, `promote`, `abort`, `retry`, `restart`, `undo` and
`set image` operate on one. The client commands never talk to Kubernetes themselves; they only borrow the kubeconfig
user's bearer token (rollout.kube.kubeconfig_bearer_token) when no --token or SLUICE_TOKEN is given. `sluice crds
apply` is for installers (the Helm chart's hook): it applies the CRDs packaged with sluice (rollout/installing.py).
`sluice lint` checks manifests offline against the pre-flight guardrails (rollout/linting.py, docs/policy.md); its
exit codes are its own: 0 no enforce rule failed, 1 one did, 2 usage error or unreadable input.

Exit codes of the client commands (and `crds apply`): 0 done, 1 the API refused (4xx), 2 usage error (no server, no
token, no kubeconfig), 3 the API could not be reached or failed (5xx).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import urllib.parse
from dataclasses import replace
from typing import Any

from rollout import console, linting
from rollout.apiclient import ApiClient, ApiClientError
from rollout.controller import Controller
from rollout.installing import CrdError, apply_crds, packaged_crds
from rollout.kube import ApiError, ConfigError, KubeClient, kubeconfig_bearer_token
from rollout.probes import ListenError
from rollout.reporting import configure_logging
from rollout.settings import (
    AnalysisSettings,
    ApiSettings,
    LeaderElectionSettings,
    MetricsSettings,
    QueueSettings,
    Settings,
)
from strategies import policy

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
WATCH_INTERVAL = 1.0  # seconds between two reads of `sluice get --watch`
_SIMPLE_OPERATIONS = ("pause", "resume", "abort", "retry", "restart")


class UsageError(Exception):
    """A command line that cannot work: printed as one line, exit code 2."""


def _controller_parser(commands: Any) -> None:
    ctl = commands.add_parser("controller", help="run the controller and the operator API")
    ctl.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    ctl.add_argument("--context", help="kubeconfig context")
    ctl.add_argument("--namespace", "-n", action="append", default=[],
                     help="watch only this namespace (repeatable; default: all namespaces)")
    ctl.add_argument("--workers", type=int, default=QueueSettings.workers, help="parallel reconciles")
    ctl.add_argument("--resync-seconds", type=float, default=QueueSettings.resync_seconds,
                     help="look at every Rollout at least this often")
    ctl.add_argument("--analysis-workers", type=int, default=AnalysisSettings.workers,
                     help="AnalysisRuns measured in parallel")
    ctl.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ctl.add_argument("--log-format", default="text", choices=["text", "json"])
    ctl.add_argument("--api-address", default=ApiSettings.address, help="address the operator API listens on")
    ctl.add_argument("--api-port", type=int, default=ApiSettings.port, help="port of the operator API")
    ctl.add_argument("--api-tls-cert", help="TLS certificate file of the operator API (with --api-tls-key)")
    ctl.add_argument("--api-tls-key", help="TLS private key file of the operator API (with --api-tls-cert)")
    ctl.add_argument("--api-allow-plain-http", action="store_true",
                     help="serve the API without TLS on a non-loopback address (bearer tokens in clear text)")
    ctl.add_argument("--webhook-secret", metavar="NAMESPACE/NAME",
                     help="Secret whose key `hmac` signs registry webhook calls (default: webhook disabled)")
    ctl.add_argument("--policy", action="append", default=[], type=_policy_assignment, metavar="RULE=MODE",
                     help="the cluster's mode for a guardrail rule (enforce, warn, off; repeatable; docs/policy.md); "
                          f"rules: {', '.join(policy.RULES)}")
    _leader_election_flags(ctl)
    _metrics_flags(ctl)


def _metrics_flags(ctl: Any) -> None:
    ctl.add_argument("--metrics-address", default=MetricsSettings.address,
                     help="address of the plain-HTTP listener for /metrics, /healthz and /readyz (no TLS, no tokens; "
                          "default: all interfaces, for the kubelet and Prometheus)")
    ctl.add_argument("--metrics-port", type=int, default=MetricsSettings.port,
                     help="port of the metrics and probe listener (0: a free port, logged)")


def _duration(value: str) -> float:
    """Seconds, plain ("15", "1.5") or with a unit as Kubernetes components write them ("15s", "500ms", "1m")."""
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if value.endswith(suffix):
            number, factor = value.removesuffix(suffix), scale
            break
    else:
        number, factor = value, 1.0
    try:
        seconds = float(number) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 15s, got {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {value!r}")
    return seconds


def _leader_election_flags(ctl: Any) -> None:
    defaults = LeaderElectionSettings()
    ctl.add_argument("--leader-elect", action="store_true",
                     help="run several replicas: only the holder of a Lease reconciles (default: off, this process "
                          "reconciles)")
    ctl.add_argument("--leader-election-namespace", default=os.environ.get("POD_NAMESPACE") or defaults.namespace,
                     help="namespace of the Lease (default: $POD_NAMESPACE, else default)")
    ctl.add_argument("--leader-election-name", default=defaults.name, help="name of the Lease")
    ctl.add_argument("--leader-election-lease-duration", type=_duration, default=defaults.lease_duration,
                     metavar="DURATION", help="how long the others wait after the Lease's last change before "
                                              "taking over (default: 15s)")
    ctl.add_argument("--leader-election-renew-deadline", type=_duration, default=defaults.renew_deadline,
                     metavar="DURATION", help="the leader stops reconciling if it cannot renew for this long "
                                              "(default: 10s)")
    ctl.add_argument("--leader-election-retry-period", type=_duration, default=defaults.retry_period,
                     metavar="DURATION", help="how often the leader renews and the others look (default: 2s)")


def _image_assignment(value: str) -> tuple[str, str]:
    container, sep, image = value.partition("=")
    if not sep or not container or not image:
        raise argparse.ArgumentTypeError(f"expected CONTAINER=IMAGE, got {value!r}")
    return container, image


def _client_parsers(commands: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("SLUICE_SERVER"),
                        help="URL of the sluice API (default: $SLUICE_SERVER)")
    common.add_argument("--token", default=os.environ.get("SLUICE_TOKEN"),
                        help="bearer token (default: $SLUICE_TOKEN, else the kubeconfig user's token)")
    common.add_argument("--kubeconfig", help="kubeconfig to take the token from (default: $KUBECONFIG, ~/.kube/config)")
    common.add_argument("--context", help="kubeconfig context to take the token from")
    common.add_argument("--namespace", "-n", default="default", help="namespace of the Rollout (default: default)")
    common.add_argument("--ca-file", help="CA bundle to verify the API's TLS certificate")
    common.add_argument("--insecure-skip-tls-verify", action="store_true",
                        help="do not verify the API's TLS certificate")

    get = commands.add_parser("get", parents=[common], help="show Rollouts, or one Rollout in detail")
    get.add_argument("name", nargs="?", help="the Rollout to show in detail (default: list them)")
    get.add_argument("--all-namespaces", "-A", action="store_true", help="list Rollouts in every namespace")
    get.add_argument("--watch", "-w", action="store_true", help="redraw every second until Ctrl-C")
    get.add_argument("--output", "-o", default="table", choices=["table", "json"])
    helps = {"pause": "pause a Rollout", "resume": "resume a paused Rollout", "abort": "send all traffic to stable",
             "retry": "walk the steps again after an abort", "restart": "roll the same pods again through the steps"}
    for op in _SIMPLE_OPERATIONS:
        commands.add_parser(op, parents=[common], help=helps[op]).add_argument("name")
    promote = commands.add_parser("promote", parents=[common], help="release the current pause step")
    promote.add_argument("name")
    promote.add_argument("--full", action="store_true", help="skip every remaining step")
    undo = commands.add_parser("undo", parents=[common], help="roll back to an earlier revision")
    undo.add_argument("name")
    undo.add_argument("--to-revision", type=int, help="revision to go back to (default: the previous one)")
    set_ = commands.add_parser("set", help="change a Rollout's spec")
    set_commands = set_.add_subparsers(dest="set_command", required=True)
    image = set_commands.add_parser("image", parents=[common], help="set a container's image")
    image.add_argument("name")
    image.add_argument("assignment", metavar="CONTAINER=IMAGE", type=_image_assignment)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Progressive delivery for Kubernetes")
    commands = parser.add_subparsers(dest="command", required=True)
    _controller_parser(commands)
    _client_parsers(commands)
    _crds_parser(commands)
    _lint_parser(commands)
    return parser


# -- controller --------------------------------------------------------------------------------------------------


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def api_settings(args: argparse.Namespace) -> ApiSettings:
    """The operator API's settings from `sluice controller` flags; UsageError for combinations that cannot work."""
    if (args.api_tls_cert is None) != (args.api_tls_key is None):
        raise UsageError("--api-tls-cert and --api-tls-key go together")
    tls = args.api_tls_cert is not None
    if not tls and not args.api_allow_plain_http and not _is_loopback(args.api_address):
        raise UsageError(f"refusing to serve the API on {args.api_address} without TLS: bearer tokens would travel "
                         "in clear text (give --api-tls-cert and --api-tls-key, or --api-allow-plain-http)")
    if args.webhook_secret is not None:
        namespace, sep, name = args.webhook_secret.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise UsageError(f"--webhook-secret wants NAMESPACE/NAME, got {args.webhook_secret!r}")
    return ApiSettings(address=args.api_address, port=args.api_port, tls_cert_file=args.api_tls_cert,
                       tls_key_file=args.api_tls_key, allow_plain_http=args.api_allow_plain_http,
                       webhook_secret=args.webhook_secret)


async def _run_controller(args: argparse.Namespace) -> int:
    # Credentials first: without them nothing else matters, and the message says what to do.
    try:
        client = await KubeClient.connect(kubeconfig=args.kubeconfig, context=args.context)
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        settings = controller_settings(args)
    except UsageError as exc:
        await client.close()
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    controller = Controller(client, settings)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        await controller.run()
    except asyncio.CancelledError:
        pass
    except ListenError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        await client.close()
    return EXIT_OK


def leader_election_settings(args: argparse.Namespace) -> LeaderElectionSettings | None:
    """The Lease's settings from `sluice controller` flags (None without --leader-elect); UsageError unless
    retry period < renew deadline < lease duration, which is what keeps two leaders from overlapping."""
    if not args.leader_elect:
        return None
    election = LeaderElectionSettings(
        namespace=args.leader_election_namespace, name=args.leader_election_name,
        lease_duration=args.leader_election_lease_duration, renew_deadline=args.leader_election_renew_deadline,
        retry_period=args.leader_election_retry_period,
    )
    if not election.renew_deadline < election.lease_duration:
        raise UsageError("--leader-election-renew-deadline must be shorter than --leader-election-lease-duration")
    if not election.retry_period < election.renew_deadline:
        raise UsageError("--leader-election-retry-period must be shorter than --leader-election-renew-deadline")
    return election


def controller_settings(args: argparse.Namespace) -> Settings:
    """`sluice controller` flags as Settings; UsageError for combinations that cannot work."""
    settings = Settings(namespaces=tuple(args.namespace), api=api_settings(args),
                        leader_election=leader_election_settings(args), policy=dict(args.policy))
    return replace(settings, queue=replace(settings.queue, workers=args.workers, resync_seconds=args.resync_seconds),
                   analysis=replace(settings.analysis, workers=args.analysis_workers), metrics=metrics_settings(args))


def metrics_settings(args: argparse.Namespace) -> MetricsSettings:
    """The probe and metrics listener's settings from `sluice controller` flags (UsageError for a bad port)."""
    if not 0 <= args.metrics_port <= 65535:
        raise UsageError(f"--metrics-port wants 0..65535, got {args.metrics_port}")
    if args.metrics_port and args.metrics_port == args.api_port and (
            args.metrics_address == args.api_address or "0.0.0.0" in (args.metrics_address, args.api_address)
            or "::" in (args.metrics_address, args.api_address)):
        raise UsageError(f"--metrics-port and --api-port are both {args.api_port}: give them different ports")
    return MetricsSettings(address=args.metrics_address, port=args.metrics_port)


def _controller(args: argparse.Namespace) -> int:
    configure_logging(level=args.log_level, fmt=args.log_format)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_run_controller(args))
    return EXIT_OK


# -- client commands ---------------------------------------------------------------------------------------------


async def _token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    try:
        token = await kubeconfig_bearer_token(args.kubeconfig, args.context)
    except ConfigError as exc:
        raise UsageError(f"no token: pass --token or set SLUICE_TOKEN ({exc})") from exc
    if token is None:
        raise UsageError("no token: pass --token or set SLUICE_TOKEN (the kubeconfig's user has no bearer token)")
    return token


async def _connect(args: argparse.Namespace) -> ApiClient:
    if not args.server:
        raise UsageError("no --server given (or set SLUICE_SERVER to the sluice API's URL)")
    try:
        parsed = urllib.parse.urlsplit(args.server)
        valid = parsed.scheme in ("http", "https") and bool(parsed.hostname) and (parsed.port or 0) >= 0
    except ValueError:  # an unclosed IPv6 bracket, a port that is not a number
        valid = False
    if not valid:
        raise UsageError(f"--server wants an http:// or https:// URL, got {args.server!r}")
    if args.ca_file and not os.path.isfile(args.ca_file):  # noqa: ASYNC240 - one stat before any I/O
        raise UsageError(f"--ca-file {args.ca_file}: no such file")
    return ApiClient(args.server, await _token(args), ca_file=args.ca_file, insecure=args.insecure_skip_tls_verify)


async def _get_text(api: ApiClient, args: argparse.Namespace) -> str:
    if args.name:
        view = await api.get_rollout(args.namespace, args.name)
        return json.dumps(view, indent=2) if args.output == "json" else console.render_detail(view)
    views = await api.list_rollouts(None if args.all_namespaces else args.namespace)
    if args.output == "json":
        return json.dumps({"items": views}, indent=2)
    if not views:
        return "No rollouts." if args.all_namespaces else f"No rollouts in namespace {args.namespace}."
    return console.render_table(views, all_namespaces=args.all_namespaces)


async def _watch(api: ApiClient, args: argparse.Namespace) -> int:
    """Redraw until Ctrl-C. Unreachable or failing API: say so and keep trying; a refusal (4xx) ends the watch."""
    tty = sys.stdout.isatty()
    shown: str | None = None
    while True:
        try:
            text = await _get_text(api, args)
        except ApiClientError as exc:
            if 0 < exc.code < 500:
                raise
            text = f"sluice: {exc.message} (retrying)"
        if tty:
            print("\x1b[H\x1b[2J" + text, flush=True)
        elif text != shown:
            print(text if shown is None else "\n" + text, flush=True)
        shown = text
        await asyncio.sleep(WATCH_INTERVAL)


async def _operate(api: ApiClient, args: argparse.Namespace) -> str:
    ns, name = args.namespace, args.name
    if args.command == "set":
        container, image = args.assignment
        view = await api.set_image(ns, name, container, image)
        return console.operation_line(name, "image", view, detail=f"{container}={image}")
    if args.command == "promote":
        view = await api.operate(ns, name, "promote", {"full": args.full})
        return console.operation_line(name, "promote", view, detail="fully" if args.full else "")
    if args.command == "undo":
        body = {} if args.to_revision is None else {"toRevision": args.to_revision}
        view = await api.operate(ns, name, "undo", body)
        detail = "" if args.to_revision is None else f"to revision {args.to_revision}"
        return console.operation_line(name, "undo", view, detail=detail)
    view = await api.operate(ns, name, args.command)
    return console.operation_line(name, args.command, view)


async def _run_client(args: argparse.Namespace) -> int:
    try:
        if args.command == "get" and args.name and args.all_namespaces:
            raise UsageError("a Rollout NAME and --all-namespaces do not go together")
        api = await _connect(args)
    except UsageError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    async with api:
        try:
            if args.command == "get":
                if args.watch:
                    return await _watch(api, args)
                print(await _get_text(api, args))
            else:
                print(await _operate(api, args))
        except ApiClientError as exc:
            print(f"sluice: {exc.message}", file=sys.stderr)
            return EXIT_UNREACHABLE if exc.code == 0 or exc.code >= 500 else EXIT_REFUSED
    return EXIT_OK


# -- crds --------------------------------------------------------------------------------------------------------


def _crds_parser(commands: Any) -> None:
    crds = commands.add_parser("crds", help="the CRDs packaged with sluice (for installers)")
    crds_commands = crds.add_subparsers(dest="crds_command", required=True)
    apply = crds_commands.add_parser(
        "apply", help="server-side apply the packaged CRDs (field manager sluice) and wait until Established")
    apply.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, in-cluster)")
    apply.add_argument("--context", help="kubeconfig context")
    apply.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for the CRDs to be Established (default: 60)")


async def _run_crds_apply(args: argparse.Namespace) -> int:
    """Print one block per CRD (what changed), then a summary line; errors as one line on stderr."""
    try:
        docs = packaged_crds()
        client = await KubeClient.connect(kubeconfig=args.kubeconfig, context=args.context)
    except (ConfigError, CrdError) as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        changes = await apply_crds(client, docs, wait_seconds=args.timeout)
    except ApiError as exc:
        print(f"sluice: cannot apply the CRDs: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if exc.temporary else EXIT_REFUSED
    except CrdError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        await client.close()
    for change in changes:
        print("\n".join(change.lines()))
    counts = {action: sum(c.action == action for c in changes) for action in ("created", "updated", "unchanged")}
    print(f"{len(changes)} CRDs Established ({', '.join(f'{n} {action}' for action, n in counts.items())})")
    return EXIT_OK


# -- lint --------------------------------------------------------------------------------------------------------


def _policy_assignment(value: str) -> tuple[str, policy.Mode]:
    rule, sep, mode = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected RULE=MODE, got {value!r}")
    try:
        return rule, policy.parse_mode(mode, rule=rule)
    except policy.PolicyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _lint_parser(commands: Any) -> None:
    lint = commands.add_parser(
        "lint", help="check manifests against the pre-flight guardrails, offline (docs/policy.md)",
        description="Check Rollouts, Deployments, StatefulSets and DaemonSets in multi-document YAML against the "
                    "pre-flight guardrails; other kinds are ignored, PodDisruptionBudgets count as cover. DaemonSets "
                    "are not checked for disruption-budget and spread (one pod per node). Exit codes: 0 no enforce "
                    "rule failed, 1 one did, 2 usage error or unreadable input.")
    lint.add_argument("files", nargs="*", metavar="FILE", help="YAML files; - (or none, with piped input) is stdin")
    lint.add_argument("--output", "-o", default="text", choices=["text", "json"])
    lint.add_argument("--policy", action="append", default=[], type=_policy_assignment, metavar="RULE=MODE",
                      help=f"override a rule's mode (enforce, warn, off; repeatable); rules: {', '.join(policy.RULES)}")


def _run_lint(args: argparse.Namespace) -> int:
    paths = list(args.files)
    if not paths:
        if sys.stdin.isatty():
            print("sluice: lint wants FILE arguments, or - or piped input for stdin", file=sys.stderr)
            return EXIT_USAGE
        paths = [linting.STDIN]
    modes = policy.resolve_modes(dict(args.policy), {}).modes
    try:
        sources = linting.read_sources(paths, sys.stdin)
        results = linting.lint(sources, modes)
    except linting.LintInputError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output == "json":
        print(linting.render_json(results))
    else:
        print(linting.render_text(results, files=len(sources)))
    return EXIT_REFUSED if linting.blocked(results) else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "controller":
        return _controller(args)
    if args.command == "lint":
        return _run_lint(args)
    # A client prints one line per failure; kubernetes-asyncio's warnings (say, "Config not found") would add more.
    logging.getLogger("kubernetes_asyncio").setLevel(logging.ERROR)
    if args.command == "crds":
        return asyncio.run(_run_crds_apply(args))
    try:
        return asyncio.run(_run_client(args))
    except KeyboardInterrupt:
        return EXIT_OK if args.command == "get" and args.watch else 130


if __name__ == "__main__":
    sys.exit(main())
