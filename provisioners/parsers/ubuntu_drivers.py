"""Parse ``ubuntu-drivers devices`` and ``ubuntu-drivers list`` output.

Formats (source: canonical/ubuntu-drivers-common ``ubuntu-drivers`` script, and the real
outputs in ``tests/fixtures/corpus/ubuntu-drivers-*``)::

    == /sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0 ==
    modalias : pci:v000010DEd00002D04sv00001043sd00008A11bc03sc00i00
    vendor   : NVIDIA Corporation
    model    : GK208M [GeForce GT 740M]          (optional: only when pci.ids knows the device)
    manual_install: True                          (optional)
    driver   : nvidia-driver-570 - third-party non-free recommended
    driver   : xserver-xorg-video-nouveau - distro free builtin

    nvidia-driver-575-open, (kernel modules provided by linux-modules-nvidia-575-open-generic-hwe-24.04)

Both parsers are pure and tolerant: stderr noise (``udevadm hwdb is deprecated ...``), shell
prompt lines (``$ ...``), blank and unrecognised lines are skipped, never raised on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["DriverOption", "DriverDevice", "parse_devices", "parse_list", "parse_package_name",
           "recommended"]

_PKG_RE = re.compile(r"^nvidia-(?:driver-)?(?P<branch>\d+)(?P<rest>(?:-[a-z0-9]+)*)$")
_DEVICE_HDR = re.compile(r"^\s*==\s*(?P<path>\S+)\s*==\s*$")
_KV = re.compile(r"^\s*(?P<key>modalias|vendor|model|manual_install|driver)\s*:\s*(?P<value>.*?)\s*$")
_DRIVER_VALUE = re.compile(r"^(?P<package>\S+)\s+-\s+(?P<flags>.*)$")
_LIST_LINE = re.compile(
    r"^\s*(?P<package>(?:nvidia|xserver|linux)[\w.+-]*?)\s*(?:,\s*\(kernel modules provided by\s+"
    r"(?P<provider>[\w.+-]+?)(?:\.{3}.*)?\)?)?\s*$")
_MODALIAS = re.compile(r"^pci:v0000(?P<vendor>[0-9A-Fa-f]{4})d0000(?P<device>[0-9A-Fa-f]{4})", re.I)


@dataclass
class DriverOption:
    """One driver package offered by ubuntu-drivers.

    Attributes:
        package: Debian package name, e.g. ``"nvidia-driver-570-open"``.
        branch: NVIDIA driver branch from the name (``570``); ``None`` for non-NVIDIA packages
            such as ``xserver-xorg-video-nouveau``.
        open: the package uses NVIDIA's open kernel modules (``-open`` in the name).
        server: the ``-server`` (datacenter/ERD) flavour.
        source: ``"distro"`` or ``"third-party"`` (a PPA) as printed by ``devices``; ``None``
            from ``list`` (which does not print it).
        free: ``True`` for ``free``, ``False`` for ``non-free``, ``None`` when not printed.
        recommended: marked ``recommended`` (``devices``), or the output came from
            ``list --recommended``.
        builtin: marked ``builtin`` (the in-kernel nouveau entry).
        kernel_modules_provider: from ``list``: the package that ships the kernel modules
            (``linux-modules-nvidia-570-open-generic`` = prebuilt signed; ``nvidia-dkms-545`` =
            DKMS build, unsigned unless MOK-enrolled); ``None`` when not printed.
    """

    package: str
    branch: int | None = None
    open: bool = False
    server: bool = False
    source: str | None = None
    free: bool | None = None
    recommended: bool = False
    builtin: bool = False
    kernel_modules_provider: str | None = None


@dataclass
class DriverDevice:
    """One ``== /sys/devices/... ==`` block of ``ubuntu-drivers devices``.

    Attributes:
        sysfs_path: the sysfs path from the header line.
        modalias: the raw modalias (``pci:v000010DEd00002D04...``) or ``None``.
        pci_id: ``"vvvv:dddd"`` lower-case hex derived from the modalias (``"10de:2d04"``), or
            ``None`` when the modalias is missing or not PCI.
        vendor: the ``vendor`` line (e.g. ``"NVIDIA Corporation"``) or ``None``.
        model: the optional ``model`` line (e.g. ``"GA104 [GeForce RTX 3070 Ti]"``) or ``None``.
        manual_install: ``True`` when the block carries ``manual_install: True``.
        drivers: the ``driver`` lines in printed order.
    """

    sysfs_path: str
    modalias: str | None = None
    pci_id: str | None = None
    vendor: str | None = None
    model: str | None = None
    manual_install: bool = False
    drivers: list[DriverOption] = field(default_factory=list)

    @property
    def recommended(self) -> DriverOption | None:
        """The driver marked ``recommended``, or ``None``."""
        return recommended(self.drivers)


def parse_package_name(package: str) -> DriverOption:
    """Derive branch/open/server from a package name (``nvidia-driver-570-server-open`` ->
    branch 570, open, server; ``nvidia-340`` -> branch 340). Other names give branch ``None``."""
    m = _PKG_RE.match(package)
    if not m:
        return DriverOption(package=package)
    parts = set(filter(None, m.group("rest").split("-")))
    return DriverOption(package=package, branch=int(m.group("branch")), open="open" in parts,
                        server="server" in parts)


def _driver_from_devices_value(value: str) -> DriverOption | None:
    m = _DRIVER_VALUE.match(value)
    if not m:
        return None
    opt = parse_package_name(m.group("package"))
    words = m.group("flags").split()
    if "distro" in words:
        opt.source = "distro"
    elif "third-party" in words:
        opt.source = "third-party"
    if "non-free" in words:
        opt.free = False
    elif "free" in words:
        opt.free = True
    opt.recommended = "recommended" in words
    opt.builtin = "builtin" in words
    return opt


def pci_id_from_modalias(modalias: str | None) -> str | None:
    """``"pci:v000010DEd00002D04sv..."`` -> ``"10de:2d04"``; ``None`` if not a PCI modalias."""
    if not modalias:
        return None
    m = _MODALIAS.match(modalias.strip())
    if not m:
        return None
    return f"{m.group('vendor').lower()}:{m.group('device').lower()}"


def parse_devices(text: str) -> list[DriverDevice]:
    """Parse ``ubuntu-drivers devices`` output into one :class:`DriverDevice` per block.

    Lines before the first ``== ... ==`` header and unknown lines are ignored. Returns ``[]`` when
    there is no block (e.g. no third-party hardware, or an unrelated text)."""
    devices: list[DriverDevice] = []
    current: DriverDevice | None = None
    for raw in (text or "").splitlines():
        line = raw.rstrip()
        if not line.strip() or line.lstrip().startswith("$"):
            continue
        hdr = _DEVICE_HDR.match(line)
        if hdr:
            current = DriverDevice(sysfs_path=hdr.group("path"))
            devices.append(current)
            continue
        if current is None:
            continue
        kv = _KV.match(line)
        if not kv:
            continue
        key, value = kv.group("key"), kv.group("value")
        if key == "modalias":
            current.modalias = value
            current.pci_id = pci_id_from_modalias(value)
        elif key == "vendor":
            current.vendor = value or None
        elif key == "model":
            current.model = value or None
        elif key == "manual_install":
            current.manual_install = value.lower() == "true"
        elif key == "driver":
            opt = _driver_from_devices_value(value)
            if opt is not None:
                current.drivers.append(opt)
    return devices


def parse_list(text: str, recommended_only: bool = False) -> list[DriverOption]:
    """Parse ``ubuntu-drivers list`` (also ``--gpgpu``) output.

    Args:
        text: the captured output; prompt lines, notes and stderr noise are skipped.
        recommended_only: the output came from ``list --recommended``: every entry is then
            marked ``recommended`` (that command prints only the recommended package).

    Returns:
        :class:`DriverOption` per package line in printed order (``source``/``free`` are ``None``:
        ``list`` does not print them).
    """
    options: list[DriverOption] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("$") or line.startswith("#"):
            continue
        m = _LIST_LINE.match(line)
        if not m:
            continue
        opt = parse_package_name(m.group("package"))
        if opt.branch is None and not m.group("provider"):
            continue
        opt.kernel_modules_provider = m.group("provider")
        opt.recommended = recommended_only
        options.append(opt)
    return options


def recommended(options: list[DriverOption]) -> DriverOption | None:
    """The first option marked ``recommended``, or ``None``."""
    return next((o for o in options if o.recommended), None)
