#!/usr/bin/python3
"""ubuntu-drivers of the embedded lab (shipped by the lab's ubuntu-drivers-common package).

Replays the real output formats for the profile's GPU (fw_cfg hardware JSON):
  - `devices`: ../shared/corpus/ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt
    (the block shape "== <sysfs path> ==", "modalias : ...", "vendor   : ...", "driver   : <pkg> -
    <origin>[ recommended]"; the lab profile, like that real system, RECOMMENDS the closed 570
    although a Blackwell card only works with -open);
  - `list [--gpgpu] [--recommended]`: ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt
    ("<pkg>, (kernel modules provided by <pkg>)"; the lab's modules come from DKMS packages, the
    shape of capture (e));
  - `install [--gpgpu] [nvidia:BRANCH[-open]]`: installs nvidia-driver-BRANCH[-open] with apt-get
    (no argument: the RECOMMENDED driver, as the real tool does). "No drivers found for
    installation." is the real tool's message when nothing matches.
Lab simplification: --gpgpu lists/installs the same (non -server) packages.
"""
import os
import subprocess
import sys

# @@LAB_COMMON@@


def modalias(gpu):
    return "pci:v0000%sd0000%ssv0000%ssd0000%sbc%ssc%si00" % (
        gpu["vendor_id"].upper(), gpu["device_id"].upper(), gpu["subsystem_vendor_id"].upper(),
        gpu["subsystem_device_id"].upper(), gpu["class_id"][:2], gpu["class_id"][2:])


def render_devices(hw):
    out = []
    for gpu in hw["gpus"]:
        out.append("== %s ==" % gpu["sysfs_path"])
        out.append("modalias : %s" % modalias(gpu))
        out.append("vendor   : %s" % gpu["lspci_vendor"])
        if gpu.get("ubuntu_drivers_model"):
            out.append("model    : %s" % gpu["ubuntu_drivers_model"])
        for pkg, origin, rec in hw.get("ubuntu_drivers", []):
            out.append("driver   : %s - %s%s" % (pkg, origin, " recommended" if rec else ""))
    return "".join(line + "\n" for line in out)


def nvidia_drivers(hw):
    """[(package, recommended)] of the nvidia-driver-* entries, open flavours first (list order)."""
    pkgs = [(p, r) for p, _o, r in hw.get("ubuntu_drivers", []) if p.startswith("nvidia-driver-")]
    return sorted(pkgs, key=lambda t: (not t[0].endswith("-open"), t[0]))


def render_list(hw, recommended_only=False):
    lines = []
    for pkg, rec in nvidia_drivers(hw):
        if recommended_only and not rec:
            continue
        lines.append("%s, (kernel modules provided by %s)" % (pkg, pkg.replace("nvidia-driver-", "nvidia-dkms-")))
    return "".join(line + "\n" for line in lines)


def install(hw, args):
    wanted = [a for a in args if not a.startswith("-")]
    available = [p for p, _r in nvidia_drivers(hw)]
    if wanted:
        spec = wanted[0]
        if ":" in spec:
            spec = spec.split(":", 1)[1]
        pkg = "nvidia-driver-" + spec
        if pkg not in available:
            print("No drivers found for installation.")
            return 0
    else:
        rec = [p for p, r in nvidia_drivers(hw) if r]
        if not rec:
            print("No drivers found for installation.")
            return 0
        pkg = rec[0]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.call(["apt-get", "install", "-y", pkg], env=env)


def main(argv):
    hw = lab_hw()
    if not argv or argv[0] in ("-h", "--help"):
        print("Usage: ubuntu-drivers [OPTIONS] COMMAND [ARGS]...\n\nCommands:\n  debug\n  devices\n  install\n  list\n  list-oem")
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "devices":
        sys.stdout.write(render_devices(hw))
        return 0
    if cmd == "list":
        sys.stdout.write(render_list(hw, "--recommended" in rest))
        return 0
    if cmd == "install":
        if os.geteuid() != 0 and not os.environ.get("LAB_NO_ROOT_CHECK"):
            print("Error: you must be root to install drivers", file=sys.stderr)
            return 1
        return install(hw, rest)
    print("Error: No such command '%s'." % cmd, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
