"""Orchestration shared by every lab test module (``pytest -m lab tests/lab``).

Per test module, for its whole duration (a module-scoped autouse fixture):

- the **guest-session lock** (``lab.state.LabPaths.guest_session_lock``) is held, so two test
  runs (or a test run and a behave deploy using the same lock) never share or destroy each
  other's VM 140. Modules that use ``tests/lab/test_guest_boot.py``'s ``lab`` fixture take the
  lock in that fixture; here it is only made to wrap this fixture (set up before it, torn down
  after it), because the lock is a non-reentrant ``flock``.
- the **lab runs**: started here when it does not, stopped again at the end of the module, so
  the module's own fixtures find it running and leave it alone; its GPU profile is the
  reference card (``rtx5060ti``) the tests are written for.
- **no VM 140 the module created is left behind**: at the end, a VM 140 whose PVE creation
  marker (``meta ctime``; ``provisioners.remote.vm_generation``) differs from the one seen at the
  start is stopped and destroyed through the lab's PVE API. A VM 140 that was there before the
  module started (the same creation marker) is left as it was. So ``make test`` (lab tests, then
  behave) hands behave a lab without a test's VM 140, and behave's @deploy scenario really
  creates the VM.
- processes the module starts see ``LAB_GUEST_SESSION_HELD`` (``provisioners.pipeline.
  GUEST_LOCK_HELD_ENV``): a behave run inside a test then does not wait for the lock this
  module holds (behave takes the lock itself otherwise, ``environment.py``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from lab import state
from lab.profiles import DEFAULT_PROFILE
from provisioners.pipeline import GUEST_LOCK_HELD_ENV

VMID = 140
NODE = "pve1"  # fakepve's default node (lab/lab-catalog.yml proxmox.node)


def _lab_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=state.REPO_ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(state.REPO_ROOT)})


def _pve(paths: state.LabPaths):
    """A proxmoxer client for the running lab's fakepve (root@pam, the lab CA)."""
    from proxmoxer import ProxmoxAPI

    info = json.loads(paths.ready.read_text())
    password = os.environ.get("LAB_PVE_PASSWORD") or "lab-secret"
    return ProxmoxAPI("127.0.0.1", port=info["ports"]["pve"], user="root@pam", password=password,
                      verify_ssl=info["pve_ca"], timeout=60)


def _generation(pve) -> str | None:
    """VM 140's creation marker, or None when there is no VM 140."""
    from provisioners.remote import vm_generation

    if not any(int(v["vmid"]) == VMID for v in pve.nodes(NODE).qemu.get()):
        return None
    return vm_generation(pve.nodes(NODE).qemu(VMID).config.get()) or "unknown"


def _wait(pve, upid: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = pve.nodes(NODE).tasks(upid).status.get()
        if st["status"] == "stopped":
            assert st["exitstatus"] == "OK", st
            return
        time.sleep(0.5)
    raise AssertionError(f"task {upid} still running after {timeout} s")


def _destroy_vm(pve) -> None:
    vm = pve.nodes(NODE).qemu(VMID)
    if vm.status.current.get()["status"] == "running":
        _wait(pve, vm.status.stop.post())
    _wait(pve, vm.delete(purge=1, **{"destroy-unreferenced-disks": 1}))


@pytest.fixture(scope="module", autouse=True)
def lab_guest_session(request):
    """Hold the guest-session lock and a running lab for the whole module; destroy the VM 140
    the module created at its end (see the module docstring)."""
    if request.node.get_closest_marker("lab") is None:
        yield  # not a lab module: it does not boot the guest
        return
    paths = state.paths()
    lock = None
    if hasattr(request.module, "lab"):
        request.getfixturevalue("lab")  # test_guest_boot's fixture: it holds the lock
    else:
        lock = state.LabLock(paths.guest_session_lock).acquire(
            wait=1800, what="another lab test holds the guest VM")
    started = False
    # behave runs started by the module's tests (test_verify_is_read_only) use this module's guest
    held_before = os.environ.get(GUEST_LOCK_HELD_ENV)
    os.environ[GUEST_LOCK_HELD_ENV] = str(os.getpid())
    try:
        if _lab_cli("status").returncode != 0:
            proc = _lab_cli("up")
            assert proc.returncode == 0, proc.stdout + proc.stderr
            started = True
        if _lab_cli("profile").stdout.strip() != DEFAULT_PROFILE:
            # the lab tests are written for the reference card; behave's failure scenarios switch
            # the profile and a run cut short (or one scenario run alone) may leave another one
            proc = _lab_cli("profile", DEFAULT_PROFILE)
            assert proc.returncode == 0, proc.stdout + proc.stderr
        before = _generation(_pve(paths))
        yield
        pve = _pve(paths)
        now = _generation(pve)
        if now is not None and now != before:
            _destroy_vm(pve)
            assert _generation(pve) is None, f"VM {VMID} is still there after its destroy"
    finally:
        if held_before is None:
            os.environ.pop(GUEST_LOCK_HELD_ENV, None)
        else:
            os.environ[GUEST_LOCK_HELD_ENV] = held_before
        if started:
            proc = _lab_cli("down")
            assert proc.returncode == 0, proc.stdout + proc.stderr
        if lock is not None:
            lock.release()
