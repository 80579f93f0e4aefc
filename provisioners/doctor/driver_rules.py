"""Rules on the driver layer: nvidia-smi, kernel log, lspci, ubuntu-drivers, modinfo,
/proc/driver/nvidia/version, and the Proxmox passthrough texts. Each ``read_*`` reads one
capture section into the :class:`~provisioners.doctor.builder.Builder`; ``facts`` carries what
only makes sense across captures (module flavour/version, nvidia-smi failed...)."""
from __future__ import annotations

import re
from typing import Any

from provisioners.doctor.builder import Builder, branch_of, open_install_remedy
from provisioners.gpus import gpu_info
from provisioners.parsers import dmesg as dmesg_parser
from provisioners.parsers import lspci as lspci_parser
from provisioners.parsers import nvidia_smi
from provisioners.parsers import ubuntu_drivers


def read_nvidia_smi(b: Builder, cmd: str, body: str, facts: dict[str, Any]) -> None:
    """nvidia-smi table / CSV query / ``-q -x`` XML -> GPUs; its failure messages -> findings."""
    if "<nvidia_smi_log" in body:
        try:
            table = nvidia_smi.parse_xml(body)
        except ValueError:
            table = None
        if table:
            for g in table.gpus:
                s = b.gpu(bus=g.get("bus_id"), pci_id=g.get("pci_id"), name=g.get("name"), name_rank=0)
                s.memory_total_mib = g.get("memory_total_mib")
                s.driver_version = table.driver_version or s.driver_version
            return
    table = nvidia_smi.parse_table(body)
    for g in table.gpus:
        s = b.gpu(bus=g["bus_id"], name=g["name"], name_rank=0)
        s.memory_total_mib = g["memory_total_mib"]
        s.driver_version = table.driver_version
    if not table.gpus and ("--query-gpu" in cmd or "," in body):
        for row in nvidia_smi.parse_query_csv(body if "--query-gpu" not in cmd else f"$ {cmd}\n{body}"):
            name = row.get("name")
            if not isinstance(name, str) or not name.startswith(("NVIDIA", "Tesla", "Quadro")):
                continue
            s = b.gpu(bus=row.get("pci.bus_id"), name=name, name_rank=0)
            if isinstance(row.get("memory.total"), int):
                s.memory_total_mib = row["memory.total"]
            if isinstance(row.get("driver_version"), str):
                s.driver_version = row["driver_version"]
            if isinstance(row.get("compute_cap"), str) and re.fullmatch(r"\d+\.\d+", row["compute_cap"]):
                s.compute_capability = row["compute_cap"]
    kind = nvidia_smi.classify_failure(body)
    line = (nvidia_smi.failure_line(body, kind) if kind else None) or body.strip()[:200]
    if kind == "driver-library-mismatch":
        nvml = nvidia_smi.nvml_library_version(body)
        b.add("driver-library-mismatch", line + (f"\nNVML library version: {nvml}" if nvml else ""),
              "the NVIDIA user-space libraries were upgraded but the kernel still runs the older nvidia "
              "module (a driver install or upgrade without a reboot)",
              "reboot the machine (`/var/run/reboot-required` is usually present); if it persists, make "
              "the nvidia-utils/libnvidia-compute packages and the kernel module the same version")
    elif kind == "fell-off-bus":
        b.add("gpu-fell-off-bus", line,
              "the GPU stopped answering on the PCIe bus (NVIDIA Xid 79): power, riser/slot, PCIe link or "
              "thermal problem, or a passthrough reset issue",
              "check `sudo dmesg | grep -i xid`, power cabling and seating; power-cycle the host (a "
              "reboot of a VM does not reset the card); on Proxmox avoid PCIe ASPM and keep the GPU "
              "and its audio function passed together")
    elif kind == "driver-not-loaded":
        facts["smi_failed"] = True
        b.add("driver-not-loaded", line,
              "nvidia-smi cannot reach the NVIDIA kernel driver: the nvidia module is not loaded "
              "(not installed, not built for this kernel, or refused at load time)",
              "check `lsmod | grep nvidia`, `sudo modprobe nvidia` and `sudo dmesg | grep -i nvrm` for the "
              "reason; install the driver (open flavour for Turing and newer, required for Blackwell) "
              "and reboot")
    elif kind == "not-installed":
        facts["smi_missing"] = line
    elif kind == "no-devices":
        facts["smi_failed"] = True
        b.add("driver-not-loaded", line,
              "the nvidia module is loaded but initialised no GPU (the kernel log says why: wrong "
              "module flavour, unsupported release, or another driver owns the device)",
              "read `sudo dmesg | grep -i nvrm`; for a Blackwell card install the open kernel modules; "
              "check `lspci -nnk -d 10de:` for the driver in use")


def read_dmesg(b: Builder, body: str, facts: dict[str, Any]) -> None:
    """Kernel log (or modprobe output) events -> module flavour/version facts and findings;
    benign lines are skipped."""
    for ev in dmesg_parser.parse(body):
        if ev.benign:
            continue
        # a bare bus address (probe/RmInit lines) only adds to a GPU already known
        g = (b.gpu(bus=ev.bus_id, pci_id=ev.pci_id) if ev.pci_id
             else b.known(ev.bus_id) if ev.bus_id else None)
        if ev.kind == "module-loaded":
            facts["module_version"], facts["module_open"] = ev.version, ev.open
            for s in b.gpus:
                s.driver_version = s.driver_version or ev.version
                if s.open_kernel_module is None:
                    s.open_kernel_module = ev.open
        elif ev.kind == "closed-module-on-open-only":
            if g:
                g.open_kernel_module = False
                g.driver_version = g.driver_version or facts.get("module_version")
            b.add("closed-module-on-open-only-gpu", ev.text,
                  f"the proprietary (closed) nvidia kernel module is loaded, but this GPU"
                  f"{' (' + ev.pci_id + ')' if ev.pci_id else ''} is only supported by NVIDIA's open kernel "
                  "modules (Blackwell); the driver then fails with RmInitAdapter and nvidia-smi finds no device",
                  open_install_remedy(branch_of(facts.get("module_version"))))
        elif ev.kind == "unsupported-by-release":
            if g:
                g.driver_version = g.driver_version or ev.version
            info = gpu_info(ev.pci_id)
            need = f"branch {info.min_driver_branch} or newer" if info and info.min_driver_branch else "a newer branch"
            b.add("driver-too-old-for-gpu", ev.text,
                  f"driver {ev.version} predates this GPU{' (' + ev.pci_id + ')' if ev.pci_id else ''}; it "
                  f"needs {need}",
                  (open_install_remedy(branch_of(ev.version), info.min_driver_branch)
                   if info and info.open_modules_only else
                   f"install a driver of {need} (`ubuntu-drivers list`), then reboot"))
        elif ev.kind == "gsp-unsupported":
            if g:
                g.open_kernel_module = True
            b.add("open-module-unsupported-gpu", ev.text,
                  "the open nvidia kernel module is loaded but this GPU has no GSP firmware support in "
                  "it (pre-Turing GPU, or GSP unavailable in this environment)",
                  "install the proprietary flavour (`nvidia-driver-<branch>` without -open) for this GPU, "
                  "or use a GPU that the open modules support (Turing or later)")
        elif ev.kind in ("probe-not-called", "already-bound"):
            drv = ev.conflicting_driver
            if ev.kind == "already-bound" and not drv:
                continue
            facts.setdefault("conflicting", drv)
            b.add("nouveau-or-vfio-bound", ev.text, conflict_cause(drv), conflict_remedy(drv))
        elif ev.kind == "secure-boot-rejected":
            b.add("secure-boot-rejected-module", ev.text,
                  "Secure Boot is on and the kernel refused the nvidia module because it is not signed "
                  "with a key the firmware/MOK trusts (typical for DKMS-built modules)",
                  "either use Ubuntu's signed prebuilt modules (`sudo ubuntu-drivers install "
                  "nvidia:<branch>-open`, provider linux-modules-nvidia-*), or enrol the DKMS key "
                  "(`sudo mokutil --import /var/lib/shim-signed/mok/MOK.der`, reboot, confirm in MokManager), "
                  "or disable Secure Boot (Proxmox VM: efidisk0 with pre-enrolled-keys=0)")
        elif ev.kind == "fell-off-bus":
            b.add("gpu-fell-off-bus", ev.text,
                  "the GPU stopped answering on the PCIe bus (NVIDIA Xid 79): power, riser/slot, PCIe link "
                  "or thermal problem, or a passthrough reset issue",
                  "check power cabling and seating, power-cycle the host; on Proxmox keep all functions "
                  "of the GPU passed together and avoid PCIe ASPM")


def conflict_cause(driver: str | None) -> str:
    """Why another driver owning the GPU blocks nvidia (wording per driver)."""
    if driver == "vfio-pci":
        return ("the GPU is bound to vfio-pci (reserved for PCI passthrough), so the nvidia driver on "
                "this machine cannot probe it")
    if driver:
        return f"another kernel driver ({driver}) owns the GPU, so the nvidia driver cannot probe it"
    return "another kernel driver owns the GPU, so the nvidia driver cannot probe it"


def conflict_remedy(driver: str | None) -> str:
    """What to do about it: vfio-pci (passthrough host) vs nouveau."""
    if driver == "vfio-pci":
        return ("on a passthrough host this is expected: run the NVIDIA driver inside the VM the GPU is "
                "given to; to use the GPU here instead, remove its ids from the vfio-pci options "
                "(/etc/modprobe.d/*.conf or `vfio-pci.ids=` on the kernel command line), "
                "`sudo update-initramfs -u` and reboot")
    return ("blacklist nouveau: write `blacklist nouveau` and `options nouveau modeset=0` to "
            "/etc/modprobe.d/blacklist-nouveau.conf, `sudo update-initramfs -u`, reboot (the NVIDIA "
            "driver packages normally install this file)")


def read_lspci(b: Builder, body: str, facts: dict[str, Any]) -> None:
    """NVIDIA display functions -> GPUs; nouveau/vfio-pci bindings kept for the cross checks."""
    for d in lspci_parser.nvidia_gpus(lspci_parser.parse(body)):
        g = b.gpu(bus=d.address, pci_id=d.vendor_device, name=d.name, name_rank=5)
        if d.driver_in_use in ("nouveau", "vfio-pci"):
            facts.setdefault("lspci_conflict", []).append((d, g))


def read_ubuntu_drivers(b: Builder, cmd: str, body: str) -> None:
    """``devices`` blocks -> GPUs and closed-driver-recommended; ``list --recommended`` too."""
    for dev in ubuntu_drivers.parse_devices(body):
        if not dev.pci_id or not dev.pci_id.startswith("10de:"):
            continue
        b.gpu(bus=dev.sysfs_path, pci_id=dev.pci_id, name=dev.model, name_rank=4)
        info = gpu_info(dev.pci_id)
        rec = dev.recommended
        if info and info.open_modules_only and rec and rec.branch is not None and not rec.open:
            line = next((ln.strip() for ln in body.splitlines()
                         if re.search(rf"driver\s*:\s*{re.escape(rec.package)}\s+-.*recommended", ln)), rec.package)
            alt = next((o.package for o in dev.drivers if o.open and o.branch == rec.branch), None)
            b.add("closed-driver-recommended", line,
                  f"ubuntu-drivers recommends the proprietary {rec.package}, but {info.name} ({dev.pci_id}) "
                  "works only with NVIDIA's open kernel modules; installing the recommendation "
                  "(or `ubuntu-drivers autoinstall`) leaves the GPU unusable",
                  f"install the open flavour explicitly: `sudo apt-get install {alt or rec.package + '-open'}` "
                  f"(or `sudo ubuntu-drivers install nvidia:{rec.branch}-open`), not the recommended package")
    if "--recommended" in cmd:
        opts = ubuntu_drivers.parse_list(body, recommended_only=True)
        targets = b.open_only_gpus()
        for opt in opts:
            if opt.branch is not None and not opt.open and targets:
                g, info = targets[0]
                b.add("closed-driver-recommended", opt.package,
                      f"ubuntu-drivers recommends the proprietary {opt.package}, but {info.name} works only "
                      "with NVIDIA's open kernel modules",
                      f"install `{opt.package}-open` (or `sudo ubuntu-drivers install nvidia:{opt.branch}-open`)")


def read_modinfo(b: Builder, body: str, facts: dict[str, Any]) -> None:
    """``modinfo nvidia`` license/version -> module flavour facts (open = ``Dual MIT/GPL``)."""
    lic = re.search(r"^(?:license:\s*)?(Dual MIT/GPL|NVIDIA)\s*$", body, re.M)
    ver = re.search(r"^version:\s*(\d+\.\d+(?:\.\d+)?)\s*$", body, re.M)
    if lic:
        facts["module_open"] = lic.group(1) == "Dual MIT/GPL"
    if ver:
        facts["module_version"] = ver.group(1)
    if "Key was rejected by service" in body:
        read_dmesg(b, body, facts)


def read_proc_driver(body: str, facts: dict[str, Any]) -> None:
    """``/proc/driver/nvidia/version`` -> loaded module flavour and version."""
    m = re.search(r"NVRM version: NVIDIA UNIX (Open Kernel Module for )?\S+(?: Kernel Module)?\s+"
                  r"(\d+\.\d+(?:\.\d+)?)", body)
    if m:
        facts["module_open"] = bool(m.group(1))
        facts["module_version"] = m.group(2)


_PVE_IOMMU = re.compile(r"IOMMU not present|failed to open /dev/vfio/\d+: No such file or directory")
_PVE_BUSY = re.compile(r"already in use by VMID|is currently reserved for use by VMID|could not find a free device|"
                       r"failed to open /dev/vfio/\d+: Device or resource busy|group \d+ is not viable")


def read_pve(b: Builder, body: str) -> None:
    """Proxmox VE task/start error texts -> iommu-missing / pci-device-busy."""
    for ln in body.splitlines():
        s = ln.strip().strip("|` ").strip()
        if _PVE_IOMMU.search(ln):
            b.add("iommu-missing", s,
                  "the Proxmox host has no active IOMMU (or the device is not bound to vfio), so it "
                  "cannot pass the GPU through",
                  "enable VT-d / AMD-Vi (IOMMU) in the firmware, add `intel_iommu=on` (Intel; AMD enables it "
                  "by default) to the kernel command line, reboot, and check that /sys/class/iommu/ is populated "
                  "and `dmesg | grep -e DMAR -e IOMMU` reports it enabled")
        if _PVE_BUSY.search(ln):
            b.add("pci-device-busy", s,
                  "the GPU (or its IOMMU group) is already used by another VM or held by a host driver/process",
                  "stop the other VM that has the device (or remove its hostpci entry); bind every function "
                  "of the GPU's IOMMU group to vfio-pci; then start this VM again")


# DKMS's own wording (dkms's "Bad return status" error, the same in DKMS 2.x and 3.x): real
# transcripts cited in lab/artefacts/debs.py (nvidia-dkms-545 on Ubuntu 24.04 and another).
_DKMS_ERROR = re.compile(r"Error! Bad return status for module build on kernel: (?P<kernel>\S+) \((?P<arch>[^)\s]+)\)")
_DKMS_CONSULT = re.compile(r"Consult (?P<log>/var/lib/dkms/(?P<module>[^/\s]+)/(?P<version>[^/\s]+)/build/make\.log)"
                           r" for more information\.")


def read_dkms(b: Builder, body: str) -> None:
    """A failed DKMS build of the nvidia module in any text (apt/dpkg output, a transcript, the
    driver step's ``apt output``/``apt term.log`` evidence) -> ``dkms-build-failed``.

    Evidence is DKMS's two lines (``Error! Bad return status for module build on kernel: K
    (ARCH)`` / ``Consult /var/lib/dkms/nvidia/V/build/make.log for more information.``). A build
    failure of another DKMS module (its make.log path names it) is not the doctor's business;
    without the ``Consult`` line the text must mention nvidia.
    """
    lines = (body or "").splitlines()
    for i, ln in enumerate(lines):
        err = _DKMS_ERROR.search(ln)
        if not err:
            continue
        consult = next((m for m in map(_DKMS_CONSULT.search, lines[i + 1:i + 4]) if m), None)
        if consult and not consult.group("module").lower().startswith("nvidia"):
            continue
        if not consult and "nvidia" not in body.lower():
            continue
        kernel = err.group("kernel")
        version = consult.group("version") if consult else None
        log = consult.group("log") if consult else "/var/lib/dkms/nvidia/<version>/build/make.log"
        evidence = err.group(0) + (f"\n{consult.group(0)}" if consult else "")
        branch = branch_of(version)
        b.add("dkms-build-failed", evidence,
              f"DKMS could not build the nvidia kernel module{' ' + version if version else ''} for the "
              f"running kernel {kernel}: the headers for this kernel are missing, the compiler differs from "
              "the one the kernel was built with, or the kernel is newer than this driver branch supports; "
              "dpkg leaves the nvidia-dkms package half-configured (and the driver metapackage unconfigured), "
              "so no nvidia module exists for this kernel",
              f"read the compiler error in `{log}`; install the headers: `sudo apt-get install "
              "linux-headers-$(uname -r)`, then finish the install with `sudo dpkg --configure -a`; "
              "if the kernel is too new for the branch, use a newer branch or Ubuntu's prebuilt signed "
              f"modules instead of DKMS (`sudo apt-get install linux-modules-nvidia-{branch or '<branch>'}-open-generic` "
              f"with `nvidia-driver-{branch or '<branch>'}-open`, or `sudo ubuntu-drivers install "
              f"nvidia:{branch or '<branch>'}-open`); reboot afterwards")
