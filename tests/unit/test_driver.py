"""Driver decision and plan on real outputs (tests/fixtures/corpus, `# source:` lines there)."""
from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from provisioners.errors import DeployError
from provisioners.guest import driver as drv
from provisioners.guest.driver import (
    DriverComponent, GpuNeeds, choose_driver, driver_checks, facts_from_outputs, options_for_gpu,
)
from provisioners.parsers.ubuntu_drivers import parse_devices, parse_list

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"
BLACKWELL = GpuNeeds("10de:2d04", open_modules_only=True, min_driver_branch=570, known=True)


def corpus(name: str) -> str:
    return (CORPUS / name).read_text()


def section(text: str, label: str) -> str:
    """The lines of one ``(a)``/``(b)``... block of a multi-sample corpus file."""
    out, on = [], False
    for line in text.splitlines():
        m = re.match(r"^\((\w)\)", line)
        if m:
            on = m.group(1) == label
        if on:
            out.append(line)
    return "\n".join(out)


def test_5060ti_recommending_closed_570_picks_570_open():
    text = corpus("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt")
    dev = parse_devices(text)[0]
    assert dev.recommended.package == "nvidia-driver-570"  # the trap is really in the capture
    choice = choose_driver(dev.drivers, "10de:2d04", "open", 570, needs=BLACKWELL)
    assert choice.package == "nvidia-driver-570-open"
    assert choice.open and not choice.recommended


def test_closed_recommended_even_without_gpu_table_still_open_by_catalog():
    text = corpus("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt")
    unknown = GpuNeeds("10de:2d04", False, None, False)
    assert choose_driver(parse_devices(text)[0].drivers, "10de:2d04", "open", 570,
                         needs=unknown).package == "nvidia-driver-570-open"


def test_noble_blackwell_list_picks_highest_regular_open():
    text = section(corpus("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt"), "a")
    choice = choose_driver(parse_list(text), "10de:2d04", "open", 570, needs=BLACKWELL)
    assert choice.package == "nvidia-driver-575-open"
    assert choice.kernel_modules_provider == "linux-modules-nvidia-575-open-generic-hwe-24.04"


def test_noble_ga_only_server_open_picks_highest_server_open():
    text = section(corpus("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt"), "c")
    choice = choose_driver(parse_list(text), "10de:2d04", "open", 570, needs=BLACKWELL)
    assert choice.package == "nvidia-driver-590-server-open"


def test_list_recommended_sample_picks_580_open():
    text = section(corpus("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt"), "d")
    assert choose_driver(parse_list(text), "10de:2d04", "open", 570,
                         needs=BLACKWELL).package == "nvidia-driver-580-open"


def test_regular_preferred_over_higher_server_open():
    opts = parse_list("nvidia-driver-580-open, (kernel modules provided by x)\n"
                      "nvidia-driver-590-server-open, (kernel modules provided by y)\n")
    assert choose_driver(opts, "10de:2d04", "open", 570, needs=BLACKWELL).package == \
        "nvidia-driver-580-open"


def test_no_open_flavour_is_an_error_not_a_closed_install():
    text = section(corpus("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt"), "b")
    with pytest.raises(DeployError) as ei:
        choose_driver(parse_list(text), "10de:2d04", "open", 570, needs=BLACKWELL)
    msg = str(ei.value)
    assert "no open (-open) NVIDIA driver of branch >= 570" in msg
    assert "nvidia-driver-580-server" in msg and "not a fallback" in msg


def test_open_below_minimum_branch_is_refused():
    text = section(corpus("ubuntu-drivers-list_outputs_noble_blackwell_and_gpgpu.txt"), "e")
    with pytest.raises(DeployError):
        choose_driver(parse_list(text), "10de:2d04", "open", 570, needs=BLACKWELL)
    # the GPU's own minimum raises the catalog's
    assert choose_driver(parse_list(text), "10de:1b81", "open", 0,
                         needs=GpuNeeds("10de:1b81", False, None, False)).package == \
        "nvidia-driver-545-open"


def test_closed_requested_for_open_only_card_is_refused():
    text = corpus("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt")
    with pytest.raises(DeployError) as ei:
        choose_driver(parse_devices(text)[0].drivers, "10de:2d04", "closed", 570, needs=BLACKWELL)
    assert "only works with the open kernel modules" in str(ei.value)


def test_closed_allowed_on_older_card_when_asked():
    text = corpus("ubuntu-drivers-devices_rtx3070ti_with_model_line.txt")
    dev = parse_devices(text)[0]
    c = choose_driver(dev.drivers, dev.pci_id, "closed", 470,
                      needs=GpuNeeds(dev.pci_id, False, None, False))
    assert c.package == "nvidia-driver-555"
    assert choose_driver(dev.drivers, dev.pci_id, "open", 470,
                         needs=GpuNeeds(dev.pci_id, False, None, False)).package == \
        "nvidia-driver-555-open"


# ---- plan on assembled facts ---------------------------------------------------------------

VM = SimpleNamespace(
    gpu=SimpleNamespace(expected=SimpleNamespace(pci_id="10de:2d04",
                                                 name="NVIDIA GeForce RTX 5060 Ti",
                                                 memory_mib=16311)),
    stack=SimpleNamespace(driver=SimpleNamespace(flavour="open", min_branch=570)))

LSPCI = corpus("lspci-nnk_rtx5060ti_nvidia_bound.txt")
DEVICES = corpus("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt")
SMI_OK = "NVIDIA GeForce RTX 5060 Ti, 16311 MiB, 580.95.05"  # corpus csv (c)
SMI_FAILS = corpus("nvidia-smi_failure_messages.txt").splitlines()[3][4:]


@pytest.fixture(autouse=True)
def blackwell(monkeypatch):
    monkeypatch.setattr(drv, "gpu_needs", lambda pci: BLACKWELL)


def fresh_outputs(**over):
    base = {
        "has_ubuntu_drivers": (0, "/usr/bin/ubuntu-drivers"),
        "devices": (0, DEVICES), "list": (0, ""),
        "installed": (0, ""), "license": (1, "modinfo: ERROR: Module nvidia not found."),
        "module_version": (1, ""), "loaded": (1, ""),
        "smi": (127, "bash: nvidia-smi: command not found"),
        "reboot_required": (1, ""), "secure_boot": (0, "SecureBoot disabled"),
        "lspci": (0, LSPCI), "boot_id": (0, "b1"), "kernel": (0, "6.8.0-50-generic"),
    }
    base.update(over)
    return base


def test_plan_fresh_vm_installs_open_and_explains_recommended_closed():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(), "10de:2d04")
    assert facts.values["smi_failure"] == "not-installed"
    [ch] = comp.plan(facts)
    assert (ch.action, ch.desired) == ("create", "nvidia-driver-570-open")
    assert "recommends nvidia-driver-570" in ch.reason


def test_plan_converged_is_empty_and_checks_pass():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(
        installed=(0, "ii  nvidia-driver-580-open 580.95.05-0ubuntu1\n"),
        license=(0, "Dual MIT/GPL"), module_version=(0, "580.95.05"),
        loaded=(0, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.95.05  "
                   "Release Build  (dvs-builder@U22-I3-AF03-09-1)  Thu Sep 25 2025"),
        smi=(0, SMI_OK)), "10de:2d04")
    assert comp.plan(facts) == []  # 580 from a moved 570 metapackage is fine: >= 570 and open
    checks = driver_checks(facts, comp)
    assert [c.name for c in checks] == ["ubuntu-drivers", "installed flavour", "modinfo license",
                                        "reboot", "nvidia-smi"]
    assert all(c.passed for c in checks), checks
    assert "16311" in checks[-1].evidence


def test_plan_closed_installed_is_replaced_by_open():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(
        installed=(0, "ii  nvidia-driver-570 570.195.03-0ubuntu1\n"),
        license=(0, "NVIDIA"), smi=(6, "No devices were found")), "10de:2d04")
    [ch] = comp.plan(facts)
    assert (ch.action, ch.current, ch.desired) == ("update", "nvidia-driver-570",
                                                  "nvidia-driver-570-open")
    checks = {c.name: c for c in driver_checks(facts, comp)}
    assert not checks["modinfo license"].passed and checks["modinfo license"].actual == "NVIDIA"
    assert not checks["nvidia-smi"].passed and "no-devices" in checks["nvidia-smi"].actual


def test_plan_installed_but_not_loaded_needs_restart():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(
        installed=(0, "ii  nvidia-driver-570-open 570.195.03-0ubuntu1\n"),
        license=(0, "Dual MIT/GPL"), smi=(18, SMI_FAILS),
        reboot_required=(0, "required\nnvidia-dkms-570-open\n")), "10de:2d04")
    [ch] = comp.plan(facts)
    assert ch.action == "needs-restart" and "nvidia-dkms-570-open" in ch.reason


def test_plan_half_configured_driver_is_reinstalled():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(
        installed=(0, "iF  nvidia-dkms-570-open 570.195.03-0ubuntu1\n"
                      "iU  nvidia-driver-570-open 570.195.03-0ubuntu1\n")), "10de:2d04")
    assert facts.values["half_configured"] == ["nvidia-dkms-570-open", "nvidia-driver-570-open"]
    [ch] = comp.plan(facts)
    assert (ch.action, ch.desired) == ("create", "nvidia-driver-570-open")


def test_plan_no_gpu_in_guest_is_refused_and_apply_raises():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(lspci=(0, "")), "10de:2d04")
    [ch] = comp.plan(facts)
    assert ch.action == "refuse" and "not visible" in ch.reason
    with pytest.raises(DeployError) as ei:
        comp.apply(object(), facts, [ch])
    assert "hostpci" in str(ei.value)


def test_plan_no_open_offered_is_refused_with_remedy():
    comp = DriverComponent(VM)
    only_closed = "\n".join(ln for ln in DEVICES.splitlines() if "-open" not in ln)
    facts = facts_from_outputs(fresh_outputs(devices=(0, only_closed)), "10de:2d04")
    [ch] = comp.plan(facts)
    assert ch.action == "refuse"
    with pytest.raises(DeployError) as ei:
        comp.apply(object(), facts, [ch])
    assert "apt_repositories" in ei.value.remedy


def test_options_merge_devices_and_list_providers():
    lst = "nvidia-driver-570-open, (kernel modules provided by linux-modules-nvidia-570-open-generic)\n"
    opts = options_for_gpu(DEVICES, lst, "10de:2d04")
    open570 = [o for o in opts if o.package == "nvidia-driver-570-open"]
    assert len(open570) == 1
    assert open570[0].kernel_modules_provider == "linux-modules-nvidia-570-open-generic"
    assert options_for_gpu(DEVICES, "", "10de:1111") == []


def test_probe_names_are_words():
    assert all(re.fullmatch(r"\w+", k) for k in drv.PROBES)


def test_plan_without_ubuntu_drivers_installs_the_tool_first():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(
        has_ubuntu_drivers=(1, ""), devices=(127, ""),
        candidates=(0, "nvidia-driver-570\nnvidia-driver-570-open\n")), "10de:2d04")
    assert facts.values["options_source"] == "apt-cache"
    tool, pkg = comp.plan(facts)
    assert (tool.field, tool.desired) == ("ubuntu-drivers", "ubuntu-drivers-common")
    assert (pkg.action, pkg.desired) == ("create", "nvidia-driver-570-open")


# apt/DKMS failure text: the lines "Error! Bad return status for module build on kernel" and
# "Consult .../make.log for more information." are from real transcripts (see
# lab/artefacts/debs.py for the sources); the make.log body is SYNTHESISED (as the lab's is).
APT_FAIL = """Setting up nvidia-dkms-570-open (570.195.03-0ubuntu0.1) ...
Building initial module for 6.8.0-50-generic
Error! Bad return status for module build on kernel: 6.8.0-50-generic (x86_64)
Consult /var/lib/dkms/nvidia/570.195.03/build/make.log for more information.
dpkg: error processing package nvidia-dkms-570-open (--configure):
 installed nvidia-dkms-570-open package post-installation script subprocess returned error exit status 10
E: Sub-process /usr/bin/dpkg returned an error code (1)
"""
LOGS = """@@ apt term.log
Log started: 2026-11-29  17:20:01
@@ dkms make.log
(/var/lib/dkms/nvidia/570.195.03/build/make.log)
nv.c:42:10: fatal error: lab-fault-injection.h: No such file or directory
make: *** [Makefile:82: modules] Error 2
@@ kernel log
@@ modprobe nvidia
@@ mokutil
@@ dpkg audit
 nvidia-dkms-570-open NVIDIA DKMS package
"""


class Scripted:
    """A stand-in session: answers by the first matching substring; records commands."""

    host, user = "vm", "ubuntu"

    def __init__(self, rules):
        self.rules, self.commands = rules, []

    def run(self, cmd, **kw):
        self.commands.append(cmd)
        for needle, answer in self.rules:
            if needle in cmd:
                if isinstance(answer, Exception):
                    raise answer
                code, out = answer
                return SimpleNamespace(exit_code=code, stdout=out, stderr="")
        return SimpleNamespace(exit_code=0, stdout="", stderr="")

    def log(self, line):
        pass


def test_install_failure_shows_command_exit_code_log_and_remedy():
    from provisioners.remote import CommandResult, RemoteCommandError
    comp = DriverComponent(VM, diagnose=lambda caps: SimpleNamespace(findings=["dkms-build"]))
    facts = facts_from_outputs(fresh_outputs(), "10de:2d04")
    changes = comp.plan(facts)
    cmd = "apt-get ... install -y nvidia-driver-570-open"
    fail = RemoteCommandError("vm", CommandResult(cmd, 100, APT_FAIL, "", 12.0))
    s = Scripted([("install -y nvidia-driver", fail), ("@@ apt term.log", (0, LOGS))])
    with pytest.raises(DeployError) as ei:
        comp.apply(s, facts, changes)
    err = ei.value
    assert err.exit_code == 100 and "nvidia-driver-570-open" in err.command
    assert "lab-fault-injection.h" in err.cause and "dkms-build" in err.cause
    assert "VM stays up" in err.remedy and "re-run" in err.remedy
    assert "Error! Bad return status" in err.evidence["apt output"]
    assert any("update" in c for c in s.commands)  # fresh lists before installing


def test_secure_boot_rejection_gets_its_own_diagnosis(monkeypatch):
    comp = DriverComponent(VM, diagnose=lambda caps: None, reboot=lambda s: None)
    ok_install = fresh_outputs(
        installed=(0, "ii  nvidia-driver-570-open 570.195.03-0ubuntu1\n"),
        license=(0, "Dual MIT/GPL"), smi=(9, "NVIDIA-SMI has failed because it couldn't "
                                             "communicate with the NVIDIA driver."))
    monkeypatch.setattr(DriverComponent, "facts",
                        lambda self, session: facts_from_outputs(ok_install, "10de:2d04"))
    kernel = ("@@ kernel log\n[    4.1] systemd-modules-load[312]: Failed to insert module "
              "'nvidia': Key was rejected by service\n@@ mokutil\nSecureBoot enabled\n")
    s = Scripted([("@@ apt term.log", (0, kernel))])
    s.boot_id = lambda: "b1"
    s.wait_for_reboot = lambda before, timeout_s: "b2"
    facts = facts_from_outputs(fresh_outputs(), "10de:2d04")
    with pytest.raises(DeployError) as ei:
        comp.apply(s, facts, comp.plan(facts))
    assert ei.value.what == "Secure Boot rejected the NVIDIA kernel module"
    assert "mokutil --import" in ei.value.remedy and "pre-enrolled-keys=0" in ei.value.remedy


def test_plan_without_ubuntu_drivers_and_no_candidates_defers_the_choice():
    comp = DriverComponent(VM)
    facts = facts_from_outputs(fresh_outputs(has_ubuntu_drivers=(1, ""), candidates=(0, "")),
                               "10de:2d04")
    tool, pkg = comp.plan(facts)
    assert tool.field == "ubuntu-drivers" and pkg.action == "create" and pkg.desired is None
    assert "once it is installed" in pkg.reason


def test_apply_installs_ubuntu_drivers_then_decides_and_reboots(monkeypatch):
    before = fresh_outputs(has_ubuntu_drivers=(1, ""), candidates=(0, ""))
    after_tool = fresh_outputs()
    converged = fresh_outputs(
        installed=(0, "ii  nvidia-driver-570-open 570.195.03-0ubuntu1\n"),
        license=(0, "Dual MIT/GPL"), smi=(0, SMI_OK.replace("580.95.05", "570.195.03")))
    states = iter([after_tool, converged])
    monkeypatch.setattr(DriverComponent, "facts",
                        lambda self, session: facts_from_outputs(next(states), "10de:2d04"))
    reboots = []
    comp = DriverComponent(VM, reboot=reboots.append, diagnose=lambda c: None)
    s = Scripted([])
    s.boot_id = lambda: "b1"
    s.wait_for_reboot = lambda before, timeout_s: "b2"
    facts = facts_from_outputs(before, "10de:2d04")
    results = comp.apply(s, facts, comp.plan(facts))
    assert [r.name for r in results] == ["ubuntu-drivers", "driver install", "reboot"]
    assert all(r.status == "changed" for r in results)
    installs = [c for c in s.commands if "install -y" in c]
    assert installs[0].endswith("install -y ubuntu-drivers-common")
    assert installs[1].endswith("install -y nvidia-driver-570-open")  # not the recommended 570
    assert reboots == [s]
