"""Parse ``nvidia-smi`` output: ``--query-gpu ... --format=csv``, the default table, ``-q -x``
XML, and its failure messages.

Units: every memory value returned is an ``int`` in **MiB** (nvidia-smi prints ``16311MiB`` /
``16311 MiB``; MiB = 2**20 bytes). Percentages are ``int`` percent. Versions stay strings
(``"595.71.05"``). Formats checked against real outputs in ``tests/fixtures/corpus/nvidia-smi_*``
and NVIDIA's ``nvidia-smi --help-query-gpu``.
"""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NvidiaSmiTable", "parse_query_csv", "parse_table", "parse_xml", "classify_failure",
           "FAILURE_KINDS", "failure_line", "nvml_library_version"]

_NA = {"", "N/A", "[N/A]", "[Not Supported]", "Not Supported", "Not Found", "[Unknown Error]"}
_UNIT_VALUE = re.compile(r"^(?P<num>-?\d+(?:\.\d+)?)\s*(?P<unit>MiB|%|W|C|MHz)$")
_HEADER_CELL = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z0-9_]+)*(?:\s*\[(?P<unit>[^\]]+)\])?$")
_QUERY_ARG = re.compile(r"--query-gpu[= ](?P<fields>[\w.,]+)")
_INT_FIELDS = {"index", "count", "pcie.link.gen.current", "pcie.link.width.current"}


@dataclass
class NvidiaSmiTable:
    """What ``nvidia-smi`` (table) or ``nvidia-smi -q -x`` says.

    Attributes:
        driver_version: e.g. ``"595.71.05"``; ``None`` if absent.
        cuda_version: the highest CUDA version the *driver* supports (``"13.2"``), not the
            installed toolkit; ``None`` if absent or ``Not Found``.
        gpus: one dict per GPU with at least ``index`` (int), ``name``, ``bus_id``
            (``"00000000:01:00.0"``), ``memory_used_mib``, ``memory_total_mib`` (int MiB or None);
            the table adds ``persistence``, ``fan_percent``, ``temp_c``, ``perf``, ``power``,
            ``util_percent``, ``compute_mode``; the XML adds ``pci_id`` (``"10de:1b81"``),
            ``architecture``, ``uuid``, ``memory_free_mib``.
        processes: table/XML process rows: ``gpu`` (int), ``pid`` (int), ``type``, ``name``,
            ``used_mib`` (int MiB or None).
        smi_version: the ``NVIDIA-SMI x.y.z`` field of the table, else ``None``.
    """

    driver_version: str | None = None
    cuda_version: str | None = None
    gpus: list[dict[str, Any]] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    smi_version: str | None = None


def _value(raw: str, field_name: str = "", unit: str | None = None) -> Any:
    text = raw.strip()
    if text in _NA:
        return None
    m = _UNIT_VALUE.match(text)
    if m:
        num = m.group("num")
        return int(float(num)) if m.group("unit") in ("MiB", "%") or "." not in num else float(num)
    if unit in ("MiB", "%") and re.fullmatch(r"-?\d+", text):
        return int(text)
    if field_name in _INT_FIELDS and text.isdigit():
        return int(text)
    return text


def _is_header(cells: list[str]) -> bool:
    return bool(cells) and all(_HEADER_CELL.match(c.strip()) for c in cells)


def parse_query_csv(text: str, fields: list[str] | None = None) -> list[dict[str, Any]]:
    """Parse ``nvidia-smi --query-gpu=F1,F2 --format=csv[,noheader][,nounits]`` output.

    Args:
        text: the output; ``$ `` prompt lines are skipped (a prompt line carrying
            ``--query-gpu=...`` supplies the field names for ``noheader`` output).
        fields: field names for ``noheader`` output. A header line, when present, wins.

    Returns:
        One dict per GPU row, keyed by field name without unit (``"memory.total"``). Memory is
        ``int`` MiB (``"16311 MiB"`` -> ``16311``; with ``nounits`` the header's ``[MiB]``
        gives the unit), percentages ``int``, ``index`` ``int``, ``N/A`` -> ``None``, anything
        else the stripped string. Without header or fields, keys are ``"col0"``, ``"col1"``...
    """
    names: list[str] | None = list(fields) if fields else None
    units: list[str | None] = [None] * len(names) if names else []
    rows: list[dict[str, Any]] = []
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("$") or line.startswith("#"):
            q = _QUERY_ARG.search(line)
            if q and not fields:
                names = q.group("fields").split(",")
                units = [None] * len(names)
            continue
        cells = [c.strip() for c in line.split(",")]
        if _is_header(cells):
            names, units = [], []
            for c in cells:
                m = _HEADER_CELL.match(c)
                names.append(c.split("[")[0].strip())
                units.append(m.group("unit") if m else None)
            continue
        if "," not in line and names and len(names) > 1:
            continue  # a stray non-CSV line (error text, note)
        keys = names if names and len(names) == len(cells) else [f"col{i}" for i in range(len(cells))]
        unit_list = units if names and len(names) == len(cells) else [None] * len(cells)
        rows.append({k: _value(v, k, u) for k, v, u in zip(keys, cells, unit_list)})
    return rows


_TABLE_HEADER = re.compile(
    r"NVIDIA-SMI\s+(?P<smi>\S+)\s+Driver Version:\s+(?P<driver>\S+)\s+CUDA Version:\s+(?P<cuda>[^\s|]+)")
_GPU_LINE1 = re.compile(
    r"^\|\s*(?P<index>\d+)\s+(?P<name>.+?)\s+(?P<persist>On|Off)\s+\|\s*(?P<bus>[0-9A-Fa-f]{4,8}:[0-9A-Fa-f]{2}:"
    r"[0-9A-Fa-f]{2}\.\d)\s+(?P<disp>On|Off)\s+\|\s*(?P<ecc>.*?)\s*\|\s*$")
_GPU_LINE2 = re.compile(
    r"^\|\s*(?P<fan>\d+%|N/A)\s+(?P<temp>\d+C|N/A)\s+(?P<perf>P\d+|N/A)\s+(?P<power>.*?)\s*\|\s*"
    r"(?P<used>\d+)MiB\s*/\s*(?P<total>\d+)MiB\s*\|\s*(?P<util>\d+%|N/A)\s+(?P<cmode>.*?)\s*\|\s*$")
_PROC_LINE = re.compile(
    r"^\|\s*(?P<gpu>\d+)\s+(?P<gi>\S+)\s+(?P<ci>\S+)\s+(?P<pid>\d+)\s+(?P<type>[CGM+]+)\s+(?P<name>.+?)\s+"
    r"(?P<mem>\d+MiB|N/A)\s*\|\s*$")


def parse_table(text: str) -> NvidiaSmiTable:
    """Parse the default ``nvidia-smi`` table (driver 5xx+ layout).

    Returns a :class:`NvidiaSmiTable`; ``driver_version`` is ``None`` and ``gpus`` empty when
    the text holds no table (e.g. a failure message - see :func:`classify_failure`)."""
    table = NvidiaSmiTable()
    pending: dict[str, Any] | None = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        hdr = _TABLE_HEADER.search(line)
        if hdr:
            table.smi_version, table.driver_version = hdr.group("smi"), hdr.group("driver")
            table.cuda_version = None if hdr.group("cuda") in _NA else hdr.group("cuda")
            continue
        m1 = _GPU_LINE1.match(line)
        if m1:
            pending = {"index": int(m1.group("index")), "name": m1.group("name"),
                       "persistence": m1.group("persist"), "bus_id": m1.group("bus"),
                       "display_active": m1.group("disp"), "ecc": _value(m1.group("ecc")),
                       "memory_used_mib": None, "memory_total_mib": None}
            table.gpus.append(pending)
            continue
        m2 = _GPU_LINE2.match(line)
        if m2 and pending is not None:
            pending.update({
                "fan_percent": _value(m2.group("fan").replace("%", " %")),
                "temp_c": _value(m2.group("temp").replace("C", " C")),
                "perf": m2.group("perf"), "power": m2.group("power"),
                "memory_used_mib": int(m2.group("used")), "memory_total_mib": int(m2.group("total")),
                "util_percent": _value(m2.group("util").replace("%", " %")),
                "compute_mode": m2.group("cmode"),
            })
            pending = None
            continue
        mp = _PROC_LINE.match(line)
        if mp:
            mem = mp.group("mem")
            table.processes.append({"gpu": int(mp.group("gpu")), "pid": int(mp.group("pid")),
                                    "type": mp.group("type"), "name": mp.group("name"),
                                    "used_mib": int(mem[:-3]) if mem.endswith("MiB") else None})
    return table


def _xml_text(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return None if value in _NA else value


def _mib(value: str | None) -> int | None:
    if value is None:
        return None
    m = re.match(r"^(\d+)\s*MiB$", value)
    return int(m.group(1)) if m else None


def parse_xml(text: str) -> NvidiaSmiTable:
    """Parse ``nvidia-smi -q -x`` (DTD ``nvsmi_device_v1x.dtd``).

    Anything before ``<?xml``/``<nvidia_smi_log`` (e.g. a ``# source:`` line, a prompt) is
    dropped. ``pci_id`` comes from ``<pci_device_id>1B8110DE</pci_device_id>`` (device id in the
    high 16 bits, vendor in the low) -> ``"10de:1b81"``.

    Raises:
        ValueError: the text holds no parsable ``nvidia_smi_log`` document.
    """
    start = min((i for i in (text.find("<?xml"), text.find("<nvidia_smi_log")) if i >= 0), default=-1)
    if start < 0:
        raise ValueError("no <nvidia_smi_log> document in the text")
    try:
        root = ET.fromstring(text[start:].strip())
    except ET.ParseError as exc:
        raise ValueError(f"nvidia-smi XML does not parse: {exc}") from exc
    table = NvidiaSmiTable(driver_version=_xml_text(root, "driver_version"),
                           cuda_version=_xml_text(root, "cuda_version"))
    for index, gpu in enumerate(root.findall("gpu")):
        dev = _xml_text(gpu, "pci/pci_device_id")
        pci_id = f"{dev[4:8].lower()}:{dev[0:4].lower()}" if dev and len(dev) == 8 else None
        minor = _xml_text(gpu, "minor_number")
        table.gpus.append({
            "index": index,
            "minor_number": int(minor) if minor and minor.isdigit() else None,
            "name": _xml_text(gpu, "product_name"),
            "architecture": _xml_text(gpu, "product_architecture"),
            "bus_id": gpu.get("id") or _xml_text(gpu, "pci/pci_bus_id"),
            "pci_id": pci_id,
            "uuid": _xml_text(gpu, "uuid"),
            "vbios_version": _xml_text(gpu, "vbios_version"),
            "memory_total_mib": _mib(_xml_text(gpu, "fb_memory_usage/total")),
            "memory_used_mib": _mib(_xml_text(gpu, "fb_memory_usage/used")),
            "memory_free_mib": _mib(_xml_text(gpu, "fb_memory_usage/free")),
        })
        for proc in gpu.findall("processes/process_info"):
            pid = _xml_text(proc, "pid")
            table.processes.append({"gpu": index, "pid": int(pid) if pid and pid.isdigit() else None,
                                    "type": _xml_text(proc, "type"), "name": _xml_text(proc, "process_name"),
                                    "used_mib": _mib(_xml_text(proc, "used_memory"))})
    return table


#: classify_failure() results, with the nvidia-smi wording each stands for.
FAILURE_KINDS = {
    "driver-not-loaded": "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver",
    "no-devices": "No devices were found",
    "fell-off-bus": "Unable to determine the device handle for GPU ...: Unknown Error / GPU has fallen off the bus",
    "driver-library-mismatch": "Failed to initialize NVML: Driver/library version mismatch",
    "not-installed": "nvidia-smi: command not found",
}

_FAILURES = [
    ("driver-library-mismatch", re.compile(r"Driver/library version mismatch", re.I)),
    ("fell-off-bus", re.compile(r"Unable to determine the device handle for GPU|fallen off the bus", re.I)),
    ("driver-not-loaded", re.compile(r"couldn't communicate with the NVIDIA driver", re.I)),
    ("no-devices", re.compile(r"No devices were found", re.I)),
    ("not-installed", re.compile(r"nvidia-smi: (?:command )?not found", re.I)),
]


def classify_failure(text: str) -> str | None:
    """Name the nvidia-smi failure in ``text`` (one of :data:`FAILURE_KINDS`), or ``None`` when
    it shows none (a healthy table, CSV, or unrelated text). When several appear, the first
    kind in this order wins: driver-library-mismatch, fell-off-bus, driver-not-loaded,
    no-devices, not-installed."""
    for kind, pattern in _FAILURES:
        if pattern.search(text or ""):
            return kind
    return None


def failure_line(text: str, kind: str) -> str | None:
    """The first line of ``text`` that shows failure ``kind`` (see :data:`FAILURE_KINDS`),
    stripped, or ``None``."""
    pattern = dict(_FAILURES).get(kind)
    if pattern is None:
        return None
    return next((ln.strip() for ln in (text or "").splitlines() if pattern.search(ln)), None)


def nvml_library_version(text: str) -> str | None:
    """The ``NVML library version: 610.43`` printed after a version mismatch, else ``None``."""
    m = re.search(r"NVML library version:\s*(\S+)", text or "")
    return m.group(1) if m else None
