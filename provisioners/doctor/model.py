"""Result shapes of the doctor: :class:`Finding`, :class:`GpuSummary`, :class:`Diagnosis`, and
the stable finding ids (:data:`FINDINGS`)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from provisioners.redact import redact

__all__ = ["Finding", "GpuSummary", "Diagnosis", "FINDINGS", "EXIT_FINDINGS"]

EXIT_FINDINGS = 3

#: finding id -> severity. Beyond the issue's list: ``open-module-unsupported-gpu`` (the open
#: nvidia.ko refusing a GPU without GSP, a real corpus case that none of the others names) and
#: ``dkms-build-failed`` (DKMS could not build the nvidia module: the most common driver-install
#: failure; wording from real transcripts, see lab/artefacts/debs.py).
FINDINGS: dict[str, str] = {
    "closed-module-on-open-only-gpu": "error",
    "driver-too-old-for-gpu": "error",
    "secure-boot-rejected-module": "error",
    "gpu-fell-off-bus": "error",
    "driver-library-mismatch": "error",
    "driver-not-loaded": "error",
    "nouveau-or-vfio-bound": "error",
    "cuda-too-old-for-gpu": "error",
    "torch-lacks-gpu-arch": "error",
    "triton-no-c-compiler": "error",
    "vllm-insufficient-free-vram": "error",
    "ollama-cpu-fallback": "warning",
    "iommu-missing": "error",
    "pci-device-busy": "error",
    "closed-driver-recommended": "warning",
    "open-module-unsupported-gpu": "error",
    "dkms-build-failed": "error",
}


@dataclass
class Finding:
    """One diagnosed problem.

    Attributes:
        id: stable id from :data:`FINDINGS`.
        severity: ``"error"`` or ``"warning"``.
        evidence: the verbatim line(s) that prove it (redacted on output).
        cause: why it happens, in plain words.
        remedy: what to do about it (commands where they are known).
    """

    id: str
    severity: str
    evidence: str
    cause: str
    remedy: str

    def __str__(self) -> str:
        return redact(f"{self.id} ({self.severity}): {self.cause}. Remedy: {self.remedy}")

    def to_dict(self) -> dict[str, str]:
        """``{"id", "severity", "evidence", "cause", "remedy"}`` (redacted)."""
        return {"id": self.id, "severity": self.severity, "evidence": redact(self.evidence),
                "cause": redact(self.cause), "remedy": redact(self.remedy)}


@dataclass
class GpuSummary:
    """What the captures say about one NVIDIA GPU; ``None`` = the captures do not say.

    Attributes:
        name: as the driver names it (nvidia-smi), else from the GPU table by PCI id, else Ollama's
            description, ubuntu-drivers ``model`` or lspci's text.
        pci_id: ``"10de:2d04"`` (lspci, ubuntu-drivers modalias, kernel log, nvidia-smi XML).
        memory_total_mib: total framebuffer in MiB (nvidia-smi only).
        driver_version: nvidia-smi's, else the kernel module's (dmesg/modinfo/proc).
        open_kernel_module: True = NVIDIA open kernel module (``Dual MIT/GPL``), False = proprietary.
        compute_capability: ``"12.0"`` from the GPU table (by PCI id, or by a product name that
            maps to one capability), nvidia-smi ``compute_cap``, Ollama or a torch sm_NN message.
        bus: ``"01:00.0"`` (internal key for merging; not part of the JSON).
    """

    name: str | None = None
    pci_id: str | None = None
    memory_total_mib: int | None = None
    driver_version: str | None = None
    open_kernel_module: bool | None = None
    compute_capability: str | None = None
    bus: str | None = None
    _name_rank: int = 99

    def to_dict(self) -> dict[str, Any]:
        """The six public fields (the JSON shape of the issue)."""
        return {"name": self.name, "pci_id": self.pci_id, "memory_total_mib": self.memory_total_mib,
                "driver_version": self.driver_version, "open_kernel_module": self.open_kernel_module,
                "compute_capability": self.compute_capability}


@dataclass
class Diagnosis:
    """Result of :func:`diagnose`: ``gpus`` (:class:`GpuSummary`) and ``findings``
    (:class:`Finding`, errors first, otherwise in the order met)."""

    gpus: list[GpuSummary] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def __str__(self) -> str:
        """The text report when there are findings, ``""`` otherwise (callers attach it only
        when non-empty)."""
        return self.format_text() if self.findings else ""

    @property
    def ids(self) -> list[str]:
        """The finding ids, in order."""
        return [f.id for f in self.findings]

    def to_dict(self) -> dict[str, Any]:
        """``{"gpus": [...], "findings": [...]}`` exactly as the issue specifies."""
        return {"gpus": [g.to_dict() for g in self.gpus], "findings": [f.to_dict() for f in self.findings]}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (redacted)."""
        return redact(json.dumps(self.to_dict(), indent=2))

    def format_text(self) -> str:
        """Human-readable report (redacted)."""
        lines: list[str] = []
        if self.gpus:
            lines.append("GPUs:")
            for g in self.gpus:
                mem = f"{g.memory_total_mib} MiB" if g.memory_total_mib is not None else "memory ?"
                module = {True: "open", False: "proprietary", None: "?"}[g.open_kernel_module]
                lines.append(f"  {g.name or 'unknown GPU'}  pci {g.pci_id or '?'}  {mem}  "
                             f"driver {g.driver_version or '?'}  kernel module {module}  "
                             f"compute capability {g.compute_capability or '?'}")
        else:
            lines.append("GPUs: none identified in the captures")
        if not self.findings:
            lines.append("No known problem found.")
        else:
            lines.append(f"Findings ({len(self.findings)}):")
            for f in self.findings:
                lines.append(f"  [{f.severity}] {f.id}")
                ev = f.evidence.splitlines()
                lines.append(f"    evidence: {ev[0] if ev else ''}")
                lines.extend(f"              {e}" for e in ev[1:])
                lines.append(f"    cause:    {f.cause}")
                lines.append(f"    remedy:   {f.remedy}")
        return redact("\n".join(lines))

    def to_evidence(self) -> dict[str, str]:
        """``{"doctor": text, "doctor.json": json}`` for a report attachment."""
        return {"doctor": self.format_text(), "doctor.json": self.to_json()}
