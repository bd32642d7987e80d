"""The composition root: the pipeline and what surrounds it, wired from `Settings`.

Every command that runs presses through the pipeline builds it here, so `run`, `replay`, `demo`,
`check` and `test-button` agree on the buttons (`[buttons] source`), the stages, and how a press
and its Kanban lines are queued in the outbox. The parts below (pipeline stages, I/O adapters)
know nothing of each other's configuration; the commands above know nothing of how the parts
fit. Layers: CONTRIBUTING.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dashkanban.config import Settings
from dashkanban.detect.buttons import Registry, parse_buttons
from dashkanban.detect.events import Event, check_event_text
from dashkanban.detect.pipeline import Pipeline
from dashkanban.detect.presses import ButtonLookup, Press
from dashkanban.errors import DashkanbanError
from dashkanban.files import read_buttons_text

if TYPE_CHECKING:
    from dashkanban.c8y.inventory import LookupQueue
    from dashkanban.c8y.rest import RestInventoryLookup
    from dashkanban.kanban.bins import Bins
    from dashkanban.outbox.store import Outbox

log = logging.getLogger(__name__)


def load_buttons(path: Path) -> Registry:
    """Read MACID.csv. Errors name the file and line; nothing is silently dropped."""
    return parse_buttons(read_buttons_text(path), path)


def load_registry(settings: Settings, loaded: Registry | None = None) -> Registry:
    """The CSV buttons, unless `[buttons] source = inventory` (then only Cumulocity knows them).
    `loaded`: MACID.csv as already read (`run` reads it once for its kernel filter and this)."""
    if settings.buttons.source == "inventory":
        return Registry()
    registry = loaded if loaded is not None else load_buttons(settings.buttons.file)
    check_event_text(settings, registry)  # exit 2 now rather than a lost press later
    return registry


def inventory_lookup(settings: Settings) -> RestInventoryLookup | None:
    """The Cumulocity identity look-up for `[buttons] source = inventory | both` (blocking,
    cached; raises RestError when Cumulocity cannot tell, which fails a replay)."""
    if settings.buttons.source == "csv":
        return None
    from dashkanban.c8y.rest import RestInventoryLookup

    return RestInventoryLookup(settings)


def build_pipeline(
    settings: Settings,
    registry: Registry,
    lookup: ButtonLookup | None = None,
    *,
    inventory: LookupQueue | None = None,
    cached: Callable[[str], object] | None = None,
) -> Pipeline:
    """The pipeline as configured. For MACs not in MACID.csv (`[buttons] source =
    inventory|both`): `lookup` asks Cumulocity synchronously (replay: packet time is the clock,
    so waiting changes nothing and the result is deterministic), `inventory` asynchronously
    (live: capture never waits for HTTP), with `cached` its source's cache
    (RestInventoryLookup.cached: a MAC known to be no button costs no Sighting)."""
    return Pipeline(
        registry,
        settings.event,
        detect=settings.capture.detect,
        dead_time=settings.debounce_seconds,
        lookup=lookup,
        inventory=inventory,
        cached=cached,
    )


def queue_presses(
    settings: Settings,
    outbox: Outbox,
    found: Sequence[tuple[Press, Event]],
    times: Sequence[float] = (),
) -> Bins | None:
    """Queue each event in the outbox with its press's Kanban lines (history, and with `[kanban]
    alarms = yes` the alarm and clear lines), as the daemon does. `times` is the packet clock of
    a capture (sorted epoch seconds): the overdue check runs at each frame up to a press, before
    it, and after the last press to the end of the capture, so a replay raises the same alarms.
    Returns the bins when MACID.csv has some (for `write_fragments`), else None."""
    from dashkanban.kanban.wiring import open_loop, press_lines, queue_overdue_at_frames

    loop = open_loop(settings) if found else None  # after the outbox: it makes the folder
    if loop is None:
        for _, event in found:
            outbox.put(event, (), ())
        return None
    try:
        after = float("-inf")
        for press, event in found:
            if times:
                now = press.time.timestamp()
                queue_overdue_at_frames(loop, outbox.put_lines, times, after, now)
                after = now
            extra, others = press_lines(loop, press)
            outbox.put(event, extra, others)
        if times:
            queue_overdue_at_frames(loop, outbox.put_lines, times, after, times[-1])
    finally:
        if loop.history is not None:
            loop.history.close()
    return loop.bins


def write_fragments(settings: Settings, bins: Bins, presses: Sequence[Press]) -> None:
    """The `c8y_Kanban` fragment on the devices of the bins just pressed, as `run` writes it at
    its start: whatever delivers a bin button's press writes it, so `kanban report
    --from-cumulocity` knows the bins after a replay too (issue 14). Their children were made
    by this delivery. One attempt per call and a warning when REST fails: the events are in."""
    from dashkanban.c8y.rest import CumulocityRest
    from dashkanban.kanban.bins import Bins
    from dashkanban.kanban.cumulocity import publish_kanban_fragments

    pressed = {bins.of(p.button) for p in presses} - {None}
    if not pressed or settings.c8y.password is None:
        return
    subset = Bins({b.name: b for b in bins if b in pressed})
    try:
        with CumulocityRest.from_settings(settings.c8y, attempts=1) as rest:
            done = publish_kanban_fragments(rest, subset, settings.gateway.serial)
    except (DashkanbanError, OSError) as exc:
        log.warning("c8y_Kanban fragments not written (%s): `kanban report --from-cumulocity` "
                    "knows these bins once `dashkanban run` has written them", exc)
        return
    log.info("c8y_Kanban fragment written on %d button(s)",
             sum(1 for mo in done.values() if mo is not None))


def ways_out(count: int) -> str:
    """The two ways out of events left queued: send them, or discard them."""
    them = "it" if count == 1 else "them"
    return (f"`dashkanban outbox flush` delivers {them}, `dashkanban outbox drop --all` "
            f"(or --button NAME|MAC, --before TIME) discards {them}")


class StillQueuedError(DashkanbanError):
    """A delivery failed and events stay queued: the failure's own exit code (1 for a refused
    login, 3 for a timeout), and a message that says how many and the two ways out."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def deliver_explained(settings: Settings, outbox: Outbox, events: Sequence[Event] = (), *,
                      timeout: float, max_refusals: int | None = None) -> int | None:
    """`outbox.courier.deliver` for a one-shot command: when it fails, the error also says how many
    events stay queued and how to send (`outbox flush`) or discard (`outbox drop`) them, so
    nothing is left behind silently (issue 14)."""
    from dashkanban.outbox.courier import deliver
    from dashkanban.outbox.store import plural

    try:
        if max_refusals is None:
            return deliver(settings, outbox, events, timeout=timeout)
        return deliver(settings, outbox, events, timeout=timeout, max_refusals=max_refusals)
    except DashkanbanError as exc:
        try:
            left = outbox.count()
        except DashkanbanError:
            raise exc from None
        if not left:
            raise
        raise StillQueuedError(
            f"{exc}; {plural(left, 'event')} {'stays' if left == 1 else 'stay'} queued in "
            f"{outbox.path}: {ways_out(left)}",
            exc.exit_code,
        ) from None
