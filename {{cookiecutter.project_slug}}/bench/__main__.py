"""``make bench``: run every benchmark in turn, on the configured or throwaway servers."""

import subprocess
import sys

from . import (
    hot_path,
    http_core,
    orders_hot_query,
    pubsub,
    rate_limit,
    read_path,
    storage,
)
from .services import services

with services():
    http_core.main()
    # Starts the local stack twice (cache on, cache off): about a minute.
    read_path.main()
    # Seeds 1.2M orders into scratch databases (a few minutes); see its docstring for options.
    orders_hot_query.main([])
    # Three API instances and 1,000 SSE subscribers (--subscribers 10000 for the figure).
    pubsub.main([])
    # Starts a throwaway SeaweedFS: direct-to-S3 vs streamed through the API (seconds).
    storage.main()
    # The moving window on Redis, shared and with Redis down (seconds).
    rate_limit.main([])
    # Server CPU per request: bare ASGI, /healthz, cached catalog, GET /orders hit and cold
    # (seeds 1.2M orders; --orders 200000 --users 2000 for a quicker run).
    hot_path.main([])
    # A Locust crowd (200 users, 30 s) on one API process: req/s, error rate, p95.
    # In a process of its own: importing locust monkey-patches the whole process with gevent,
    # which after the benchmarks above imported ssl ends in a RecursionError, and would put
    # their asyncio sockets under gevent if it ran first. The servers come through the env.
    subprocess.run([sys.executable, "-m", "bench.locust_run"], check=True)
