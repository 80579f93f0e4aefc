"""``diagnose()``: read every capture section with its rule module, then the cross-capture checks."""
from __future__ import annotations

from typing import Any

from provisioners.doctor import driver_rules as drv
from provisioners.doctor import stack_rules as stk
from provisioners.doctor.builder import ROOT_CAUSES_OF_NO_DRIVER, Builder, branch_of, open_install_remedy
from provisioners.doctor.captures import sections
from provisioners.doctor.driver_rules import conflict_cause, conflict_remedy
from provisioners.doctor.model import Diagnosis

__all__ = ["diagnose"]
from provisioners.gpus import gpu_info


def diagnose(captures: dict[str, str]) -> Diagnosis:
    """Diagnose a host from its captures (pure; no I/O).

    Args:
        captures: capture name -> output text; names as in :func:`capture_kind` (unknown names are
            read only for their ``$ `` transcript sections). A whole pasted transcript can be passed
            under any name, e.g. ``{"transcript": text}``.

    Returns:
        :class:`Diagnosis` with the NVIDIA GPUs seen and the findings (none for healthy output).
    """
    b = Builder()
    facts: dict[str, Any] = {}
    # GPU identity first (lspci, ubuntu-drivers), so later evidence merges into the right GPU
    order = {"lspci": 0, "ubuntu-drivers": 1, "nvidia-smi": 2, "proc-driver": 2, "modinfo": 2,
             "dmesg": 3, "modprobe": 3}
    readers = {
        "lspci": lambda cmd, body: drv.read_lspci(b, body, facts),
        "ubuntu-drivers": lambda cmd, body: drv.read_ubuntu_drivers(b, cmd, body),
        "nvidia-smi": lambda cmd, body: drv.read_nvidia_smi(b, cmd, body, facts),
        "dmesg": lambda cmd, body: drv.read_dmesg(b, body, facts),
        "modprobe": lambda cmd, body: drv.read_dmesg(b, body, facts),
        "modinfo": lambda cmd, body: drv.read_modinfo(b, body, facts),
        "proc-driver": lambda cmd, body: drv.read_proc_driver(body, facts),
        "pve": lambda cmd, body: drv.read_pve(b, body),
        "nvcc": lambda cmd, body: stk.read_nvcc(body, facts),
        "vllm": lambda cmd, body: stk.read_vllm(b, body),
        "journal-ollama": lambda cmd, body: stk.read_ollama(b, body, journal=True),
        "ollama": lambda cmd, body: stk.read_ollama(b, body, journal="inference compute" in body),
        "torch": lambda cmd, body: stk.read_torch(b, body),
    }
    for kind, cmd, body in sorted(sections(captures), key=lambda s: order.get(s[0], 5)):
        reader = readers.get(kind)
        if reader:
            reader(cmd, body)
    # DKMS prints into apt/dpkg output, which has no capture kind of its own: read every text
    for text in captures.values():
        drv.read_dkms(b, text or "")
    cross_checks(b, facts)
    return b.finish()


def cross_checks(b: Builder, facts: dict[str, Any]) -> None:
    """Findings that need several captures together."""
    for g in b.gpus:
        if g.open_kernel_module is None and facts.get("module_open") is not None:
            g.open_kernel_module = facts["module_open"]
        if not g.driver_version and facts.get("module_version"):
            g.driver_version = facts["module_version"]
    for g, info in b.open_only_gpus():
        if g.open_kernel_module is False and "closed-module-on-open-only-gpu" not in b.findings:
            b.add("closed-module-on-open-only-gpu",
                  f"kernel module license NVIDIA (proprietary), version {g.driver_version or '?'}; GPU {g.pci_id}",
                  f"the proprietary nvidia kernel module is installed, but {info.name} works only with "
                  "NVIDIA's open kernel modules", open_install_remedy(branch_of(g.driver_version)))
        branch = branch_of(g.driver_version)
        if branch and info.min_driver_branch and branch < info.min_driver_branch \
                and "driver-too-old-for-gpu" not in b.findings:
            b.add("driver-too-old-for-gpu", f"driver {g.driver_version} on {info.name} ({g.pci_id})",
                  f"driver branch {branch} predates {info.name}; it needs branch {info.min_driver_branch} or newer",
                  open_install_remedy(None, info.min_driver_branch))
    v = facts.get("nvcc")
    if v:
        for g in b.gpus:
            info = gpu_info(g.pci_id)
            if info and info.min_cuda:
                need = tuple(int(x) for x in info.min_cuda.split("."))
                if v.as_tuple < need:
                    b.add("cuda-too-old-for-gpu", f"Cuda compilation tools, release {v.release}, {v.build}",
                          f"CUDA {v.release} cannot build code for {info.name} ({info.sm}); it needs CUDA "
                          f"{info.min_cuda} or newer (Ubuntu's nvidia-cuda-toolkit is too old)",
                          "install NVIDIA's toolkit from the cuda-keyring repository: "
                          "`sudo apt-get install cuda-toolkit-12-8` (or newer; never `cuda`/`cuda-drivers`, "
                          "which replace the driver); nvcc is then /usr/local/cuda/bin/nvcc")
                    break
    # a GPU bound to vfio-pci is meant for a VM (passthrough host): no driver expected here
    vfio = {id(g) for d, g in facts.get("lspci_conflict", []) if d.driver_in_use == "vfio-pci"}
    if facts.get("smi_missing") and any(g.pci_id and g.pci_id.startswith("10de:") and id(g) not in vfio
                                        for g in b.gpus) \
            and not b.findings.keys() & ROOT_CAUSES_OF_NO_DRIVER:
        b.add("driver-not-loaded", facts["smi_missing"],
              "an NVIDIA GPU is present but no NVIDIA driver is installed (nvidia-smi is missing)",
              "install the driver: open flavour for Turing and newer (required for Blackwell), e.g. "
              "`sudo apt-get install nvidia-driver-570-open` (or newer branch), then reboot")
    for d, g in facts.get("lspci_conflict", []):
        drv = d.driver_in_use
        # vfio-pci is the wanted state on a passthrough host; it is a problem only where the
        # NVIDIA driver was expected to drive the card
        if drv == "nouveau" or facts.get("smi_failed"):
            b.add("nouveau-or-vfio-bound", f"{d.address} {d.name} [{d.vendor_device}]: Kernel driver in use: {drv}",
                  conflict_cause(drv), conflict_remedy(drv))
