"""Accumulates the GPUs and findings of one diagnosis (shared by the rule modules)."""
from __future__ import annotations

import re
from typing import Any

from provisioners.doctor.model import FINDINGS, Diagnosis, Finding, GpuSummary
from provisioners.gpus import all_gpus, gpu_info

# Findings that explain why nvidia-smi cannot talk to a GPU; with one of them present the
# generic driver-not-loaded finding adds nothing.
ROOT_CAUSES_OF_NO_DRIVER = {"closed-module-on-open-only-gpu", "driver-too-old-for-gpu",
                             "secure-boot-rejected-module", "gpu-fell-off-bus", "nouveau-or-vfio-bound",
                             "driver-library-mismatch", "open-module-unsupported-gpu",
                             "dkms-build-failed"}


def bus_of(value: str | None) -> str | None:
    """"01:00.0" from any bus form ("00000000:01:00.0", "0000:01:00.0", a sysfs path), else None."""
    if not value:
        return None
    m = re.search(r"([0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])$", value.strip())
    return m.group(1).lower() if m else None


def branch_of(version: str | None) -> int | None:
    """Driver branch (int) of a version string ("580.105.08" -> 580), else None."""
    m = re.match(r"(\d+)", version or "")
    return int(m.group(1)) if m else None


def cc_from_name(name: str | None) -> str | None:
    """Compute capability for a product name when every table row of that name agrees (NVIDIA's
    CUDA GPUs page lists capability by product name)."""
    if not name:
        return None
    ccs = {g.compute_capability for g in all_gpus() if g.name == name}
    return ccs.pop() if len(ccs) == 1 and None not in ccs else None


class Builder:
    """Accumulates GPUs and findings while reading the sections."""

    def __init__(self) -> None:
        self.gpus: list[GpuSummary] = []
        self.findings: dict[str, Finding] = {}
        self.order: list[str] = []

    # -- GPUs -----------------------------------------------------------------------------
    def gpu(self, *, bus: str | None = None, pci_id: str | None = None, name: str | None = None,
            name_rank: int = 99) -> GpuSummary:
        """The GPU record for this observation (merged by bus, then PCI id, then name; a lone GPU takes
        anonymous observations), created if new; fills ``bus``/``pci_id``/``name`` (lower ``name_rank``
        = better source: 0 nvidia-smi, 1 GPU table, 2 vLLM, 3 Ollama, 4 ubuntu-drivers, 5 lspci)."""
        bus = bus_of(bus)
        for g in self.gpus:
            if bus and g.bus == bus or pci_id and g.pci_id == pci_id and (not bus or not g.bus):
                break
        else:
            if not bus and not pci_id and len(self.gpus) == 1:
                g = self.gpus[0]
            elif not bus and name and (same := [x for x in self.gpus if x.name == name]):
                g = same[0]
            else:
                g = GpuSummary()
                self.gpus.append(g)
        if bus and not g.bus:
            g.bus = bus
        if pci_id and not g.pci_id:
            g.pci_id = pci_id
        if name and name_rank < g._name_rank:
            g.name, g._name_rank = name, name_rank
        return g

    def known(self, bus: str | None) -> GpuSummary | None:
        """The GPU already seen at ``bus``, else ``None``."""
        key = bus_of(bus)
        return next((g for g in self.gpus if key and g.bus == key), None)

    def add(self, fid: str, evidence: str, cause: str, remedy: str) -> None:
        """Add finding ``fid`` (see FINDINGS); a repeat only appends new evidence."""
        if fid in self.findings:
            f = self.findings[fid]
            if evidence and evidence not in f.evidence:
                f.evidence = f"{f.evidence}\n{evidence}"
            return
        self.findings[fid] = Finding(fid, FINDINGS[fid], evidence.strip(), cause, remedy)
        self.order.append(fid)

    def finish(self) -> Diagnosis:
        """Fill names/capabilities from the GPU table, drop driver-not-loaded when a root cause
        explains it, order errors first; return the :class:`Diagnosis`."""
        for g in self.gpus:
            info = gpu_info(g.pci_id)
            if info:
                if g._name_rank > 1:
                    g.name, g._name_rank = info.name, 1
                if info.compute_capability and not g.compute_capability:
                    g.compute_capability = info.compute_capability
            if not g.compute_capability:
                g.compute_capability = cc_from_name(g.name)
        if self.findings.keys() & ROOT_CAUSES_OF_NO_DRIVER and "driver-not-loaded" in self.findings:
            del self.findings["driver-not-loaded"]
            self.order.remove("driver-not-loaded")
        findings = [self.findings[i] for i in self.order]
        findings.sort(key=lambda f: 0 if f.severity == "error" else 1)
        return Diagnosis(gpus=self.gpus, findings=findings)

    def open_only_gpus(self) -> list[tuple[GpuSummary, Any]]:
        """``(GpuSummary, GpuInfo)`` for every GPU that needs the open kernel modules."""
        out = []
        for g in self.gpus:
            info = gpu_info(g.pci_id)
            if info and info.open_modules_only:
                out.append((g, info))
        return out


def open_install_remedy(branch: int | None, min_branch: int | None = None) -> str:
    """Remedy text: install the open flavour of a branch >= max(branch, min_branch, 570)."""
    b = max(x for x in (branch, min_branch, 570) if x is not None)
    return (f"install the open flavour of a supported branch, e.g. `sudo apt-get install "
            f"nvidia-driver-{b}-open` (or `sudo ubuntu-drivers install nvidia:{b}-open`), remove the "
            f"proprietary `nvidia-driver-{b}` package if installed, then reboot; check with "
            "`modinfo -F license nvidia` (open: Dual MIT/GPL)")
