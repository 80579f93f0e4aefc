#!/usr/bin/python3
"""Boot-time "load" of the lab's NVIDIA kernel module (shipped by nvidia-dkms-BRANCH[-open]).

The lab has no GPU, so no real module can load. Instead the unit nvidia-lab-kmod.service runs
this at every boot: it decides what a real nvidia.ko would do with the profile's hardware
(fw_cfg JSON) and writes the kernel log lines a real one writes to /dev/kmsg (so `dmesg` and
`journalctl -k` show them), then records the outcome for this boot_id in /run/nvidia-lab/state.json
(read by nvidia-smi, vLLM, Ollama; /run is emptied by a reboot, so a freshly installed driver
"loads" only after the reboot, as on real systems).

Kernel lines and their sources (../shared/corpus/ unless stated):
  - taint lines: dmesg_module_verification_failed_and_gsp_unsupported.txt;
  - closed module on a GPU that needs the open one: dmesg_blackwell_closed_module_requires_open.txt
    (loading line, "requires use of the NVIDIA open kernel modules", RmInitAdapter, rm_init_adapter);
  - open module loading line, nvidia-modeset and [drm] lines: a real boot log (GitHub file, search
    index id 48010285077: "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release
    Build  (dvs-builder@U22-I3-AF03-09-1)  Sun Jul 27 06:54:38 UTC 2025");
  - no NVIDIA device: "NVRM: No NVIDIA devices probed." (dmesg_nvidia_probe_not_called_nouveau_or_vfio.txt);
  - Secure Boot: systemd-modules-load's "Failed to insert module '%s': %m" (systemd
    src/shared/module-util.c) with EKEYREJECTED's strerror "Key was rejected by service" (what
    modprobe prints for an unsigned module under Secure Boot, DESIGN.md section 4).
SYNTHESISED: build dates/builders of versions without a capture (marked in BUILD_STAMPS).
"""
import os
import sys

# @@LAB_COMMON@@

DRIVER_VERSION = "@@DRIVER_VERSION@@"
FLAVOUR = "@@FLAVOUR@@"  # "open" or "closed"
CUDA_VERSION = "@@CUDA_VERSION@@"  # what this driver's nvidia-smi prints as "CUDA Version"
MODULE_NAME = "nvidia"

BUILD_STAMPS = {
    "580.105.08": "Wed Oct 29 23:15:11 UTC 2025",  # corpus (closed)
    "580.65.06": "Sun Jul 27 06:54:38 UTC 2025",   # boot log id 48010285077 (open)
}
SYNTH_STAMP = "Thu Sep 18 20:07:57 UTC 2025"  # SYNTHESISED for versions without a capture
BUILDER = "(dvs-builder@U22-I3-AF03-09-1)"     # from the open-module capture above


def kernel_messages(hw, flavour, version):
    """(status, [(syslog level, text)]) a real nvidia.ko of ``flavour``/``version`` produces on ``hw``.

    status: "ok" | "rminit_failed" (closed module on a GPU needing the open one) | "rejected"
    (Secure Boot) | "no_device".
    """
    if hw.get("secure_boot"):
        return "rejected", [(3, "systemd-modules-load[%d]: Failed to insert module '%s': Key was rejected by service"
                             % (os.getpid(), MODULE_NAME))]
    msgs = [(4, "nvidia: loading out-of-tree module taints kernel."),
            (4, "nvidia: module verification failed: signature and/or required key missing - tainting kernel"),
            (6, "nvidia-nvlink: Nvlink Core is being initialized, major device number 236")]
    stamp = BUILD_STAMPS.get(version, SYNTH_STAMP)
    if not hw.get("gpus"):
        msgs.append((6, "NVRM: No NVIDIA devices probed."))
        return "no_device", msgs
    gpu = hw["gpus"][0]
    addr = gpu["pci_address"]
    if flavour == "closed":
        msgs.append((6, "NVRM: loading NVIDIA UNIX x86_64 Kernel Module  %s  %s" % (version, stamp)))
        if gpu.get("requires_open_module"):
            msgs += [(3, "NVRM: The NVIDIA GPU %s (PCI ID: %s:%s)\nNVRM: installed in this system requires use of the NVIDIA open kernel modules."
                      % (addr, gpu["vendor_id"], gpu["device_id"])),
                     (3, "NVRM: GPU %s: RmInitAdapter failed! (0x22:0x56:884)" % addr),
                     (3, "NVRM: GPU %s: rm_init_adapter failed, device minor number 0" % addr)]
            return "rminit_failed", msgs
    else:
        msgs.append((6, "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  %s  %s" % (version, BUILDER, stamp)))
    kind = "Open Kernel Mode Setting Driver" if flavour == "open" else "Kernel Mode Setting Driver"
    msgs += [(6, "nvidia-modeset: Loading NVIDIA UNIX %s for x86_64  %s  Release Build  %s  %s" % (kind, version, BUILDER, stamp)),
             (6, "[drm] [nvidia-drm] [GPU ID 0x00000100] Loading driver"),
             (6, "[drm] Initialized nvidia-drm 0.0.0 for %s on minor 1" % addr)]
    return "ok", msgs


def proc_version_text(flavour, version):
    """/proc/driver/nvidia/version of a loaded module (first line = the NVRM loading banner).

    Shape of the real file ("NVRM version: <banner>" / "GCC version:  gcc version ..."); the GCC
    line is SYNTHESISED as Debian 12's compiler (the lab guest's).
    """
    stamp = BUILD_STAMPS.get(version, SYNTH_STAMP)
    if flavour == "open":
        banner = "NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  %s  %s" % (version, BUILDER, stamp)
    else:
        banner = "NVIDIA UNIX x86_64 Kernel Module  %s  %s" % (version, stamp)
    return "NVRM version: %s\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14) \n" % banner


def publish_proc_driver(text):
    """Make /proc/driver/nvidia/version exist, as the loaded module's procfs entry would.

    procfs takes no new files, so (as root, at boot) a small tmpfs is mounted over /proc/driver
    (hiding its other entries, e.g. rtc). Env LAB_PROC_DRIVER names a plain directory instead (tests).
    """
    import subprocess
    root = os.environ.get("LAB_PROC_DRIVER")
    if not root and os.environ.get("LAB_GPU_HW"):
        return  # overridden hardware = not the lab guest: never mount over a host's /proc
    if not root:
        root = "/proc/driver"
        if not os.path.isdir(os.path.join(root, "nvidia")):
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=64k", "lab-nvidia-proc", root],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    try:
        os.makedirs(os.path.join(root, "nvidia"), exist_ok=True)
        with open(os.path.join(root, "nvidia", "version"), "w") as fh:
            fh.write(text)
    except OSError:
        pass


def write_kmsg(msgs):
    """Write each (syslog level, text) as one kernel log record.

    One os.write() per record keeps a multi-line record whole. /dev/kmsg is opened write-only
    without O_APPEND: Python's append mode seeks to the end first, which /dev/kmsg refuses with
    EINVAL (seen in the lab guest: no NVRM line reached dmesg). LAB_KMSG (tests) is a plain file.
    """
    path = os.environ.get("LAB_KMSG") or "/dev/kmsg"
    flags = os.O_WRONLY if path == "/dev/kmsg" else os.O_WRONLY | os.O_APPEND | os.O_CREAT
    for level, text in msgs:
        try:
            fd = os.open(path, flags, 0o644)
            try:
                os.write(fd, ("<%d>%s\n" % (level, text)).encode())
            finally:
                os.close(fd)
        except OSError as err:
            sys.stderr.write("nvidia-lab-kmod: cannot write the kernel log: %s\n" % err)


def load():
    import json
    hw = lab_hw()
    run = lab_run_dir()
    os.makedirs(os.path.join(run, "procs"), exist_ok=True)
    os.chmod(os.path.join(run, "procs"), 0o1777)  # vLLM/Ollama run as other users
    status, msgs = kernel_messages(hw, FLAVOUR, DRIVER_VERSION)
    write_kmsg(msgs)
    if status in ("ok", "rminit_failed"):   # the module itself is in the kernel in both cases
        publish_proc_driver(proc_version_text(FLAVOUR, DRIVER_VERSION))
    state = {"boot_id": lab_boot_id(), "version": DRIVER_VERSION, "branch": DRIVER_VERSION.split(".")[0],
             "flavour": FLAVOUR, "status": status, "cuda_version": CUDA_VERSION}
    tmp = os.path.join(run, ".state.json")
    with open(tmp, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, os.path.join(run, "state.json"))
    print("nvidia-lab-kmod: %s %s module: %s" % (FLAVOUR, DRIVER_VERSION, status))
    return 0


def main(argv):
    if argv[:1] == ["load"]:
        return load()
    if argv[:1] == ["status"]:
        st = lab_driver_state()
        print(st if st else "not loaded")
        return 0 if st else 3
    print("usage: nvidia-lab-kmod load|status", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
