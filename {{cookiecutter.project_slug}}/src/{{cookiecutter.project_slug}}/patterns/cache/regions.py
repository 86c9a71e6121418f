"""What is cached: a region (a family of values of one type) and a cached body with its ETag."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import orjson
from pydantic import TypeAdapter

T = TypeVar("T")


@dataclass(frozen=True)
class CacheRegion(Generic[T]):
    """A family of cached values of one type, e.g. products by id.

    ``ttl``: seconds a value is served as fresh. ``stale_ttl``: seconds after that during
    which it is served stale while one caller reloads it. ``negative_ttl``: seconds a "not
    found" is remembered (short: a row created later must appear soon).
    """

    name: str
    type: type[T]
    ttl: float
    stale_ttl: float = 0.0
    negative_ttl: float = 5.0
    adapter: TypeAdapter[T] = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        adapter = TypeAdapter(self.type)
        schema = orjson.dumps(adapter.json_schema(), option=orjson.OPT_SORT_KEYS)
        object.__setattr__(self, "adapter", adapter)
        object.__setattr__(self, "fingerprint", hashlib.blake2b(schema, digest_size=4).hexdigest())

    def render(self, value: T) -> Cached:
        """``value`` as the JSON a response sends, with its ETag: done once, when stored."""
        return Cached.of(self.adapter.dump_json(value))


@dataclass(frozen=True, slots=True)
class Cached:
    """A cached value as the response body it becomes, and that body's strong ETag."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> Cached:
        return cls(body, etag_of(body))

    def intact(self) -> bool:
        """Whether the body is still the one the ETag was computed from (a corrupt or foreign
        entry is not)."""
        return etag_of(self.body) == self.etag


def etag_of(body: bytes) -> str:
    """A strong ETag over the bytes (the same one patterns/http_cache.py makes for a body)."""
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'
