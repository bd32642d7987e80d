"""The status page in headless Debian chromium: an event a device sent over MQTT shows."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import Device

MakeDevice = Callable[..., Device]
CHROMIUM = "/usr/bin/chromium"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1200,900",
         # Let the page's first refresh from /sandbox/state.json run before the dump.
         "--virtual-time-budget=3000", *args],
        capture_output=True, text=True, timeout=90, check=False,
    )


@pytest.mark.browser
def test_page_shows_an_event_sent_over_mqtt(sandbox: Sandbox, device_factory: MakeDevice,
                                            tmp_path: Path) -> None:
    if shutil.which(CHROMIUM) is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    gw = device_factory("dashkanban-gw-01")
    gw.connect()
    gw.publish("s/us", "100,Store 3 gateway,c8y_DashKanbanGateway\n"
                       "101,ac63be123456,dashButton_1,c8y_DashButton")
    gw.publish("s/us/ac63be123456",
               '400,c8y_MAC_Event,"dashButton_1 pressed (ac:63:be:12:34:56)",'
               "2026-11-26T08:00:01.234+00:00")
    url = sandbox.http_url + "/"
    dom = chromium(tmp_path / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert ("<td>2026-11-26T08:00:01.234Z</td><td>dashButton_1</td><td>ac63be123456</td>"
            "<td>c8y_MAC_Event</td><td>dashButton_1 pressed (ac:63:be:12:34:56)</td>") in dom.stdout
    assert "<td>Store 3 gateway</td><td>dashkanban-gw-01</td>" in dom.stdout
    assert "dashButton_1 (ac63be123456)" in dom.stdout
    # The script's refresh from /sandbox/state.json ran and re-rendered the same rows.
    version = httpx.get(sandbox.http_url + "/sandbox/state.json").json()["version"]
    assert f'<body data-version="{version}">' in dom.stdout
    shot = tmp_path / "page.png"
    result = chromium(tmp_path / "profile-shot", f"--screenshot={shot}", url)
    assert result.returncode == 0, result.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == PNG_MAGIC
    size = (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big"))
    assert size == (1200, 900)
    assert len(data) > 10_000  # a rendered page, not a blank one (a blank PNG is ~5 kB)
