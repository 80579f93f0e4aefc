"""lab.cloudinit renders PVE-like NoCloud seeds; cloud-init's own schema validator accepts them."""
from __future__ import annotations

import shutil
import subprocess
from urllib.parse import quote

import pytest
import yaml

from lab import cloudinit
from provisioners.errors import DeployError

KEY1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx1YWJsYWJsYWJsYWJsYWJsYWJsYWJsYWJsYWJsYWI= lab@host"
KEY2 = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC+/x== other+key@host"
LAB_CONFIG = {
    "name": "vm-llm-aimachine",
    "ciuser": "llmadmin",
    # the product sends quote(keys, safe="") (PVE rejects '+' otherwise)
    "sshkeys": quote(KEY1 + "\n" + KEY2 + "\n", safe=""),
    "ipconfig0": "ip=10.0.2.15/24,gw=10.0.2.2",
    "nameserver": "10.0.2.3",
    "net0": "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0",
    "ciupgrade": "0",
}


def test_user_data_matches_pve_keys():
    ud = cloudinit.user_data(LAB_CONFIG, 140)
    assert ud.startswith("#cloud-config\n")
    doc = yaml.safe_load(ud)
    assert doc["hostname"] == "vm-llm-aimachine"
    assert doc["fqdn"] == "vm-llm-aimachine"
    assert doc["manage_etc_hosts"] is True
    assert doc["user"] == "llmadmin"
    assert doc["users"] == ["default"]
    assert doc["ssh_authorized_keys"] == [KEY1, KEY2]  # URL-decoded, '+' and '/' intact
    assert doc["chpasswd"] == {"expire": False}
    assert "package_upgrade" not in doc  # ciupgrade=0


def test_pve_defaults_without_name_and_with_searchdomain():
    doc = yaml.safe_load(cloudinit.user_data({"searchdomain": "lab.test"}, 141))
    assert doc["hostname"] == "VM141" and doc["fqdn"] == "VM141.lab.test"
    assert doc["package_upgrade"] is True  # PVE's ciupgrade default is 1
    assert "user" not in doc
    assert cloudinit.hostname_fqdn({"name": "a.b.c"}, 1) == ("a", "a.b.c")


def test_network_config_v1_static_like_pve():
    nc = yaml.safe_load(cloudinit.network_config(LAB_CONFIG))
    assert nc["version"] == 1
    phys, ns = nc["config"]
    assert phys == {
        "type": "physical", "name": "eth0", "mac_address": "bc:24:11:aa:bb:cc",
        "subnets": [{"type": "static", "address": "10.0.2.15", "netmask": "255.255.255.0",
                     "gateway": "10.0.2.2"}],
    }
    assert ns == {"type": "nameserver", "address": ["10.0.2.3"]}


def test_network_config_dhcp_and_default_dns():
    nc = yaml.safe_load(cloudinit.network_config({"ipconfig0": "ip=dhcp"}))
    assert nc["config"][0]["subnets"] == [{"type": "dhcp4"}]
    assert nc["config"][1]["address"] == ["10.0.2.3"]


def test_bad_ipconfig_is_an_operator_error():
    with pytest.raises(DeployError) as err:
        cloudinit.render({"ipconfig0": "ip=10.0.2.300/24"}, 140)
    assert "ipconfig0" in str(err.value)


def test_instance_id_changes_with_config():
    a = cloudinit.render(LAB_CONFIG, 140)
    b = cloudinit.render({**LAB_CONFIG, "ipconfig0": "ip=10.0.2.16/24,gw=10.0.2.2"}, 140)
    assert a.meta_data != b.meta_data
    assert cloudinit.render(LAB_CONFIG, 140) == a  # deterministic


@pytest.mark.skipif(not shutil.which("cloud-init"), reason="host has no cloud-init (apt-get install cloud-init)")
@pytest.mark.parametrize("config", [LAB_CONFIG, {"ciuser": "root", "cipassword": "x", "name": "h"}, {}])
def test_user_data_passes_cloud_init_schema(tmp_path, config):
    path = tmp_path / "user-data"
    path.write_text(cloudinit.user_data(config, 140))
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Valid cloud-config" in proc.stdout


@pytest.mark.skipif(not shutil.which("cloud-init"), reason="host has no cloud-init")
def test_schema_check_can_fail(tmp_path):
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\nmanage_etc_hosts: 42\n")
    proc = subprocess.run(["cloud-init", "schema", "--config-file", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0


@pytest.mark.skipif(not (shutil.which("cloud-localds") or shutil.which("genisoimage")),
                    reason="no ISO tool")
def test_write_iso_has_cidata_label(tmp_path):
    iso = cloudinit.write_iso(cloudinit.render(LAB_CONFIG, 140), tmp_path / "seed.iso")
    data = iso.read_bytes()
    # ISO9660 primary volume descriptor at 32 KiB: volume id at byte 40 (32 chars)
    assert data[0x8001:0x8006] == b"CD001"
    assert data[0x8000 + 40:0x8000 + 72].strip() == b"cidata"
