"""Issue 13, hole 1: an `s/e` error that follows one of our lines names that line (pure parts of
c8y/protocol.py; the uplink and the sandbox are in tests/sandbox/test_refused_by_cumulocity.py)."""

from __future__ import annotations

from dashkanban.c8y.protocol import (
    Refusal,
    SentLine,
    blame,
    describe_refusal,
    expected_error,
    payload_lines,
)

PRESS = "dashButton_2 (fc:a6:67:0a:0b:0c) pressed at 2026-11-26T08:05:12.500+00:00"
HELLO = SentLine(1, 1, "s/us", "100,Store 3 button gateway,c8y_DashKanbanGateway")
FIRST = SentLine(3, 2, "s/us/ac63be123456", "400,c8y_MAC_Event,A3,2026-11-26T08:00:01.234+00:00",
                 row=1, press="dashButton_1 (ac:63:be:12:34:56) pressed at ...")
ANNOUNCE = SentLine(5, 4, "s/us", "101,fca6670a0b0c,dashButton_2,c8y_DashButton", row=2,
                    press=PRESS)
SECOND = SentLine(7, 6, "s/us/fca6670a0b0c", "400,c8y_MAC_Event,,2026-11-26T08:05:12.500+00:00",
                  row=2, press=PRESS)
THIRD = SentLine(9, 8, "s/us/ac63be123456", "400,c8y_MAC_Event,A3,2026-11-26T08:30:00.750+00:00",
                 row=3, press="dashButton_1 (ac:63:be:12:34:56) pressed at ...")
SENT = [HELLO, FIRST, ANNOUNCE, SECOND, THIRD]
WRONG = "45,400,Wrong number of arguments"


def test_the_start_up_answers_are_fine_and_name_no_line() -> None:
    assert expected_error("41,100,Device already existing", "gw", ()) == (
        "Cumulocity: device gw already exists (fine)")
    assert expected_error('41,"dashkanban-v2",Template collection already exists', "gw",
                          {"dashkanban-v2"}) == (
        "Cumulocity: template collection dashkanban-v2 already exists (fine)")
    assert expected_error("41,400,Template creation error", "gw", {"dashkanban-v2"}) is None
    assert expected_error(WRONG, "gw", ()) is None


def test_an_error_after_its_puback_is_the_latest_acknowledged_line_not_one_still_waiting(
) -> None:
    # Cumulocity (and the sandbox) acknowledge a PUBLISH, then process it: the error of row 2
    # comes after row 2's PUBACK and before row 3's, which still waits.
    assert blame(WRONG, SENT, waiting={8}, blamed=set()) == SECOND
    # Row 1's error came after its PUBACK, while rows 2 and 3 still waited.
    assert blame(WRONG, SENT, waiting={6, 8}, blamed=set()) == FIRST
    # The same error again: the line already blamed is skipped.
    assert blame(WRONG, SENT, waiting={8}, blamed={7}) == FIRST


def test_an_error_before_any_puback_is_the_oldest_line_still_waiting() -> None:
    # A broker that processes before it acknowledges: nothing of that template acknowledged.
    assert blame(WRONG, SENT, waiting={2, 6, 8}, blamed=set()) == FIRST
    assert blame(WRONG, SENT, waiting={2, 6, 8}, blamed={3}) == SECOND


def test_an_error_after_every_puback_is_the_latest_line_of_its_template() -> None:
    assert blame(WRONG, SENT, waiting=set(), blamed=set()) == THIRD
    assert blame("45,101,Wrong number of arguments", SENT, waiting=set(), blamed=set()) == (
        ANNOUNCE)


def test_an_error_naming_none_of_our_lines_is_not_blamed() -> None:
    assert blame("40,999,No static template for this message id", SENT, set(), set()) is None
    assert blame("41,,MqttAuth: Cannot publish token for device that do not use certificate "
                 "authentication", SENT, set(), set()) is None
    assert blame(WRONG, SENT, waiting=set(), blamed={3, 7, 9}) is None


def test_the_error_line_names_the_line_its_row_and_press_with_controls_escaped() -> None:
    assert describe_refusal(Refusal(WRONG, SECOND)) == (
        "Cumulocity refused 400,c8y_MAC_Event,,2026-11-26T08:05:12.500+00:00 on "
        f"s/us/fca6670a0b0c (outbox row 2, {PRESS}): error 45 (invalid arguments): Wrong number "
        "of arguments; not sent again"
    )
    forged = SentLine(1, 1, "s/us/x", '400,t,"a\nERROR forged",2026-11-26T08:00:00Z')
    assert describe_refusal(Refusal("45,400,Wrong\x1b[31m", forged)) == (
        'Cumulocity refused 400,t,"a\\nERROR forged",2026-11-26T08:00:00Z on s/us/x: error 45 '
        "(invalid arguments): Wrong\\x1b[31m; not sent again"
    )


def test_a_payload_splits_into_its_lines_at_breaks_outside_quotes() -> None:
    assert payload_lines('400,t,"a\nb ""c""",2026\n302,A,"x\r\ny"\n\n125') == [
        '400,t,"a\nb ""c""",2026', '302,A,"x\r\ny"', "125"]
