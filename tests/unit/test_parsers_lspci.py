"""lspci parser on real outputs (tests/fixtures/corpus/lspci-*, dmesg_blackwell_*)."""
from provisioners.parsers import lspci
from tests.fixtures.corpus.samples import sample, text


def test_lspci_nn_rtx5060ti():
    devs = lspci.parse(sample("lspci-nn_rtx5060ti_proxmox_and_iommu.txt", "a"))
    assert [(d.address, d.class_id, d.vendor_device, d.rev) for d in devs] == [
        ("01:00.0", "0300", "10de:2d04", "a1"), ("01:00.1", "0403", "10de:22eb", "a1")]
    gpu = devs[0]
    assert gpu.class_name == "VGA compatible controller"
    assert gpu.name == "NVIDIA Corporation GB206 [GeForce RTX 5060 Ti]"
    assert devs[1].name == "NVIDIA Corporation Device"  # older pci.ids: match by id, not name
    assert gpu.driver_in_use is None and gpu.iommu_group is None
    assert lspci.nvidia_gpus(devs) == [gpu]


def test_iommu_group_tree():
    devs = lspci.parse(sample("lspci-nn_rtx5060ti_proxmox_and_iommu.txt", "b"))
    assert [(d.address, d.iommu_group) for d in devs] == [("01:00.0", 14), ("01:00.1", 14)]
    assert devs[1].name == "NVIDIA Corporation GB206 High Definition Audio Controller"


def test_iommu_group_one_line_variant_and_domain_address():
    devs = lspci.parse("IOMMU Group 2 0000:01:00.0 VGA compatible controller [0300]: "
                       "NVIDIA Corporation GB206 [GeForce RTX 5060 Ti] [10de:2d04] (rev a1)\n")
    assert (devs[0].address, devs[0].iommu_group, devs[0].device_id) == ("0000:01:00.0", 2, "2d04")


def test_lspci_nnk_driver_and_modules():
    gpu, audio = lspci.parse(text("lspci-nnk_rtx5060ti_nvidia_bound.txt"))
    assert gpu.subsystem == "Micro-Star International Co., Ltd. [MSI] Device"
    assert gpu.subsystem_id == "1462:5351"
    assert gpu.driver_in_use == "nvidia"
    assert gpu.kernel_modules == ["nouveau", "nvidia_drm", "nvidia"]
    assert (audio.driver_in_use, audio.kernel_modules) == ("snd_hda_intel", ["snd_hda_intel"])


def test_lspci_inside_transcript_with_other_devices():
    devs = lspci.parse(text("dmesg_blackwell_closed_module_requires_open.txt"))
    assert [d.vendor_device for d in lspci.nvidia_gpus(devs)] == ["10de:2c58"]
    assert devs[0].vendor_device == "8086:7d67"


def test_non_lspci_text_gives_nothing():
    assert lspci.parse("No devices were found\n01:00.0 VGA compatible controller: NVIDIA Corporation Device 2d04\n") == []
