"""Pure parts of the VM model: the managed marker, the desired config and the comparison."""
from __future__ import annotations

from urllib.parse import unquote

from provisioners.vm.desired import (GiB, MARKER_LINE, MARKER_TAG, compare, desired_config, has_marker, props,
                                     size_bytes)
from tests.conftest import SSH_PUB


def test_marker_needs_tag_and_description_line():
    assert has_marker({"tags": f"prod;{MARKER_TAG}", "description": f"hello\n{MARKER_LINE}\n"})
    assert not has_marker({"tags": MARKER_TAG})
    assert not has_marker({"description": MARKER_LINE})
    assert not has_marker({"tags": "gpu-llm-deployer-old", "description": MARKER_LINE})
    assert not has_marker(None)


def test_sizes_and_property_strings():
    assert size_bytes("8G") == 8 * GiB and size_bytes("528K") == 528 * 1024 and size_bytes("1T") == 1024 * GiB
    assert size_bytes(None) == 0
    assert props("local-lvm:vm-140-disk-0,efitype=4m,size=528K") == (
        "local-lvm:vm-140-disk-0", {"efitype": "4m", "size": "528K"})


def test_desired_config_for_token_and_root(lab_catalog):
    vm = lab_catalog.vm(140)
    token = desired_config(lab_catalog, vm, raw_pci=False)
    root = desired_config(lab_catalog, vm, raw_pci=True)
    assert token["hostpci0"] == "mapping=rtx5060ti,pcie=1" and root["hostpci0"] == "host=0000:01:00,pcie=1"
    assert token["scsi0"] == "local-lvm:0,import-from=local:import/lab-debian-12.qcow2"
    assert token["efidisk0"] == "local-lvm:1,efitype=4m,pre-enrolled-keys=0"
    assert token["sshkeys"].startswith("ssh-ed25519%20AAAA") and "+" not in token["sshkeys"]
    assert unquote(token["sshkeys"]) == SSH_PUB
    assert (token["memory"], token["balloon"], token["cores"]) == (1024, 0, 2)


def _live_from(desired, size="8G"):
    """A config as PVE shows it after creating ``desired`` (volumes allocated, MAC added)."""
    live = dict(desired)
    live.update(efidisk0="local-lvm:vm-140-disk-0,efitype=4m,pre-enrolled-keys=0,size=528K",
                ide2="local-lvm:vm-140-cloudinit,media=cdrom", scsi0=f"local-lvm:vm-140-disk-1,size={size}",
                net0="virtio=BC:24:11:00:00:01,bridge=vmbr0", memory=str(desired["memory"]), agent="1")
    return live


def test_compare_created_config_is_equal(lab_catalog):
    desired = desired_config(lab_catalog, lab_catalog.vm(140), raw_pci=False)
    assert compare(desired, _live_from(desired), 8) == []


def test_compare_reports_each_kind(lab_catalog):
    desired = desired_config(lab_catalog, lab_catalog.vm(140), raw_pci=False)
    live = _live_from(desired, size="16G")
    live.update(cores=4, hostpci0="host=0000:01:00,pcie=1", onboot=0,
                efidisk0="local-lvm:vm-140-disk-0,efitype=2m,size=128K")
    found = {(d.key, d.kind, d.note) for d in compare(desired, live, 8)}
    assert found == {("cores", "restart", ""), ("hostpci0", "restart", ""), ("onboot", "live", ""),
                     ("efidisk0", "fixed", "the EFI disk cannot be changed in place"), ("scsi0", "disk", "shrink")}
