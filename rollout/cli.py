"""`sluice` command line: `sluice controller` runs the controller (from a kubeconfig, or in-cluster).

Operator commands (pause, resume, promote, abort, ...) arrive with the HTTP API; until then they are
`kubectl patch` one-liners documented in the README.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from dataclasses import replace

from rollout.controller import Controller
from rollout.kube import ConfigError, KubeClient
from rollout.reporting import configure_logging
from rollout.settings import AnalysisSettings, QueueSettings, Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description="Progressive delivery for Kubernetes")
    commands = parser.add_subparsers(dest="command", required=True)
    ctl = commands.add_parser("controller", help="run the controller")
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
    return parser


async def _run_controller(args: argparse.Namespace) -> int:
    settings = Settings(namespaces=tuple(args.namespace))
    settings = replace(settings, queue=replace(settings.queue, workers=args.workers,
                                               resync_seconds=args.resync_seconds),
                       analysis=replace(settings.analysis, workers=args.analysis_workers))
    try:
        client = await KubeClient.connect(kubeconfig=args.kubeconfig, context=args.context, retry=settings.retry)
    except ConfigError as exc:
        print(f"sluice: {exc}", file=sys.stderr)
        return 2
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
    finally:
        await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "controller":
        configure_logging(level=args.log_level, fmt=args.log_format)
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(_run_controller(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
