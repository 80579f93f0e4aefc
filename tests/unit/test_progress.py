"""provisioners.progress: step lines, heartbeat, summary table; plain when not a TTY."""
from __future__ import annotations

import io
import re
import time

import pytest

from provisioners.progress import Progress, Row, format_duration, strip_control
from provisioners.redact import _clear_for_tests, register_secret

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture(autouse=True)
def _no_secrets():
    _clear_for_tests()
    yield
    _clear_for_tests()


@pytest.mark.parametrize("seconds,text", [(0.04, "0.0s"), (12.34, "12.3s"), (65, "1m05s"),
                                          (3725, "1h02m"), (59.96, "60.0s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_strip_control_removes_ansi_and_carriage_returns():
    assert strip_control("\x1b[32mok\x1b[0m\r done\t\n") == "ok done\t\n"


def test_step_start_and_duration_plain():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, clock=clock)
    assert p.tty is False  # StringIO is not a terminal
    p.step_started("When the VM is deployed from the catalog")
    clock.t += 83
    assert p.step_finished("When the VM is deployed from the catalog", "passed") == 83
    assert out.getvalue().splitlines() == [
        "-> When the VM is deployed from the catalog",
        "<- passed in 1m23s: When the VM is deployed from the catalog",
    ]
    p.step_finished("x", "failed", duration_s=2.5)
    assert out.getvalue().splitlines()[-1] == "<- failed in 2.5s: x"


def test_lines_are_redacted_and_plain_has_no_control_characters():
    register_secret("hf_plantedtoken1234")
    out = io.StringIO()
    p = Progress(out)
    p.line("\x1b[31mtoken hf_plantedtoken1234\x1b[0m\r")
    assert out.getvalue() == "token ***\n"


def test_output_heartbeat_is_rate_limited_with_elapsed_time():
    out, clock = io.StringIO(), Clock()
    p = Progress(out, heartbeat_s=15, clock=clock)
    p.step_started("When the \"driver\" component is converged")
    p.on_output("Reading package lists...")        # within 15 s of the start: silent
    clock.t += 16
    p.on_output("Unpacking nvidia-driver-580-open ...")
    clock.t += 5
    p.on_output("Setting up nvidia-dkms-580-open ...")  # 5 s later: silent
    clock.t += 70
    p.on_output("x" * 300)
    lines = out.getvalue().splitlines()[1:]
    assert lines[0] == "   ... 16.0s Unpacking nvidia-driver-580-open ..."
    assert lines[1].startswith("   ... 1m31s xxx") and lines[1].endswith("...") and len(lines[1]) < 130
    assert len(lines) == 2


def test_heartbeat_thread_prints_elapsed_while_silent():
    out = io.StringIO()
    p = Progress(out, heartbeat_s=0.05)
    with p.heartbeat("waiting for task UPID:pve1:start"):
        time.sleep(0.23)
    beats = [l for l in out.getvalue().splitlines() if "waiting for task" in l]
    assert len(beats) >= 2
    assert all(re.fullmatch(r"   \.\.\. waiting for task UPID:pve1:start: \d+\.\ds", b) for b in beats)
    n = len(out.getvalue())
    time.sleep(0.12)
    assert len(out.getvalue()) == n  # stopped with the block


def test_heartbeat_slows_down_after_four_beats():
    out = io.StringIO()
    p = Progress(out, heartbeat_s=0.05)
    with p.heartbeat("long install"):
        time.sleep(0.2 + 0.4 + 0.1)  # 4 beats at 0.05 s, then one at +0.2 s, one at +0.4 s
    beats = [l for l in out.getvalue().splitlines() if "long install" in l]
    assert 5 <= len(beats) <= 7, beats


def _rows(p):
    p.add_row(Row("Deploying creates VM 140", "passed", 95.0, changed=3, ok=1))
    p.add_row(Row("vm", "changed", 90.0, changed=3, ok=1, indent=1))
    p.add_row(Row("A second deployment changes nothing", "failed", 30.0, ok=4, failed=1))
    p.add_row(Row("driver", "failed", 20.0, ok=0, failed=1, indent=1))


def test_summary_table_plain():
    out = io.StringIO()
    p = Progress(out)
    _rows(p)
    p.print_summary()
    text = out.getvalue()
    assert not CONTROL.search(text.replace("\n", ""))
    lines = [l for l in text.splitlines() if l]
    assert lines[0].split() == ["scenario", "/", "component", "changed", "ok", "failed", "result", "duration"]
    assert re.search(r"^Deploying creates VM 140\s+3\s+1\s+0\s+passed\s+1m35s$", text, re.M)
    assert re.search(r"^  driver\s+0\s+0\s+1\s+failed\s+20\.0s$", text, re.M)
    assert lines[-1] == "2 scenarios (1 passed, 1 not passed), 3 changed operations, 2m05s"


def test_summary_table_rich_on_a_tty():
    out = io.StringIO()
    p = Progress(out, tty=True)
    _rows(p)
    p.print_summary()
    text = out.getvalue()
    assert "\x1b[" in text  # rich colours on a terminal
    plain = strip_control(text)
    assert "deployment summary" in plain and "Deploying creates VM 140" in plain and "1m35s" in plain


def test_no_rows_no_summary():
    out = io.StringIO()
    Progress(out).print_summary()
    assert out.getvalue() == ""
