"""The verify ladder over a REAL SSH session (the throw-away sshd of test_remote), with the
guest's programs replaced by scripts that print real corpus outputs (tests/fixtures/corpus).

The shims are put first on the session's PATH through sshd's ``SetEnv PATH=...``.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from provisioners.guest.base import Check
from provisioners.verify import (
    VERIFY_LADDER, LadderStep, ladder_step, run_ladder, summary, infra_host,
)
from tests.unit.helpers import guest  # noqa: F401  (pytest fixture)
from tests.unit.test_remote import sshd, store  # noqa: F401  (pytest fixtures)

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"

VM = SimpleNamespace(
    gpu=SimpleNamespace(expected=SimpleNamespace(pci_id="10de:2d04",
                                                 name="NVIDIA GeForce RTX 5060 Ti",
                                                 memory_mib=16311)),
    stack=SimpleNamespace(driver=SimpleNamespace(flavour="open", min_branch=570),
                          cuda=SimpleNamespace(version="12.8", keyring_url="x.deb")))


def body(name: str) -> str:
    """The corpus file without its ``# source:`` header line."""
    return "".join(ln for ln in (CORPUS / name).read_text().splitlines(True)
                   if not ln.startswith("# source:"))


def shim(bindir: Path, prog: str, output: str, code: int = 0) -> None:
    data = bindir / f"{prog}.out"
    data.write_text(output)
    (bindir / prog).write_text(f"#!/bin/sh\ncat {data}\nexit {code}\n")
    (bindir / prog).chmod(0o755)


def healthy(bindir: Path) -> None:
    shim(bindir, "lspci", body("lspci-nnk_rtx5060ti_nvidia_bound.txt"))
    # csv (c) of the corpus: "NVIDIA GeForce RTX 5060 Ti, 16311 MiB, 580.95.05"
    csv = body("nvidia-smi_query-gpu_csv_rtx5060ti.txt").strip().splitlines()[-1]
    shim(bindir, "nvidia-smi", csv + "\n")
    # plain `nvidia-smi` prints the table (corpus: RTX 5060 Ti, 595.71.05), queries the csv line
    table = body("nvidia-smi_rtx5060ti_595.71.05_full_table.txt").split("$ lsmod")[0].replace("$ nvidia-smi\n", "")
    (bindir / "nvidia-smi.table").write_text(table)
    (bindir / "nvidia-smi").write_text(f"#!/bin/sh\n[ $# -eq 0 ] && exec cat {bindir / 'nvidia-smi.table'}\n"
                                       f"cat {bindir / 'nvidia-smi.out'}\n")
    dmesg = body("dmesg_module_verification_failed_and_gsp_unsupported.txt").splitlines()[:2]
    shim(bindir, "dmesg", "\n".join(dmesg) + "\n[  161.1] NVRM: loading NVIDIA UNIX Open Kernel "
                          "Module for x86_64  580.95.05  Release Build\n")


def gpu_steps():
    return [s for s in VERIFY_LADDER if s.group == "gpu" and s.name != "cuda"]


def test_gpu_rungs_pass_on_healthy_outputs_with_evidence(guest):
    session, bindir = guest
    healthy(bindir)
    first = session.transport
    checks = run_ladder(session, None, VM, steps=gpu_steps())
    assert [c.name for c in checks] == ["lspci", "nvidia-smi table", "nvidia-smi name", "nvidia-smi memory.total",
                                        "nvidia-smi driver version", "kernel log"]
    assert all(c.passed for c in checks), summary(checks)
    assert "Kernel driver in use: nvidia" in checks[0].evidence
    assert "|     648MiB /  16311MiB |" in checks[1].evidence  # the table is the report's evidence
    assert checks[3].actual == "16311 MiB" and checks[4].actual == "580.95.05"
    assert "module verification failed" in checks[5].evidence  # benign line kept as evidence
    assert session.transport is first  # testinfra went through the same connection


def test_gpu_rungs_fail_on_closed_module_outputs(guest):
    session, bindir = guest
    lspci = body("lspci-nnk_rtx5060ti_nvidia_bound.txt").replace(
        "Kernel driver in use: nvidia", "Kernel driver in use: vfio-pci")
    shim(bindir, "lspci", lspci)
    shim(bindir, "nvidia-smi", "No devices were found\n", 6)  # corpus nvidia-smi_failure (2)
    closed = body("dmesg_blackwell_closed_module_requires_open.txt")
    shim(bindir, "dmesg", closed)
    checks = {c.name: c for c in run_ladder(session, None, VM, steps=gpu_steps())}
    assert not checks["lspci"].passed and "vfio-pci" in checks["lspci"].actual
    assert not checks["nvidia-smi name"].passed
    assert "no-devices" in checks["nvidia-smi memory.total"].actual
    kl = checks["kernel log"]
    assert not kl.passed and "closed-module-on-open-only" in kl.actual
    assert "rm-init-adapter-failed" in kl.actual


def test_missing_gpu_and_broken_rung_do_not_stop_the_ladder(guest):
    session, bindir = guest
    shim(bindir, "lspci", "")

    def boom(host, session, vm):
        raise RuntimeError("rung exploded")

    steps = [LadderStep("gpu", "boom", boom),
             next(s for s in VERIFY_LADDER if s.name == "lspci")]
    checks = run_ladder(session, None, VM, steps=steps)
    assert [(c.name, c.passed) for c in checks] == [("boom", False), ("lspci", False)]
    assert "rung exploded" in checks[0].actual and checks[1].actual == "not present"


def test_testinfra_host_runs_over_the_session(guest):
    session, _ = guest
    host = infra_host(session)
    assert host.run("echo hi").stdout == "hi\n"
    assert host.file("/etc/passwd").exists
    with host.sudo():
        assert host.run("id -u").stdout.strip() == "0"  # root session: sudo is a no-op


def test_extension_registration_and_group_filter():
    calls = []

    @ladder_step("vllm", "test-only rung")
    def rung(host, session, vm):
        calls.append(vm)
        return [Check("test-only", True)]

    try:
        ladder_step("vllm", "test-only rung")(rung)  # re-registering replaces, no duplicate
        assert [s.name for s in VERIFY_LADDER].count("test-only rung") == 1
        assert VERIFY_LADDER[-1].name == "test-only rung"
        checks = run_ladder(object(), None, VM, "vllm", host=object(),
                            steps=[s for s in VERIFY_LADDER if s.name == "test-only rung"])
        assert [c.name for c in checks] == ["test-only"] and calls == [VM]
    finally:
        VERIFY_LADDER[:] = [s for s in VERIFY_LADDER if s.name != "test-only rung"]


def test_ladder_order_is_gpu_then_driver():
    names = [(s.group, s.name) for s in VERIFY_LADDER[:5]]
    assert names == [("gpu", "lspci"), ("gpu", "nvidia-smi"), ("gpu", "kernel log"),
                     ("gpu", "cuda"), ("driver", "driver")]
