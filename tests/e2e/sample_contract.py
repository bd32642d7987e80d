"""What docs/cumulocity.md ("The exact message sequence") says Cumulocity receives for the
bundled sample capture: shared by the contract tests against mosquitto and against the sandbox."""

from __future__ import annotations

from tests.test_replay import EXPECTED

GATEWAY_NAME = "Store 3 button gateway"
# Name -> c8y_Serial (the MAC without colons), in the order the capture first presses them.
SERIALS = {"dashButton_1": "ac63be123456", "dashButton_2": "fca6670a0b0c",
           "dashButton_3": "6854fd010203"}


def c8y_time(iso: str) -> str:
    """The --jsonl time (microseconds) as SmartREST sends it (milliseconds)."""
    return iso[:23] + iso[26:]


def event_line(event: dict[str, str]) -> str:
    return f"400,c8y_MAC_Event,{event['text']},{c8y_time(event['time'])}"


def gateway_sequence(gateway_name: str = GATEWAY_NAME) -> list[tuple[str, str]]:
    """Gateway mode, (topic, payload) in order: the hello, then `101` once per button right
    before its first `400`, the events in press order."""
    expected = [
        ("s/us", f"100,{gateway_name},c8y_DashKanbanGateway"),
        ("s/us", "114"),
        ("s/us", "117,60"),
        ("s/us", "500"),
    ]
    announced: set[str] = set()
    for event in EXPECTED:
        serial = SERIALS[event["name"]]
        if serial not in announced:
            announced.add(serial)
            expected.append(("s/us", f"101,{serial},{event['name']},c8y_DashButton"))
        expected.append((f"s/us/{serial}", event_line(event)))
    return expected
