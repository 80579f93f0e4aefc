"""Parse NVIDIA-related kernel log lines (``dmesg``, ``dmesg -T``, ``journalctl -k``).

NVRM messages often span several lines, the later ones indented and carrying only ``NVRM:``
(no timestamp); they are joined into one message before classification. Every wording below
comes from a real log in ``tests/fixtures/corpus/dmesg_*`` (sources cited there) unless noted.

Event kinds (``DmesgEvent.kind``):

==============================  ==================================================================
``module-loaded``               ``NVRM: loading NVIDIA UNIX [Open Kernel Module for ]x86_64 ... 580.105.08``
                                (``version``; ``open`` True for the open flavour, whose wording is
                                ``loading NVIDIA UNIX Open Kernel Module for x86_64  535.113.01  Release
                                Build`` in public logs)
``closed-module-on-open-only``  ``... (PCI ID: 10de:2c58) installed in this system requires use of
                                the NVIDIA open kernel modules.``
``unsupported-by-release``      ``... (PCI ID: 10de:2d04) installed in this system is not supported by
                                the NVIDIA 555.58.02 driver release.`` (``version`` = 555.58.02)
``gsp-unsupported``             ``... is not supported by open nvidia.ko because it does not include the
                                required GPU System Processor (GSP).``
``already-bound``               ``NVRM: GPU 0000:01:00.0 is already bound to vfio-pci.``
``probe-not-called``            ``The NVIDIA probe routine was not called for 1 device(s).``
                                (``conflicting_driver``: ``vfio-pci`` from a preceding already-bound
                                line, or ``nouveau`` from the older "a driver such as: nouveau" text)
``rm-init-adapter-failed``      ``RmInitAdapter failed! (0x22:0x56:884)`` / ``rm_init_adapter failed``
``probe-failed``                ``probe with driver nvidia failed with error -1`` / ``probe of ... failed``
``no-devices-probed``           ``No NVIDIA devices probed.`` / ``None of the NVIDIA devices were initialized.``
``secure-boot-rejected``        ``Key was rejected by service`` (modprobe/insmod), ``Loading of unsigned
                                module is rejected``, ``Lockdown: ...: unsigned module loading is
                                restricted`` (kernel lockdown under Secure Boot; kernel_lockdown(7))
``fell-off-bus``                ``GPU has fallen off the bus`` (Xid 79; NVIDIA Xid catalog)
``benign``                      ``module verification failed: signature and/or required key missing -
                                tainting kernel``, ``loading out-of-tree module taints kernel``,
                                ``module license ... taints kernel``, ``LTR ... disabled``,
                                ``Nvlink Core is being initialized`` - informational, never a finding
==============================  ==================================================================
"""
from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DmesgEvent", "parse", "messages"]

_TS = re.compile(
    r"^\s*(?:\[\s*(?P<mono>\d+\.\d+)\]|\[(?P<wall>[A-Z][a-z]{2} [A-Z][a-z]{2}\s+\d+ [\d:]+ \d{4})\]"
    r"|(?P<journal>[A-Z][a-z]{2}\s+\d+ [\d:]+) \S+ kernel:)\s?")
_CONT = re.compile(r"^\s+NVRM:\s?(?P<text>.*)$")
_PCI = re.compile(r"PCI ID:\s*(?P<id>[0-9a-fA-F]{4}:[0-9a-fA-F]{4})")
_BUS = re.compile(r"\b(?P<bus>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\b")

_SUCH_AS = re.compile(r"a driver such as:\s*(?:NVRM:\s*)?(?P<first>[\w-]+)")

_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("module-loaded", re.compile(
        r"NVRM: loading NVIDIA UNIX (?P<open>Open Kernel Module for )?\S+(?: Kernel Module)?\s+"
        r"(?P<version>\d+\.\d+(?:\.\d+)?)")),
    ("closed-module-on-open-only", re.compile(r"requires use of the NVIDIA open kernel modules", re.I)),
    ("unsupported-by-release", re.compile(
        r"is not supported by the\s+NVRM:\s*NVIDIA (?P<version>\d+\.\d+(?:\.\d+)?) driver release"
        r"|is not supported by the NVIDIA (?P<version2>\d+\.\d+(?:\.\d+)?) driver release", re.I)),
    ("gsp-unsupported", re.compile(r"not supported by open\s+(?:NVRM:\s*)?nvidia\.ko because it does not "
                                   r"include the required GPU", re.I)),
    ("already-bound", re.compile(r"is already bound to (?P<driver>[\w-]+)")),
    ("probe-not-called", re.compile(r"The NVIDIA probe routine was not called")),
    ("rm-init-adapter-failed", re.compile(r"RmInitAdapter failed|rm_init_adapter failed")),
    ("probe-failed", re.compile(r"probe (?:with driver nvidia |of \S+ )failed with error|"
                                r"The NVIDIA probe routine failed")),
    ("no-devices-probed", re.compile(r"No NVIDIA devices probed|None of the NVIDIA devices were initialized")),
    ("secure-boot-rejected", re.compile(r"Key was rejected by service|Loading of unsigned module is rejected|"
                                        r"unsigned module loading is restricted", re.I)),
    ("fell-off-bus", re.compile(r"fallen off the bus", re.I)),
    ("benign", re.compile(r"module verification failed: signature and/or required key missing|"
                          r"out-of-tree module taints kernel|module license .* taints kernel|"
                          r"\bLTR\b.*\bdisabled\b|Nvlink Core is being initialized", re.I)),
]


@dataclass
class DmesgEvent:
    """One classified kernel message.

    Attributes:
        kind: see the module docstring.
        text: the message, continuation lines joined with a space (without their repeated
            ``NVRM:`` prefix), timestamp removed.
        timestamp: the printed timestamp (``"5.559842"``, ``"Sat Jun 27 19:59:02 2026"``) or None.
        pci_id: ``"10de:2c58"`` when the message names one, else ``None``.
        bus_id: ``"0000:02:00.0"`` when the message names one, else ``None``.
        version: driver version for ``module-loaded`` / ``unsupported-by-release``.
        open: for ``module-loaded``: True = open kernel module, False = proprietary.
        conflicting_driver: for ``probe-not-called`` / ``already-bound``: ``"vfio-pci"``,
            ``"nouveau"``... or ``None`` if the log does not say.
    """

    kind: str
    text: str
    timestamp: str | None = None
    pci_id: str | None = None
    bus_id: str | None = None
    version: str | None = None
    open: bool | None = None
    conflicting_driver: str | None = None

    @property
    def benign(self) -> bool:
        """True for informational lines that must never produce a finding."""
        return self.kind == "benign"


def messages(text: str) -> list[tuple[str | None, str]]:
    """Split a kernel log into ``(timestamp, message)`` pairs, joining indented ``NVRM:``
    continuation lines to the message before them (their ``NVRM:`` prefix dropped, so the
    message reads as one sentence). Prompt (``$ ``) and blank lines are dropped;
    lines without a timestamp are kept as their own message (grep output, modprobe errors)."""
    out: list[tuple[str | None, str]] = []
    for raw in (text or "").splitlines():
        if not raw.strip() or raw.lstrip().startswith("$"):
            continue
        cont = _CONT.match(raw)
        if not cont and out and out[-1][0] is not None and not _TS.match(raw) \
                and raw.startswith("NVRM:"):
            # a multi-line record printed without the usual indent, after a timestamped line
            cont = _CONT.match(" " + raw)
        if cont and out and not _TS.match(raw):
            ts, prev = out[-1]
            out[-1] = (ts, f"{prev} {cont.group('text').strip()}")
            continue
        m = _TS.match(raw)
        if m:
            ts = m.group("mono") or m.group("wall") or m.group("journal")
            out.append((ts, raw[m.end():].strip()))
        else:
            out.append((None, raw.strip()))
    return out


def parse(text: str) -> list[DmesgEvent]:
    """Classify the NVIDIA-relevant messages of a kernel log (see module docstring).

    Returns events in log order; messages matching no rule are left out."""
    events: list[DmesgEvent] = []
    last_bound: str | None = None
    msgs = messages(text)
    for i, (ts, msg) in enumerate(msgs):
        for kind, pattern in _RULES:
            m = pattern.search(msg)
            if not m:
                continue
            pci = _PCI.search(msg)
            bus = _BUS.search(msg)
            ev = DmesgEvent(kind=kind, text=msg, timestamp=ts,
                            pci_id=pci.group("id").lower() if pci else None,
                            bus_id=bus.group("bus").lower() if bus else None)
            groups = m.groupdict()
            if kind == "module-loaded":
                ev.version, ev.open = groups["version"], bool(groups["open"])
            elif kind == "unsupported-by-release":
                ev.version = groups.get("version") or groups.get("version2")
            elif kind == "already-bound":
                ev.conflicting_driver = last_bound = groups["driver"]
            elif kind == "probe-not-called":
                # older drivers name candidates in the next message instead of an already-bound line
                nearby = " ".join(m2 for _, m2 in msgs[i:i + 3])
                such_as = _SUCH_AS.search(nearby)
                if last_bound:
                    ev.conflicting_driver, last_bound = last_bound, None
                elif such_as:
                    ev.conflicting_driver = such_as.group("first")
            events.append(ev)
            break
    return events
