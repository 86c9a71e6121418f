"""``python -m devstack dev | stop``: the local stack (``make dev``, ``make stop``).

Dev-only: this package lives beside ``src/``, never in the wheel or the image, and needs the
``stack`` dependency group (honcho, SeaweedFS, Traefik). Run it from the project directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _dev(args: argparse.Namespace) -> int:
    from devstack.launcher import run_dev

    return run_dev(instances=args.instances, seed=args.seed)


def _stop(_: argparse.Namespace) -> int:
    from devstack.lifetime import stop_stack
    from devstack.settings import StackSettings
    from devstack.topology import STATE_FILE

    state_dir = (Path.cwd() / StackSettings().devstack_dir).resolve()
    sys.stdout.write(stop_stack(state_dir / STATE_FILE) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("dev", help="run the local stack (no Docker needed)")
    dev.add_argument(
        "--instances", type=int, default=None, help="API instances (default: API_INSTANCES or 2)"
    )
    dev.add_argument("--no-seed", dest="seed", action="store_false", help="skip sample data")
    dev.set_defaults(handler=_dev)
    commands.add_parser(
        "stop", help="stop the local stack its PID file names (running, or left by a kill -9)"
    ).set_defaults(handler=_stop)
    args = parser.parse_args(argv)
    result: int = args.handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
