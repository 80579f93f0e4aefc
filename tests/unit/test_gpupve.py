"""GpuFakePve: the PCI passthrough parts of PVE that fakepve 0.5.0 lacks, driven over real HTTPS."""
from __future__ import annotations

import pytest

from lab.gpupve import pci_devices_for_profile
from provisioners.proxmox import PveApiError, PveTaskFailed

NODE = "pve1"


def _create(client, **extra):
    params = dict(vmid=140, name="t", memory=1024, cores=1, machine="q35")
    params.update(extra)
    return client.wait_task(client.post(f"/nodes/{NODE}/qemu", **params), 10)


def _start(client, vmid=140):
    return client.wait_task(client.post(f"/nodes/{NODE}/qemu/{vmid}/status/start", timeout=60), 10, "start")


def test_hardware_pci_lists_gpu_and_audio_in_group_14(pve_root):
    devices = {d["id"]: d for d in pve_root.get(f"/nodes/{NODE}/hardware/pci")}
    gpu, audio = devices["0000:01:00.0"], devices["0000:01:00.1"]
    assert (gpu["vendor"], gpu["device"], gpu["iommugroup"]) == ("0x10de", "0x2d04", 14)
    assert (audio["vendor"], audio["device"], audio["iommugroup"]) == ("0x10de", "0x22eb", 14)
    # PVE's default class blacklist (05;06;0b) hides bridges; an empty one shows them
    assert "0000:00:00.0" not in devices
    everything = {d["id"] for d in pve_root.get(f"/nodes/{NODE}/hardware/pci", **{"pci-class-blacklist": ""})}
    assert "0000:00:00.0" in everything


@pytest.mark.gpu_profile("no-gpu")
def test_no_gpu_profile_has_no_nvidia_device(pve_root):
    assert not [d for d in pve_root.get(f"/nodes/{NODE}/hardware/pci") if d["vendor"] == "0x10de"]


def test_no_iommu_profile_reports_group_minus_one():
    assert {d["iommugroup"] for d in pci_devices_for_profile("no-iommu")} == {-1}
    assert {d["iommugroup"] for d in pci_devices_for_profile("rtx5060ti") if d["vendor"] == "0x10de"} == {14}


def test_mapping_is_stateful(pve_token):
    entry = f"node={NODE},path=0000:01:00,id=10de:2d04,iommugroup=14"
    assert pve_token.get("/cluster/mapping/pci") == []
    pve_token.post("/cluster/mapping/pci", id="gpu", map=[entry], description="RTX")
    (listed,) = pve_token.get("/cluster/mapping/pci")
    assert (listed["id"], listed["map"], listed["description"]) == ("gpu", [entry], "RTX")
    with pytest.raises(PveApiError, match="pci ID 'gpu' already defined"):
        pve_token.post("/cluster/mapping/pci", id="gpu", map=[entry])
    pve_token.put("/cluster/mapping/pci/gpu", description="changed")
    assert pve_token.get("/cluster/mapping/pci/gpu")["description"] == "changed"
    with pytest.raises(PveApiError, match="pci ID 'nope' does not exist"):
        pve_token.put("/cluster/mapping/pci/nope", description="x")
    (checked,) = pve_token.get("/cluster/mapping/pci", **{"check-node": NODE})
    assert checked["checks"] == []
    pve_token.delete("/cluster/mapping/pci/gpu")
    with pytest.raises(PveApiError, match="mapping 'gpu' not found"):
        pve_token.get("/cluster/mapping/pci/gpu")


def test_token_may_not_set_raw_hostpci(pve_token, gpupve):
    with pytest.raises(PveApiError) as err:
        _create(pve_token, hostpci0="host=0000:01:00,pcie=1")
    assert err.value.message == "only root can set 'hostpci0' config for non-mapped devices"
    assert gpupve.vm(140) is None


def test_root_ticket_may_set_raw_hostpci_and_start(pve_root, gpupve):
    _create(pve_root, hostpci0="host=0000:01:00,pcie=1")
    _start(pve_root)
    assert gpupve.vm(140).status == "running"


def test_unknown_mapping_is_refused(pve_token):
    with pytest.raises(PveApiError, match="PCI device mapping not found for 'nope'"):
        _create(pve_token, hostpci0="mapping=nope,pcie=1")


def test_raw_hostpci_update_by_token_is_refused(pve_root, pve_token):
    _create(pve_root)
    with pytest.raises(PveApiError, match="only root can set 'hostpci0' config for non-mapped devices"):
        pve_token.put(f"/nodes/{NODE}/qemu/140/config", hostpci0="0000:01:00,pcie=1")


@pytest.mark.parametrize("setup, expected", [
    (lambda pve: setattr(pve, "iommu", False), "cannot prepare PCI pass-through, IOMMU not present"),
    (lambda pve: setattr(pve, "pci_devices", pci_devices_for_profile("no-gpu")), "no PCI device found for '0000:01:00'"),
    (lambda pve: setattr(pve, "vfio_busy", True), "start failed: QEMU exited with code 1"),
])
def test_start_checks_the_pci_device(pve_root, gpupve, setup, expected):
    _create(pve_root, hostpci0="host=0000:01:00,pcie=1")
    setup(gpupve)
    with pytest.raises(PveTaskFailed) as err:
        _start(pve_root)
    assert err.value.exitstatus == expected
    assert err.value.log_lines[-1] == "TASK ERROR: " + expected
    assert gpupve.vm(140).status == "stopped"


def test_vfio_busy_start_logs_qemu_line(pve_root, gpupve):
    _create(pve_root, hostpci0="host=0000:01:00,pcie=1")
    gpupve.vfio_busy = True
    with pytest.raises(PveTaskFailed) as err:
        _start(pve_root)
    assert any("vfio 0000:01:00.0: failed to open /dev/vfio/14: Device or resource busy" in line
               for line in err.value.log_lines)


def test_device_in_use_by_another_running_vm(pve_root, gpupve):
    gpupve.add_vm(150, "other", node=NODE, status="running", config={"hostpci0": "host=0000:01:00.0"})
    _create(pve_root, hostpci0="host=0000:01:00,pcie=1")
    with pytest.raises(PveTaskFailed) as err:
        _start(pve_root)
    assert err.value.exitstatus == "PCI device '0000:01:00.0' already in use by VMID '150'"


def test_import_from_takes_the_image_size_and_resize_grows_only(pve_root, gpupve, lab_image):
    _create(pve_root, scsi0=f"local-lvm:0,import-from={lab_image}")
    assert gpupve.vm(140).config["scsi0"].endswith(",size=512M")
    assert "import-from" not in gpupve.vm(140).config["scsi0"]
    pve_root.wait_task(pve_root.put(f"/nodes/{NODE}/qemu/140/resize", disk="scsi0", size="8G"), 10)
    assert gpupve.vm(140).config["scsi0"].endswith(",size=8G")
    with pytest.raises(PveApiError, match="shrinking disks is not supported"):
        pve_root.put(f"/nodes/{NODE}/qemu/140/resize", disk="scsi0", size="4G")


def test_task_log_limit_zero_is_the_whole_log(pve_root, gpupve):
    _create(pve_root, hostpci0="host=0000:01:00,pcie=1")
    gpupve.iommu = False
    upid = pve_root.post(f"/nodes/{NODE}/qemu/140/status/start")
    lines = pve_root.task_log(upid)
    assert lines and lines[-1].startswith("TASK ERROR:")
