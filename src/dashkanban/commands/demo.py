"""`dashkanban demo`: the whole product against the built-in sandbox, with nothing to set up.

It starts the sandbox on free loopback ports, writes a throw-away config for it (a private temp
folder, mode 0600), replays the bundled sample capture, "a morning in a store", through the real
pipeline: decode, debounce, the Kanban loop (the bundled MACID.csv has bins, and the demo turns
`[kanban] alarms` on), the SQLite outbox, the uplink over real MQTT. Then it asks the sandbox's
REST API what Cumulocity now holds and prints it: devices, events and the reorder alarms.
Last, it installs the Smart Rules that mail each bin's supplier and lets the next reorder
happen: the sandbox records the e-mail Cumulocity would send, and the demo prints it.
"""

from __future__ import annotations

import logging
import secrets
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from dashkanban.capture import open_capture
from dashkanban.compose import build_pipeline, load_registry, queue_presses, write_fragments
from dashkanban.config import Settings, load_settings
from dashkanban.detect.events import Event
from dashkanban.detect.pipeline import Pipeline
from dashkanban.kanban.wiring import open_loop, press_lines
from dashkanban.outbox.courier import deliver
from dashkanban.outbox.store import Outbox, plural
from dashkanban.safetext import plain
from dashkanban.samples import sample_path

GATEWAY_SERIAL = "dashkanban-demo"
GATEWAY_NAME = "Demo store gateway"


def demo_config(folder: Path, host: str, mqtt_port: int, http_url: str, password: str) -> Path:
    """A config.ini for the sandbox: plain MQTT on loopback is the one place that is fine."""
    path = folder / "config.ini"
    path.touch(mode=0o600)
    path.write_text(
        "[C8YMQTT]\n"
        f"tenant = {host}\n"
        "tenantID = t12345\n"
        "user = t12345/admin\n"
        f"password = {password}\n"
        f"port = {mqtt_port}\n"
        "tls = no\n"
        "allow_insecure = yes  ; the sandbox on loopback only\n"
        f"rest_url = {http_url}\n"
        "\n[gateway]\n"
        f"serial = {GATEWAY_SERIAL}\n"
        f"name = {GATEWAY_NAME}\n"
        "\n[buttons]\n"
        f"file = {sample_path('MACID.csv')}\n"
        "\n[outbox]\n"
        f"path = {folder / 'outbox.sqlite3'}\n"
        "\n[kanban]\nalarms = yes\n",
        encoding="utf-8",
    )
    return path


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """`dashkanban demo`'s arguments (cli.py builds them): `keep` the sandbox running."""

    keep: bool


def demo_command(args: DemoOptions) -> int:
    from dashkanban.sandbox import Sandbox, SandboxOptions

    # The sandbox logs every message it handles: useful in `dashkanban sandbox`, noise in a
    # demo. --log-level debug shows it again.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("dashkanban.sandbox").setLevel(logging.WARNING)
    console = Console(width=None if sys.stdout.isatty() else 110)
    password = secrets.token_urlsafe(12)
    with tempfile.TemporaryDirectory(prefix="dashkanban-demo-") as tmp, Sandbox(
        SandboxOptions(password=password)
    ) as sandbox:
        folder = Path(tmp)
        assert sandbox.mqtt_port is not None
        config = demo_config(folder, sandbox.host, sandbox.mqtt_port, sandbox.http_url, password)
        settings = load_settings(config, environ={})
        console.print(
            f"[bold]Sandbox[/] (a local Cumulocity stand-in): MQTT {sandbox.host}:"
            f"{sandbox.mqtt_port}, REST and status page {sandbox.http_url}/"
        )
        capture_file = sample_path("sample-store.pcapng")
        pipeline = build_pipeline(settings, load_registry(settings))
        capture = open_capture(capture_file, prefilter=True)
        presses = list(pipeline.run_presses(capture))
        events = [pipeline.event_for(press) for press in presses]
        counts = pipeline.counts(capture.frames_read)
        console.print(f"Replayed [bold]{capture_file.name}[/]: {counts.summary()}")
        with Outbox.from_settings(settings.outbox) as outbox:
            bins = queue_presses(settings, outbox, list(zip(presses, events, strict=True)))
            delivered = deliver(settings, outbox, [], timeout=30)
        if bins is not None:
            write_fragments(settings, bins, presses)
        console.print(f"Delivered {plural(delivered or 0, 'event')} over MQTT (SmartREST 2.0), "
                      "each on PUBACK.\n")
        _show(console, sandbox.http_url, "t12345/admin", password, events)
        if presses:
            _supplier_told(console, settings, pipeline, presses[-1].time, sandbox.http_url,
                           password)
        if args.keep:
            console.print(
                f"\nThe sandbox keeps running: open [bold]{sandbox.http_url}/[/] "
                f"(user t12345/admin, password {password}). Ctrl-C stops it.", soft_wrap=True
            )
            sys.stdout.flush()  # a pipe sees it now, not when the demo ends
            _wait_for_interrupt()
        else:
            console.print(f"\nThe sandbox and its page {sandbox.http_url}/ stop now; "
                          "`dashkanban demo --keep` keeps them running until Ctrl-C.",
                          soft_wrap=True)
    return 0


def _show(console: Console, base: str, user: str, password: str, sent: list[Event]) -> None:
    """What Cumulocity holds now, read back over its REST API like any other client would."""
    with httpx.Client(base_url=base, auth=(user, password), timeout=10) as http:
        devices = http.get("/inventory/managedObjects", params={"pageSize": 100}).json()
        objects: list[dict[str, Any]] = devices.get("managedObjects", [])
        table = Table(title="Devices in Cumulocity", title_justify="left")
        for column in ("id", "name", "type", "c8y_Serial", "children"):
            table.add_column(column)
        by_id = {str(mo["id"]): mo for mo in objects}
        for mo in objects:
            serial = _serial(http, str(mo["id"]))
            children = mo.get("childDevices", {}).get("references", [])
            names = ", ".join(
                str(by_id.get(str(ref["managedObject"]["id"]), {}).get("name", "?"))
                for ref in children
            )
            table.add_row(plain(mo["id"]), plain(mo.get("name", "")), plain(mo.get("type", "")),
                          plain(serial), plain(names))  # data, never markup (safetext)
        console.print(table)
        events = http.get(
            "/event/events", params={"type": "c8y_MAC_Event", "pageSize": 100, "revert": "true"}
        ).json().get("events", [])
        table = Table(title=f"Events in Cumulocity ({len(events)} of {len(sent)} sent)",
                      title_justify="left")
        for column in ("time", "source", "type", "text"):
            table.add_column(column)
        for event in events:
            source = by_id.get(str(event["source"]["id"]), {}).get("name", event["source"]["id"])
            table.add_row(*map(plain, (event["time"], source, event["type"], event["text"])))
        console.print(table)
        alarms = http.get(
            "/alarm/alarms", params={"type": "c8y_KanbanReorder", "pageSize": 100}
        ).json().get("alarms", [])
        table = Table(title="Kanban reorder alarms in Cumulocity (one per bin; repeats counted)",
                      title_justify="left")
        for column in ("source", "status", "severity", "count", "text"):
            table.add_column(column)
        rows = sorted(
            (str(by_id.get(str(a["source"]["id"]), {}).get("name", a["source"]["id"])),
             str(a["status"]), str(a["severity"]), str(a["count"]), str(a["text"]))
            for a in alarms
        )
        for row in rows:
            table.add_row(*map(plain, row))
        console.print(table)


def _supplier_told(console: Console, settings: Settings, pipeline: Pipeline, last: datetime,
                   base: str, password: str) -> None:
    """Issue 18's loop closed: Smart Rules that mail each supplier_email are installed, and
    the next day bin A3 is refilled and emptied again: its new reorder alarm is mailed. The
    sandbox records the e-mail instead of sending it (GET /sandbox/emails)."""
    from dashkanban.c8y.rest import CumulocityRest
    from dashkanban.detect.presses import Press
    from dashkanban.kanban.history import History, history_path
    from dashkanban.kanban.loop import refill_from_cli
    from dashkanban.kanban.rules import install
    from dashkanban.kanban.wiring import load_kanban_bins, queue_overdue, queue_pending_clears

    bins = load_kanban_bins(settings)
    bin_ = bins.get("A3")
    if bin_ is None or not bin_.reorder:
        return
    with CumulocityRest.from_settings(settings.c8y) as rest:
        for line in install(rest, bins, settings.gateway.serial, dry_run=False):
            console.print(f"Smart Rule {line}", markup=False, highlight=False)
    refilled = last + timedelta(days=1)
    pressed = refilled + timedelta(hours=3)
    with Outbox.from_settings(settings.outbox) as outbox:
        path = history_path(settings.outbox.path)
        with History.open(path, settings.kanban.history_days, refilled) as history:
            refill_from_cli(bins, bin_.name, history, refilled)
            queue_pending_clears(history, outbox.put_lines)
        loop = open_loop(settings, refilled)
        if loop is None:  # pragma: no cover - the bins are there
            return
        try:
            queue_overdue(loop, outbox.put_lines, pressed)
            press = Press(bin_.reorder[0], pressed, "dhcp")
            extra, others = press_lines(loop, press)
            outbox.put(pipeline.event_for(press), extra, others)
        finally:
            if loop.history is not None:
                loop.history.close()
        deliver(settings, outbox, [], timeout=30)
    console.print(f"The next day bin {bin_.name} is refilled, and emptied again at "
                  f"{pressed:%Y-%m-%d %H:%M} UTC: a new reorder alarm.", highlight=False)
    with httpx.Client(base_url=base, auth=("t12345/admin", password), timeout=10) as http:
        emails = http.get("/sandbox/emails").json().get("emails", [])
    for email in emails:
        console.print(f"email to {email['to']}: {email['subject']}", markup=False,
                      highlight=False)


def _serial(http: httpx.Client, mo_id: str) -> str:
    ids = http.get(f"/identity/globalIds/{mo_id}/externalIds").json().get("externalIds", [])
    return ", ".join(str(x["externalId"]) for x in ids if x.get("type") == "c8y_Serial")


def _wait_for_interrupt() -> None:
    # Not a thread: a flag the signal handlers set while the main thread waits (the demo's
    # sandbox serves from its own loop meanwhile).
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1):
        pass
    print("stopped", file=sys.stderr)
