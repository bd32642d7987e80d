"""The one retry policy: capped exponential backoff with full jitter.

Shared by the MQTT uplink (reconnects), the REST client (retried calls), inventory look-ups and
capture recovery (reopening the raw socket), so that they all behave alike and a test can make
them all short with one knob (`[C8YMQTT] retry_max`).

Full jitter (the wait is drawn from [0, ceiling]) spreads out many gateways restarted together,
e.g. after a power cut in a store chain, better than "equal jitter" does.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Transport failures (resets, timeouts, DNS, a TLS handshake closed) are retried quickly.
TRANSPORT_FIRST = 1.0
# A refused login is retried slowly: a wrong password retried fast only hammers the tenant (and
# may lock the user), yet Cumulocity's CONNACK 5 can be transient (docs/protocol.md 1.7).
REFUSAL_FIRST = 30.0
RETRY_MAX = 300.0  # the default of [C8YMQTT] retry_max


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt n (1, 2, ...) waits a random time in [0, min(cap, first * 2**(n-1))]."""

    first: float
    cap: float

    def __post_init__(self) -> None:
        if self.first < 0 or self.cap < 0:
            raise ValueError("backoff times must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt `attempt` (1, 2, ...)."""
        exponent = min(max(0, attempt - 1), 64)  # 2**64 s is forever; keep the float finite
        return min(self.cap, self.first * 2.0 ** exponent)

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The wait before attempt `attempt`: full jitter below the ceiling."""
        return self.ceiling(attempt) * rand()


def uplink_backoffs(retry_max: float) -> tuple[Backoff, Backoff]:
    """(transport, refusal) backoffs of `run`, both capped by `[C8YMQTT] retry_max`."""
    return (Backoff(min(TRANSPORT_FIRST, retry_max), retry_max),
            Backoff(min(REFUSAL_FIRST, retry_max), retry_max))
