"""Graceful shutdown behind a load balancer: fail readiness first, keep serving, then stop.

The failure it prevents: a server that stops listening the moment it gets SIGTERM (a deploy, a
scale-in, a node drain) still receives requests for as long as the load balancer takes to notice,
and every one of them fails. Health checks run on an interval, so "as long as it takes to notice"
is up to one interval plus one timeout, on every instance, on every deploy.

Guarantees: after the first SIGTERM, :attr:`Drain.draining` is true at once (wire it into the
readiness probe so it answers 503), while the process keeps accepting and serving requests for
``seconds``; responses sent while draining carry ``Connection: close`` so keep-alive clients
(an L4 Service, a client pool) reconnect elsewhere. Then the server's own SIGTERM handling runs:
uvicorn stops accepting, gives in-flight requests its graceful timeout and runs the lifespan
shutdown. A second SIGTERM skips the rest of the drain; SIGINT (Ctrl-C) is never delayed.

Needs: a server that handles SIGTERM through a Python signal handler installed before the app's
lifespan starts (uvicorn does, for ``uvicorn --factory`` and ``Server.serve``); the lifespan to run
``with drain.handle_sigterm(): yield``; the readiness probe to check ``drain.draining``; a load
balancer whose health-check interval plus timeout is shorter than ``seconds``. Where no server
installed a handler (tests, a plain script) nothing is wrapped and SIGTERM behaves as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)


class Drain:
    """The draining flag of one process, and the SIGTERM handler that raises it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self._on_begin: list[Callable[[], None]] = []

    def on_begin(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when the drain begins (long-lived streams tell clients to go)."""
        self._on_begin.append(callback)

    def begin(self) -> None:
        if not self.draining:
            self.draining = True
            log.info("shutdown.draining", drain_seconds=self.seconds)
            for callback in self._on_begin:
                callback()

    @contextlib.contextmanager
    def handle_sigterm(self) -> Iterator[None]:
        """While active, SIGTERM starts the drain and hands over to the server ``seconds`` later.

        Enter it inside the running event loop (the app's lifespan), after the server installed
        its own handler; the server's handler is restored on exit.
        """
        server_handler = signal.getsignal(signal.SIGTERM)
        # Signal handlers can only be set from the main thread, and SIG_DFL / SIG_IGN mean no
        # server is waiting for the signal: nothing to delay.
        if threading.current_thread() is not threading.main_thread() or not callable(
            server_handler
        ):
            yield
            return
        loop = asyncio.get_running_loop()

        def hand_over(signum: int, frame: FrameType | None) -> None:
            log.info("shutdown.drained")
            server_handler(signum, frame)

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # asked twice: stop now
                server_handler(signum, frame)
                return
            self.begin()
            # The handler runs between two bytecodes of the loop's thread; the threadsafe call
            # wakes the loop so the timer is armed now, not at its next tick.
            loop.call_soon_threadsafe(loop.call_later, self.seconds, hand_over, signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            if signal.getsignal(signal.SIGTERM) is on_sigterm:
                signal.signal(signal.SIGTERM, server_handler)


class DrainMiddleware:
    """Adds ``Connection: close`` to every response while the process drains.

    A load balancer that health-checks stops sending new requests by itself; an L4 balancer (a
    Kubernetes Service) or a client's connection pool would keep reusing an open keep-alive
    connection to this process until it disappears. Closing each connection after its response
    moves those clients to other instances during the drain instead of after it.
    """

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: Message) -> None:
            if message["type"] == "http.response.start" and self.drain.draining:
                headers: list[Any] = list(message.get("headers", []))
                headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_closing)
