"""Catalog problems and how they are shown: :class:`CatalogIssue` (one problem with its YAML
line:column), :class:`CatalogError` (all of them, a :class:`~provisioners.errors.DeployError`)
and the formatting of values inside messages."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provisioners.errors import DeployError
from provisioners.redact import redact


@dataclass(frozen=True)
class CatalogIssue:
    """One problem in a catalog.

    ``path`` is the field path as written in the YAML (``"vms[0].gpu.address"``; ``""`` for
    the document itself), ``line``/``col`` are 1-based positions in the file (0 when there is
    no position, e.g. the file cannot be read), ``message`` says what is wrong, ``expected``
    what the field must look like and ``fix`` what to change.
    """

    path: str
    line: int
    col: int
    message: str
    expected: str = ""
    fix: str = ""

    def format(self, file: str | os.PathLike[str] | None = None) -> str:
        """``FILE:LINE:COL: PATH: message (expected ...; fix: ...)``, redacted, one line."""
        where = str(file) if file is not None else "<catalog>"
        if self.line:
            where += f":{self.line}:{self.col}"
        parts = [where]
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        extra = [f"expected {self.expected}"] if self.expected else []
        if self.fix:
            extra.append(f"fix: {self.fix}")
        if extra:
            text += " (" + "; ".join(extra) + ")"
        return redact(" ".join(text.split()))


@dataclass
class CatalogError(DeployError):
    """The catalog at ``file`` is invalid; ``issues`` lists every problem found, in file order.

    ``str(err)`` is one line per issue (see :meth:`CatalogIssue.format`), which is what
    ``python -m provisioners validate`` prints.
    """

    issues: list[CatalogIssue] = field(default_factory=list)
    file: Path | None = None

    def __str__(self) -> str:
        if not self.issues:
            return self.what
        return "\n".join(issue.format(self.file) for issue in self.issues)


def single_issue(file: Path | None, path: str, line: int, col: int, message: str, expected: str = "",
                 fix: str = "") -> CatalogError:
    """A :class:`CatalogError` holding one issue; its ``what`` is ``"FILE: message"``."""
    issue = CatalogIssue(path, line, col, message, expected, fix)
    return CatalogError(f"{file or '<catalog>'}: {message}", issues=[issue], file=file)


def all_issues(file: Path | None, issues: list[CatalogIssue]) -> CatalogError:
    """A :class:`CatalogError` for ``issues`` (already sorted); ``what`` is ``"FILE: N catalog
    error(s)"``."""
    n = len(issues)
    return CatalogError(f"{file or '<catalog>'}: {n} catalog error{'s' if n != 1 else ''}",
                        issues=issues, file=file)


def show(value: Any) -> str:
    """``value`` as a message quotes it: strings in double quotes, ``None`` as ``null`` (the YAML
    spelling), anything else as ``repr``; cut to 60 characters."""
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    if value is None:
        text = "null"
    return text if len(text) <= 60 else text[:57] + "..."
