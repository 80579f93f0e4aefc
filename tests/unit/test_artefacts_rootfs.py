"""The lab packages installed with the real dpkg into the lab's Debian rootfs (no VM needed).

Uses the cached debootstrap tree of lab/image.py (stage 1) through an overlayfs mount and
chroot, so the maintainer scripts run as in the guest: DKMS-like output, depmod + modinfo,
systemctl enable, reboot-required, the half-configured failure of ``driver-install-fails``
and its convergence once the good packages are republished. Skipped where the rootfs is not
cached or overlay mounts are not allowed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lab import image
from lab.artefacts import build_all, www_dir
from lab.profiles import get_profile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _rootfs() -> Path | None:
    cache = image.image_cache_dir()
    name = f"rootfs-{image._hash(image.rootfs_recipe())[:16]}"
    p = cache / name
    return p if (p / ".complete").exists() else None


@pytest.fixture
def chroot(tmp_path):
    root = _rootfs()
    if root is None or os.geteuid() != 0 or not shutil.which("chroot"):
        pytest.skip("needs root and the cached lab rootfs (make lab-image)")
    for d in ("u", "w", "m"):
        (tmp_path / d).mkdir()
    m = tmp_path / "m"
    res = subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                          f"lowerdir={root},upperdir={tmp_path / 'u'},workdir={tmp_path / 'w'}", str(m)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"overlay mount not allowed here: {res.stderr.strip()}")
    try:
        yield m
    finally:
        subprocess.run(["umount", str(m)], check=False)


def sh(root: Path, script: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), "/bin/sh", "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})


def test_driver_packages_in_the_lab_rootfs(chroot, tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    build_all(good, "rtx5060ti", port=17080)
    build_all(bad, "driver-install-fails", port=17080)
    for name, state in (("g", good), ("f", bad)):
        (chroot / "tmp" / name).mkdir()
        for deb in www_dir(state).glob("apt/pool/main/*/*/*.deb"):
            shutil.copy(deb, chroot / "tmp" / name / deb.name)
    (chroot / "tmp" / "hw.json").write_text(get_profile("rtx5060ti").guest_hw_json())
    pkgs = "nvidia-utils-570_*.deb nvidia-dkms-570-open_*.deb nvidia-driver-570-open_*.deb"

    failed = sh(chroot, f"cd /tmp/f && DEBIAN_FRONTEND=noninteractive dpkg -i {pkgs}")
    assert failed.returncode != 0
    assert "Error! Bad return status for module build on kernel:" in failed.stdout
    assert "post-installation script subprocess returned error exit status 10" in failed.stderr
    states = sh(chroot, "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 'nvidia-*'").stdout
    assert "iF  nvidia-dkms-570-open" in states and "iU  nvidia-driver-570-open" in states
    assert "fatal error" in sh(chroot, "cat /var/lib/dkms/nvidia/570.195.03/build/make.log").stdout

    fixed = sh(chroot, f"cd /tmp/g && DEBIAN_FRONTEND=noninteractive dpkg -i {pkgs} ubuntu-drivers-common_*.deb")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "ii  nvidia-dkms-570-open" in sh(chroot, "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 'nvidia-*'").stdout
    assert sh(chroot, "modinfo -F license nvidia").stdout == "Dual MIT/GPL\n"
    assert sh(chroot, "cat /var/run/reboot-required").stdout == "*** System restart required ***\n"
    assert (chroot / "etc/systemd/system/sysinit.target.wants/nvidia-lab-kmod.service").is_symlink()

    env = "export LAB_GPU_HW=/tmp/hw.json LAB_BOOT_ID=b1 LAB_KMSG=/tmp/kmsg LAB_PROC_DRIVER=/tmp/procdriver; "
    before = sh(chroot, env + "su nobody -s /bin/sh -c nvidia-smi")
    assert before.returncode == 9                        # installed, not loaded before the "reboot"
    assert sh(chroot, env + "/usr/lib/nvidia-lab/nvidia-lab-kmod load").returncode == 0
    after = sh(chroot, env + "su nobody -s /bin/sh -c 'nvidia-smi --query-gpu=name,driver_version --format=csv,noheader'")
    assert after.stdout == "NVIDIA GeForce RTX 5060 Ti, 570.195.03\n"
    assert "requires use of the NVIDIA open" not in (chroot / "tmp/kmsg").read_text()
