"""Webhook signatures: HMAC-SHA256 over ``"<timestamp>.<body>"``, the shape Stripe and most
providers use.

Guarantees: :func:`verify` accepts only a body signed with the secret, whose signed timestamp
is within ``tolerance`` seconds of now, so a captured request cannot be replayed later; the
comparison takes constant time. The header reads ``t=<unix seconds>,v1=<hex digest>``.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Payment-Signature"


class InvalidSignature(Exception):
    """The signature is missing, malformed, wrong, or outside the tolerance."""


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed at ``timestamp`` (now by default)."""
    signed_at = int(time.time()) if timestamp is None else timestamp
    return f"t={signed_at},v1={_digest(secret, signed_at, body)}"


def verify(
    secret: str, body: bytes, header: str | None, *, tolerance: int, now: float | None = None
) -> int:
    """Check ``header`` against ``body``; return the signed timestamp or raise."""
    if not header:
        raise InvalidSignature("missing signature header")
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        signed_at = int(fields["t"])
        given = fields["v1"]
    except (KeyError, ValueError) as exc:
        raise InvalidSignature("malformed signature header") from exc
    if not hmac.compare_digest(_digest(secret, signed_at, body), given):
        raise InvalidSignature("signature does not match")
    current = time.time() if now is None else now
    if abs(current - signed_at) > tolerance:
        raise InvalidSignature("timestamp outside the tolerance (a replay?)")
    return signed_at


def _digest(secret: str, signed_at: int, body: bytes) -> str:
    message = str(signed_at).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
