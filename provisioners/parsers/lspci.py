"""Parse ``lspci -nn`` / ``lspci -nnk`` output, including IOMMU-group listings.

Accepted lines (source: pciutils ``lspci(8)``; real samples in
``tests/fixtures/corpus/lspci-*`` and ``dmesg_blackwell_closed_module_requires_open.txt``)::

    01:00.0 VGA compatible controller [0300]: NVIDIA Corporation GB206 [GeForce RTX 5060 Ti] [10de:2d04] (rev a1)
    \tSubsystem: Micro-Star International Co., Ltd. [MSI] Device [1462:5351]      (-k / -v)
    \tKernel driver in use: nvidia                                                (-k)
    \tKernel modules: nouveau, nvidia_drm, nvidia                                 (-k)
    IOMMU Group 14                                             (the usual IOMMU-group script)
        ├─01:00.0 VGA compatible controller [0300]: ...
    IOMMU Group 14 01:00.0 VGA compatible controller [0300]: ...   (one-line variant)

Match GPUs by the numeric ``vendor_device`` id: older pci.ids print ``NVIDIA Corporation Device``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["PciDevice", "parse", "nvidia_gpus"]

_DEVICE = re.compile(
    r"^(?P<addr>(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])\s+(?P<cls>[^\[]+?)\s*"
    r"\[(?P<clsid>[0-9a-fA-F]{4})\]:\s+(?P<name>.*?)\s*\[(?P<vd>[0-9a-fA-F]{4}:[0-9a-fA-F]{4})\]"
    r"(?:\s+\(rev\s+(?P<rev>[0-9a-fA-F]+)\))?.*$")
_GROUP = re.compile(r"^IOMMU [Gg]roup\s+(?P<group>\d+)\s*:?\s*(?P<rest>.*)$")
_TREE = re.compile(r"^[\s│├└─|`\-]+")
_SUBSYS = re.compile(r"^Subsystem:\s*(?P<text>.*?)(?:\s*\[(?P<id>[0-9a-fA-F]{4}:[0-9a-fA-F]{4})\])?\s*$")


@dataclass
class PciDevice:
    """One PCI function as lspci prints it.

    Attributes:
        address: ``"01:00.0"`` (or ``"0000:01:00.0"`` with ``-D``), as printed.
        class_name: ``"VGA compatible controller"``; class_id: ``"0300"``.
        vendor_device: ``"10de:2d04"`` lower-case.
        name: vendor and device text, e.g. ``"NVIDIA Corporation GB206 [GeForce RTX 5060 Ti]"``.
        rev: ``"a1"`` or ``None``.
        subsystem: the ``Subsystem:`` text (board vendor, e.g. ``"Micro-Star ... [MSI] Device"``)
            or ``None``; subsystem_id: ``"1462:5351"`` or ``None``.
        driver_in_use: ``Kernel driver in use`` (``"nvidia"``, ``"vfio-pci"``, ``"nouveau"``) or
            ``None`` (not printed: ``-k`` missing, or no driver bound).
        kernel_modules: ``Kernel modules`` list (may be empty).
        iommu_group: the IOMMU group number when the listing shows one, else ``None``.
    """

    address: str
    class_name: str
    class_id: str
    vendor_device: str
    name: str
    rev: str | None = None
    subsystem: str | None = None
    subsystem_id: str | None = None
    driver_in_use: str | None = None
    kernel_modules: list[str] = field(default_factory=list)
    iommu_group: int | None = None

    @property
    def vendor_id(self) -> str:
        """``"10de"``."""
        return self.vendor_device.split(":")[0]

    @property
    def device_id(self) -> str:
        """``"2d04"``."""
        return self.vendor_device.split(":")[1]

    @property
    def is_display(self) -> bool:
        """PCI base class 03 (display controller: VGA, 3D, other)."""
        return self.class_id.startswith("03")


def parse(text: str) -> list[PciDevice]:
    """Parse ``lspci -nn`` / ``-nnk`` / IOMMU-group listings into :class:`PciDevice` rows in
    printed order. Prompt lines, blank lines and lines that are neither a device nor a known
    detail line are ignored; output without ``-nn`` ids is not recognised (returns ``[]``)."""
    devices: list[PciDevice] = []
    current: PciDevice | None = None
    group: int | None = None
    for raw in (text or "").splitlines():
        if not raw.strip() or raw.lstrip().startswith("$"):
            continue
        line = _TREE.sub("", raw).strip() if _TREE.match(raw) else raw.strip()
        g = _GROUP.match(line)
        if g:
            group = int(g.group("group"))
            line = g.group("rest").strip()
            if not line:
                continue
        m = _DEVICE.match(line)
        if m:
            current = PciDevice(address=m.group("addr"), class_name=m.group("cls").strip(),
                                class_id=m.group("clsid").lower(), vendor_device=m.group("vd").lower(),
                                name=m.group("name"), rev=m.group("rev"), iommu_group=group)
            devices.append(current)
            continue
        if current is None:
            continue
        if line.startswith("Subsystem:"):
            s = _SUBSYS.match(line)
            if s:
                current.subsystem = s.group("text") or None
                current.subsystem_id = s.group("id").lower() if s.group("id") else None
        elif line.startswith("Kernel driver in use:"):
            current.driver_in_use = line.split(":", 1)[1].strip() or None
        elif line.startswith("Kernel modules:"):
            current.kernel_modules = [x.strip() for x in line.split(":", 1)[1].split(",") if x.strip()]
    return devices


def nvidia_gpus(devices: list[PciDevice]) -> list[PciDevice]:
    """The NVIDIA (vendor ``10de``) display-class functions among ``devices`` (not the HDMI
    audio function)."""
    return [d for d in devices if d.vendor_id == "10de" and d.is_display]
