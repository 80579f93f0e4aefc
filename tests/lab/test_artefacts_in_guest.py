"""The fake GPU artefacts inside a real lab guest (profile from .lab/profile; rtx5060ti by default).

One boot + one reboot (TCG): add the lab apt repository, `ubuntu-drivers devices` replays the
corpus, install nvidia-driver-570-open, nvidia-smi refuses until the reboot, then the module
"loads" (kernel log, modinfo, nvidia-smi table), CUDA toolkit from the cuda-keyring repo, pip
downloads vllm from the lab index, the Ollama tarball matches its sha256.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lab import state
from lab.artefacts import ollama_tarball
from tests.lab.test_guest_boot import _boot_id, _create_and_start, _run, _ssh, lab, pve  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1500)]

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
# only the lab's sources (sources.list.d): the guest has no route to the Debian mirror
APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o Dir::Etc::sourcelist=/dev/null "


def sh(client, cmd: str, timeout: float = 600) -> str:
    code, out, err = _run(client, cmd, timeout=timeout)
    assert code == 0, f"{cmd}\nexit {code}\n{out}\n{err}"
    return out


@pytest.fixture(scope="module")
def guest(pve, lab):  # noqa: F811
    if json.loads(state.paths().gpu_profile_json.read_text())["profile"] != "rtx5060ti":
        pytest.skip("needs the lab in profile rtx5060ti")
    _create_and_start(pve, lab)
    client, _ = _ssh(lab)
    sh(client, "cloud-init status --wait")
    base = f"http://10.0.2.2:{lab['ports']['artefacts']}"
    yield client, base
    client.close()


def test_driver_flow_in_the_guest(guest, lab):  # noqa: F811
    client, base = guest
    assert "NVIDIA Corporation GB206 [GeForce RTX 5060 Ti] [10de:2d04]" in sh(client, "lspci -nn")
    sh(client, f"curl -fsS {base}/apt/lab-archive-key.asc | sudo gpg --dearmor -o /usr/share/keyrings/lab.gpg && "
               f"echo 'deb [signed-by=/usr/share/keyrings/lab.gpg] {base}/apt stable main' | sudo tee /etc/apt/sources.list.d/lab.list")
    sh(client, APT + "update")
    sh(client, APT + "install -y ubuntu-drivers-common")
    expected = "\n".join((CORPUS / "ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt").read_text().split("\n")[3:])
    assert sh(client, "ubuntu-drivers devices") == expected.rstrip("\n") + "\n"
    sh(client, APT + "install -y nvidia-driver-570-open", timeout=900)
    assert "System restart required" in sh(client, "cat /var/run/reboot-required")
    code, out, _ = _run(client, "nvidia-smi")
    assert code == 9 and "couldn't communicate with the NVIDIA driver" in out       # not before the reboot
    before = _boot_id(client)
    client.exec_command("sudo systemctl reboot")
    time.sleep(5)
    client, _ = _ssh(lab)
    try:
        assert _boot_id(client) != before
        assert sh(client, "/sbin/modinfo -F license nvidia") == "Dual MIT/GPL\n"
        assert "Open Kernel Module for x86_64  570.195.03" in sh(client, "cat /proc/driver/nvidia/version")
        dmesg = sh(client, "sudo dmesg")
        assert "NVRM: loading NVIDIA UNIX Open Kernel Module for x86_64  570.195.03" in dmesg
        assert "module verification failed: signature and/or required key missing" in dmesg
        assert "NVRM: loading NVIDIA UNIX Open Kernel Module" in sh(client, "sudo journalctl -k -b --no-pager")
        table = sh(client, "nvidia-smi")
        assert "| NVIDIA-SMI 570.195.03             Driver Version: 570.195.03     CUDA Version: 12.8     |" in table
        assert sh(client, "nvidia-smi --query-gpu=name,memory.total --format=csv,noheader") == "NVIDIA GeForce RTX 5060 Ti, 16311 MiB\n"
        # CUDA through the cuda-keyring repository, NVIDIA's way
        sh(client, f"curl -fsSO {base}/cuda/cuda-keyring_1.1-1_all.deb && sudo dpkg -i cuda-keyring_1.1-1_all.deb")
        sh(client, APT + "update && " + APT + "install -y cuda-toolkit-12-8", timeout=900)
        assert "release 12.8, V12.8.93" in sh(client, "/usr/local/cuda/bin/nvcc --version")
        assert "Test PASSED" in sh(client, "/usr/local/cuda/extras/demo_suite/vectorAdd")
        # pip index and Ollama tarball
        sh(client, f"python3 -m pip download --no-deps -d /tmp/w --index-url {base}/simple --trusted-host 10.0.2.2 vllm==0.10.2 "
                   "|| python3 -m venv /tmp/v && /tmp/v/bin/pip download --no-deps -d /tmp/w "
                   f"--index-url {base}/simple --trusted-host 10.0.2.2 vllm==0.10.2", timeout=300)
        sha = sh(client, f"curl -fsS {base}/ollama/ollama-linux-amd64.tgz | sha256sum").split()[0]
        assert sha == ollama_tarball.tarball_sha256()
    finally:
        client.close()
