"""GPU profiles: the same facts feed fakepve's PCI listing, the guest's fw_cfg JSON and the packages."""
from __future__ import annotations

import json

import pytest

from lab.profiles import DEFAULT_PROFILE, PROFILES, get_profile
from provisioners.errors import DeployError


def test_the_four_profiles_exist():
    assert set(PROFILES) == {"rtx5060ti", "secure-boot", "driver-install-fails", "no-gpu"}
    assert DEFAULT_PROFILE == "rtx5060ti"


def test_unknown_profile_is_an_operator_error():
    with pytest.raises(DeployError) as err:
        get_profile("rtx9090")
    assert "rtx5060ti" in err.value.cause


@pytest.mark.parametrize("name", ["rtx5060ti", "secure-boot", "driver-install-fails"])
def test_gpu_profiles_list_the_card_with_its_iommu_group(name):
    devs = get_profile(name).pve_pci_devices()
    gpu = [d for d in devs if d["vendor"] == "0x10de"]
    assert [(d["id"], d["device"], d["iommugroup"]) for d in gpu] == [("0000:01:00.0", "0x2d04", 14), ("0000:01:00.1", "0x22eb", 14)]
    assert {d["subsystem_vendor"] for d in gpu} == {"0x1043"}   # the guest's modalias says ASUS 1043:8a11
    hw = get_profile(name).guest_hw()
    assert hw["gpus"][0]["device_id"] == "2d04" and hw["gpus"][0]["memory_total_mib"] == 16311
    assert ["nvidia-driver-570", "third-party non-free", True] in hw["ubuntu_drivers"]   # recommends the closed one


def test_no_gpu_profile():
    p = get_profile("no-gpu")
    assert not [d for d in p.pve_pci_devices() if d["vendor"] == "0x10de"]
    assert p.guest_hw()["gpus"] == [] and p.free_mib == 0


def test_behaviour_flags():
    assert get_profile("secure-boot").guest_hw()["secure_boot"] is True
    assert get_profile("rtx5060ti").guest_hw()["secure_boot"] is False
    assert get_profile("driver-install-fails").driver_install_fails
    assert get_profile("rtx5060ti").free_mib == 16311 - 15


def test_guest_hw_json_is_stable_compact_json():
    text = get_profile("rtx5060ti").guest_hw_json()
    assert text == get_profile("rtx5060ti").guest_hw_json()
    assert json.loads(text)["profile"] == "rtx5060ti" and '"secure_boot":false' in text   # mokutil shim greps this


def test_pve_profile_feeds_gpufakepve():
    from lab.gpupve import GpuFakePve

    pve = GpuFakePve(profile=get_profile("rtx5060ti").pve_profile())
    assert pve.profile == "rtx5060ti" and pve.iommu
    assert any(d["device"] == "0x2d04" for d in pve.pci_devices)
