"""Which BPF program the settings call for, live and in files, and reloading the button list.

`[buttons] source = csv`: the buttons are known up front, so their MACs go into the program
(capture/bpf.py's button program and its fallbacks). `source = inventory | both`, and discover,
need every candidate: the candidate program.
"""

from __future__ import annotations

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
    """What reloading needs of a capture: LiveCapture.set_filter."""

    def set_filter(self, programs: Program | Sequence[Program]) -> Program | None: ...


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

    A bad file changes nothing: one ERROR line, and None. Returns the new registry.
    """
    from dashkanban.detect.events import (
        check_event_text,  # only here: a replay's filter needs no events
    )

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
        # socket; the open one filters with the old program meanwhile, which passes the old
        # buttons only (a removed one's frames Python now ignores).
        log.warning("reload: %d buttons from %s; the kernel refused %s on the open socket "
                    "(%s): it filters with the old one until the capture reopens it",
                    len(registry), settings.buttons.file, programs[0].describe(),
                    exc.strerror or exc)
        return registry
    what = attached.describe() if attached is not None else programs[0].describe()
    log.info("reload: %d buttons from %s; %s", len(registry), settings.buttons.file, what)
    if attached is not None and attached.note:
        log.info("%s", attached.note)
    return registry
