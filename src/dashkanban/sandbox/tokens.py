"""Device access tokens: what a certificate device gets on `s/dat` and sends as `Bearer` over REST.

Cumulocity's REST API does not authenticate with a TLS client certificate. A certificate device
subscribes to `s/dat`, publishes an empty message on `s/uat` and receives `71,<JWT>`; the token
lasts `device-token.lifespan.seconds` (1 h by default, at least 5 min) and may be renewed after
half its lifetime (c8y-docs `device-certificates.md`, "JWT token retrieval"; docs/protocol.md 1.8
and 3.1).

The sandbox's tokens are real JWTs (HS256 over a random per-sandbox key) with `sub`, `iat` and
`exp`, so a client can read the lifetime as it would from Cumulocity's. [unverified] the claims
Cumulocity puts in its device tokens beyond the standard `iat`/`exp`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

# "The default value is 1 hour. The minimum allowed value is 5 minutes." (device-certificates.md)
DEFAULT_LIFETIME = 3600.0
MIN_LIFETIME = 300.0


@dataclass(frozen=True, slots=True)
class TokenUser:
    """Who a valid token speaks for: the device user and the device's external id (the CN)."""

    user: str
    device: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenIssuer:
    """Issues and checks device tokens. `lifetime` in seconds; `clock` gives the current time."""

    def __init__(self, clock: Callable[[], datetime], lifetime: float = DEFAULT_LIFETIME) -> None:
        self._key = secrets.token_bytes(32)
        self._clock = clock
        self.lifetime = lifetime
        self.issued = 0

    def issue(self, device: str) -> str:
        now = int(self._clock().timestamp())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"sub": f"device_{device}", "device": device, "iat": now,
                  "exp": now + int(self.lifetime)}
        signing = (_b64(json.dumps(header, separators=(",", ":")).encode()) + "." +
                   _b64(json.dumps(claims, separators=(",", ":")).encode()))
        signature = hmac.new(self._key, signing.encode("ascii"), hashlib.sha256).digest()
        self.issued += 1
        return f"{signing}.{_b64(signature)}"

    def verify(self, token: str) -> TokenUser | None:
        """The token's user, or None when it is forged, malformed or expired."""
        parts = token.split(".")
        if len(parts) != 3:
            return None
        signing = f"{parts[0]}.{parts[1]}".encode("ascii", errors="replace")
        expected = hmac.new(self._key, signing, hashlib.sha256).digest()
        try:
            signature = _unb64(parts[2])
            claims = json.loads(_unb64(parts[1]))
        except (binascii.Error, ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(signature, expected) or not isinstance(claims, dict):
            return None
        exp, sub, device = claims.get("exp"), claims.get("sub"), claims.get("device")
        if not isinstance(exp, int) or not isinstance(sub, str) or not isinstance(device, str):
            return None
        if exp <= self._clock().timestamp():
            return None
        return TokenUser(sub, device)
