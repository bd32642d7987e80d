from __future__ import annotations

from pathlib import Path

import pytest

from dashkanban.errors import ConfigError
from dashkanban.kanban.bins import Bin, load_bins, parse_bins

PATH = Path("/etc/dashkanban/MACID.csv")

HEADER = "Name, MAC-Address, bin, part, quantity, location, supplier, lead_time_days, role\n"


def test_bins_group_reorder_and_refill_buttons() -> None:
    registry, bins = parse_bins(
        HEADER
        + "screws, ac:63:be:12:34:56, A3, M6 screws, 50, Aisle 2, Würth, 2,\n"
        + "screws-2, ac:63:be:12:34:57, A3, , , , , , reorder\n"
        + "screws-full, ac:63:be:12:34:58, A3, , , , , , refill\n"
        + "gloves, 6854.fd01.0203, C7, Safety gloves L, 12, Gate 1, Ansell, 5\n"
        + "plain, fc:a6:67:0a:0b:0c\n",
        PATH,
    )
    assert len(registry) == 5
    assert bins.names == ["A3", "C7"]
    a3 = bins.get("A3")
    assert a3 == Bin(
        name="A3",
        part="M6 screws",
        quantity=50,
        location="Aisle 2",
        supplier="Würth",
        lead_time_days=2.0,
        reorder=(registry.find("screws"), registry.find("screws-2")),  # type: ignore[arg-type]
        refill=(registry.find("screws-full"),),  # type: ignore[arg-type]
    )
    assert bins.find("a3") is a3
    assert bins.find("Z9") is None
    assert bins.of(registry.find("plain")) is None  # type: ignore[arg-type]
    assert bins.of(registry.find("screws-full")) is a3  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "a, ac:63:be:12:34:56, A3, M6, 50, , , ,\n"
            "b, ac:63:be:12:34:57, B9, , , , , , refill\n",
            "/etc/dashkanban/MACID.csv:3: refill button 'b' names bin 'B9', which no reorder "
            "button has (bins with a reorder button: A3)",
        ),
        (
            "a, ac:63:be:12:34:56, , , , , , , refill\n",
            "/etc/dashkanban/MACID.csv:2: refill button 'a' has no bin; name the bin it refills",
        ),
        (
            "a, ac:63:be:12:34:56, , M6 screws, 50, , , ,\n",
            "/etc/dashkanban/MACID.csv:2: button 'a' has part, quantity but no bin; add the bin "
            "it belongs to",
        ),
        (
            "a, ac:63:be:12:34:56, A3, M6 screws, 50, , , ,\n"
            "# a comment line is skipped, and line numbers stay right\n"
            "b, ac:63:be:12:34:57, A3, M6 screws, 40, , , ,\n",
            "/etc/dashkanban/MACID.csv:4: bin 'A3': quantity 40 on 'b' differs from 50 on 'a'",
        ),
        (
            "a, ac:63:be:12:34:56, A3, M6 screws, 50, , , 2,\n"
            "b, ac:63:be:12:34:57, A3, , , , , 2.5, refill\n",
            "/etc/dashkanban/MACID.csv:3: bin 'A3': lead_time_days 2.5 on 'b' differs from 2 on "
            "'a'",
        ),
        (
            "a, ac:63:be:12:34:56, A3, M6 screws, 50, , , , restock\n",
            "/etc/dashkanban/MACID.csv:2: role 'restock' is not one of: reorder, refill",
        ),
    ],
)
def test_bin_errors_name_file_and_line(rows: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_bins(HEADER + rows, PATH)
    assert str(caught.value) == message


def test_load_bins_reads_the_bundled_file() -> None:
    path = Path(__file__).parents[2] / "src/dashkanban/data/MACID.csv"
    _, bins = load_bins(path)
    assert [(b.name, b.part, b.quantity, b.location, b.lead_time_days) for b in bins] == [
        ("A3", "M6 screws", 50, "Aisle 2", 2.0),
        ("B1", "Cable ties 200mm", 100, "Aisle 4", 3.0),
        ("C7", "Safety gloves L", 12, "Gate 1", 5.0),
    ]


def test_load_bins_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_bins(tmp_path / "MACID.csv")
    assert str(caught.value) == (
        f"{tmp_path / 'MACID.csv'}: buttons file not found (set [buttons] file in config.ini)"
    )
