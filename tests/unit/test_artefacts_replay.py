"""The lab's fake GPU programs replay the real outputs of ../shared/corpus byte for byte.

Each test runs the program as the packages ship it (rendered by lab.artefacts.programs) on the
host, with the guest's inputs overridden by env: LAB_GPU_HW (fw_cfg JSON), LAB_NVIDIA_RUN (module
state of this boot), LAB_BOOT_ID, LAB_FAKE_NOW (clock), TZ.
"""
from __future__ import annotations

import calendar
import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.artefacts import programs
from lab.profiles import RTX5060TI, get_profile

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
BOOT = "11111111-2222-3333-4444-555555555555"


def corpus(name: str) -> str:
    return (CORPUS / name).read_text()


def body(name: str) -> list[str]:
    """Corpus file lines without the leading '# source' comment lines."""
    lines = corpus(name).split("\n")
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return lines


def run_fake(tmp_path: Path, name: str, args: list[str], consts: dict | None = None, hw: dict | None = None,
             state: dict | None = None, procs: list[dict] | None = None, now: float | None = None,
             extra_env: dict | None = None) -> subprocess.CompletedProcess:
    prog = tmp_path / f"{name}.py"
    prog.write_text(programs.render(name, **(consts or {})))
    run = tmp_path / "run"
    (run / "procs").mkdir(parents=True, exist_ok=True)
    if state is not None:
        (run / "state.json").write_text(json.dumps(dict(state, boot_id=BOOT)))
    for p in procs or []:
        (run / "procs" / f"{p['pid']}.json").write_text(json.dumps(dict(p, static=True)))
    hw_file = tmp_path / "hw.json"
    hw_file.write_text(json.dumps(hw if hw is not None else get_profile("rtx5060ti").guest_hw()))
    env = dict(os.environ, LAB_GPU_HW=str(hw_file), LAB_NVIDIA_RUN=str(run), LAB_BOOT_ID=BOOT, TZ="UTC",
               LAB_KMSG=str(tmp_path / "kmsg"), LAB_PROC_DRIVER=str(tmp_path / "procdriver"))
    if now is not None:
        env["LAB_FAKE_NOW"] = str(now)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, str(prog), *args], capture_output=True, text=True, env=env, timeout=60)


OK_595 = {"version": "595.71.05", "branch": "595", "flavour": "open", "status": "ok", "cuda_version": "13.2"}
SMI_595 = {"DRIVER_VERSION": "595.71.05", "CUDA_VERSION": "13.2"}


# ---------------------------------------------------------------- nvidia-smi
def test_nvidia_smi_table_replays_corpus(tmp_path):
    lines = body("nvidia-smi_rtx5060ti_595.71.05_full_table.txt")
    expected = "\n".join(lines[1:22]) + "\n"          # after "$ nvidia-smi", up to the closing line
    hw = get_profile("rtx5060ti").guest_hw()
    hw["gpus"][0]["memory_baseline_used_mib"] = 644   # + the two 2 MiB desktop processes = 648MiB
    procs = [{"pid": 914, "type": "G", "name": "/usr/bin/ksecretd", "used_mib": 2},
             {"pid": 2425, "type": "G", "name": "/usr/bin/konsole", "used_mib": 2}]
    now = calendar.timegm((2026, 5, 29, 19, 57, 49, 0, 0, 0))
    res = run_fake(tmp_path, "nvidia_smi", [], SMI_595, hw=hw, state=OK_595, procs=procs, now=now)
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected


def test_nvidia_smi_table_without_processes_keeps_the_layout(tmp_path):
    res = run_fake(tmp_path, "nvidia_smi", [], SMI_595, state=OK_595, now=0)
    assert res.returncode == 0
    lines = res.stdout.splitlines()
    assert all(len(line) == 91 for line in lines[1:] if line), [line for line in lines[1:] if line and len(line) != 91]
    assert "|  No running processes found" in res.stdout
    assert "|      15MiB /  16311MiB |" in res.stdout


@pytest.mark.parametrize("label,fields,fmt,driver,baseline", [
    ("a", "name,memory.total", "csv", "595.71.05", 15),
    ("b", "name,memory.total,memory.used", "csv", "595.71.05", 15),
    ("c", "name,memory.total,driver_version", "csv,noheader", "580.95.05", 15),
])
def test_nvidia_smi_query_gpu_replays_corpus(tmp_path, label, fields, fmt, driver, baseline):
    text = corpus("nvidia-smi_query-gpu_csv_rtx5060ti.txt")
    block = text.split(f"\n({label})", 1)[1].split("\n\n", 1)[0]
    expected = "\n".join(line for line in block.split("\n")[1:] if line) + "\n"
    state = dict(OK_595, version=driver)
    res = run_fake(tmp_path, "nvidia_smi", [f"--query-gpu={fields}", f"--format={fmt}"],
                   {"DRIVER_VERSION": driver, "CUDA_VERSION": "13.0"}, state=state)
    assert res.returncode == 0, res.stdout
    assert res.stdout == expected


def test_nvidia_smi_query_nounits_and_bad_field(tmp_path):
    res = run_fake(tmp_path, "nvidia_smi", ["--query-gpu=memory.total,compute_cap", "--format=csv,noheader,nounits"],
                   SMI_595, state=OK_595)
    assert res.stdout == "16311, 12.0\n"
    bad = run_fake(tmp_path, "nvidia_smi", ["--query-gpu=bogus", "--format=csv"], SMI_595, state=OK_595)
    assert bad.returncode == 2 and 'Field "bogus" is not a valid field to query.' in bad.stdout


def test_nvidia_smi_xml_replays_corpus_gtx1070():
    lines = corpus("nvidia-smi_-q_-x_gtx1070_530.xml").split("\n")
    expected = "\n".join(lines[1:])
    smi = programs.load("nvidia_smi", DRIVER_VERSION="530.30.02", CUDA_VERSION="Not Found")
    gtx = {"bus": "00000000:09:00.0", "name": "NVIDIA GeForce GTX 1070", "brand": "GeForce", "arch": "Pascal",
           "display_mode": "Disabled", "display_active": "Disabled", "persistence_mode": "Disabled", "serial": "N/A",
           "uuid": "GPU-0f28aa42-45b8-2019-1c8b-35a2ccd7ce89", "minor": 0, "vbios": "86.04.50.00.24",
           "board_id": "0x900", "gpu_part_number": "1B81-200-A1", "inforom_img": "G001.0000.01.04", "inforom_oem": "1.1",
           "gsp": "N/A", "virt": "None", "pci_bus": "09", "pci_device": "00", "pci_domain": "0000",
           "pci_device_id": "1B8110DE", "pci_sub_system_id": "33011462", "link_gen": 3, "link_width": "16x",
           "fan": "49 %", "perf": "P2", "total": 8192, "reserved": 78, "used": 1270, "free": 6843,
           "bar1_total": 256, "bar1_used": 2, "bar1_free": 254, "compute_mode": "Default",
           "gpu_util": "2 %", "memory_util": "1 %", "encoder_util": "3 %", "decoder_util": "5 %",
           "power_draw": "39.10 W", "power_limit": "190.00 W", "min_power_limit": "95.00 W", "max_power_limit": "200.00 W",
           "procs": [{"pid": 200870, "type": "C", "name": "", "used_mib": 958}]}
    head = {"timestamp": "Sun Feb 25 15:06:53 2024", "driver_version": "530.30.02", "cuda_version": "Not Found", "attached": 1}
    assert smi.render_xml(head, [gtx]) == expected


def test_nvidia_smi_xml_of_the_lab_gpu_parses(tmp_path):
    import xml.etree.ElementTree as ET
    res = run_fake(tmp_path, "nvidia_smi", ["-q", "-x"], SMI_595, state=OK_595, now=0)
    root = ET.fromstring(res.stdout.split("\n", 2)[2])
    assert root.findtext("driver_version") == "595.71.05"
    assert root.findtext("gpu/product_name") == "NVIDIA GeForce RTX 5060 Ti"
    assert root.findtext("gpu/fb_memory_usage/total") == "16311 MiB"
    assert root.findtext("gpu/pci/pci_device_id") == "2D0410DE"


def test_nvidia_smi_failure_messages_replay_corpus(tmp_path):
    msgs = {m.group(1): m.group(2) for m in re.finditer(r"^\((\d)\) (.*)$", corpus("nvidia-smi_failure_messages.txt"), re.M)}
    mismatch_tail = re.search(r"^    (NVML library version: .*)$", corpus("nvidia-smi_failure_messages.txt"), re.M).group(1)
    # (1) no module loaded in this boot (fresh install before the reboot, or module rejected)
    res = run_fake(tmp_path, "nvidia_smi", [], SMI_595, state=None)
    assert (res.returncode, res.stdout) == (9, msgs["1"] + "\n")
    rej = run_fake(tmp_path, "nvidia_smi", [], SMI_595, state=dict(OK_595, status="rejected"))
    assert (rej.returncode, rej.stdout) == (9, msgs["1"] + "\n")
    # (2) closed module on Blackwell: loaded, RmInitAdapter failed
    res = run_fake(tmp_path, "nvidia_smi", [], SMI_595, state=dict(OK_595, status="rminit_failed", flavour="closed"))
    assert (res.returncode, res.stdout) == (6, msgs["2"] + "\n")
    # (4) userspace upgraded without reboot: the loaded module is older than the library
    res = run_fake(tmp_path, "nvidia_smi", [], {"DRIVER_VERSION": "610.43.01", "CUDA_VERSION": "13.2"}, state=OK_595)
    assert res.stdout == msgs["4"] + "\n" + mismatch_tail + "\n"
    # a state of an earlier boot does not count: /run is per boot
    stale = tmp_path / "stale"
    stale.mkdir()
    res = run_fake(stale, "nvidia_smi", [], SMI_595, state=OK_595, extra_env={"LAB_BOOT_ID": "another-boot"})
    assert res.returncode == 9


# ---------------------------------------------------------------- ubuntu-drivers
def _hw_from_corpus(name: str) -> dict:
    lines = [line for line in body(name) if line.strip() and not line.startswith("$") and line != "ubuntu-drivers devices"]
    path = lines[0].strip("= ")
    alias = lines[1].split(" : ")[1]
    m = re.match(r"pci:v0000(....)d0000(....)sv0000(....)sd0000(....)bc(..)sc(..)i00", alias)
    gpu = dict(copy.deepcopy(RTX5060TI), sysfs_path=path, vendor_id=m.group(1).lower(), device_id=m.group(2).lower(),
               subsystem_vendor_id=m.group(3).lower(), subsystem_device_id=m.group(4).lower(), class_id=m.group(5) + m.group(6))
    gpu.pop("ubuntu_drivers_model", None)
    drivers = []
    for line in lines[2:]:
        key, _, val = line.partition(" : ")
        if key.strip() == "model":
            gpu["ubuntu_drivers_model"] = val
        elif key.strip() == "driver":
            pkg, _, origin = val.partition(" - ")
            rec = origin.endswith(" recommended")
            drivers.append([pkg, origin[: -len(" recommended")] if rec else origin, rec])
    return {"profile": "test", "secure_boot": False, "gpus": [gpu], "ubuntu_drivers": drivers}


def test_ubuntu_drivers_devices_replays_rtx5060ti_corpus_from_the_profile(tmp_path):
    name = "ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt"
    expected = "\n".join(line for line in body(name)[2:]).rstrip("\n") + "\n"
    res = run_fake(tmp_path, "ubuntu_drivers", ["devices"], hw=get_profile("rtx5060ti").guest_hw())
    assert res.returncode == 0
    assert res.stdout == expected
    assert "nvidia-driver-570 - third-party non-free recommended" in res.stdout   # the trap is there


@pytest.mark.parametrize("name", ["ubuntu-drivers-devices_gtx650ti_server_recommended.txt",
                                  "ubuntu-drivers-devices_rtx3070ti_with_model_line.txt"])
def test_ubuntu_drivers_devices_replays_other_real_captures(tmp_path, name):
    expected = "\n".join(line for line in body(name) if not line.startswith("$")).rstrip("\n") + "\n"
    res = run_fake(tmp_path, "ubuntu_drivers", ["devices"], hw=_hw_from_corpus(name))
    assert res.stdout == expected


def test_ubuntu_drivers_list_and_no_gpu(tmp_path):
    res = run_fake(tmp_path, "ubuntu_drivers", ["list"])
    assert res.stdout == ("nvidia-driver-570-open, (kernel modules provided by nvidia-dkms-570-open)\n"
                          "nvidia-driver-570, (kernel modules provided by nvidia-dkms-570)\n")
    rec = run_fake(tmp_path, "ubuntu_drivers", ["list", "--recommended"])
    assert rec.stdout == "nvidia-driver-570, (kernel modules provided by nvidia-dkms-570)\n"
    none = run_fake(tmp_path, "ubuntu_drivers", ["devices"], hw=get_profile("no-gpu").guest_hw())
    assert (none.returncode, none.stdout) == (0, "")
    inst = run_fake(tmp_path, "ubuntu_drivers", ["install", "nvidia:999-open"], extra_env={"LAB_NO_ROOT_CHECK": "1"})
    assert inst.stdout == "No drivers found for installation.\n"


# ---------------------------------------------------------------- kernel log (driver package boot unit)
def _dmesg_records(name: str) -> list[str]:
    """Kernel records of a corpus dmesg capture: timestamp stripped, continuation lines joined."""
    recs: list[str] = []
    for line in body(name):
        m = re.match(r"^\[\s*\d+\.\d+\] (.*)$", line)
        if m:
            recs.append(m.group(1))
        elif recs and line.startswith(" ") and line.strip().startswith("NVRM:"):
            recs[-1] += "\n" + line.strip()
    return recs


def test_closed_module_on_blackwell_writes_corpus_kernel_lines():
    kmod = programs.load("nvidia_kmod", DRIVER_VERSION="580.105.08", FLAVOUR="closed", CUDA_VERSION="13.0")
    gpu = dict(RTX5060TI, pci_address="0000:02:00.0", device_id="2c58")
    status, msgs = kmod.kernel_messages({"gpus": [gpu]}, "closed", "580.105.08")
    nvrm = [text for _lvl, text in msgs if text.startswith("NVRM")]
    assert status == "rminit_failed"
    assert nvrm == _dmesg_records("dmesg_blackwell_closed_module_requires_open.txt")[:4]


def test_open_module_writes_taint_lines_and_loads():
    kmod = programs.load("nvidia_kmod", DRIVER_VERSION="570.195.03", FLAVOUR="open", CUDA_VERSION="12.8")
    status, msgs = kmod.kernel_messages(get_profile("rtx5060ti").guest_hw(), "open", "570.195.03")
    texts = [t for _l, t in msgs]
    assert status == "ok"
    assert texts[:3] == _dmesg_records("dmesg_module_verification_failed_and_gsp_unsupported.txt")[:3]
    assert "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release Build" in texts[3]


def test_secure_boot_and_no_gpu_kernel_lines():
    kmod = programs.load("nvidia_kmod", DRIVER_VERSION="570.195.03", FLAVOUR="open", CUDA_VERSION="12.8")
    status, msgs = kmod.kernel_messages(get_profile("secure-boot").guest_hw(), "open", "570.195.03")
    assert status == "rejected"
    assert msgs[0][1].endswith(": Failed to insert module 'nvidia': Key was rejected by service")
    status, msgs = kmod.kernel_messages(get_profile("no-gpu").guest_hw(), "open", "570.195.03")
    assert status == "no_device" and msgs[-1][1] == "NVRM: No NVIDIA devices probed."


def test_kmod_load_writes_kmsg_and_state_then_nvidia_smi_works(tmp_path):
    res = run_fake(tmp_path, "nvidia_kmod", ["load"], {"DRIVER_VERSION": "570.195.03", "FLAVOUR": "open", "CUDA_VERSION": "12.8"},
                   extra_env={"LAB_PROC_DRIVER": str(tmp_path / "procdriver")})
    assert res.returncode == 0, res.stderr
    version = (tmp_path / "procdriver" / "nvidia" / "version").read_text()
    assert version.startswith("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.195.03  Release Build  (")
    kmsg = (tmp_path / "kmsg").read_text()
    assert "<4>nvidia: module verification failed: signature and/or required key missing - tainting kernel\n" in kmsg
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state == {"boot_id": BOOT, "version": "570.195.03", "branch": "570", "flavour": "open", "status": "ok",
                     "cuda_version": "12.8"}
    smi = run_fake(tmp_path, "nvidia_smi", ["--query-gpu=driver_version", "--format=csv,noheader"],
                   {"DRIVER_VERSION": "570.195.03", "CUDA_VERSION": "12.8"})
    assert smi.stdout == "570.195.03\n"


# ---------------------------------------------------------------- CUDA
def test_nvcc_version_replays_corpus(tmp_path):
    lines = body("nvcc_--version_12.8_and_13.0.txt")
    expected = "\n".join(lines[1:6]) + "\n"
    res = run_fake(tmp_path, "cuda_tools", ["--version"], {"TOOL": "nvcc"})
    assert (res.returncode, res.stdout) == (0, expected)


def test_cuda_samples_need_a_loaded_driver(tmp_path):
    ok = {"version": "570.195.03", "status": "ok", "cuda_version": "12.8"}
    res = run_fake(tmp_path, "cuda_tools", [], {"TOOL": "vectorAdd"}, state=ok)
    assert res.returncode == 0 and "Test PASSED" in res.stdout
    dq = run_fake(tmp_path, "cuda_tools", [], {"TOOL": "deviceQuery"}, state=ok)
    assert dq.returncode == 0 and "CUDA Capability Major/Minor version number:    12.0" in dq.stdout
    (tmp_path / "run" / "state.json").unlink()
    res = run_fake(tmp_path, "cuda_tools", [], {"TOOL": "vectorAdd"})
    assert res.returncode == 1 and "Test PASSED" not in res.stdout
    dq = run_fake(tmp_path, "cuda_tools", [], {"TOOL": "deviceQuery"})
    assert dq.returncode == 1 and "Result = FAIL" in dq.stdout


def test_kmsg_records_go_to_the_device_without_append_mode(monkeypatch):
    """/dev/kmsg refuses Python's append mode (its seek to the end gives EINVAL): in the lab guest
    no NVRM line reached dmesg until write_kmsg opened it plainly write-only."""
    import os

    kmod = programs.load("nvidia_kmod", DRIVER_VERSION="570.195.03", FLAVOUR="open", CUDA_VERSION="12.8")
    opened, written = [], []
    monkeypatch.delenv("LAB_KMSG", raising=False)
    monkeypatch.setattr(os, "open", lambda path, flags, mode=0o777: opened.append((path, flags)) or 99)
    monkeypatch.setattr(os, "write", lambda fd, data: written.append(data) or len(data))
    monkeypatch.setattr(os, "close", lambda fd: None)
    kmod.write_kmsg([(6, "NVRM: one"), (3, "NVRM: two\nNVRM: continued")])
    assert [p for p, _ in opened] == ["/dev/kmsg", "/dev/kmsg"]
    assert all(not flags & os.O_APPEND for _, flags in opened)
    assert written == [b"<6>NVRM: one\n", b"<3>NVRM: two\nNVRM: continued\n"]
