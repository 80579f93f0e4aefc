"""GPU knowledge table (provisioners/data/gpus.yml)."""
import pytest
import yaml

from provisioners import gpus


def test_rtx5060ti_row():
    info = gpus.gpu_info("10de:2d04")
    assert info.name == "NVIDIA GeForce RTX 5060 Ti"
    assert (info.architecture, info.compute_capability, info.sm) == ("Blackwell", "12.0", "sm_120")
    assert info.open_modules_only and info.min_driver_branch == 570 and info.min_cuda == "12.8"


@pytest.mark.parametrize("form", ["10DE:2D04", "2d04", "0x2d04", "2D0410DE"])
def test_id_forms(form):
    assert gpus.gpu_info(form).pci_id == "10de:2d04"


@pytest.mark.parametrize("pci_id,name", [
    ("10de:2b85", "NVIDIA GeForce RTX 5090"), ("10de:2c02", "NVIDIA GeForce RTX 5080"),
    ("10de:2c05", "NVIDIA GeForce RTX 5070 Ti"), ("10de:2f04", "NVIDIA GeForce RTX 5070"),
    ("10de:2d05", "NVIDIA GeForce RTX 5060"), ("10de:2c58", "NVIDIA GeForce RTX 5090 Laptop GPU"),
    ("10de:2bb1", "NVIDIA RTX PRO 6000 Blackwell Workstation Edition")])
def test_blackwell_rows_need_open_modules(pci_id, name):
    info = gpus.gpu_info(pci_id)
    assert info.name == name and info.open_modules_only and info.compute_capability == "12.0"


def test_older_cards_and_unknowns():
    assert gpus.gpu_info("10de:1b81").compute_capability == "6.1"
    assert gpus.gpu_info("10de:1b81").open_modules_supported is False
    assert gpus.gpu_info("10de:2482").open_modules_only is False
    assert gpus.gpu_info("10de:1292").compute_capability is None  # GT 740M exists as GK107 and GK208
    assert gpus.gpu_info("10de:27b8").compute_capability == "8.9"
    assert gpus.gpu_info("10de:ffff") is None
    assert gpus.gpu_info("not-an-id") is None and gpus.gpu_info(None) is None


def test_every_row_cites_known_sources():
    raw = yaml.safe_load(gpus.DATA_FILE.read_text())
    for key, row in raw["gpus"].items():
        assert row["sources"], key
        assert set(row["sources"]) <= set(raw["sources"]), key
    assert len(gpus.all_gpus()) == len(raw["gpus"])
