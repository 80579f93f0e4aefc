"""Bootstrap, driver and CUDA on the lab guest: converge, verify, and a second run that changes
nothing (no reboot, same boot id).

Needs the lab (``python -m lab up``; started here and stopped again when nobody else runs it)
on the ``rtx5060ti`` profile, whose ``ubuntu-drivers devices`` RECOMMENDS the closed 570 (like
the real capture): the driver step must install ``nvidia-driver-570-open`` anyway. TCG guest:
minutes (the driver install reboots the guest once).
"""
from __future__ import annotations

import time

import pytest

from provisioners.guest import bootstrap, cuda, driver
from provisioners.pipeline import Deployment
from provisioners.verify import run_ladder, summary

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def deployment():
    dep = Deployment(target="lab")
    dep.load_and_validate(check_files=False)
    dep.ensure_lab()
    dep.load_and_validate(check_files=True)
    dep.ensure_vm()
    try:
        yield dep
    finally:
        dep.close()
        dep.stop_lab()


def converge(comp, session):
    facts = comp.facts(session)
    changes = comp.plan(facts)
    assert not [c for c in changes if c.action == "refuse"], [str(c) for c in changes]
    return facts, changes, comp.apply(session, facts, changes)


def test_bootstrap_driver_cuda_verify_and_rerun(deployment):
    session = deployment.open_session()
    vm = deployment.vm

    # 1. bootstrap: cloud-init done, locks free, dpkg consistent, the lab apt repo configured
    results = bootstrap.bootstrap(session, deployment.catalog, vm)
    names = [r.name for r in results]
    assert names[:4] == ["ssh", "cloud-init", "apt locks", "dpkg"], names
    assert "apt repository lab-nvidia" in names
    assert session.read_file("/etc/apt/sources.list.d/lab-nvidia.sources") is not None

    # 2. driver: whatever an earlier run left, it ends on the OPEN flavour
    dc = driver.component(deployment.catalog, vm)
    facts, changes, results = converge(dc, session)
    for ch in changes:
        if ch.field == "package":
            assert ch.desired.endswith("-open"), str(ch)
    assert [r for r in results if r.status == "failed"] == []

    # 3. cuda: keyring + cuda-toolkit-12-8, never cuda/cuda-drivers
    cc = cuda.component(deployment.catalog, vm)
    converge(cc, session)
    installed = bootstrap.installed_packages(session, ["cuda", "cuda-drivers", "cuda-toolkit-*"])
    assert bootstrap.is_installed(installed["cuda-toolkit-12-8"][0])
    assert not any(bootstrap.is_installed(installed.get(p, ("un ", ""))[0])
                   for p in ("cuda", "cuda-drivers"))

    # 4. the verify ladder (GPU + driver rungs) passes, each check with evidence
    checks = run_ladder(session, deployment.catalog, vm, ["gpu", "driver"])
    assert all(c.passed for c in checks), summary(checks)
    assert all(c.evidence for c in checks)
    names = {c.name for c in checks}
    assert {"lspci", "nvidia-smi name", "nvidia-smi memory.total", "kernel log",
            "nvcc --version", "CUDA sample", "modinfo license", "installed flavour"} <= names

    # 5. a second run changes nothing and does not reboot
    boot = session.boot_id()
    for comp in (dc, cc):
        facts = comp.facts(session)
        assert comp.plan(facts) == [], [str(c) for c in comp.plan(facts)]
        assert [r for r in comp.apply(session, facts, []) if r.changed] == []
    again = bootstrap.bootstrap(session, deployment.catalog, vm)
    assert [str(r) for r in again if r.changed] == []
    assert session.boot_id() == boot


def test_bootstrap_waits_for_a_held_dpkg_lock_and_repairs_interrupted_dpkg(deployment):
    """Guest faults: a process holds the dpkg frontend lock when the step starts (as
    unattended-upgrades does), and dpkg was left with an unpacked-but-unconfigured package
    (what a killed apt leaves). The bootstrap waits, names the holder, repairs, and a
    converged, verified VM remains."""
    session = deployment.open_session()
    vm = deployment.vm
    bootstrap.bootstrap(session, deployment.catalog, vm)

    # 1. a real fcntl lock on /var/lib/dpkg/lock-frontend for 20 s, held by a guest process
    session.run("setsid nohup python3 -c 'import fcntl,time; "
                "f=open(\"/var/lib/dpkg/lock-frontend\",\"w\"); fcntl.lockf(f, fcntl.LOCK_EX); "
                "time.sleep(20)' >/dev/null 2>&1 < /dev/null &", sudo=True, timeout_s=30)
    holders = []
    for _ in range(10):
        holders = bootstrap.lock_holders(session)
        if holders:
            break
        time.sleep(1)
    assert holders and holders[0].comm.startswith("python3"), holders
    r = bootstrap.wait_for_apt_locks(session, timeout_s=120, poll_s=3)
    assert r.reason.startswith("waited") and str(holders[0].pid) in r.reason

    # 2. dpkg interrupted between unpack and configure
    session.run("set -e; d=$(mktemp -d); cd \"$d\"; apt-get download ubuntu-drivers-common "
                ">/dev/null; dpkg --unpack ./ubuntu-drivers-common_*.deb >/dev/null; "
                "rm -rf \"$d\"", sudo=True, timeout_s=300)
    assert "ubuntu-drivers-common" in session.run("dpkg --audit", sudo=True, check=False).stdout
    r = bootstrap.repair_dpkg(session)
    assert r.status == "changed", str(r)
    assert session.run("dpkg --audit", sudo=True, check=False).stdout.strip() == ""

    # 3. still converged and verified
    checks = run_ladder(session, deployment.catalog, vm, ["gpu", "driver"])
    assert all(c.passed for c in checks), summary(checks)
