"""The one-shot login probe used by `dashkanban check`: connect once with the gateway's client id,
wait for the CONNACK, disconnect; publish nothing (issue 11 split c8y/mqtt.py by concern)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import time

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from dashkanban.c8y.mqtt import LOOP_TICK, connack_code, new_client
from dashkanban.c8y.protocol import LoginRefusedError, TlsFailedError, UnreachableError
from dashkanban.c8y.tls import describe_tls_failure
from dashkanban.config import Settings


def try_login(settings: Settings, timeout: float = 10.0) -> str:
    """Connect once with the gateway's client id, wait for CONNACK, disconnect. Publishes
    nothing. Returns the client id; raises LoginRefusedError, TlsFailedError or UnreachableError.
    """
    c8y = settings.c8y
    address = f"{c8y.tenant}:{c8y.port}"
    client_id = settings.gateway.serial
    client = new_client(settings, client_id)
    client.connect_timeout = timeout
    result: list[int] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(connack_code(reason))
    try:
        client.connect(c8y.tenant, c8y.port, keepalive=c8y.keepalive)
    except ssl.SSLError as exc:
        what, hint = describe_tls_failure(exc, c8y.tenant)
        raise TlsFailedError(address, what, hint) from None
    except socket.gaierror as exc:
        raise UnreachableError(f"cannot resolve {c8y.tenant!r} ({exc.strerror})") from None
    except OSError as exc:
        raise UnreachableError(f"cannot connect to {address}: {exc.strerror or exc}") from None
    try:
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            rc = client.loop(timeout=LOOP_TICK)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not result:
                raise UnreachableError(f"{address} closed the connection before CONNACK "
                                       f"({paho.error_string(rc)})")
        if not result:
            raise UnreachableError(f"no CONNACK from {address} within {timeout:g} s")
        if result[0] != 0:
            username = c8y.username if c8y.password else None
            raise LoginRefusedError(result[0], address, username)
        return client_id
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop(timeout=0)
