"""LabPve maps the PVE VM lifecycle onto the guest - checked with a recording stand-in for qemu."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests

from lab import hypervisor, state
from lab.gpupve import ServedPve
from lab.image import BaseImage
from lab.server import issue_server_cert
from provisioners.errors import DeployError

NODE = "pve1"
PASSWORD = "secret"


class FakeProc:
    def __init__(self, pid):
        self.pid = pid
        self.code = None

    def poll(self):
        return self.code


class FakeGuest:
    """Records what LabPve asks of the guest; ``fail_start`` / ``acpi_ok`` steer the outcome."""

    instances: list["FakeGuest"] = []
    fail_start = False
    acpi_ok = True

    def __init__(self, vmid, image, paths, ports):
        self.vmid = vmid
        self.calls: list[str] = []
        self.settings = []
        self.proc = None
        self.started_at = None
        self.pidfile = Path(paths.vm_dir(vmid)) / "qemu.pid"
        FakeGuest.instances.append(self)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, settings):
        self.calls.append("start")
        self.settings.append(settings)
        if FakeGuest.fail_start:
            raise DeployError(what="start failed: QEMU exited with code 1",
                              cause="qemu-system-x86_64: Could not set up host forwarding rule")
        self.proc = FakeProc(4000 + len(self.calls))
        return self.proc.pid

    def kill(self, grace=5.0):
        self.calls.append("kill")
        self.proc = None

    def powerdown(self, timeout):
        self.calls.append(f"powerdown {timeout:g}")
        if FakeGuest.acpi_ok:
            self.proc = None
            return True
        return False

    def reset(self):
        self.calls.append("reset")

    def qmp(self, execute, **_):
        self.calls.append(f"qmp {execute}")

    def wipe(self):
        self.calls.append("wipe")
        self.proc = None


@pytest.fixture
def lab(monkeypatch, tmp_path):
    FakeGuest.instances = []
    FakeGuest.fail_start = False
    FakeGuest.acpi_ok = True
    monkeypatch.setattr(hypervisor, "Guest", FakeGuest)
    img = BaseImage(dir=tmp_path, qcow2=tmp_path / "base.qcow2", kernel=tmp_path / "vmlinuz",
                    initrd=tmp_path / "initrd.img", sha256="0" * 64, recipe_hash="x")
    paths = state.LabPaths(tmp_path / ".lab")
    cert, key = issue_server_cert(paths)  # the lab's own CA, as `lab up` uses it
    pve = hypervisor.LabPve(img, paths, state.Ports(17000),
                            user="root@pam", password=PASSWORD, host="127.0.0.1", port=0)
    served = ServedPve(pve, str(cert), str(key))
    s = requests.Session()
    s.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override s.verify
    s.verify = str(paths.pve_ca)
    r = s.post(f"{pve.url}/api2/json/access/ticket", data={"username": "root@pam", "password": PASSWORD})
    d = r.json()["data"]
    s.cookies.set("PVEAuthCookie", d["ticket"])
    s.headers["CSRFPreventionToken"] = d["CSRFPreventionToken"]
    s.base = f"{pve.url}/api2/json/nodes/{NODE}"
    s.pve = pve
    try:
        yield s
    finally:
        pve.shutdown_guests()
        served.stop()


def _task(s, resp, timeout=10):
    assert resp.status_code == 200, resp.text
    upid = resp.json()["data"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = s.get(f"{s.base}/tasks/{upid}/status").json()["data"]
        if st["status"] == "stopped":
            log = [x["t"] for x in s.get(f"{s.base}/tasks/{upid}/log", params={"limit": 0}).json()["data"]]
            return st["exitstatus"], log
        time.sleep(0.05)
    raise AssertionError("task did not finish")


def _create(s, vmid=140):
    st, log = _task(s, s.post(f"{s.base}/qemu", data={
        "vmid": vmid, "name": "vm-llm-aimachine", "ciuser": "llmadmin", "ipconfig0": "ip=10.0.2.15/24,gw=10.0.2.2",
        "scsi0": "local-lvm:0,import-from=local:import/lab-debian-12.qcow2", "net0": "virtio,bridge=vmbr0"}))
    assert st == "OK", log


def _status(s, vmid=140):
    return s.get(f"{s.base}/qemu/{vmid}/status/current").json()["data"]["status"]


def _guest(vmid=140):
    return [g for g in FakeGuest.instances if g.vmid == vmid][-1]


def test_base_image_is_an_import_volume(lab):
    vols = lab.get(f"{lab.base}/storage/local/content").json()["data"]
    assert "local:import/lab-debian-12.qcow2" in [v["volid"] for v in vols]


def test_start_boots_the_guest_with_the_vm_config(lab):
    _create(lab)
    assert _guest().calls == ["wipe"]  # a created VM never inherits an old overlay
    st, log = _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    assert st == "OK", log
    g = _guest()
    assert g.calls == ["wipe", "start"]
    assert g.settings[0].config["ciuser"] == "llmadmin"
    assert g.settings[0].disk_gib == 6  # import-from sized the disk like the base image
    assert _status(lab) == "running"


def test_failed_qemu_start_fails_the_task_like_pve(lab):
    _create(lab)
    FakeGuest.fail_start = True
    st, log = _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    assert st == "start failed: QEMU exited with code 1"
    assert "qemu-system-x86_64: Could not set up host forwarding rule" in log
    assert log[-1] == "TASK ERROR: start failed: QEMU exited with code 1"
    assert _status(lab) == "stopped"


def test_stop_shutdown_reboot_reset(lab):
    _create(lab)
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    g = _guest()
    assert _task(lab, lab.post(f"{lab.base}/qemu/140/status/reset"))[0] == "OK"
    assert g.calls[-1] == "reset"
    assert _task(lab, lab.post(f"{lab.base}/qemu/140/status/reboot", data={"timeout": 30}))[0] == "OK"
    assert g.calls[-2:] == ["powerdown 30", "start"]
    assert _status(lab) == "running"
    assert _task(lab, lab.post(f"{lab.base}/qemu/140/status/shutdown"))[0] == "OK"
    assert g.calls[-1] == "powerdown 60"  # PVE's default shutdown timeout
    assert _status(lab) == "stopped"
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    assert _task(lab, lab.post(f"{lab.base}/qemu/140/status/stop"))[0] == "OK"
    assert g.calls[-1] == "kill" and _status(lab) == "stopped"


def test_shutdown_timeout_and_force_stop(lab):
    _create(lab)
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    FakeGuest.acpi_ok = False
    st, _ = _task(lab, lab.post(f"{lab.base}/qemu/140/status/shutdown", data={"timeout": 5}))
    assert st == "VM quit/powerdown failed - got timeout"
    assert _status(lab) == "running"
    st, log = _task(lab, lab.post(f"{lab.base}/qemu/140/status/shutdown", data={"timeout": 5, "forceStop": 1}))
    assert st == "OK" and "VM still running - terminating now with SIGTERM" in log
    assert _guest().calls[-1] == "kill" and _status(lab) == "stopped"


def test_destroy_wipes_the_guest(lab):
    _create(lab)
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/stop"))
    g = _guest()
    st, _ = _task(lab, lab.delete(f"{lab.base}/qemu/140", params={"purge": 1}))
    assert st == "OK"
    assert g.calls[-1] == "wipe"
    assert 140 not in lab.pve.guests


def test_only_one_guest_at_a_time(lab):
    _create(lab, 140)
    _create(lab, 141)
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    st, _ = _task(lab, lab.post(f"{lab.base}/qemu/141/status/start"))
    assert st == "lab: only one guest VM can run at a time (VM 140 is running)"
    assert _status(lab, 141) == "stopped"


def test_guest_poweroff_marks_the_vm_stopped(lab):
    _create(lab)
    _task(lab, lab.post(f"{lab.base}/qemu/140/status/start"))
    _guest().proc.code = 0  # qemu exited: poweroff inside the guest
    changed = lab.pve.reconcile()
    assert changed and "VM 140" in changed[0]
    assert _status(lab) == "stopped"
