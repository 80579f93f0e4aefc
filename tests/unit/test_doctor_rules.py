"""Doctor rules that need several captures together, plus naming/transcript helpers.

Real corpus outputs are used where they exist; lines marked SYNTHESISED follow the exact
wording of the named tool but are not from a captured machine.
"""
import pytest

from provisioners.doctor import capture_kind, command_kind, diagnose, split_transcript
from tests.fixtures.corpus.samples import sample, text

LSPCI_5060 = text("lspci-nnk_rtx5060ti_nvidia_bound.txt")
NVCC_128 = sample("nvcc_--version_12.8_and_13.0.txt", "a")
# SYNTHESISED: nvcc of Ubuntu 24.04's nvidia-cuda-toolkit (CUDA 12.0), same format as the corpus
NVCC_120 = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 12.0, V12.0.140\n"
SMI_NO_DEVICES = sample("nvidia-smi_failure_messages.txt", "2")
SMI_NOT_LOADED = sample("nvidia-smi_failure_messages.txt", "1")


def ids(captures):
    return diagnose(captures).ids


def test_cuda_too_old_for_blackwell():
    d = diagnose({"lspci": LSPCI_5060, "nvcc": NVCC_120})
    assert d.ids == ["cuda-too-old-for-gpu"]
    assert "12.8" in d.findings[0].cause and "cuda-toolkit-12-8" in d.findings[0].remedy
    assert ids({"lspci": LSPCI_5060, "nvcc": NVCC_128}) == []
    assert ids({"nvcc": NVCC_120}) == []  # no GPU known: nothing to compare with


def test_modinfo_license_decides_open_module():
    closed = diagnose({"lspci": LSPCI_5060, "modinfo": "license:        NVIDIA\nversion:        570.133.07\n"})
    assert closed.ids == ["closed-module-on-open-only-gpu"]
    assert closed.gpus[0].open_kernel_module is False and closed.gpus[0].driver_version == "570.133.07"
    opened = diagnose({"lspci": LSPCI_5060, "modinfo": "license:        Dual MIT/GPL\nversion:        580.95.05\n"})
    assert opened.ids == [] and opened.gpus[0].open_kernel_module is True


def test_proc_driver_version_open_flavour():
    d = diagnose({"lspci": LSPCI_5060, "proc-driver": (
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  Release Build  "
        "(dvs-builder@U22-I3-AM02-24-3)  Tue Sep 23 09:00:00 UTC 2025\n")})
    assert d.ids == [] and (d.gpus[0].open_kernel_module, d.gpus[0].driver_version) == (True, "580.95.05")


def test_driver_branch_below_minimum():
    d = diagnose({"lspci": LSPCI_5060, "modinfo": "license:        Dual MIT/GPL\nversion:        555.58.02\n"})
    assert d.ids == ["driver-too-old-for-gpu"]


def test_secure_boot_rejection_explains_missing_driver():
    # SYNTHESISED: modprobe's wording for a module refused by kernel signature enforcement
    d = diagnose({"modprobe": "modprobe: ERROR: could not insert 'nvidia': Key was rejected by service\n",
                  "nvidia-smi": SMI_NOT_LOADED})
    assert d.ids == ["secure-boot-rejected-module"]
    assert "mokutil" in d.findings[0].remedy


def test_benign_kernel_lines_give_nothing():
    log = text("dmesg_module_verification_failed_and_gsp_unsupported.txt").splitlines()[:3]
    assert ids({"dmesg": "\n".join(log) + "\n[    1.2] pcieport 0000:00:1c.0: LTR is disabled\n"}) == []


@pytest.mark.parametrize("processor,expected", [("100% GPU", []), ("100% CPU", ["ollama-cpu-fallback"]),
                                                ("48%/52% CPU/GPU", ["ollama-cpu-fallback"])])
def test_ollama_ps_processor(processor, expected):
    ps = ("NAME           ID              SIZE      PROCESSOR    CONTEXT    UNTIL\n"
          f"llama3.1:8b    46e0c10c039e    5.3 GB    {processor}     4096       4 minutes from now\n")
    assert ids({"ollama": ps}) == expected


def _lspci_with_driver(driver):
    return LSPCI_5060.replace("Kernel driver in use: nvidia", f"Kernel driver in use: {driver}", 1)


def test_lspci_nouveau_bound_is_a_finding():
    assert ids({"lspci": _lspci_with_driver("nouveau")}) == ["nouveau-or-vfio-bound"]


def test_lspci_vfio_bound_only_matters_when_nvidia_expected():
    assert ids({"lspci": _lspci_with_driver("vfio-pci")}) == []  # passthrough host: as intended
    assert ids({"lspci": _lspci_with_driver("vfio-pci"), "nvidia-smi": SMI_NO_DEVICES}) == ["nouveau-or-vfio-bound"]
    assert ids({"lspci": _lspci_with_driver("vfio-pci"), "nvidia-smi": "bash: nvidia-smi: command not found\n"}) == []


def test_gpu_without_any_driver():
    assert ids({"lspci": LSPCI_5060, "nvidia-smi": "bash: nvidia-smi: command not found\n"}) == ["driver-not-loaded"]
    assert ids({"nvidia-smi": "bash: nvidia-smi: command not found\n"}) == []


def test_ubuntu_drivers_list_recommended():
    closed = "nvidia-driver-570, (kernel modules provided by linux-modules-nvidia-570-generic)\n"
    opened = "nvidia-driver-570-open, (kernel modules provided by linux-modules-nvidia-570-open-generic)\n"
    t = "$ lspci -nn\n" + LSPCI_5060 + "$ ubuntu-drivers list --recommended\n"
    assert ids({"transcript": t + closed}) == ["closed-driver-recommended"]
    assert ids({"transcript": t + opened}) == []
    assert ids({"transcript": t.replace(" --recommended", "") + closed}) == []  # plain list: no recommendation


def test_torch_arch_list_without_sm120():
    t = ("$ lspci -nnk\n" + LSPCI_5060 +
         "$ python3 -c 'import torch; print(torch.cuda.get_arch_list())'\n"
         "['sm_50', 'sm_60', 'sm_70', 'sm_75', 'sm_80', 'sm_86', 'sm_90']\n")
    assert ids({"t": t}) == ["torch-lacks-gpu-arch"]
    assert ids({"t": t.replace("'sm_90']", "'sm_90', 'sm_100', 'sm_120']")}) == []


def test_fell_off_bus_in_kernel_log_explains_smi():
    # SYNTHESISED: NVIDIA Xid 79 kernel line
    d = diagnose({"dmesg": "[ 99.1] NVRM: Xid (PCI:0000:01:00): 79, pid=0, GPU has fallen off the bus.\n",
                  "nvidia-smi": SMI_NOT_LOADED})
    assert d.ids == ["gpu-fell-off-bus"]


def test_to_evidence_and_text():
    d = diagnose({"nvidia-smi": SMI_NO_DEVICES})
    ev = d.to_evidence()
    assert set(ev) == {"doctor", "doctor.json"} and "driver-not-loaded" in ev["doctor"]


@pytest.mark.parametrize("name,kind", [
    ("nvidia-smi.txt", "nvidia-smi"), ("dmesg.txt", "dmesg"), ("ubuntu-drivers.txt", "ubuntu-drivers"),
    ("lspci.txt", "lspci"), ("nvcc.txt", "nvcc"), ("journal-ollama.txt", "journal-ollama"), ("vllm.log", "vllm"),
    ("ollama_journal_gpu_discovery_lines.txt", "journal-ollama"), ("ollama.txt", "ollama"),
    ("journal-vllm.txt", "vllm"), ("nvidia-smi_-q_-x_gtx1070_530.xml", "nvidia-smi"), ("README.md", None),
    ("kernelversion.txt", None), ("pve-task.log", "pve")])
def test_capture_kind(name, kind):
    assert capture_kind(name) == kind


@pytest.mark.parametrize("cmd,kind", [
    ("sudo dmesg | grep -i nvrm", "dmesg"), ("journalctl -k -b", "dmesg"), ("journalctl -u ollama -n 50", "journal-ollama"),
    ("journalctl -u vllm --no-pager", "vllm"), ("sudo /sbin/modprobe -v nvidia", "modprobe"),
    ("/usr/local/cuda/bin/nvcc --version", "nvcc"), ("nvidia-smi --query-gpu=name --format=csv", "nvidia-smi"),
    ("sudo ubuntu-drivers list --gpgpu", "ubuntu-drivers"), ("docker logs vllm-1", "vllm"),
    ("cat /proc/driver/nvidia/version", "proc-driver"), ("lsmod (nvidia lines)", None), ("uptime", None),
    ("curl http://localhost:11434/api/version", "ollama"), ("sudo -E env FOO=1 lspci -nnk", "lspci")])
def test_command_kind(cmd, kind):
    assert command_kind(cmd) == kind


def test_split_transcript_prompts_and_unknown_sections():
    t = ("junk before\nuser@host:~$ nvidia-smi\nNo devices were found\n$ uptime\n up 3 min\n"
         "   $ sudo dmesg\n   [ 1.0] NVRM: x\n")
    secs = split_transcript(t)
    assert [(k, c) for k, c, _ in secs] == [(None, ""), ("nvidia-smi", "nvidia-smi"), (None, "uptime"),
                                           ("dmesg", "sudo dmesg")]
    assert secs[1][2] == "No devices were found"


def test_unnamed_captures_are_read_by_their_wording():
    # names as the guest driver step passes them (probe / failure-log names)
    d = diagnose({"kernel log": text("dmesg_blackwell_closed_module_requires_open.txt").split("$ nvidia-smi")[0],
                  "verify:nvidia-smi": SMI_NO_DEVICES, "apt output": "E: Sub-process /usr/bin/dpkg returned an error code (1)"})
    assert d.ids == ["closed-module-on-open-only-gpu"]
    assert diagnose({"license": "NVIDIA\n", "lspci": LSPCI_5060}).ids == ["closed-module-on-open-only-gpu"]
    assert diagnose({"notes": "rebooted twice\n"}).ids == []


def test_str_of_diagnosis_and_finding():
    d = diagnose({"nvidia-smi": SMI_NO_DEVICES})
    assert str(d).startswith("GPUs:") and "driver-not-loaded" in str(d)
    assert str(d.findings[0]).startswith("driver-not-loaded (error): ")
    assert str(diagnose({"nvidia-smi": text("nvidia-smi_rtx5060ti_595.71.05_full_table.txt")})) == ""


@pytest.mark.parametrize("line", [
    # older Ollama wordings quoted in the corpus notes (ollama_journal_gpu_discovery_lines.txt)
    'time=2024-06-03T10:25:05.390+08:00 level=INFO source=gpu.go:1 msg="no compatible GPUs were discovered"',
    'time=2024-06-03T10:25:05.390+08:00 level=WARN source=gpu.go:1 msg="CPU does not have minimum vector '
    'extensions, GPU inference disabled"'])
def test_ollama_old_cpu_fallback_wordings(line):
    d = diagnose({"journal-ollama": line + "\n"})
    assert d.ids == ["ollama-cpu-fallback"]
    if "vector" in line:
        assert "cpu=host" in d.findings[0].remedy
