"""The status page, rendered on the server: alarms show, active and cleared, with counts."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import Device

MakeDevice = Callable[..., Device]


def test_page_shows_alarms_active_and_cleared_with_counts(
    sandbox: Sandbox, device_factory: MakeDevice
) -> None:
    device = device_factory("gw-page")
    assert device.connect() == "Success"
    device.publish("s/us", "100,Page gateway,c8y_Test")
    device.publish("s/us", "301,c8y_KanbanReorder,Reorder <b>50</b> x M6")
    device.publish("s/us", "301,c8y_KanbanReorder,Reorder <b>50</b> x M6")  # a repeat: count 2
    device.publish("s/us", "302,c8y_DoorOpen,door open")
    device.publish("s/us", "306,c8y_DoorOpen")
    deadline = time.monotonic() + 5
    while True:  # bounded: the sandbox stores what it acknowledged at once
        page = httpx.get(f"{sandbox.http_url}/", timeout=5).text
        if "1 cleared" in page or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert '<span id="alarm-counts">1 active, 0 acknowledged, 1 cleared</span>' in page
    body = re.search(r'<tbody id="alarms">(.*?)</tbody>', page, re.S)
    assert body is not None
    rows = [re.findall(r"<td>(.*?)</td>", row) for row in body.group(1).split("</tr>") if row]
    assert rows == [
        ["ACTIVE", "CRITICAL", "2", "Page gateway", "c8y_KanbanReorder",
         "Reorder &lt;b&gt;50&lt;/b&gt; x M6"],  # device text is data, never markup
        ["CLEARED", "MAJOR", "1", "Page gateway", "c8y_DoorOpen", "door open"],
    ]
