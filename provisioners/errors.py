"""Errors the deployer shows to an operator.

Every failure a user can cause or meet is raised as a :class:`DeployError` (or subclass):
the CLI and the behave steps print ``str(err)`` - never a traceback - and attach
``err.evidence`` to the report.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeployError(Exception):
    """A failure explained for an operator.

    Attributes:
        what: one line, what failed (e.g. ``"start of VM 140 failed"``).
        cause: what the tool knows about why (quote the remote/PVE text verbatim).
        remedy: what to check or do next.
        evidence: name -> text (command output, task log...) for the report; redacted on output.
        command: the remote or API command that failed, if any.
        exit_code: its exit status, if any.
    """

    what: str
    cause: str = ""
    remedy: str = ""
    evidence: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    exit_code: int | None = None

    def __post_init__(self) -> None:
        super().__init__(self.what)

    def __str__(self) -> str:
        lines = [self.what]
        if self.command:
            status = "" if self.exit_code is None else f" (exit {self.exit_code})"
            lines.append(f"  command: {self.command}{status}")
        if self.cause:
            lines.append(f"  cause: {self.cause}")
        if self.remedy:
            lines.append(f"  remedy: {self.remedy}")
        return "\n".join(lines)
