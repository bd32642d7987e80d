"""`dashkanban demo` as a new user runs it: no config, no root, no tenant; a real process."""

from __future__ import annotations

import subprocess
import sys


def test_demo_shows_what_cumulocity_holds(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dashkanban", "demo"],
        capture_output=True, text=True, timeout=120, check=False, cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "Replayed sample-store.pcapng: 1211 packets read, 162 candidates, 0 malformed, " \
           "7 presses" in out
    assert "Delivered 7 events over MQTT (SmartREST 2.0), each on PUBACK." in out
    assert "Events in Cumulocity (7 of 7 sent)" in out
    for name, serial in (("dashButton_1", "ac63be123456"), ("dashButton_2", "fca6670a0b0c"),
                         ("dashButton_3", "6854fd010203")):
        row = next(line for line in out.splitlines() if f"│ {name} " in line and serial in line)
        assert "c8y_DashButton" in row
    gateway = next(line for line in out.splitlines() if "dashkanban-demo" in line)
    assert "Demo store gateway" in gateway
    assert out.count("pressed (ac:63:be:12:34:56)") == 3
    assert out.count("pressed (fc:a6:67:0a:0b:0c)") == 2
    assert out.count("pressed (68:54:fd:01:02:03)") == 2
    # The bundled MACID.csv has bins and the demo turns alarms on: one ACTIVE reorder alarm per
    # bin, the repeat presses counted on it (Cumulocity de-duplicates by type and device).
    table = out[out.index("Kanban reorder alarms in Cumulocity (one per bin; repeats counted)"):]
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert rows == [
        "│ dashButton_1 │ ACTIVE │ MAJOR    │ 3     │ Reorder 50 x M6 screws for bin A3 (Aisle 2)"
        "         │",
        "│ dashButton_2 │ ACTIVE │ MAJOR    │ 2     │ Reorder 100 x Cable ties 200mm for bin B1 "
        "(Aisle 4) │",
        "│ dashButton_3 │ ACTIVE │ MAJOR    │ 2     │ Reorder 12 x Safety gloves L for bin C7 "
        "(Gate 1)    │",
    ]
    # The supplier told (issue 18): the rules installed, the next day's reorder of A3 mailed.
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("Smart Rule ")] == [
        f"Smart Rule create: dashkanban dashkanban-demo: {kind} mail to {email} (1 button, "
        f"bins {bin_})"
        for email, bin_ in (("gloves@ansell.example", "C7"), ("orders@wuerth.example", "A3"),
                            ("sales@hellermann.example", "B1"))
        for kind in ("reorder", "overdue")
    ]
    assert lines[-3] == ("email to orders@wuerth.example: Kanban reorder: Reorder 50 x M6 screws "
                         "for bin A3 (Aisle 2)")
    # One "delivered" log line per press on stderr, the next day's press of A3 included (its
    # refill is a row of lines, which has no press to log).
    assert result.stderr.count(": delivered") == 8
    assert lines[-1].endswith(
        "stop now; `dashkanban demo --keep` keeps them running until Ctrl-C.")


def test_demo_keep_leaves_the_sandbox_and_its_page_running(tmp_path: object) -> None:
    """Issue 14: the page URL the demo prints was dead when it exited; --keep keeps it, with the
    reorder alarms on it, until Ctrl-C."""
    import re
    import signal

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "dashkanban", "demo", "--keep"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(tmp_path), env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(200):  # bounded: the demo prints about 40 lines
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it." in line:
                break
        text = "".join(lines)
        found = re.search(r"open (http://127\.0\.0\.1:\d+)/", text)
        assert found is not None, text
        page = httpx.get(found.group(1) + "/", timeout=10).text
        assert '<span id="alarm-counts">3 active, 0 acknowledged, 1 cleared</span>' in page
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
