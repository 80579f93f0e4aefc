"""Shared result shapes: plan changes and operation results."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Action = Literal["create", "update", "needs-restart", "refuse"]
Status = Literal["changed", "ok", "failed"]


@dataclass(frozen=True)
class Change:
    """One difference between the catalog (desired) and what exists (current).

    ``action``: ``create`` (thing absent), ``update`` (applied live), ``needs-restart``
    (applied, takes effect after a VM/service restart), ``refuse`` (the tool will not do it:
    a disk shrink, any change to a VM without our managed marker).
    ``target`` names the thing (``"VM 140"``, ``"driver"``...), ``field`` the setting.
    """

    action: Action
    target: str
    field: str = ""
    current: Any = None
    desired: Any = None
    reason: str = ""

    def __str__(self) -> str:
        where = f"{self.target}.{self.field}" if self.field else self.target
        values = ""
        if self.current is not None or self.desired is not None:
            values = f": {self.current!r} -> {self.desired!r}"
        why = f" ({self.reason})" if self.reason else ""
        return f"{self.action:<13} {where}{values}{why}"


@dataclass
class OpResult:
    """What one apply operation did: ``changed``, ``ok`` (nothing to do; ``reason`` says why)
    or ``failed``. ``duration_s`` is wall-clock seconds."""

    name: str
    status: Status
    reason: str = ""
    duration_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return self.status == "changed"

    def __str__(self) -> str:
        why = f": {self.reason}" if self.reason else ""
        return f"{self.status}{why} [{self.name}, {self.duration_s:.1f}s]"
