"""VM 140 of the lab catalog: pre-flight, plan, apply, rollback and destroy against GpuFakePve."""
from __future__ import annotations

from urllib.parse import unquote

import pytest

from provisioners.errors import DeployError
from provisioners.vm import MARKER_LINE, MARKER_TAG, apply_vm, destroy_vm, plan_vm, preflight
from tests.conftest import SSH_PUB, writes

NODE = "pve1"


def _vm(catalog):
    return catalog.vm(140)


def _without_mapping(catalog):
    vm = _vm(catalog)
    gpu = vm.gpu.model_copy(update={"mapping": None})
    return vm.model_copy(update={"gpu": gpu})


def test_create_vm_140_with_the_passthrough_config(pve_token, lab_catalog, gpupve, lab_image):
    results = apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert [r.status for r in results] == ["ok", "changed", "changed", "changed", "changed"]
    vm = gpupve.vm(140)
    cfg = vm.config
    assert vm.status == "running"
    assert (cfg["machine"], cfg["bios"], cfg["cpu"], cfg["scsihw"]) == ("q35", "ovmf", "host", "virtio-scsi-single")
    assert str(cfg["balloon"]) == "0" and str(cfg["memory"]) == "1024" and str(cfg["cores"]) == "2"
    assert cfg["efidisk0"].startswith("local-lvm:") and "efitype=4m" in cfg["efidisk0"]
    assert "pre-enrolled-keys=0" in cfg["efidisk0"]
    assert cfg["scsi0"].startswith("local-lvm:") and cfg["scsi0"].endswith("size=8G")
    assert cfg["ide2"].startswith("local-lvm:") and "media=cdrom" in cfg["ide2"]
    assert cfg["hostpci0"] == "mapping=rtx5060ti,pcie=1"
    assert cfg["ipconfig0"] == "ip=10.0.2.15/24,gw=10.0.2.2" and cfg["nameserver"] == "10.0.2.3"
    assert cfg["ciuser"] == "ubuntu"
    assert "+" not in cfg["sshkeys"] and "%2B" in cfg["sshkeys"] and unquote(cfg["sshkeys"]) == SSH_PUB
    assert str(cfg["agent"]) == "1" and str(cfg["onboot"]) == "1"
    assert MARKER_TAG in cfg["tags"] and MARKER_LINE in cfg["description"].splitlines()
    assert cfg["net0"].startswith("virtio=") and "bridge=vmbr0" in cfg["net0"]
    assert gpupve.pci_mappings["rtx5060ti"]["map"] == ["node=pve1,path=0000:01:00,id=10de:2d04,iommugroup=14"]
    starts = [b for m, p, b in gpupve.requests if m == "POST" and p.endswith("/qemu/140/status/start")]
    assert starts == [b"timeout=600"]


def test_second_plan_is_empty_and_read_only(pve_token, lab_catalog, gpupve, lab_image):
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    mark = len(gpupve.requests)
    assert plan_vm(pve_token, lab_catalog, _vm(lab_catalog)) == []
    assert [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "error"] == []
    assert writes(gpupve, mark) == []
    again = apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert [r.status for r in again] == ["ok"]
    assert writes(gpupve, mark) == []


def test_root_password_login_uses_the_raw_address(pve_root, lab_catalog, gpupve, lab_image):
    apply_vm(pve_root, lab_catalog, _vm(lab_catalog))
    assert gpupve.vm(140).config["hostpci0"] == "host=0000:01:00,pcie=1"
    assert gpupve.pci_mappings == {}


def test_missing_image_is_downloaded_with_checksum(pve_token, lab_catalog, gpupve):
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    bodies = [b.decode() for m, p, b in gpupve.requests if p.endswith("/storage/local/download-url")]
    assert len(bodies) == 1
    assert "content=import" in bodies[0] and "checksum-algorithm=sha256" in bodies[0]
    assert "filename=lab-debian-12.qcow2" in bodies[0]
    assert gpupve.vm(140).status == "running"


def test_disk_shrink_is_refused(pve_token, lab_catalog, gpupve, lab_image):
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    smaller = _vm(lab_catalog).model_copy(update={"disk": _vm(lab_catalog).disk.model_copy(update={"size_gib": 4})})
    changes = plan_vm(pve_token, lab_catalog, smaller)
    assert [(c.action, c.field) for c in changes] == [("refuse", "scsi0")]
    mark = len(gpupve.requests)
    with pytest.raises(DeployError, match="refusing to change VM 140"):
        apply_vm(pve_token, lab_catalog, smaller)
    assert writes(gpupve, mark) == []
    assert gpupve.vm(140).config["scsi0"].endswith("size=8G")


def test_disk_grow_and_running_changes(pve_token, lab_catalog, gpupve, lab_image):
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    bigger = _vm(lab_catalog).model_copy(update={"cores": 4, "disk": _vm(lab_catalog).disk.model_copy(
        update={"size_gib": 16})})
    changes = {(c.action, c.field) for c in plan_vm(pve_token, lab_catalog, bigger)}
    assert changes == {("update", "scsi0"), ("needs-restart", "cores")}
    apply_vm(pve_token, lab_catalog, bigger)
    assert gpupve.vm(140).config["scsi0"].endswith("size=16G")
    assert gpupve.vm(140).pending == {"cores": "4"}
    # written but not in effect yet: the plan keeps saying so until the VM restarts
    assert [(c.action, c.field) for c in plan_vm(pve_token, lab_catalog, bigger)] == [("needs-restart", "cores")]


def test_unmanaged_vm_140_is_a_conflict_and_untouched(pve_token, lab_catalog, gpupve, lab_image):
    other = gpupve.add_vm(140, "someone-elses", node=NODE, status="running",
                          config={"memory": "4096", "scsi0": "local-lvm:vm-140-disk-0,size=32G"})
    before = dict(other.config)
    changes = plan_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert [c.action for c in changes] == ["refuse"]
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert "conflict" in str(err.value) and "someone-elses" in str(err.value)
    with pytest.raises(DeployError, match="not created by this tool"):
        destroy_vm(pve_token, lab_catalog, _vm(lab_catalog), confirm=True)
    assert writes(gpupve) == []
    assert gpupve.vm(140) is other and other.config == before and other.status == "running"


def test_start_failure_vfio_busy_rolls_back(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.vfio_busy = True
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    text = str(err.value)
    assert "start failed: QEMU exited with code 1" in text
    assert "vfio 0000:01:00.0: failed to open /dev/vfio/14: Device or resource busy" in text
    assert "0000:01:00" in text and "10de:2d04" in text
    assert "IOMMU" in text and "already in use by VMID" in text and "Mapping.Use" in text
    assert "destroyed" in text
    assert gpupve.vm(140) is None
    deletes = [p for m, p, _ in gpupve.requests if m == "DELETE"]
    assert deletes == [f"/api2/json/nodes/{NODE}/qemu/140"]
    destroy = [t for t in gpupve.tasklog if t["type"] == "qmdestroy"]
    assert destroy and "purging VM 140 from related configurations.." in destroy[-1]["log"]  # purge=1
    assert not [v for v in gpupve.storages["local-lvm"].get("volumes", {}).values() if v.get("vmid") == 140]


def test_token_with_raw_address_is_refused_by_pve_and_leaves_nothing(pve_token, lab_catalog, gpupve, lab_image):
    vm = _without_mapping(lab_catalog)
    warnings = [f for f in preflight(pve_token, lab_catalog, vm) if f.severity == "warning"]
    assert any("only root can set" in f.message for f in warnings)
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, vm)
    text = str(err.value)
    assert "only root can set 'hostpci0' config for non-mapped devices" in text
    assert "0000:01:00" in text and "Mapping.Use" in text
    assert gpupve.vm(140) is None


@pytest.mark.gpu_profile("no-gpu")
def test_gpu_absent_stops_before_any_change(pve_token, lab_catalog, gpupve, lab_image):
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    text = str(err.value)
    assert "pre-flight checks failed" in text and "10de:2d04" in text and "not found at 0000:01:00" in text
    assert writes(gpupve) == []
    assert gpupve.vm(140) is None


@pytest.mark.gpu_profile("no-iommu")
def test_iommu_off_is_a_preflight_error(pve_token, lab_catalog, gpupve, lab_image):
    errors = [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "error"]
    assert len(errors) == 1 and "IOMMU is off" in errors[0].message


def test_mapping_pointing_elsewhere_is_a_preflight_error(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.add_pci_mapping("rtx5060ti", path="0000:05:00")
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert "points at 0000:05:00" in str(err.value)
    assert writes(gpupve) == [] and gpupve.vm(140) is None


def test_destroy_needs_confirmation_and_removes_our_vm(pve_token, lab_catalog, gpupve, lab_image):
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    mark = len(gpupve.requests)
    with pytest.raises(DeployError, match="without confirmation"):
        destroy_vm(pve_token, lab_catalog, _vm(lab_catalog), confirm=False)
    assert len(gpupve.requests) == mark
    result = destroy_vm(pve_token, lab_catalog, _vm(lab_catalog), confirm=True)
    assert result.status == "changed"
    assert gpupve.vm(140) is None
    assert not [v for v in gpupve.storages["local-lvm"].get("volumes", {}).values() if v.get("vmid") == 140]
    assert destroy_vm(pve_token, lab_catalog, _vm(lab_catalog), confirm=True).status == "ok"


def test_least_privilege_token_without_mapping_rights(pve_token, lab_catalog, gpupve, lab_image):
    from tests.conftest import TOKEN_ID
    gpupve.grant(TOKEN_ID, "/", "Sys.Audit", "Datastore.Audit", "VM.Audit")
    errors = [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "error"]
    assert [f.message for f in errors] == [
        "PCI mapping 'rtx5060ti' does not exist and deployer@pve!ci may not create it (Mapping.Modify)"]
    gpupve.add_pci_mapping("rtx5060ti")
    gpupve.grant(TOKEN_ID, "/mapping/pci/rtx5060ti", "Mapping.Audit")
    errors = [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "error"]
    assert [f.message for f in errors] == ["deployer@pve!ci lacks Mapping.Use on /mapping/pci/rtx5060ti"]
    assert "PVEMappingUser" in errors[0].remedy


def test_failure_after_create_rolls_back_only_that_vm(pve_token, lab_catalog, gpupve, lab_image):
    bystander = gpupve.add_vm(141, "bystander", node=NODE, status="running", config={"hostpci1": "host=0000:02:00.0"})
    gpupve.fail("PUT", f"/nodes/{NODE}/qemu/140/resize", 500, "resize boom")
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert "resize boom" in str(err.value) and "destroyed" in str(err.value)
    assert gpupve.vm(140) is None
    assert gpupve.vm(141) is bystander and bystander.status == "running"
    assert [p for m, p in writes(gpupve) if m == "DELETE"] == [f"/api2/json/nodes/{NODE}/qemu/140"]


def test_reboot_and_status_for_the_guest_stack(pve_token, lab_catalog, gpupve, lab_image):
    from provisioners.vm import reboot_vm, vm_status
    assert vm_status(pve_token, _vm(lab_catalog)) == {"status": "absent"}
    apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert vm_status(pve_token, _vm(lab_catalog))["status"] == "running"
    reboot_vm(pve_token, _vm(lab_catalog), timeout_s=60)
    assert [t["exitstatus"] for t in gpupve.tasklog if t["type"] == "qmreboot"] == ["OK"]
    assert vm_status(pve_token, _vm(lab_catalog))["status"] == "running"


def test_mapping_for_another_device_is_a_preflight_error(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.add_pci_mapping("rtx5060ti", pci_id="10de:2684")
    errors = [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "error"]
    assert [f.message for f in errors] == [
        "PCI mapping 'rtx5060ti' expects device 10de:2684, the catalog expects 10de:2d04"]


def test_least_privilege_token_deploys(pve_token, lab_catalog, gpupve, lab_image):
    from provisioners.vm.privileges import pveum_commands, token_privileges
    from tests.conftest import TOKEN_ID
    vm = _vm(lab_catalog)
    for path, privs in token_privileges(lab_catalog, vm).items():
        gpupve.grant(TOKEN_ID, path, *privs)
    gpupve.add_pci_mapping("rtx5060ti")  # an administrator made it; the token may only use it
    results = apply_vm(pve_token, lab_catalog, vm)
    assert [r.status for r in results] == ["ok", "ok", "changed", "changed", "changed"]
    assert gpupve.vm(140).status == "running"
    assert plan_vm(pve_token, lab_catalog, vm) == []
    assert pveum_commands(lab_catalog, vm, TOKEN_ID)[1] == (
        f"pveum acl modify / --tokens '{TOKEN_ID}' --roles GpuLlmDeployer --propagate 0")


def test_container_holding_the_vmid_is_a_conflict(pve_token, lab_catalog, gpupve, lab_image):
    gpupve.add_ct(140, "a-container", node=NODE, status="running")
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    assert "conflict" in str(err.value) and "a container" in str(err.value)
    assert writes(gpupve) == []


def test_other_devices_in_the_gpu_group_are_reported(pve_token, lab_catalog, gpupve, lab_image):
    usb = next(d for d in gpupve.pci_devices if d["id"] == "0000:00:14.0")
    usb["iommugroup"] = 14
    warnings = [f for f in preflight(pve_token, lab_catalog, _vm(lab_catalog)) if f.severity == "warning"]
    assert len(warnings) == 1
    assert "IOMMU group 14 also holds 0000:00:14.0 (USB 3.2 Gen 2x1 xHCI Host Controller)" in warnings[0].message


def test_failed_image_download_is_explained_and_creates_nothing(pve_token, lab_catalog, gpupve):
    gpupve.fail("POST", f"/nodes/{NODE}/storage/local/download-url", 500,
                "checksum mismatch: got 'abc', expected '000'")
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    text = str(err.value)
    assert "checksum mismatch" in text and "cloud_image" in text and "nothing was created" in text
    assert gpupve.vm(140) is None


def test_gpu_gone_at_start_quotes_pve_and_rolls_back(pve_token, lab_catalog, gpupve, lab_image, monkeypatch):
    from lab.gpupve import pci_devices_for_profile
    from provisioners.vm import apply as apply_mod
    real_resize = apply_mod._resize

    def resize_then_card_vanishes(client, vm):
        gpupve.pci_devices = pci_devices_for_profile("no-gpu")  # e.g. the card fell off the bus
        return real_resize(client, vm)
    monkeypatch.setattr(apply_mod, "_resize", resize_then_card_vanishes)
    with pytest.raises(DeployError) as err:
        apply_vm(pve_token, lab_catalog, _vm(lab_catalog))
    text = str(err.value)
    assert "no PCI device found for '0000:01:00'" in text and "10de:2d04" in text and "destroyed" in text
    assert gpupve.vm(140) is None
