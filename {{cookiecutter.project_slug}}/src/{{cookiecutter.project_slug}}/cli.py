"""Command line: ``{{ cookiecutter.project_slug }} serve | migrate | seed | worker | beat | relay | ...``.

The container image runs this as its entrypoint, so one image serves every role: ``api`` (an
alias of ``serve``), ``worker``, ``beat`` and ``migrate``; ``healthcheck`` is what its
HEALTHCHECK and the Kubernetes probes of the non-HTTP roles call. The local stack (``make dev``,
``make stop``) is not here: it is ``python -m devstack``, dev-only, outside the package.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys

from {{ cookiecutter.project_slug }}.config import DatabaseSettings, Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from {{ cookiecutter.project_slug }}.logging import configure_logging

    settings = Settings()
    configure_logging(settings)
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
        # X-Forwarded-For / -Proto are believed only from the gateway, so the app sees the real
        # client and scheme and nobody else can claim to be someone else.
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        timeout_keep_alive=settings.keep_alive_timeout,
        # After the drain (patterns/graceful.py): how long in-flight requests get to finish.
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout),
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.worker.main import run_worker

    return run_worker(args.celery_args)


def _beat(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.worker.main import run_beat

    return run_beat(args.celery_args)


def _relay(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.logging import configure_logging
    from {{ cookiecutter.project_slug }}.pubsub.runner import run_relay

    settings = Settings()
    configure_logging(settings)
    asyncio.run(run_relay(settings))
    return 0


def _consumers(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.logging import configure_logging
    from {{ cookiecutter.project_slug }}.pubsub.runner import run_consumers

    settings = Settings()
    configure_logging(settings)
    asyncio.run(run_consumers(settings))
    return 0


def _migrate(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.migrate import DatabaseUnreachable, upgrade_to_head

    try:
        upgrade_to_head(DatabaseSettings().database_url)
    except DatabaseUnreachable as exc:
        print(f"migrate: {exc}", file=sys.stderr)  # noqa: T201  # a command-line refusal
        return 1
    return 0


def _seed(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.seed import SeedRefused, SeedSettings, seed_sample_data

    settings = SeedSettings()
    try:
        asyncio.run(seed_sample_data(settings.database_url, environment=settings.environment))
    except SeedRefused as exc:
        print(f"seed: {exc}", file=sys.stderr)  # noqa: T201  # a command-line refusal
        return 2
    return 0


def _storage_init(_: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.config import Settings
    from {{ cookiecutter.project_slug }}.storage import init_bucket

    asyncio.run(init_bucket(Settings()))
    return 0


def _healthcheck(args: argparse.Namespace) -> int:
    from {{ cookiecutter.project_slug }}.worker.heartbeat import heartbeat_is_fresh

    if args.role == "api":
        import urllib.request

        port = int(os.environ.get("API_PORT", "8001"))
        url = f"http://127.0.0.1:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:  # local http
                return 0 if reply.status == 200 else 1
        except OSError:
            return 1
    return 0 if heartbeat_is_fresh(args.role) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="{{ cookiecutter.project_slug }}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", aliases=["api"], help="run one API instance")
    serve.add_argument("--host", default=os.environ.get("API_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("API_PORT", "8001")))
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

    commands.add_parser(
        "relay", help="publish committed outbox events to Redis Streams (run one or more)"
    ).set_defaults(handler=_relay)
    commands.add_parser(
        "consumers", help="run the event consumer groups (inbox: each effect once)"
    ).set_defaults(handler=_consumers)

    commands.add_parser("migrate", help="apply migrations").set_defaults(handler=_migrate)
    commands.add_parser("seed", help="insert sample data").set_defaults(handler=_seed)
    commands.add_parser(
        "storage-init", help="create the bucket, its CORS rule and multipart lifecycle rule"
    ).set_defaults(handler=_storage_init)

    check = commands.add_parser("healthcheck", help="exit 0 when this container's role is healthy")
    check.add_argument(
        "role", nargs="?", default="api", choices=["api", "worker", "beat", "relay", "consumers"]
    )
    check.set_defaults(handler=_healthcheck)

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
