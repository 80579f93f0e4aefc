"""The shape every guest component shares (driver, cuda, vllm, ollama).

A component is check-then-act:

    facts = comp.facts(session)          # read-only probes, batched into few SSH round trips
    changes = comp.plan(facts)           # list[Change]; [] means nothing to do
    results = comp.apply(session, facts, changes)   # list[OpResult], each changed/ok(reason)
    checks = comp.verify(session)        # list[Check]; read-only

``session`` is a :class:`provisioners.remote.RemoteSession` (paramiko, one connection per
run). ``plan`` is pure (no I/O) so that it is unit-tested on corpus outputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from provisioners.results import Change, OpResult


@dataclass
class Check:
    """One verification: ``name`` (e.g. ``"nvidia-smi memory.total"``), ``passed``,
    ``expected`` / ``actual`` as shown to the operator, and ``evidence`` (the command output
    that proves it, attached to the report)."""

    name: str
    passed: bool
    expected: str = ""
    actual: str = ""
    evidence: str = ""


@dataclass
class Facts:
    """Read-only observations of one component: parsed values plus the raw outputs they came
    from (``raw``: probe name -> text) for evidence and diagnosis."""

    values: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, str] = field(default_factory=dict)


class Component(Protocol):
    """See module docstring. ``name`` is the short name used in plans and reports."""

    name: str

    def facts(self, session: Any) -> Facts: ...

    def plan(self, facts: Facts) -> list[Change]: ...

    def apply(self, session: Any, facts: Facts, changes: list[Change]) -> list[OpResult]: ...

    def verify(self, session: Any) -> list[Check]: ...


def vm_get(vm: Any, path: str, default: Any = None) -> Any:
    """The value at the dotted ``path`` (e.g. ``"stack.cuda.version"``) of a catalog VM, walking
    attributes or dict keys alike (so a :class:`~provisioners.catalog.VmSpec`, a plain dict or a
    test's ``SimpleNamespace`` all work); ``default`` when any step is missing or None."""
    cur = vm
    for part in path.split("."):
        if cur is None:
            return default
        cur = cur.get(part) if isinstance(cur, dict) else getattr(cur, part, None)
    return default if cur is None else cur
