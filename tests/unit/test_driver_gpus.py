"""The driver and cuda decisions with the REAL GPU table (provisioners/data/gpus.yml)."""
from __future__ import annotations

from pathlib import Path

import pytest

from provisioners.errors import DeployError
from provisioners.guest.cuda import check_version, compute_capability
from provisioners.guest.driver import choose_driver, gpu_needs
from provisioners.parsers.ubuntu_drivers import parse_devices

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "corpus"


def test_rtx5060ti_needs_open_modules_570_and_cuda_12_8():
    needs = gpu_needs("10de:2d04")
    assert needs.known and needs.open_modules_only and needs.min_driver_branch == 570
    assert compute_capability("10de:2d04") == (12, 0)
    check_version("12.8", "10de:2d04")
    with pytest.raises(DeployError) as ei:
        check_version("12.6", "10de:2d04")
    assert "sm_120" in str(ei.value)


def test_table_drives_choice_even_with_a_low_catalog_minimum():
    text = (CORPUS / "ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt").read_text()
    # catalog says "closed", min 0: the table (open only, >= 570) refuses the closed driver
    with pytest.raises(DeployError):
        choose_driver(parse_devices(text)[0].drivers, "10de:2d04", "closed", 0)
    assert choose_driver(parse_devices(text)[0].drivers, "10de:2d04", "open", 0).package == \
        "nvidia-driver-570-open"


def test_unknown_gpu_has_no_needs():
    needs = gpu_needs("10de:ffff")
    assert not needs.known and needs.min_driver_branch is None
    check_version("11.0", "10de:ffff")
