"""Command line: ``{{ cookiecutter.project_slug }} serve | worker | beat | migrate | seed | dev``."""

from __future__ import annotations

import argparse
import asyncio
import os

from {{ cookiecutter.project_slug }}.config import DatabaseSettings, Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from {{ cookiecutter.project_slug }}.logging import configure_logging

    configure_logging(Settings())
    uvicorn.run(
        "{{ cookiecutter.project_slug }}.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        # uvloop + httptools: several times the throughput of the pure-Python defaults.
        loop="uvloop",
        http="httptools",
        access_log=False,  # the app writes its own structured access log
        log_config=None,  # keep the structlog configuration
        timeout_graceful_shutdown=args.graceful_timeout,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.worker.main import run_worker

    return run_worker(args.celery_args)


def _beat(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.worker.main import run_beat

    return run_beat(args.celery_args)


def _migrate(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head

    upgrade_to_head(DatabaseSettings().database_url)
    return 0


def _seed(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.seed import seed_sample_data

    asyncio.run(seed_sample_data(DatabaseSettings().database_url))
    return 0


def _dev(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.devstack.launcher import run_dev

    return run_dev(api_port=args.port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.project_slug }}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one API instance")
    serve.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8001")))
    serve.add_argument("--graceful-timeout", type=int, default=20)
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker",
        help="run a Celery worker (extra options go to `celery worker`, e.g. --concurrency=2)",
    )
    worker.set_defaults(handler=_worker, passes_through=True)

    beat = commands.add_parser(
        "beat", help="run the scheduler (RedBeat: start two, one fires, one stands by)"
    )
    beat.set_defaults(handler=_beat, passes_through=True)

    commands.add_parser("migrate", help="apply migrations").set_defaults(handler=_migrate)
    commands.add_parser("seed", help="insert sample data").set_defaults(handler=_seed)

    dev = commands.add_parser("dev", help="run the local stack (no Docker needed)")
    dev.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8001")))
    dev.set_defaults(handler=_dev)

    # worker/beat hand every option they do not know to Celery's own command line.
    args, unknown = parser.parse_known_args(argv)
    if unknown and not getattr(args, "passes_through", False):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.celery_args = unknown
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
