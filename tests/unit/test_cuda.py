"""CUDA component decisions on real outputs (tests/fixtures/corpus)."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioners.errors import DeployError
from provisioners.guest import cuda as cuda_mod
from provisioners.guest.cuda import (
    CudaComponent, assert_allowed, check_version, cuda_checks, min_cuda_for, parse_nvcc,
    sample_passed, toolkit_package,
)

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
NVCC = (CORPUS / "nvcc_--version_12.8_and_13.0.txt").read_text()
NVCC_128 = NVCC.split("\n(b)")[0].split("\n(a)", 1)[1]
NVCC_130 = NVCC.split("\n(b)")[1].split("\n(c)")[0]


def vm(version="12.8"):
    return SimpleNamespace(
        gpu=SimpleNamespace(expected=SimpleNamespace(pci_id="10de:2d04")),
        stack=SimpleNamespace(cuda=SimpleNamespace(
            version=version,
            keyring_url="https://developer.download.nvidia.com/compute/cuda/repos/ubuntu2404/"
                        "x86_64/cuda-keyring_1.1-1_all.deb")))


@pytest.fixture(autouse=True)
def sm120(monkeypatch):
    monkeypatch.setattr(cuda_mod, "compute_capability",
                        lambda pci: (12, 0) if pci == "10de:2d04" else None)


def test_parse_nvcc_corpus():
    assert parse_nvcc(NVCC_128) == "12.8"
    assert parse_nvcc(NVCC_130) == "13.0"
    assert parse_nvcc("bash: nvcc: command not found") is None


def test_version_floor_for_sm120():
    assert min_cuda_for((12, 0)) == (12, 8)
    assert min_cuda_for((8, 6)) == (11, 1)
    assert min_cuda_for((6, 1)) is None
    check_version("12.8", "10de:2d04")
    check_version("13.0", "10de:2d04")
    with pytest.raises(DeployError) as ei:
        check_version("12.6", "10de:2d04")
    assert "sm_120 needs CUDA >= 12.8" in str(ei.value)
    assert '"12.8"' in ei.value.remedy
    check_version("12.6", "10de:9999")  # unknown GPU: no floor known


def test_plan_refuses_old_cuda_for_blackwell_and_apply_raises():
    comp = CudaComponent(vm("12.4"))
    facts = comp.facts_from_outputs({})
    [ch] = comp.plan(facts)
    assert ch.action == "refuse" and "12.8" in ch.reason
    with pytest.raises(DeployError) as ei:
        comp.apply(object(), facts, [ch])
    assert "stack.cuda.version" in ei.value.remedy


def test_never_cuda_or_cuda_drivers():
    for bad in ("cuda", "cuda-drivers", "cuda-drivers-570", "cuda-12-8", "cuda-runtime-12-8"):
        with pytest.raises(DeployError):
            assert_allowed(["cuda-toolkit-12-8", bad])
    assert_allowed(["cuda-toolkit-12-8", "cuda-demo-suite-12-8", "cuda-keyring"])
    assert toolkit_package("12.8") == "cuda-toolkit-12-8"
    with pytest.raises(DeployError):
        toolkit_package("12")


class RecordingSession:
    """Records commands; answers apt-cache show with 'absent' (exit 100)."""

    def __init__(self):
        self.commands: list[str] = []

    def run(self, cmd, **kw):
        self.commands.append(cmd)
        code = 100 if cmd.startswith("apt-cache show") else 0
        return SimpleNamespace(exit_code=code, stdout="", stderr="")


def test_fresh_plan_and_apply_installs_keyring_then_toolkit_only():
    comp = CudaComponent(vm())
    facts = comp.facts_from_outputs({"installed": (0, ""), "nvcc": (127, "not found")})
    changes = comp.plan(facts)
    assert [(c.action, c.field, c.desired) for c in changes] == [
        ("create", "repository", "cuda-keyring"), ("create", "toolkit", "cuda-toolkit-12-8")]
    s = RecordingSession()
    results = comp.apply(s, facts, changes)
    assert [r.status for r in results] == ["changed", "changed"]
    installs = [c for c in s.commands if " install " in f" {c} " and "apt-get" in c]
    assert len(installs) == 1 and installs[0].endswith("install -y --no-install-recommends "
                                                       "cuda-toolkit-12-8")
    assert not any(re.search(r"\bcuda-drivers\b|install[^\n]* cuda( |$)", c) for c in s.commands)
    assert any("dpkg -i" in c and "cuda-keyring_1.1-1_all.deb" in c for c in s.commands)


def test_converged_plan_is_empty_and_checks():
    comp = CudaComponent(vm())
    facts = comp.facts_from_outputs({
        "installed": (0, "ii  cuda-keyring 1.1-1\nii  cuda-toolkit-12-8 12.8.1-1\n"),
        "nvcc": (0, NVCC_128), "nvcc_default": (0, NVCC_128),
        "cuda_link": (0, "/usr/local/cuda-12.8")})
    assert comp.plan(facts) == []
    out = ("@@sample /usr/local/cuda-12.8/extras/demo_suite/vectorAdd\n"
           "[Vector addition of 50000 elements]\nCopy input data from the host memory to the "
           "CUDA device\nCUDA kernel launch with 196 blocks of 256 threads\n"
           "Copy output data from the CUDA device to the host memory\nTest PASSED\nDone\n")
    checks = cuda_checks(facts, "12.8", out, 0)
    assert [(c.name, c.passed) for c in checks] == [
        ("nvcc --version", True), ("CUDA packages", True), ("CUDA sample", True)]
    assert "V12.8.93" in checks[0].evidence


def test_wrong_nvcc_and_forbidden_package_fail_checks():
    comp = CudaComponent(vm())
    facts = comp.facts_from_outputs({
        "installed": (0, "ii  cuda-keyring 1.1-1\nii  cuda-toolkit-12-8 12.8.1-1\n"
                         "ii  cuda-drivers 580.95.05-1\n"),
        "nvcc": (0, NVCC_130)})
    [ch] = comp.plan(facts)
    assert ch.field == "toolkit" and "found 13.0" in ch.reason
    checks = {c.name: c for c in cuda_checks(facts, "12.8", "no CUDA sample\n", 44)}
    assert not checks["nvcc --version"].passed
    assert checks["CUDA packages"].actual == "cuda-drivers"
    assert not checks["CUDA sample"].passed


def test_sample_verdicts():
    assert sample_passed("@@sample /x/deviceQuery\n...\nResult = PASS\n", 0)[0]
    assert not sample_passed("@@sample /x/vectorAdd\nFailed to launch vectorAdd kernel "
                             "(error code no kernel image is available)\n", 1)[0]
    assert not sample_passed("", 44)[0]
