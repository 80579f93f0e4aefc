"""Hardware-boundary shims baked into the lab image (lab/guestfs): lspci, mokutil, fw_cfg reader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lab.profiles import get_profile

REPO = Path(__file__).resolve().parents[2]
GUESTFS = REPO / "lab" / "guestfs"
CORPUS = REPO / "tests" / "fixtures" / "corpus"
BOOT = "11111111-2222-3333-4444-555555555555"


def shim(tmp_path, prog, args, hw, state=None):
    (tmp_path / "hw.json").write_text(json.dumps(hw))
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    if state:
        (run / "state.json").write_text(json.dumps(dict(state, boot_id=BOOT)))
    env = dict(os.environ, LAB_GPU_HW=str(tmp_path / "hw.json"), LAB_NVIDIA_RUN=str(run), LAB_BOOT_ID=BOOT)
    cmd = [sys.executable] if prog.endswith(("lspci", "lab-gpu-hw")) else ["sh"]
    return subprocess.run(cmd + [str(GUESTFS / prog), *args], capture_output=True, text=True, env=env, timeout=30)


def test_lspci_nn_replays_the_corpus_iommu_listing(tmp_path):
    text = (CORPUS / "lspci-nn_rtx5060ti_proxmox_and_iommu.txt").read_text()
    tree = text.split("(b) IOMMU Group 14\n", 1)[1]
    expected = "".join(line.split("─", 1)[1] + "\n" for line in tree.splitlines() if "─" in line)
    res = shim(tmp_path, "usr/local/bin/lspci", ["-nn"], get_profile("rtx5060ti").guest_hw())
    assert res.stdout.endswith(expected)     # the real lspci's own devices (in the guest) come first


def test_lspci_nnk_replays_the_corpus_with_the_driver_bound(tmp_path):
    expected = "\n".join((CORPUS / "lspci-nnk_rtx5060ti_nvidia_bound.txt").read_text().split("\n")[1:])
    hw = get_profile("rtx5060ti").guest_hw()
    gpu = hw["gpus"][0]
    gpu.update(subsystem_vendor_name="Micro-Star International Co., Ltd. [MSI]", subsystem_vendor_id="1462", subsystem_device_id="5351",
               audio_subsystem_vendor_name="NVIDIA Corporation", audio_subsystem_vendor_id="10de", audio_subsystem_device_id="0000")
    res = shim(tmp_path, "usr/local/bin/lspci", ["-nnk"], hw, state={"status": "ok", "version": "595.71.05"})
    assert res.stdout.endswith(expected)
    (tmp_path / "fresh").mkdir()
    unbound = shim(tmp_path / "fresh", "usr/local/bin/lspci", ["-nnk"], hw)
    assert "Kernel driver in use: nvidia" not in unbound.stdout


def test_lspci_filters_and_no_gpu(tmp_path):
    hw = get_profile("rtx5060ti").guest_hw()
    res = shim(tmp_path, "usr/local/bin/lspci", ["-n", "-d", "10de:2d04"], hw)
    assert res.stdout == "01:00.0 0300: 10de:2d04 (rev a1)\n"
    assert shim(tmp_path, "usr/local/bin/lspci", ["-d", "8086:"], hw).stdout == ""
    assert shim(tmp_path, "usr/local/bin/lspci", ["-nn"], get_profile("no-gpu").guest_hw()).stdout == ""


def test_mokutil_and_fw_cfg_reader(tmp_path):
    on = shim(tmp_path, "usr/local/bin/mokutil", ["--sb-state"], get_profile("secure-boot").guest_hw())
    assert on.stdout == "SecureBoot enabled\n"
    (tmp_path / "b").mkdir()
    off = shim(tmp_path / "b", "usr/local/bin/mokutil", ["--sb-state"], json.loads(get_profile("rtx5060ti").guest_hw_json()))
    assert off.stdout == "SecureBoot disabled\n"
    raw = shim(tmp_path, "usr/local/sbin/lab-gpu-hw", [], get_profile("no-gpu").guest_hw())
    assert json.loads(raw.stdout)["profile"] == "no-gpu"
    assert (GUESTFS / "etc/modules-load.d/lab-fw-cfg.conf").read_text().splitlines()[-1] == "qemu_fw_cfg"
    for p in ("usr/local/bin/lspci", "usr/local/bin/lsmod", "usr/local/sbin/lab-gpu-hw", "usr/local/sbin/modprobe",
              "usr/local/bin/mokutil"):
        assert os.access(GUESTFS / p, os.X_OK)


def test_modprobe_shim_answers_for_the_lab_module(tmp_path, monkeypatch):
    import importlib.machinery
    import importlib.util
    loader = importlib.machinery.SourceFileLoader("lab_modprobe", str(GUESTFS / "usr/local/sbin/modprobe"))
    spec = importlib.util.spec_from_loader("lab_modprobe", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    kmod = tmp_path / "kmod"
    kmod.write_text("")
    (tmp_path / "hw.json").write_text(get_profile("secure-boot").guest_hw_json())
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setattr(mod, "KMOD", str(kmod))
    monkeypatch.setattr(mod, "HW_PATHS", [str(tmp_path / "hw.json")])
    monkeypatch.setattr(mod, "RUN", str(run))
    monkeypatch.setenv("LAB_KMSG", str(tmp_path / "kmsg"))
    monkeypatch.setenv("LAB_BOOT_ID", BOOT)
    assert mod.main(["nvidia"]) == 1                                 # Key was rejected by service
    (tmp_path / "hw.json").write_text(get_profile("rtx5060ti").guest_hw_json())
    assert mod.main(["nvidia"]) == 1                                 # before the reboot: No such device
    assert "NVRM: No NVIDIA devices probed." in (tmp_path / "kmsg").read_text()
    (run / "state.json").write_text(json.dumps({"boot_id": BOOT, "status": "ok"}))
    assert mod.main(["nvidia"]) == 0


def test_lsmod_shim_lists_nvidia_only_when_loaded(tmp_path):
    hw = get_profile("rtx5060ti").guest_hw()
    res = shim(tmp_path, "usr/local/bin/lspci", [], hw)   # prepares hw.json/run
    env = dict(os.environ, LAB_NVIDIA_RUN=str(tmp_path / "run"), LAB_BOOT_ID=BOOT)
    out = subprocess.run([sys.executable, str(GUESTFS / "usr/local/bin/lsmod")], capture_output=True, text=True, env=env).stdout
    assert "nvidia" not in out and res.returncode == 0
    (tmp_path / "run" / "state.json").write_text(json.dumps({"boot_id": BOOT, "status": "ok"}))
    out = subprocess.run([sys.executable, str(GUESTFS / "usr/local/bin/lsmod")], capture_output=True, text=True, env=env).stdout
    assert "nvidia              16584704  2 nvidia_uvm,nvidia_modeset\n" in out


def test_lab_gpu_hw_publish_makes_a_readable_copy(tmp_path):
    raw = tmp_path / "raw"
    raw.write_bytes(get_profile("rtx5060ti").guest_hw_json().encode() + b"\0")
    raw.chmod(0o400)
    pub = tmp_path / "run" / "hw.json"
    env = dict(os.environ, LAB_GPU_HW=str(raw), LAB_GPU_HW_PUBLISHED=str(pub))
    res = subprocess.run([sys.executable, str(GUESTFS / "usr/local/sbin/lab-gpu-hw"), "--publish"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert oct(pub.stat().st_mode & 0o777) == "0o444" and oct(raw.stat().st_mode & 0o777) == "0o444"
    assert json.loads(pub.read_text())["profile"] == "rtx5060ti"


def test_guestfs_units_verify(tmp_path):
    import shutil
    if not shutil.which("systemd-analyze"):
        return
    unit = tmp_path / "lab-gpu-hw.service"
    unit.write_text((GUESTFS / "etc/systemd/system/lab-gpu-hw.service").read_text()
                    .replace("/usr/local/sbin/lab-gpu-hw", str(GUESTFS / "usr/local/sbin/lab-gpu-hw")))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    link = GUESTFS / "etc/systemd/system/sysinit.target.wants/lab-gpu-hw.service"
    assert os.readlink(link) == "/etc/systemd/system/lab-gpu-hw.service"
