"""The SmartREST 2.0 codec, table-driven with the examples of docs/protocol.md (2.2 quoting,
2.7 errors, 1.6 the size limit)."""

from __future__ import annotations

import pytest

from dashkanban.c8y.smartrest import (
    ErrorLine,
    SmartRestLine,
    decode,
    decode_error,
    encode_line,
    fits,
    join_lines,
)


@pytest.mark.parametrize(("args", "line"), [
    ((100, "myDevice", "myType"), "100,myDevice,myType"),
    ((400, "c8y_MyEvent", "Something was triggered"), "400,c8y_MyEvent,Something was triggered"),
    ((400, "c8y_MAC_Event", "a, b"), '400,c8y_MAC_Event,"a, b"'),
    ((503, "A value\"with\" quotes", "field"), '503,"A value""with"" quotes",field'),
    ((502, "c8y_UploadConfigFile", 'contains"double"quote'),
     '502,c8y_UploadConfigFile,"contains""double""quote"'),
    ((113, "val1=1\nval2=2"), '113,"val1=1\nval2=2"'),
    ((400, "t", " padded"), '400,t," padded"'),
    ((400, "t", "tab\there"), '400,t,"tab\there"'),
    ((400, "t", "bell\x07gone"), "400,t,bellgone"),
    ((304, "c8y_TemperatureAlarm", "", "2013-06-22T17:03:14.000+02:00"),
     "304,c8y_TemperatureAlarm,,2013-06-22T17:03:14.000+02:00"),
    ((500,), "500"),
])
def test_encode(args: tuple[object, ...], line: str) -> None:
    assert encode_line(*args) == line


@pytest.mark.parametrize(("payload", "expected"), [
    ("510,DeviceSerial", [SmartRestLine("510", ("DeviceSerial",))]),
    ('511,myDeviceSerial,"execute this\nand this\nand \\"this\\""',
     [SmartRestLine("511", ("myDeviceSerial", 'execute this\nand this\nand "this"'))]),
    ('511,myDeviceSerial,"execute this\nand this\nand ""this"""',
     [SmartRestLine("511", ("myDeviceSerial", 'execute this\nand this\nand "this"'))]),
    ("510,a\n510,b\n", [SmartRestLine("510", ("a",)), SmartRestLine("510", ("b",))]),
    ("106,child1,child2", [SmartRestLine("106", ("child1", "child2"))]),
    ("124,12345\r\n", [SmartRestLine("124", ("12345",))]),
    ("100,,", [SmartRestLine("100", ("", ""))]),
    ("", []),
])
def test_decode(payload: str, expected: list[SmartRestLine]) -> None:
    assert decode(payload) == expected


def test_round_trip() -> None:
    text = 'He said "reorder, now"\nthen left\t'
    line = encode_line(400, "c8y_MAC_Event", text, "2026-11-26T08:00:01.234+00:00")
    assert decode(line) == [
        SmartRestLine("400", ("c8y_MAC_Event", text, "2026-11-26T08:00:01.234+00:00"))
    ]


@pytest.mark.parametrize(("line", "expected"), [
    ("40,999,No static template for this message id",
     ErrorLine("40", "999", "No static template for this message id")),
    ("41,100,Device already existing", ErrorLine("41", "100", "Device already existing")),
    ("50,100,Error on device creation, message: Error on identity creation",
     ErrorLine("50", "100", "Error on device creation, message: Error on identity creation")),
    ("41,,MqttAuth: Cannot publish token for device that do not use certificate authentication",
     ErrorLine("41", "", "MqttAuth: Cannot publish token for device that do not use certificate "
               "authentication")),
])
def test_decode_error(line: str, expected: ErrorLine) -> None:
    assert decode_error(line) == expected


def test_size_limit() -> None:
    assert fits("x" * 16_000)
    assert not fits("x" * 16_001)
    assert not fits("é" * 8_001)
    assert join_lines(["101,a", "101,b"]) == "101,a\n101,b"
