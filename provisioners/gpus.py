"""GPU knowledge by PCI id: what a card needs (open modules, driver branch, CUDA version).

The table lives in ``provisioners/data/gpus.yml``; every row cites its sources there (NVIDIA's
open-gpu-kernel-modules README "Compatible GPUs" table, NVIDIA's CUDA compute-capability pages,
real outputs in the corpus). Unknown values are ``None`` - callers must not guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

__all__ = ["GpuInfo", "gpu_info", "all_gpus", "normalize_pci_id", "DATA_FILE"]

DATA_FILE = Path(__file__).with_name("data") / "gpus.yml"


@dataclass(frozen=True)
class GpuInfo:
    """One GPU model.

    Attributes:
        pci_id: ``"10de:2d04"``.
        name: ``"NVIDIA GeForce RTX 5060 Ti"``.
        architecture: ``"Blackwell"``, ``"Ada Lovelace"``, ``"Ampere"``, ``"Turing"``, ``"Pascal"``, ``"Kepler"``.
        compute_capability: ``"12.0"`` or ``None`` (sources disagree / unknown).
        open_modules_only: only NVIDIA's open kernel modules drive it (Blackwell).
        open_modules_supported: the open modules can drive it (Turing or later).
        min_driver_branch: lowest driver branch for the architecture (``570``), or ``None``.
        min_cuda: lowest CUDA toolkit with native code for it (``"12.8"``), or ``None``.
        sources: source keys (see ``gpus.yml`` ``sources``).
    """

    pci_id: str
    name: str
    architecture: str
    compute_capability: str | None
    open_modules_only: bool
    open_modules_supported: bool | None
    min_driver_branch: int | None
    min_cuda: str | None
    sources: tuple[str, ...] = field(default_factory=tuple)

    @property
    def sm(self) -> str | None:
        """``"sm_120"`` for compute capability 12.0, else ``None``."""
        if not self.compute_capability:
            return None
        major, minor = self.compute_capability.split(".")
        return f"sm_{major}{minor}"


def normalize_pci_id(value: str | None) -> str | None:
    """Accept ``"10de:2d04"``, ``"10DE:2D04"``, ``"2d04"`` (NVIDIA assumed), ``"0x2d04"``, or
    nvidia-smi's ``"2D0410DE"``; return ``"10de:2d04"`` or ``None`` when unrecognised."""
    if not value:
        return None
    v = value.strip().lower()
    if m := re.fullmatch(r"([0-9a-f]{4}):([0-9a-f]{4})", v):
        return f"{m.group(1)}:{m.group(2)}"
    if m := re.fullmatch(r"(?:0x)?([0-9a-f]{4})", v):
        return f"10de:{m.group(1)}"
    if m := re.fullmatch(r"(?:0x)?([0-9a-f]{4})([0-9a-f]{4})", v):
        return f"{m.group(2)}:{m.group(1)}"
    return None


@lru_cache(maxsize=1)
def _table() -> dict[str, GpuInfo]:
    raw = yaml.safe_load(DATA_FILE.read_text(encoding="utf-8"))
    known_sources = set(raw.get("sources", {}))
    table: dict[str, GpuInfo] = {}
    for key, row in raw["gpus"].items():
        pci_id = normalize_pci_id(key)
        if pci_id is None:
            raise ValueError(f"{DATA_FILE}: bad PCI id key {key!r}")
        missing = [s for s in row.get("sources", []) if s not in known_sources]
        if missing or not row.get("sources"):
            raise ValueError(f"{DATA_FILE}: row {key} cites unknown or no sources: {missing}")
        cc = row.get("compute_capability")
        table[pci_id] = GpuInfo(
            pci_id=pci_id, name=row["name"], architecture=row["architecture"],
            compute_capability=str(cc) if cc is not None else None,
            open_modules_only=bool(row.get("open_modules_only", False)),
            open_modules_supported=row.get("open_modules_supported"),
            min_driver_branch=row.get("min_driver_branch"),
            min_cuda=str(row["min_cuda"]) if row.get("min_cuda") is not None else None,
            sources=tuple(row["sources"]))
    return table


def gpu_info(pci_id: str | None) -> GpuInfo | None:
    """Look a GPU up by PCI id (any form :func:`normalize_pci_id` accepts); ``None`` if the
    table does not know it (the caller then reports unknowns as ``None``)."""
    key = normalize_pci_id(pci_id)
    return _table().get(key) if key else None


def all_gpus() -> list[GpuInfo]:
    """Every row of the table, in file order."""
    return list(_table().values())
