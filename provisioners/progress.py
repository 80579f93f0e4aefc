"""What an operator watching a long deploy sees: step start, heartbeat, duration, summary table.

Lines go to the terminal behave was started from (``environment.py`` hands over the real stdout
before behave's output capture replaces ``sys.stdout``), so progress shows live even while behave
captures step output for the JUnit report. Every line passes :func:`provisioners.redact.redact`.

When the stream is not a TTY (CI logs, pipes) the output is plain text with no control characters
(no ANSI colours, no carriage returns); on a TTY the summary table is drawn with ``rich``.
All durations are wall-clock seconds (``time.monotonic``).
"""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, TextIO

from provisioners.redact import redact

# C0 controls except newline and tab, DEL, and C1 controls (ESC sequences start with \x1b).
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def strip_control(text: str) -> str:
    """Remove ANSI escape sequences and control characters (keeps ``\\n`` and ``\\t``)."""
    return _CONTROL.sub("", text)


def format_duration(seconds: float) -> str:
    """``0.4s``, ``12.3s``, ``1m05s``, ``1h02m`` - short, fixed style for logs and tables."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Row:
    """One line of the summary table: a scenario, or a component/operation within it.
    ``changed``/``ok``/``failed`` count operations (:class:`provisioners.results.OpResult`);
    ``status`` is behave's scenario status or the component's worst result."""

    name: str
    status: str
    duration_s: float
    changed: int = 0
    ok: int = 0
    failed: int = 0
    indent: int = 0


class Progress:
    """Progress reporter for one behave run.

    ``stream``: a text stream (default: ``sys.stdout`` when constructed); ``heartbeat_s``: seconds
    between heartbeat lines during a long command; ``tty``: force TTY mode (default: ask the
    stream); ``clock``: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(self, stream: TextIO | None = None, *, heartbeat_s: float = 15.0,
                 tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.stream = stream if stream is not None else sys.stdout
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        if tty is None:
            try:
                tty = bool(self.stream.isatty())
            except (AttributeError, ValueError):
                tty = False
        self.tty = tty
        self.rows: list[Row] = []
        self._lock = threading.Lock()
        self._step_start: float | None = None
        self._last_beat: float = 0.0

    # -- lines ------------------------------------------------------------------------------
    def line(self, text: str) -> None:
        """Print one line (redacted; control characters removed when not a TTY)."""
        text = redact(text)
        if not self.tty:
            text = strip_control(text)
        with self._lock:
            self.stream.write(text + "\n")
            try:
                self.stream.flush()
            except (AttributeError, ValueError):
                pass

    def step_started(self, name: str) -> None:
        """Print ``-> <step>`` and start the step clock."""
        self._step_start = self._last_beat = self.clock()
        self.line(f"-> {name}")

    def step_finished(self, name: str, status: str, duration_s: float | None = None) -> float:
        """Print ``<- <status> in <duration>: <step>``; returns the duration in seconds
        (behave's own measure when given, else the step clock)."""
        if duration_s is None:
            duration_s = self.clock() - self._step_start if self._step_start is not None else 0.0
        self._step_start = None
        self.line(f"<- {status} in {format_duration(duration_s)}: {name}")
        return duration_s

    def elapsed(self) -> float:
        """Seconds since the current step started (0 outside a step)."""
        return 0.0 if self._step_start is None else self.clock() - self._step_start

    # -- heartbeat --------------------------------------------------------------------------
    def on_output(self, line: str) -> None:
        """Callable for a remote command's output stream: prints ``   ... <elapsed> <line>`` at
        most once every ``heartbeat_s`` seconds, so a chatty ``apt-get`` does not flood the log
        while a quiet one still shows it is alive (see also :meth:`heartbeat`)."""
        now = self.clock()
        if now - self._last_beat < self.heartbeat_s:
            return
        self._last_beat = now
        last = line.strip()
        if len(last) > 100:
            last = last[:97] + "..."
        self.line(f"   ... {format_duration(self.elapsed())} {last}".rstrip())

    def heartbeat(self, label: str) -> "Heartbeat":
        """Context manager printing ``   ... <label>: <elapsed>`` every ``heartbeat_s`` seconds
        (every ``4 * heartbeat_s`` after the first four) while a long, silent operation runs
        (task wait, reboot, model download)."""
        return Heartbeat(self, label)

    # -- summary ----------------------------------------------------------------------------
    def add_row(self, row: Row) -> None:
        self.rows.append(row)

    def summary_text(self) -> str:
        """The summary table as plain text (fixed-width columns, no control characters)."""
        header = ("scenario / component", "changed", "ok", "failed", "result", "duration")
        body = [(("  " * r.indent) + r.name, str(r.changed), str(r.ok), str(r.failed), r.status,
                 format_duration(r.duration_s)) for r in self.rows]
        widths = [max(len(header[i]), *(len(b[i]) for b in body)) if body else len(header[i])
                  for i in range(len(header))]
        widths[0] = min(widths[0], 70)

        def fmt(cells):
            first = cells[0] if len(cells[0]) <= widths[0] else cells[0][: widths[0] - 3] + "..."
            out = [first.ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:4], widths[1:4])]
            out += [cells[4].ljust(widths[4]), cells[5].rjust(widths[5])]
            return "  ".join(out).rstrip()

        lines = [fmt(header), "  ".join("-" * w for w in widths)]
        lines += [fmt(b) for b in body]
        top = [r for r in self.rows if r.indent == 0]
        passed = sum(r.status == "passed" for r in top)
        # Failed *operations* are not counted here: @failure scenarios fail operations on purpose.
        lines.append(f"{len(top)} scenarios ({passed} passed, {len(top) - passed} not passed), "
                     f"{sum(r.changed for r in self.rows if r.indent)} changed operations, "
                     f"{format_duration(sum(r.duration_s for r in top))}")
        return redact(strip_control("\n".join(lines)))

    def print_summary(self) -> None:
        """Print the summary: a ``rich`` table on a TTY, :meth:`summary_text` otherwise."""
        if not self.rows:
            return
        if not self.tty:
            self.line("")
            for text in self.summary_text().splitlines():
                self.line(text)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(title="deployment summary")
        table.add_column("scenario / component")
        for col in ("changed", "ok", "failed"):
            table.add_column(col, justify="right")
        table.add_column("result")
        table.add_column("duration", justify="right")
        colour = {"passed": "green", "ok": "green", "changed": "yellow", "failed": "red",
                  "error": "red", "skipped": "dim"}
        for r in self.rows:
            style = colour.get(r.status, "")
            table.add_row(redact(("  " * r.indent) + r.name), str(r.changed), str(r.ok), str(r.failed),
                          f"[{style}]{r.status}[/]" if style else r.status, format_duration(r.duration_s))
        with self._lock:
            Console(file=self.stream, force_terminal=True).print(table)


class Heartbeat:
    """See :meth:`Progress.heartbeat`. A daemon thread; stops on exit of the ``with`` block."""

    def __init__(self, progress: Progress, label: str):
        self.progress = progress
        self.label = label
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> "Heartbeat":
        self._start = self.progress.clock()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat:{self.label}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # Every heartbeat_s for the first four beats, then every 4 x heartbeat_s (15 s -> 1 min):
        # a 20-minute install should not print 80 lines.
        beats = 0
        while not self._stop.wait(self.progress.heartbeat_s * (1 if beats < 4 else 4)):
            beats += 1
            self.progress.line(f"   ... {self.label}: {format_duration(self.progress.clock() - self._start)}")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
