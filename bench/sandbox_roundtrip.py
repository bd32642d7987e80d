"""QoS 1 round trip (PUBLISH -> PUBACK) on loopback: the sandbox against Debian's mosquitto.

Run: .venv/bin/python bench/sandbox_roundtrip.py [N]
Prints median and p99 in microseconds for each broker and the sandbox/mosquitto ratio. The
sandbox does more per message (SmartREST parsing, the store), so a ratio above 1 is expected;
what matters is that it stays far below the 40 ms a missing TCP_NODELAY costs (docs/sandbox.md,
"TCP_NODELAY").
"""

from __future__ import annotations

import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.brokers import Mosquitto, free_port, mosquitto_binary

from dashkanban.sandbox import Sandbox, SandboxOptions

USER, PASSWORD = "t12345/bench", "bench-pw"


def measure(port: int, count: int) -> list[float]:
    acked = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-gw")
    client.username_pw_set(USER, PASSWORD)
    client.on_publish = lambda *args: acked.set()

    def nodelay(c: mqtt.Client, userdata: object, sock: object) -> None:
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    client.on_socket_open = nodelay
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish("s/us", "100,bench", qos=1).wait_for_publish(5)
        samples = []
        for i in range(count):
            acked.clear()
            start = time.perf_counter()
            client.publish("s/us", f"400,c8y_MAC_Event,press {i}", qos=1)
            if not acked.wait(5):
                raise TimeoutError("no PUBACK within 5 s")
            samples.append((time.perf_counter() - start) * 1e6)
        return samples
    finally:
        client.disconnect()
        client.loop_stop()


def summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with Sandbox(SandboxOptions(password=PASSWORD, tenant="t12345", user="bench")) as sandbox:
        assert sandbox.mqtt_port is not None
        sb_median, sb_p99 = summary(measure(sandbox.mqtt_port, count))
        stored = len(sandbox.events())
    print(f"sandbox    QoS 1 round trip: median {sb_median:7.0f} us, p99 {sb_p99:7.0f} us "
          f"({stored} events stored)")
    if mosquitto_binary() is None:
        print("mosquitto not installed: no baseline")
        return
    with tempfile.TemporaryDirectory() as folder:
        broker = Mosquitto(Path(folder), free_port(), users={USER: PASSWORD})
        broker.start()
        try:
            mq_median, mq_p99 = summary(measure(broker.port, count))
        finally:
            broker.stop()
    print(f"mosquitto  QoS 1 round trip: median {mq_median:7.0f} us, p99 {mq_p99:7.0f} us")
    print(f"ratio sandbox/mosquitto: median {sb_median / mq_median:.1f}x, "
          f"p99 {sb_p99 / mq_p99:.1f}x")


if __name__ == "__main__":
    main()
