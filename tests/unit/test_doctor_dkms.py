"""The ``dkms-build-failed`` rule: a failed DKMS build of the nvidia module in apt/dpkg output.

No real capture of this failure is in tests/fixtures/corpus; the text below is TAKEN FROM THE LAB
REPLAY: what the driver-install-fails profile's nvidia-dkms postinst prints
(lab/artefacts/debs.py, whose DKMS lines are DKMS's real wording from the transcripts cited
there), with the guest kernel 6.8.0-50-generic. The dpkg/apt lines around it in APT_FAIL are
dpkg's and apt's own wording (as in tests/unit/test_driver.py).
"""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from lab.artefacts.debs import driver_debs
from lab.profiles import DRIVER_VERSIONS
from provisioners.doctor import FINDINGS, diagnose
from provisioners.doctor.examples import EXAMPLES

KERNEL = "6.8.0-50-generic"
ERROR_LINE = f"Error! Bad return status for module build on kernel: {KERNEL} (x86_64)"
CONSULT_LINE = "Consult /var/lib/dkms/nvidia/570.195.03/build/make.log for more information."
# lab replay (see module docstring)
POSTINST_OUT = (f"Loading new nvidia-570.195.03 DKMS files...\nBuilding for {KERNEL}\n"
                f"Building for architecture x86_64\nBuilding initial module for {KERNEL}\n"
                f"{ERROR_LINE}\n{CONSULT_LINE}\n")
APT_FAIL = ("Setting up nvidia-dkms-570-open (570.195.03-0ubuntu0.1) ...\n" + POSTINST_OUT +
            "dpkg: error processing package nvidia-dkms-570-open (--configure):\n"
            " installed nvidia-dkms-570-open package post-installation script subprocess returned error exit status 10\n"
            "E: Sub-process /usr/bin/dpkg returned an error code (1)\n")


def _lab_postinst_lines(kernel: str) -> list[str]:
    """The lines the lab's failing nvidia-dkms-570-open postinst echoes, ``$KVER`` = ``kernel``."""
    (deb,) = [d for d in driver_debs(570, fails=True) if d.name == "nvidia-dkms-570-open"]
    script = deb.scripts["postinst"]
    return [m.replace("$KVER", kernel) for m in re.findall(r'^\s*echo "([^"]*)"\s*$', script, re.M)]


def test_the_example_text_is_what_the_lab_prints():
    lab = _lab_postinst_lines(KERNEL)
    assert DRIVER_VERSIONS[570] == "570.195.03"
    assert POSTINST_OUT.splitlines() == lab
    (example,) = [e for e in EXAMPLES if e.id == "dkms-build-failed"]
    assert example.source.startswith("lab replay: lab/artefacts/debs.py")
    assert example.text == POSTINST_OUT


def test_finding_from_apt_output_with_evidence_cause_remedy():
    d = diagnose({"apt output": APT_FAIL})
    assert d.ids == ["dkms-build-failed"]
    f = d.findings[0]
    assert FINDINGS["dkms-build-failed"] == f.severity == "error"
    assert f.evidence == f"{ERROR_LINE}\n{CONSULT_LINE}"
    assert KERNEL in f.cause and "headers" in f.cause and "half-configured" in f.cause
    for needle in ("/var/lib/dkms/nvidia/570.195.03/build/make.log", "linux-headers-$(uname -r)",
                   "dpkg --configure -a", "linux-modules-nvidia-570-open-generic"):
        assert needle in f.remedy, needle


def test_finding_from_a_pasted_transcript_and_once_across_captures():
    transcript = "$ sudo apt-get install -y nvidia-driver-570-open\n" + APT_FAIL
    assert diagnose({"transcript": transcript}).ids == ["dkms-build-failed"]
    # the driver step passes the same lines as apt output and in apt term.log: one finding, evidence once
    d = diagnose({"apt output": APT_FAIL, "apt term.log": APT_FAIL, "dpkg audit": " nvidia-dkms-570-open"})
    assert d.ids == ["dkms-build-failed"] and d.findings[0].evidence.count("Error!") == 1


def test_it_explains_the_missing_driver():
    smi = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    assert diagnose({"apt output": APT_FAIL, "nvidia-smi": smi}).ids == ["dkms-build-failed"]


@pytest.mark.parametrize("text", [
    "",
    POSTINST_OUT.replace(ERROR_LINE + "\n", ""),  # no error line: the build did not fail
    # another module's DKMS failure (its make.log path names it) is not an nvidia problem
    f"{ERROR_LINE}\nConsult /var/lib/dkms/virtualbox/7.0.16/build/make.log for more information.\n",
    "Loading new nvidia-570.195.03 DKMS files...\nBuilding for 6.8.0-50-generic\nDone.\n",
])
def test_no_finding_without_an_nvidia_build_failure(text):
    assert diagnose({"apt output": text}).ids == []


def test_driver_step_install_failure_attaches_the_finding():
    """The real doctor through the driver step's install-failure path (captures ``apt output``,
    ``apt term.log``, ``dkms make.log``...)."""
    from provisioners.errors import DeployError
    from provisioners.guest.driver import DriverComponent, facts_from_outputs
    from provisioners.remote import CommandResult, RemoteCommandError
    from tests.unit.test_driver import LOGS, VM, Scripted, fresh_outputs

    comp = DriverComponent(VM)  # default diagnose: provisioners.doctor
    facts = facts_from_outputs(fresh_outputs(), "10de:2d04")
    changes = comp.plan(facts)
    fail = RemoteCommandError("vm", CommandResult("apt-get install -y nvidia-driver-570-open", 100, APT_FAIL, "", 1.0))
    s = Scripted([("install -y nvidia-driver", fail), ("@@ apt term.log", (0, LOGS))])
    with pytest.raises(DeployError) as ei:
        comp.apply(s, facts, changes)
    assert "dkms-build-failed" in ei.value.cause
    assert "dkms-build-failed" in ei.value.evidence["diagnosis"]
