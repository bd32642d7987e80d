"""MACID.csv: notations, serials, optional columns, and exact errors with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.compose import load_buttons
from dashkanban.detect.buttons import Button, normalize_mac
from dashkanban.errors import ConfigError


@pytest.mark.parametrize("text", [
    "ac:63:be:12:34:56", "AC-63-BE-12-34-56", "ac63.be12.3456", "ac63be123456", "AC63BE123456",
    " ac:63:be:12:34:56 ",
])
def test_every_common_notation(text: str) -> None:
    assert normalize_mac(text) == "ac:63:be:12:34:56"


def test_octets_without_leading_zero() -> None:
    assert normalize_mac("a:b:c:d:e:f") == "0a:0b:0c:0d:0e:0f"


@pytest.mark.parametrize("text", ["ac:63:be:12:34", "ac:63:be:12:34:5g", "ac-63:be-12:34-56", ""])
def test_not_a_mac(text: str) -> None:
    with pytest.raises(ValueError, match="is not a MAC address"):
        normalize_mac(text)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "MACID.csv"
    path.write_text(text)
    return path


def test_original_format(tmp_path: Path) -> None:
    registry = load_buttons(write(tmp_path, "Name, MAC-Address\ndashButton_1,AC:63:BE:12:34:56\n"))
    assert list(registry) == [Button(name="dashButton_1", mac="ac:63:be:12:34:56")]
    button = registry.get("ac:63:be:12:34:56")
    assert button is not None
    assert button.serial == "ac63be123456"
    assert registry.find("DASHBUTTON_1") is button
    assert registry.find("ac63be123456") is button
    assert registry.find("nobody") is None


def test_optional_columns(tmp_path: Path) -> None:
    text = (
        "Name,MAC-Address,dead_time,bin,part,quantity,location,supplier,lead_time_days,role\n"
        "b1,ac63.be12.3456,20,A3,M6 screws,50,Aisle 2,ACME,2.5,reorder\n"
        "b2,ac63be123457,,A3,,,,,,refill\n"
    )
    b1, b2 = list(load_buttons(write(tmp_path, text)))
    assert b1 == Button("b1", "ac:63:be:12:34:56", 20.0, "A3", "M6 screws", 50, "Aisle 2",
                        "ACME", 2.5, "reorder")
    assert b2 == Button("b2", "ac:63:be:12:34:57", bin="A3", role="refill")


def test_comments_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    text = "# buttons of store 3\nName, MAC-Address\n\n# spare\nb1, ac63be123456\n"
    assert [b.name for b in load_buttons(write(tmp_path, text))] == ["b1"]


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_buttons(path)
    return str(info.value)


def test_bad_mac(tmp_path: Path) -> None:
    path = write(tmp_path, "Name, MAC-Address\nb1, ac63be12345z\n")
    assert error_of(path) == (
        f"{path}:2: 'ac63be12345z' is not a MAC address (expected e.g. ac:63:be:12:34:56)"
    )


def test_duplicate_mac(tmp_path: Path) -> None:
    path = write(tmp_path, "Name, MAC-Address\nb1, ac63be123456\nb2, AC-63-BE-12-34-56\n")
    assert error_of(path) == f"{path}:3: duplicate MAC ac:63:be:12:34:56 (already on line 2)"


def test_duplicate_name(tmp_path: Path) -> None:
    path = write(tmp_path, "Name, MAC-Address\nb1, ac63be123456\nB1, ac63be123457\n")
    assert error_of(path) == f"{path}:3: duplicate name 'B1' (already on line 2)"


def test_duplicates_found_in_the_registry_keep_their_order_and_first_line(
        tmp_path: Path) -> None:
    # parse_buttons finds duplicates through the registry itself (issue 16: no second set of
    # keys): a MAC wins over a name, a topic over a MAC, and the line is the first holder's.
    both = "Name, MAC-Address\nb1, ac63be123456\nb2, ac63be123457\nB2, ac63be123456\n"
    assert error_of(write(tmp_path, both)) == (
        f"{tmp_path / 'MACID.csv'}:4: duplicate MAC ac:63:be:12:34:56 (already on line 2)")
    topics = ("Name, MAC-Address, topic\n# c\nb1, ac63be123456, t/1\nb2, ac63be123457, t/2\n"
              "b3, ac63be123456, t/2\n")
    assert error_of(write(tmp_path, topics)) == (
        f"{tmp_path / 'MACID.csv'}:5: duplicate topic 't/2' (already on line 4)")
    names = "Name, MAC-Address\n\nb1, ac63be123456\n\nÄ1, ac63be123458\nä1, ac63be123459\n"
    assert error_of(write(tmp_path, names)) == (
        f"{tmp_path / 'MACID.csv'}:6: duplicate name 'ä1' (already on line 5)")


def test_missing_column(tmp_path: Path) -> None:
    path = write(tmp_path, "Name\nb1\n")
    assert error_of(path) == (
        f"{path}:1: missing column 'MAC-Address': the header must start 'Name, MAC-Address'"
    )


@pytest.mark.parametrize("delimiter", [";", "\t"])
def test_semicolon_and_tab_delimiters(tmp_path: Path, delimiter: str) -> None:
    """Issue 14: the delimiter comes from the header line (German Excel writes ';'), and a
    comma inside a field of such a file is just a character."""
    d = delimiter
    path = write(tmp_path, f"Name{d} MAC-Address{d}location\nb1{d} ac63be123456{d}Aisle 2, left\n")
    assert list(load_buttons(path)) == [
        Button(name="b1", mac="ac:63:be:12:34:56", location="Aisle 2, left")
    ]


def test_other_delimiter_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "Name| MAC-Address\nb1| ac63be123456\n")
    assert error_of(path) == (
        f"{path}:1: the header uses '|' as the delimiter; MACID.csv is separated by commas, "
        "semicolons or tabs ('Name, MAC-Address')"
    )


def test_too_many_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "Name, MAC-Address\nb1, ac63be123456, extra\n")
    assert error_of(path) == f"{path}:2: 3 fields but the header has 2 columns"


def test_bad_role_and_quantity(tmp_path: Path) -> None:
    path = write(tmp_path, "Name, MAC-Address, role\nb1, ac63be123456, restock\n")
    assert error_of(path) == f"{path}:2: role 'restock' is not one of: reorder, refill"
    path = write(tmp_path, "Name, MAC-Address, quantity\nb1, ac63be123456, lots\n")
    assert error_of(path) == f"{path}:2: quantity 'lots' is not a whole number"


EXCEL = (
    "Name;MAC-Address;bin;part;location\r\n"
    "Würth Schrauben;AC-63-BE-12-34-56;A3;M6 Schrauben für Möbel;Gang 2 (Süd)\r\n"
    "Dübel;fc:a6:67:0a:0b:0c;B1;Dübel 8 mm;Gang 3\r\n"
)


def test_excel_csv_semicolon_windows_1252_bom_crlf(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """German Excel's "CSV": ';', Windows-1252, CRLF; here with a UTF-8 BOM in front too.
    Read with the umlauts intact and one warning line naming the file (issue 14)."""
    path = tmp_path / "MACID.csv"
    path.write_bytes(b"\xef\xbb\xbf" + EXCEL.encode("cp1252"))
    with caplog.at_level("WARNING", logger="dashkanban.detect.buttons"):
        buttons = list(load_buttons(path))
        load_buttons(path)  # read again (the daemon does): still one warning
    assert buttons == [
        Button(name="Würth Schrauben", mac="ac:63:be:12:34:56", bin="A3",
               part="M6 Schrauben für Möbel", location="Gang 2 (Süd)"),
        Button(name="Dübel", mac="fc:a6:67:0a:0b:0c", bin="B1", part="Dübel 8 mm",
               location="Gang 3"),
    ]
    offset = 3 + EXCEL.encode("cp1252").index(b"\xfc")  # the BOM counts
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: not UTF-8 (byte 0xfc at offset {offset}, line 2): read as Windows-1252; "
        'save it as "CSV UTF-8" to be sure'
    ]


def test_utf8_with_bom_needs_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "MACID.csv"
    path.write_bytes(b"\xef\xbb\xbf" + EXCEL.encode("utf-8"))
    with caplog.at_level("WARNING"):
        assert [b.name for b in load_buttons(path)] == ["Würth Schrauben", "Dübel"]
    assert caplog.records == []


def test_neither_utf8_nor_windows_1252(tmp_path: Path) -> None:
    """0x81 is undefined in Windows-1252; the offset and line count from byte 0, BOM included."""
    path = tmp_path / "MACID.csv"
    path.write_bytes(b"\xef\xbb\xbfName, MAC-Address\nb\x81, ac63be123456\n")
    assert error_of(path) == (
        f"{path}:2: neither UTF-8 nor Windows-1252 text (byte 0x81 at offset 22); save "
        'MACID.csv as "CSV UTF-8"'
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "none.csv"
    assert error_of(path) == f"{path}: buttons file not found (set [buttons] file in config.ini)"


def test_ten_thousand_buttons(tmp_path: Path) -> None:
    rows = "".join(f"button_{i},{0xAC63BE000000 + i:012x}\n" for i in range(10_000))
    registry = load_buttons(write(tmp_path, "Name, MAC-Address\n" + rows))
    assert len(registry) == 10_000
    last = registry.find("button_9999")
    assert last is not None
    assert last.mac == "ac:63:be:00:27:0f"
