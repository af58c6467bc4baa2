"""`python -m devcluster up`: run the local control plane until Ctrl-C or SIGTERM, for the demo and for poking at
sluice by hand. Prints the `export KUBECONFIG=...` line to paste into another shell.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from devcluster.controlplane import ControlPlane, ControlPlaneError


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # The first signal starts the cleanup (ControlPlane.__exit__); a second must not cut it short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


def up(*, nodes: int) -> int:
    # SIGTERM takes the same path as Ctrl-C; SIGINT is set explicitly because a shell starting us with `&` ignores it.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        with ControlPlane(nodes=nodes) as control_plane:
            print(f"export KUBECONFIG={control_plane.kubeconfig}", flush=True)
            print(f"# API server {control_plane.server}; logs in {control_plane.workdir / 'logs'}; "
                  "Ctrl-C stops it", file=sys.stderr, flush=True)
            while True:
                signal.pause()
    except KeyboardInterrupt:
        print("control plane stopped", file=sys.stderr, flush=True)
        return 0
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up_parser = commands.add_parser("up", help="start the control plane and wait for Ctrl-C/SIGTERM")
    up_parser.add_argument("--nodes", type=int, default=3, help="number of fake kwok nodes (default 3)")
    up_parser.add_argument("-v", "--verbose", action="store_true", help="log every start-up step")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="[devcluster] %(message)s")
    return up(nodes=args.nodes)


if __name__ == "__main__":
    sys.exit(main())
