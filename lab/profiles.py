"""GPU profiles of the embedded lab: the one place that says what "hardware" the lab pretends to have.

A profile drives three sides at once:

- the **PVE side**: the devices ``GET /nodes/{node}/hardware/pci`` lists (with ``iommugroup``),
  fed to :class:`lab.gpupve.GpuFakePve` as ``profile=Profile.pve_profile()``;
- the **guest hardware**: :meth:`Profile.guest_hw` is the JSON the hypervisor hands qemu as
  ``-fw_cfg name=opt/lab/gpu,file=...``; the guest reads it from
  ``/sys/firmware/qemu_fw_cfg/by_name/opt/lab/gpu/raw`` and the fake programs (nvidia-smi,
  ubuntu-drivers, the kernel-module loader, vLLM, Ollama, the lspci shim) act on it;
- the **package behaviour**: which driver branches the lab apt repository publishes and whether
  their post-installation script fails like a DKMS build failure (:attr:`Profile.driver_install_fails`).

Facts and their sources (see ``../shared/DESIGN.md`` §4 and ``../shared/corpus/``):

- RTX 5060 Ti: PCI ``10de:2d04`` (audio ``10de:22eb``), rev a1, GB206 Blackwell, compute
  capability 12.0, ``16311MiB`` total (corpus ``nvidia-smi_*_rtx5060ti*``, ``lspci-nn*``).
- Subsystem ``1043:8a11`` (ASUS): from the ``modalias`` of corpus
  ``ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt``; the guest-side PCI path
  ``/sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0`` is from the same capture.
- IOMMU group 14: corpus ``lspci-nn_rtx5060ti_proxmox_and_iommu.txt``.
- Idle table values (fan 0 %, 30C, P5, 19W / 180W, Persistence-M On): corpus
  ``nvidia-smi_rtx5060ti_595.71.05_full_table.txt``; the baseline ``15 MiB`` used with nothing
  running: corpus ``nvidia-smi_query-gpu_csv_rtx5060ti.txt`` (b).
- Driver branch 570 (closed + open) is what ``ubuntu-drivers devices`` offers in the corpus capture;
  ``570.195.03`` is a real NVIDIA 570 release (Linux x64, Sept 2025) reporting ``CUDA Version: 12.8``.
- SYNTHESISED (no capture exists): the GPU UUID, the VBIOS version, the serial.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from provisioners.errors import DeployError

__all__ = ["Profile", "PROFILES", "DEFAULT_PROFILE", "get_profile", "RTX5060TI", "DRIVER_VERSIONS", "CUDA_VERSIONS"]

DEFAULT_PROFILE = "rtx5060ti"
#: guest hardware JSON schema version (bump on incompatible changes of :meth:`Profile.guest_hw`)
HW_SCHEMA = 1

#: driver branch -> full version published in the lab apt repository. 570.195.03: real NVIDIA
#: release; 580.95.05 and 595.71.05 appear in the corpus (nvidia-smi csv (c) and the full table).
DRIVER_VERSIONS: dict[int, str] = {570: "570.195.03", 580: "580.95.05", 595: "595.71.05"}
#: driver branch -> "CUDA Version" its nvidia-smi prints (NVIDIA CUDA toolkit release notes,
#: table 3 "CUDA Toolkit and Corresponding Driver Versions"; 595 -> 13.2 from the corpus table).
CUDA_VERSIONS: dict[int, str] = {570: "12.8", 580: "13.0", 595: "13.2"}

#: The lab GPU. Keys are what the fake programs read from the guest hardware JSON.
RTX5060TI: dict[str, Any] = {
    "pci_address": "0000:01:00.0",
    "sysfs_path": "/sys/devices/pci0000:00/0000:00:01.1/0000:01:00.0",
    "vendor_id": "10de",
    "device_id": "2d04",
    "audio_device_id": "22eb",
    "subsystem_vendor_id": "1043",
    "subsystem_device_id": "8a11",
    "subsystem_vendor_name": "ASUSTeK Computer Inc.",
    "revision": "a1",
    "class_id": "0300",
    "lspci_vendor": "NVIDIA Corporation",
    "lspci_name": "GB206 [GeForce RTX 5060 Ti]",
    "lspci_audio_name": "GB206 High Definition Audio Controller",
    "name": "NVIDIA GeForce RTX 5060 Ti",
    "brand": "GeForce",
    "architecture": "Blackwell",
    "compute_cap": "12.0",
    "requires_open_module": True,
    "min_driver_branch": 570,
    "memory_total_mib": 16311,
    "memory_reserved_mib": 473,
    "memory_baseline_used_mib": 15,
    "iommu_group": 14,
    # nvidia-smi table idle values (corpus full table)
    "fan": "0%",
    "temp_c": 30,
    "perf": "P5",
    "power_draw_w": 19,
    "power_cap_w": 180,
    "persistence": "On",
    "display_active": "On",
    "ecc": "N/A",
    "compute_mode": "Default",
    "mig": "N/A",
    # SYNTHESISED identity values (no capture of these for this card exists)
    "uuid": "GPU-5c1d2e3f-4a5b-6c7d-8e9f-0a1b2c3d4e5f",
    "vbios_version": "98.06.1F.00.9A",
    "serial": "N/A",
    "minor_number": 0,
}


@dataclass(frozen=True)
class Profile:
    """One GPU profile.

    Attributes:
        name: profile name (``rtx5060ti``, ``secure-boot``, ``driver-install-fails``, ``no-gpu``).
        description: one line for ``python -m lab status``.
        gpu: the GPU facts (see :data:`RTX5060TI`) or ``None`` when the node has no NVIDIA GPU.
        secure_boot: the guest firmware enforces module signatures: the unsigned DKMS module is
            rejected at load (``Key was rejected by service``).
        driver_install_fails: the published ``nvidia-dkms-*`` packages fail in postinst like a
            DKMS build failure (make.log written, dpkg leaves the package half-configured).
        driver_branches: branches the lab apt repository publishes (closed and ``-open``).
        ubuntu_drivers: ``(package, origin, recommended)`` in the order ``ubuntu-drivers devices``
            prints them (source: corpus capture for the RTX 5060 Ti, which RECOMMENDS the closed 570).
        iommu: the PVE node has IOMMU on (``iommugroup`` >= 0).
    """

    name: str
    description: str
    gpu: dict[str, Any] | None
    secure_boot: bool = False
    driver_install_fails: bool = False
    driver_branches: tuple[int, ...] = (570,)
    ubuntu_drivers: tuple[tuple[str, str, bool], ...] = (
        ("nvidia-driver-570", "third-party non-free", True),
        ("nvidia-driver-570-open", "third-party non-free", False),
        ("xserver-xorg-video-nouveau", "distro free builtin", False),
    )
    iommu: bool = True

    @property
    def has_gpu(self) -> bool:
        """True when the node (and, passed through, the guest) has the NVIDIA GPU."""
        return self.gpu is not None

    @property
    def free_mib(self) -> int:
        """VRAM free with no process running (MiB): total minus the driver's baseline use; 0 without GPU."""
        if not self.gpu:
            return 0
        return int(self.gpu["memory_total_mib"]) - int(self.gpu["memory_baseline_used_mib"])

    def pve_pci_devices(self) -> list[dict[str, Any]]:
        """Entries of ``GET /nodes/{node}/hardware/pci`` for this profile (PVE's schema, fresh copies).

        Reuses :func:`lab.gpupve.pci_devices_for_profile` and sets the GPU's subsystem ids to the
        ones the guest sees (ASUS ``1043:8a11``, see module docstring), so host and guest agree.
        """
        from lab.gpupve import pci_devices_for_profile

        devices = pci_devices_for_profile("no-gpu" if not self.has_gpu else "rtx5060ti")
        for dev in devices:
            if self.gpu and dev.get("vendor") == "0x" + self.gpu["vendor_id"]:
                dev["subsystem_vendor"] = "0x" + self.gpu["subsystem_vendor_id"]
                dev["subsystem_vendor_name"] = self.gpu["subsystem_vendor_name"]
                dev["subsystem_device"] = "0x" + self.gpu["subsystem_device_id"]
                dev["iommugroup"] = int(self.gpu["iommu_group"])
            if not self.iommu:
                dev["iommugroup"] = -1
        return devices

    def pve_profile(self) -> dict[str, Any]:
        """The ``profile=`` argument of :class:`lab.gpupve.GpuFakePve`: ``{"name", "pci_devices", "iommu"}``."""
        return {"name": self.name, "pci_devices": self.pve_pci_devices(), "iommu": self.iommu}

    def guest_hw(self) -> dict[str, Any]:
        """The guest hardware JSON (fw_cfg ``opt/lab/gpu``).

        Shape: ``{"schema": 1, "profile": str, "secure_boot": bool, "gpus": [gpu facts...],
        "ubuntu_drivers": [[package, origin, recommended], ...]}``. Memory values are MiB.
        """
        return {
            "schema": HW_SCHEMA,
            "profile": self.name,
            "secure_boot": self.secure_boot,
            "gpus": [copy.deepcopy(self.gpu)] if self.gpu else [],
            "ubuntu_drivers": [list(t) for t in self.ubuntu_drivers] if self.gpu else [],
        }

    def guest_hw_json(self) -> str:
        """:meth:`guest_hw` as compact, key-sorted JSON text (stable bytes for the fw_cfg file)."""
        return json.dumps(self.guest_hw(), sort_keys=True, separators=(",", ":")) + "\n"


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile("rtx5060ti", "healthy RTX 5060 Ti; ubuntu-drivers recommends the closed 570, only -open works",
                gpu=copy.deepcopy(RTX5060TI)),
        Profile("secure-boot", "RTX 5060 Ti with Secure Boot: the unsigned DKMS module is rejected at load",
                gpu=copy.deepcopy(RTX5060TI), secure_boot=True),
        Profile("driver-install-fails", "RTX 5060 Ti; the driver package's DKMS build fails in postinst",
                gpu=copy.deepcopy(RTX5060TI), driver_install_fails=True),
        Profile("no-gpu", "no NVIDIA GPU on the node", gpu=None),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name``.

    Raises:
        DeployError: unknown name (lists the known ones).
    """
    try:
        return PROFILES[name]
    except KeyError:
        raise DeployError(
            what=f"unknown lab GPU profile {name!r}",
            cause=f"the lab knows: {', '.join(sorted(PROFILES))}",
            remedy="pick one of those (e.g. `python -m lab up --profile rtx5060ti`)",
        ) from None
