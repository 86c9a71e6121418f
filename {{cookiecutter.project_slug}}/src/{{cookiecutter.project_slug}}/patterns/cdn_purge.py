"""Tell the CDN to drop what a write made stale: purge by surrogate key, after the commit.

The failure it prevents: a product's price changes, the database and the app cache have the
new one, and the edge keeps serving the old page until ``s-maxage`` runs out, to everyone.

Guarantees:
- :class:`Purger` is the whole interface: ``await purger.purge(keys)`` returns once every edge
  node acknowledged the purge, or raises :class:`PurgeFailed` naming the nodes that did not
  (after ``attempts`` tries each, for connection errors and 5xx). The caller decides what a
  failure means; wired through :mod:`.on_commit` it is logged, and ``s-maxage`` bounds the
  staleness.
- :class:`VarnishPurger` sends ``PURGE /`` with an ``xkey-purge: k1 k2`` header to every
  Varnish node, concurrently; the VCL's ``xkey.purge`` (varnish-modules) drops every object
  tagged with any of the keys and answers how many. ``soft=True`` sends ``xkey-softpurge``
  instead: objects go stale (served in grace while refetched) rather than gone.
- :class:`NoEdge` does nothing, for a deployment without a CDN (and says so at debug level).

Plugging in another CDN: implement ``purge(keys)``.

- **Fastly** purges by surrogate key natively (the ``Surrogate-Key`` header
  :mod:`.http_cache` already sends): ``POST https://api.fastly.com/service/{service_id}/purge``
  with headers ``Fastly-Key: <api token>`` and ``Surrogate-Key: k1 k2`` (add
  ``Fastly-Soft-Purge: 1`` for a soft purge), one request for up to 256 keys.
- **CloudFront** has no surrogate keys: map each key to the paths it covers (``product-<id>`` ->
  ``/products/<id>``, ``products-list`` -> ``/products``, ``/products?*``) and call
  ``create_invalidation`` (boto3, in ``asyncio.to_thread``) with a unique ``CallerReference``.
  Invalidations take a minute or more and are billed per path beyond a free quota, so keep
  ``s-maxage`` short there and purge only on writes that matter.

Needs: httpx and tenacity. The VCL must accept PURGE only from the network the API runs on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from typing import Protocol

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

log = structlog.get_logger(__name__)


class PurgeFailed(Exception):
    """At least one edge node did not acknowledge the purge."""


class Purger(Protocol):
    async def purge(self, keys: Collection[str]) -> None: ...

    async def aclose(self) -> None: ...


class _Retryable(Exception):
    """A 5xx from the edge: worth another try."""


class VarnishPurger:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = 2.0,
        attempts: int = 3,
        soft: bool = False,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not endpoints:
            raise ValueError("VarnishPurger needs at least one edge URL")
        self.endpoints = [endpoint.rstrip("/") + "/" for endpoint in endpoints]
        self.attempts = attempts
        self.header = "xkey-softpurge" if soft else "xkey-purge"
        self._client = client or httpx.AsyncClient(timeout=timeout)

    async def purge(self, keys: Collection[str]) -> None:
        if not keys:
            return
        # Sorted and deduplicated: the same write always sends the same header.
        value = " ".join(sorted(set(keys)))
        results = await asyncio.gather(
            *(self._purge_node(endpoint, value) for endpoint in self.endpoints),
            return_exceptions=True,
        )
        failed = [
            f"{endpoint} ({type(result).__name__}: {result})"
            for endpoint, result in zip(self.endpoints, results, strict=True)
            if isinstance(result, BaseException)
        ]
        if failed:
            raise PurgeFailed(f"edge nodes did not acknowledge the purge: {'; '.join(failed)}")

    async def _purge_node(self, endpoint: str, keys: str) -> int:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=0.05, max=0.5),
            retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                response = await self._client.request(
                    "PURGE", endpoint, headers={self.header: keys}
                )
                if response.status_code >= 500:
                    raise _Retryable(f"{endpoint} answered {response.status_code}")
                if response.status_code != 200:
                    # 403 (not allowed from here) or 405 (no purge rule): retrying won't help.
                    raise PurgeFailed(f"{endpoint} refused the purge: {response.status_code}")
        purged = int(response.headers.get("x-purged", "0"))
        log.info("cdn.purged", edge=endpoint, keys=keys, objects=purged)
        return purged

    async def aclose(self) -> None:
        await self._client.aclose()


class NoEdge:
    """No CDN in front of this deployment: nothing to purge."""

    async def purge(self, keys: Collection[str]) -> None:
        log.debug("cdn.purge_skipped", keys=sorted(keys))

    async def aclose(self) -> None:
        return None
