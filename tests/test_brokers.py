"""The broker fixtures themselves: a real mosquitto, plain, with passwords, and over TLS."""

from __future__ import annotations

import queue
import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.brokers import Mosquitto, TlsFiles
from tests.conftest import BROKER_PASSWORD, BROKER_USER


def _round_trip(broker: Mosquitto, client: mqtt.Client) -> str:
    received: queue.Queue[str] = queue.Queue()
    client.on_message = lambda _c, _u, msg: received.put(msg.payload.decode())
    client.connect(broker.host, broker.port, keepalive=10)
    client.loop_start()
    try:
        client.subscribe("probe", qos=1)
        client.publish("probe", "hello", qos=1).wait_for_publish(timeout=5)
        return received.get(timeout=5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_plain_broker(mosquitto: Mosquitto) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-plain")
    assert _round_trip(mosquitto, client) == "hello"


def test_tls_broker_with_password(mosquitto_tls: Mosquitto, tls_files: TlsFiles) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-tls")
    client.tls_set(ca_certs=str(tls_files.ca_cert), cert_reqs=ssl.CERT_REQUIRED)
    client.username_pw_set(BROKER_USER, BROKER_PASSWORD)
    assert _round_trip(mosquitto_tls, client) == "hello"


def test_broker_restarts_on_the_same_port(mosquitto: Mosquitto) -> None:
    port = mosquitto.port
    mosquitto.stop()
    mosquitto.start()
    assert mosquitto.port == port
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="probe-restart")
    assert _round_trip(mosquitto, client) == "hello"
