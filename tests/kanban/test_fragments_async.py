"""`publish_fragments` on the event loop, against the project's sandbox over real HTTP: the
c8y_Kanban fragment on each known button, the passes for buttons not there yet, a tenant that
refuses the login and then accepts, one that is unreachable and then comes up, cancellation."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from dashkanban.config import Settings, load_settings
from dashkanban.kanban import wiring
from dashkanban.kanban.bins import Bins, parse_bins
from dashkanban.kanban.wiring import publish_fragments
from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import SANDBOX_PASSWORD, rest, sandbox_options

MACID = (
    "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"
    "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
    "ties, fc:a6:67:0a:0b:0c, B1, Cable ties, 100, , , 3,\n"
)
SCREWS, TIES = "ac63be123456", "fca6670a0b0c"
SCREWS_FRAGMENT = {"bin": "A3", "role": "reorder", "part": "M6 screws", "quantity": 50,
                   "location": "Aisle 2", "supplier": "Würth", "leadTimeDays": 2.0,
                   "gateway": "dashkanban-gw-01"}
WAIT = 10.0


def bins() -> Bins:
    return parse_bins(MACID, Path("MACID.csv"))[1]


def config(folder: Path, rest_url: str) -> Settings:
    path = folder / "config.ini"
    path.write_text(
        "[C8YMQTT]\ntenant = 127.0.0.1\ntenantID = t12345\nuser = dash-gateway\n"
        f"password = {SANDBOX_PASSWORD}\nport = 1883\ntls = no\nallow_insecure = yes\n"
        f"rest_url = {rest_url}\nretry_max = 1\n[gateway]\nserial = dashkanban-gw-01\n"
    )
    path.chmod(0o600)
    return load_settings(path)


def add_child(sandbox: Sandbox, serial: str) -> str:
    with rest(sandbox) as admin:
        made = admin.post("/inventory/managedObjects", headers={"Accept": "application/json"},
                          json={"name": serial, "c8y_IsDevice": {}}).json()
        assert admin.post(f"/identity/globalIds/{made['id']}/externalIds",
                          json={"type": "c8y_Serial", "externalId": serial}).status_code == 201
    return str(made["id"])


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dashkanban.kanban.wiring"]


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


@pytest.fixture(autouse=True)
def quick_passes(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(wiring, "FRAGMENT_RETRY", 0.05)
    caplog.set_level(logging.INFO, logger="dashkanban.kanban")


def test_known_buttons_get_the_fragment_the_others_wait_for_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Sandbox(sandbox_options()) as sandbox:
        add_child(sandbox, SCREWS)
        asyncio.run(asyncio.wait_for(publish_fragments(config(tmp_path, sandbox.http_url),
                                                       bins()), WAIT))
        assert (sandbox.device(SCREWS) or {})["c8y_Kanban"] == SCREWS_FRAGMENT
        assert (sandbox.device(SCREWS) or {})["name"] == SCREWS  # the name is never touched
        assert sandbox.device(TIES) is None
    assert messages(caplog) == [
        "c8y_Kanban fragment written on 1 button(s); 1 not in Cumulocity yet, done at the next "
        "start"
    ]
    assert [m for m in (r.getMessage() for r in caplog.records) if "not in Cumulocity" in m
            and "ties" in m] == ["ties (fca6670a0b0c) is not in Cumulocity yet"] * 3


def test_a_refused_login_is_retried_until_the_tenant_accepts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Sandbox(sandbox_options()) as sandbox:
        add_child(sandbox, SCREWS)
        add_child(sandbox, TIES)
        sandbox.set_password("changed-on-the-tenant")

        async def main() -> None:
            task = asyncio.create_task(publish_fragments(config(tmp_path, sandbox.http_url),
                                                         bins(), rand=lambda: 1.0))
            async with asyncio.timeout(WAIT):
                while not messages(caplog):  # refused once: its WARNING
                    await asyncio.sleep(0.01)
            await asyncio.to_thread(sandbox.set_password, SANDBOX_PASSWORD)
            await asyncio.wait_for(task, WAIT)

        asyncio.run(main())
        assert (sandbox.device(SCREWS) or {})["c8y_Kanban"] == SCREWS_FRAGMENT
        assert (sandbox.device(TIES) or {})["c8y_Kanban"]["bin"] == "B1"
    assert messages(caplog) == [
        "c8y_Kanban fragments not written yet (Cumulocity refused the login of "
        "t12345/dash-gateway (401): check tenantID, user and password); trying again in 1 s",
        "c8y_Kanban fragment written on 2 button(s)",
    ]


def test_an_unreachable_tenant_is_retried_until_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    started: list[Sandbox] = []
    # The tenant has both buttons the moment it answers: were they added once it is up, a pass
    # in between (the retry comes 1 s after the WARNING, whenever the sandbox is up on a slow
    # machine) would find one missing, and the passes run out 0.15 s later.
    tenant = tmp_path / "tenant.json"
    with Sandbox(sandbox_options(data_file=tenant)) as before:
        add_child(before, SCREWS)
        add_child(before, TIES)

    async def main() -> None:
        task = asyncio.create_task(publish_fragments(
            config(tmp_path, f"http://127.0.0.1:{port}"), bins(), rand=lambda: 1.0))
        async with asyncio.timeout(WAIT):
            while not messages(caplog):
                await asyncio.sleep(0.01)
        options = sandbox_options(http_port=port, data_file=tenant)
        started.append(await asyncio.to_thread(Sandbox(options).start))
        await asyncio.wait_for(task, WAIT)

    try:
        asyncio.run(main())
        assert (started[0].device(SCREWS) or {})["c8y_Kanban"] == SCREWS_FRAGMENT
    finally:
        for sandbox in started:
            sandbox.stop()
    lines = messages(caplog)
    assert lines[0].startswith("c8y_Kanban fragments not written yet (identity look-up of "
                               "ac63be123456: cannot reach Cumulocity: ConnectError: [Errno 111] "
                               "Connection refused (GET ")
    assert lines[0].endswith(", 3 attempts)); trying again in 1 s")
    assert lines[1:] == ["c8y_Kanban fragment written on 2 button(s)"]


def test_cancelled_while_retrying_it_ends_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = config(tmp_path, f"http://127.0.0.1:{free_port()}")

    async def main() -> bool:
        task = asyncio.create_task(publish_fragments(settings, bins()))
        async with asyncio.timeout(WAIT):
            while not messages(caplog):  # unreachable once: its WARNING, then the backoff
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT)
        return task.cancelled()

    assert asyncio.run(main())
