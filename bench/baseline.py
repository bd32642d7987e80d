"""The bare paho baseline the latency benchmarks compare against: one QoS 1 publish at a time
over TLS, timed from publish() to PUBACK, in milliseconds. Not a benchmark of its own."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def paho_round_trips(port: int, ca: Path, user: str, password: str, count: int, gap: float,
                     topic: str = "s/us/ac63be123456") -> list[float]:
    done = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-baseline",
                         protocol=paho.MQTTv311)
    client.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    client.username_pw_set(user, password)
    client.on_publish = lambda *_a: done.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    samples = []
    try:
        for n in range(count):
            done.clear()
            started = time.perf_counter()
            client.publish(topic, f"400,c8y_MAC_Event,press {n}", qos=1)
            if not done.wait(5):
                raise SystemExit("the baseline got no PUBACK within 5 s")
            samples.append((time.perf_counter() - started) * 1000)
            time.sleep(gap)
    finally:
        client.disconnect()
        client.loop_stop()
    return samples
