"""Which BPF program the settings call for, live and in files, and reloading the button list.

`[buttons] source = csv`: the buttons are known up front, so their MACs go into the program
(capture/bpf.py's button program and its fallbacks). `source = inventory | both`, and discover,
need every candidate: the candidate program.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from dashkanban.capture.bpf import Program, button_programs, candidate_program
from dashkanban.config import Settings
from dashkanban.detect.buttons import Registry, parse_buttons
from dashkanban.errors import DashkanbanError
from dashkanban.files import read_buttons_text

log = logging.getLogger(__name__)


class Filterable(Protocol):
    """What reloading needs of a capture: LiveCapture.set_filter and reopen."""

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None: ...

    def reopen(self) -> None: ...


def _read_buttons(settings: Settings) -> Registry:
    """MACID.csv, as compose.load_buttons reads it (compose is a layer above capture)."""
    return parse_buttons(read_buttons_text(settings.buttons.file), settings.buttons.file)


def kernel_programs(settings: Settings, registry: Registry | None = None) -> tuple[Program, ...]:
    """The programs to try on a live socket, most selective first. `registry`: the buttons of
    MACID.csv when already loaded (read here otherwise, for `source = csv` only)."""
    detect = settings.capture.detect
    if settings.buttons.source != "csv":
        return (candidate_program(detect),)
    if registry is None:
        registry = _read_buttons(settings)
    # An MQTT button (a `topic` in MACID.csv) is not matched by network join (detect/presses.py).
    return button_programs((b.mac for b in registry if b.topic is None), detect)


def file_program(settings: Settings, registry: Registry | None = None) -> Program:
    """The program a replay runs on a capture file: the live one (libpcap has no `optmem_max`).
    Its note, when it has one, is logged at INFO as live."""
    program = kernel_programs(settings, registry)[0]
    if program.note:
        log.info("%s", program.note)
    return program


def reload_buttons(
    settings: Settings, capture: Filterable, use: Callable[[Registry], None]
) -> Registry | None:
    """SIGHUP: re-read MACID.csv, hand the new registry to `use` (the pipeline's matching), then
    attach the program for it to the open socket (which swaps the old one out atomically: no
    frame lost). In that order, so a new button's first frame is never dropped as unknown.

    When the kernel refuses the new programs on the open socket, the capture is asked to
    reopen it (a fresh socket takes them, falling back down the chain as at start): a new
    button is never left unheard behind the old program. One WARNING says which program filters
    meanwhile; the capture logs the reopen (INFO) or why it failed (ERROR).

    A bad file changes nothing: one ERROR line, and None. Returns the new registry.
    """
    # Only here: a replay's filter needs neither the events nor the live capture (asyncio, ssl:
    # about 0.09 s of a replay's start-up).
    from dashkanban.capture.live import FilterRefusedError
    from dashkanban.detect.events import check_event_text

    try:
        registry = _read_buttons(settings)
        check_event_text(settings, registry)  # as at start: a new name `[event] text` cannot show
        programs = kernel_programs(settings, registry)
    except DashkanbanError as exc:
        log.error("reload: %s; keeping the buttons loaded before", exc)
        return None
    use(registry)
    try:
        attached = capture.set_filter(programs)
    except OSError as exc:
        # The matching has the new list and the capture keeps the new programs for its next
        # socket. EBADF: the reading side was closing the socket to reopen it, and the next one
        # gets them. Otherwise the open socket filters with the old program (or the bridge
        # swapped in before the refusal) until it is replaced: the old buttons only, when that is
        # a button filter, so it is replaced now rather than whenever the interface next fails.
        count, path, new = len(registry), settings.buttons.file, programs[0].describe()
        if exc.errno == errno.EBADF:
            log.warning("reload: %d buttons from %s; the capture was reopening its socket (%s): "
                        "the new socket gets %s, as at start", count, path,
                        exc.strerror or exc, new)
            return registry
        filtering = exc.filtering if isinstance(exc, FilterRefusedError) else None
        log.warning("reload: %d buttons from %s; the kernel refused %s on the open socket (%s), "
                    "which filters with %s meanwhile: reopening the capture socket", count,
                    path, new, exc.strerror or exc,
                    filtering.describe() if filtering is not None else "its old program")
        capture.reopen()
        return registry
    what = attached.describe() if attached is not None else programs[0].describe()
    log.info("reload: %d buttons from %s; %s", len(registry), settings.buttons.file, what)
    if attached is not None and attached.note:
        log.info("%s", attached.note)
    return registry
