"""capture/filters.py: which program for which `[buttons] source`, and reloading MACID.csv."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dashkanban.capture import Frame, bpf
from dashkanban.capture.filters import file_program, kernel_programs, reload_buttons
from dashkanban.capture.live import LiveCapture
from dashkanban.config import Settings, load_settings
from dashkanban.detect.buttons import Registry
from tests.test_bpf import macs

B1, B2 = "ac:63:be:12:34:56", "fc:a6:67:0a:0b:0c"


def settings_for(tmp_path: Path, rows: list[str], source: str = "csv",
                 detect: str = "arp, dhcp") -> Settings:
    """config.ini with `tmp_path / "MACID.csv"` holding `rows` (also what the netns tests use)."""
    buttons = tmp_path / "MACID.csv"
    buttons.write_text("Name, MAC-Address\n" + "".join(f"{row}\n" for row in rows))
    config = tmp_path / "config.ini"
    config.write_text(
        "[C8YMQTT]\ntenant = example.cumulocity.com\ntenantID = t12345\n"
        "user = t12345/dash-gateway\npassword = secret\n\n"
        f"[buttons]\nfile = {buttons}\nsource = {source}\n\n[capture]\ndetect = {detect}\n")
    config.chmod(0o600)
    return load_settings(config)


def test_csv_puts_the_buttons_in_the_program(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, [f"b1,{B1}", f"b2,{B2}"])
    chain = kernel_programs(settings)
    assert chain == bpf.button_programs([B1, B2], ("arp", "dhcp"))
    assert file_program(settings) == chain[0]
    assert chain[0].describe() == "the button filter (2 MACs)"


@pytest.mark.parametrize("source", ["inventory", "both"])
def test_inventory_sources_keep_the_candidate_program(tmp_path: Path, source: str) -> None:
    settings = settings_for(tmp_path, [f"b1,{B1}"], source)
    assert kernel_programs(settings) == (bpf.candidate_program(("arp", "dhcp")),)
    assert file_program(settings).describe() == "the candidate filter"


def test_too_many_buttons_say_why_at_info(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    settings = settings_for(tmp_path, [f"b{i},{mac}" for i, mac in enumerate(macs(1400))])
    with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
        program = file_program(settings)
    assert program.kind == "buttons-last4"
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("INFO", program.note)]
    assert program.note is not None
    assert program.note.startswith("1400 buttons: too many to compare whole MACs")


def test_reload_before_the_socket_is_open(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                          ) -> None:
    """The programs are kept for the socket frames() opens; the registry goes to `use` first."""
    settings = settings_for(tmp_path, [f"b1,{B1}"])
    capture = LiveCapture("lo", ("arp", "dhcp"), programs=kernel_programs(settings))
    used: list[Registry] = []
    settings.buttons.file.write_text(f"Name, MAC-Address\nb1,{B1}\nb2,{B2}\n")
    with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
        registry = reload_buttons(settings, capture, used.append)
    assert registry is not None
    assert used == [registry]
    assert [b.mac for b in registry] == [B1, B2]
    assert capture._programs == bpf.button_programs([B1, B2], ("arp", "dhcp"))
    assert [r.getMessage() for r in caplog.records] == [
        f"reload: 2 buttons from {settings.buttons.file}; the button filter (2 MACs)"]
    capture.close()


def test_reload_of_a_bad_file_keeps_everything(tmp_path: Path, caplog: pytest.LogCaptureFixture
                                               ) -> None:
    settings = settings_for(tmp_path, [f"b1,{B1}"])
    before = kernel_programs(settings)
    capture = LiveCapture("lo", ("arp", "dhcp"), programs=before)
    used: list[Registry] = []
    settings.buttons.file.write_text(f"Name, MAC-Address\nb1,{B1}\nb1,{B1}\n")
    with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
        assert reload_buttons(settings, capture, used.append) is None
    assert used == []
    assert capture._programs == before
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", f"reload: {settings.buttons.file}:3: duplicate MAC {B1} (already on line 2); "
                  "keeping the buttons loaded before")]
    capture.close()


def test_reload_refuses_a_name_the_event_text_cannot_carry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As at start (check_event_text): a button whose event line would not fit in a message is
    refused with the file, and the old list kept, rather than a press lost later."""
    settings = settings_for(tmp_path, [f"b1,{B1}"])
    with settings.path.open("a") as config:
        config.write("\n[event]\ntext = {name} {name} {name}\n")
    settings = load_settings(settings.path)
    before = kernel_programs(settings)
    capture = LiveCapture("lo", ("arp", "dhcp"), programs=before)
    used: list[Registry] = []
    settings.buttons.file.write_text(f"Name, MAC-Address\nb1,{B1}\n{'n' * 6_000},{B2}\n")
    with caplog.at_level(logging.INFO, "dashkanban.capture.filters"):
        assert reload_buttons(settings, capture, used.append) is None
    assert used == []
    assert capture._programs == before
    [(level, message)] = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert level == "ERROR"
    assert message.startswith(f"reload: {settings.path}:15: [event] text = {{name}} {{name}} "
                              "{name}: cannot be rendered for button 'nnn")
    assert message.endswith("over the 16000 bytes of one message; keeping the buttons loaded "
                            "before")
    capture.close()


def test_pipeline_uses_the_reloaded_registry() -> None:
    from dashkanban.config import EventSettings
    from dashkanban.detect.buttons import Button
    from dashkanban.detect.pipeline import Pipeline
    from tests import forge

    pipeline = Pipeline(Registry([Button("b1", B1)]), EventSettings("c8y_MAC_Event", "{name}"))
    probe = forge.arp_frame(1, B2, "0.0.0.0", "192.168.10.52")
    assert pipeline.feed(forge_frame(probe, 10.0)) is None
    pipeline.use_registry(Registry([Button("b1", B1), Button("b2", B2)]))
    event = pipeline.feed(forge_frame(probe, 11.0))
    assert event is not None
    assert (event.name, event.mac) == ("b2", B2)


def forge_frame(data: bytes, timestamp: float) -> Frame:
    return Frame(timestamp, data)
