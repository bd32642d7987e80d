"""The one-shot login probe used by `dashkanban check`: connect once with the gateway's client id,
wait for the CONNACK, disconnect; publish nothing (issue 11 split c8y/mqtt.py by concern). The
same client and the same reading of failures as the uplink's connection (c8y/link.py)."""

from __future__ import annotations

import asyncio

from dashkanban.c8y.link import connect_once
from dashkanban.c8y.tls import make_tls_context
from dashkanban.config import Settings


def try_login(settings: Settings, timeout: float = 10.0) -> str:
    """Connect once with the gateway's client id, wait for CONNACK, disconnect. Publishes
    nothing. Returns the client id; raises LoginRefusedError, TlsFailedError or UnreachableError
    (ConfigError for unusable TLS files)."""
    context = make_tls_context(settings.c8y) if settings.c8y.tls else None
    return asyncio.run(connect_once(settings, context, timeout))
