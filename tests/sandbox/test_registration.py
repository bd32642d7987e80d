"""The sandbox plays Cumulocity's device registration: bootstrap user, registration list,
`70` on `s/dcr`, and the device user it makes (docs/sandbox.md, "Device registration")."""

from __future__ import annotations

import time

import httpx
import pytest

from dashkanban.sandbox import Sandbox
from tests.sandbox_fixture import (
    BOOTSTRAP_PASSWORD,
    BOOTSTRAP_USER,
    SANDBOX_TENANT,
    WAIT,
    Device,
    rest,
    sandbox_bootstrap,
)

__all__ = ["sandbox_bootstrap"]  # the fixture

SERIAL = "gw-store-3"
DEVICE_USER = f"{SANDBOX_TENANT}/device_{SERIAL}"


def wait_status(sandbox: Sandbox, serial: str, status: str) -> None:
    deadline = time.monotonic() + WAIT
    while sandbox.registration_status(serial) != status:
        assert time.monotonic() < deadline, sandbox.registration_status(serial)
        time.sleep(0.02)


def bootstrap_device(sandbox: Sandbox, password: str = BOOTSTRAP_PASSWORD) -> Device:
    return Device(sandbox, SERIAL, username=BOOTSTRAP_USER, password=password)


def credentials_over_mqtt(sandbox: Sandbox) -> list[str]:
    """Register, ask, accept, ask again: the fields of the `70` line."""
    sandbox.register_device(SERIAL)
    assert sandbox.registration_status(SERIAL) == "WAITING_FOR_CONNECTION"
    device = bootstrap_device(sandbox)
    try:
        assert device.connect() == "Success"
        assert device.subscribe("s/dcr") == [1]
        device.publish("s/ucr", b"")
        wait_status(sandbox, SERIAL, "PENDING_ACCEPTANCE")
        assert device.nothing_more()
        sandbox.accept_device(SERIAL)
        device.publish("s/ucr", b"")
        got = device.expect()
    finally:
        device.close()
    assert got.topic == "s/dcr"
    return got.payload.split(",")


def test_mqtt_bootstrap_gives_a_device_user_that_logs_in(sandbox_bootstrap: Sandbox) -> None:
    code, tenant, user, password = credentials_over_mqtt(sandbox_bootstrap)
    assert (code, tenant, user) == ("70", SANDBOX_TENANT, f"device_{SERIAL}")
    assert len(password) >= 16
    assert sandbox_bootstrap.registration_status(SERIAL) == "ACCEPTED"
    # No device was created by the bootstrap connection itself.
    assert sandbox_bootstrap.device(SERIAL) is None
    device = Device(sandbox_bootstrap, SERIAL, username=f"{tenant}/{user}", password=password)
    try:
        assert device.connect() == "Success"
        device.publish("s/us", "100,Store 3,c8y_DashKanbanGateway")
    finally:
        device.close()
    created = sandbox_bootstrap.device(SERIAL)
    assert created is not None
    assert created["name"] == "Store 3"
    # The message log (shown on the status page) never holds the password.
    logged = [m.payload for m in sandbox_bootstrap.messages() if m.topic == "s/dcr"]
    assert logged == [f"70,{SANDBOX_TENANT},device_{SERIAL},***"]
    assert all(password not in m.payload for m in sandbox_bootstrap.messages())


def test_device_user_has_device_rights_on_rest(sandbox_bootstrap: Sandbox) -> None:
    _, tenant, user, password = credentials_over_mqtt(sandbox_bootstrap)
    with rest(sandbox_bootstrap, auth=(f"{tenant}/{user}", password)) as client:
        made = client.post("/inventory/managedObjects", json={"name": "gw", "c8y_IsDevice": {}})
        assert made.status_code == 201
        assert client.get("/inventory/managedObjects").status_code == 200
        for response in (client.get("/sandbox/registrations"),
                         client.post(f"/sandbox/registrations/{SERIAL}/accept")):
            assert response.status_code == 403
            assert response.json()["error"] == "security/Forbidden"
    with rest(sandbox_bootstrap, auth=(f"{tenant}/{user}", "wrong")) as client:
        assert client.get("/inventory/managedObjects").status_code == 401


def test_unregistered_device_is_ignored(sandbox_bootstrap: Sandbox) -> None:
    device = bootstrap_device(sandbox_bootstrap)
    try:
        assert device.connect() == "Success"
        assert device.subscribe("s/dcr") == [1]
        device.publish("s/ucr", b"")
        assert device.nothing_more()
    finally:
        device.close()
    assert sandbox_bootstrap.registration_status(SERIAL) is None


def test_wrong_bootstrap_password_is_refused(sandbox_bootstrap: Sandbox) -> None:
    device = bootstrap_device(sandbox_bootstrap, password="not-it")
    try:
        assert device.connect() == "Bad user name or password"
    finally:
        device.close()


def test_bootstrap_user_may_only_use_the_bootstrap_topics(sandbox_bootstrap: Sandbox) -> None:
    device = bootstrap_device(sandbox_bootstrap)
    try:
        assert device.connect() == "Success"
        assert device.subscribe("s/ds", "s/dcr") == [128, 1]
        device.client.publish("s/us", "100,sneaky,c8y_Device", qos=1)
        assert device.disconnected.wait(WAIT)
    finally:
        device.close()
    assert sandbox_bootstrap.device(SERIAL) is None


def test_no_bootstrap_user_without_its_password(sandbox: Sandbox) -> None:
    device = Device(sandbox, SERIAL, username=BOOTSTRAP_USER, password="")
    try:
        assert device.connect() == "Bad user name or password"
    finally:
        device.close()


def test_rest_registration_list_and_device_credentials(sandbox_bootstrap: Sandbox) -> None:
    with rest(sandbox_bootstrap) as admin, \
            rest(sandbox_bootstrap, auth=(BOOTSTRAP_USER, BOOTSTRAP_PASSWORD)) as boot:
        asked = {"id": SERIAL}
        # Before registration, and while waiting or pending: 404 (integration-life-cycle.md).
        assert boot.post("/devicecontrol/deviceCredentials", json=asked).status_code == 404
        made = admin.post("/sandbox/registrations", json=asked)
        assert made.status_code == 201
        assert made.json()["status"] == "WAITING_FOR_CONNECTION"
        assert admin.post("/sandbox/registrations", json=asked).status_code == 409
        early = admin.post(f"/sandbox/registrations/{SERIAL}/accept")
        assert early.status_code == 422
        assert "has not asked for credentials yet" in early.json()["message"]
        assert boot.post("/devicecontrol/deviceCredentials", json=asked).status_code == 404
        listed = admin.get("/sandbox/registrations").json()["registrations"]
        assert [(r["id"], r["status"]) for r in listed] == [(SERIAL, "PENDING_ACCEPTANCE")]
        # The bootstrap user has no other rights.
        assert boot.get("/inventory/managedObjects").status_code == 403
        assert boot.get("/sandbox/registrations").status_code == 403
        accepted = admin.post(f"/sandbox/registrations/{SERIAL}/accept")
        assert accepted.json()["status"] == "ACCEPTED"
        assert admin.post("/sandbox/registrations/nope/accept").status_code == 404
        answer = boot.post("/devicecontrol/deviceCredentials", json=asked)
        assert answer.status_code == 200
        body = answer.json()
        assert answer.headers["content-type"].startswith(
            "application/vnd.com.nsn.cumulocity.devicecredentials+json")
        assert (body["id"], body["tenantId"], body["username"]) == (
            SERIAL, SANDBOX_TENANT, f"device_{SERIAL}")
    with rest(sandbox_bootstrap, auth=(DEVICE_USER, body["password"])) as device:
        assert device.get("/inventory/managedObjects").status_code == 200


def test_status_page_register_and_accept_buttons(sandbox_bootstrap: Sandbox) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    with rest(sandbox_bootstrap, follow_redirects=False) as admin:
        page = httpx.get(sandbox_bootstrap.http_url + "/", timeout=WAIT).text
        assert '<form method="post" action="/sandbox/registrations">' in page
        # Without the tenant user's password the browser is asked for it (Basic auth).
        asked = httpx.post(sandbox_bootstrap.http_url + "/sandbox/registrations",
                           content=f"id={SERIAL}", headers=form, timeout=WAIT)
        assert asked.status_code == 401
        assert asked.headers["www-authenticate"] == 'Basic realm="Cumulocity"'
        made = admin.post("/sandbox/registrations", content=f"id={SERIAL}", headers=form)
        assert (made.status_code, made.headers["location"]) == (303, "/")
        device = bootstrap_device(sandbox_bootstrap)
        try:
            assert device.connect() == "Success"
            device.publish("s/ucr", b"")
            wait_status(sandbox_bootstrap, SERIAL, "PENDING_ACCEPTANCE")
        finally:
            device.close()
        page = admin.get("/").text
        action = f"/sandbox/registrations/{SERIAL}/accept"
        assert (f"<tr><td>{SERIAL}</td><td>Pending acceptance</td><td></td><td>"
                f'<form method="post" action="{action}"><button type="submit">Accept</button>'
                "</form></td></tr>") in page
        accepted = admin.post(action, content="", headers=form)
        assert (accepted.status_code, accepted.headers["location"]) == (303, "/")
    state = httpx.get(sandbox_bootstrap.http_url + "/sandbox/state.json", timeout=WAIT).json()
    assert [(r["id"], r["status"]) for r in state["registrations"]] == [(SERIAL, "ACCEPTED")]


@pytest.mark.parametrize("bad", ["", "a:b", "x" * 129])
def test_registration_needs_a_usable_id(sandbox_bootstrap: Sandbox, bad: str) -> None:
    with rest(sandbox_bootstrap) as admin:
        answer = admin.post("/sandbox/registrations", json={"id": bad})
    assert answer.status_code == 422
    assert answer.json()["message"] == (
        "a device ID is 1 to 128 characters without ':' (it is the MQTT client id)")
