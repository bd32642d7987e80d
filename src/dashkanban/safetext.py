"""Strings from the network or from files shown to a person: data, never markup or control codes.

A DHCP host name, a MACID.csv name or a managed object's name may hold rich markup (`[/bold]`
raised MarkupError; `[link=...]` hid a hyperlink), a newline (a forged log line) or an escape
sequence for the terminal. `plain` makes a rich cell that is never parsed as markup; both it and
the log formatters show control characters escaped, as Python's `repr` would (`\\n`, `\\x1b`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.text import Text

# C0 and C1 controls, DEL, the Unicode line and paragraph separators, and the bidirectional
# overrides and isolates (which reorder what a terminal shows: "Trojan Source", CVE-2021-42574).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def escape_controls(text: str) -> str:
    """`text` with every control character shown as its escape: one line, nothing hidden."""
    return _CONTROLS.sub(_escaped, text)


def plain(value: object) -> Text:
    """A rich table cell or line holding `value` as literal text (markup is not parsed)."""
    from rich.text import Text

    return Text(escape_controls(str(value)))
