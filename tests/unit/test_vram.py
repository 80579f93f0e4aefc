"""VRAM budget: vLLM's share of the GPU + Ollama's budget must fit the card (MiB)."""
from __future__ import annotations

import pytest

from provisioners.errors import DeployError
from provisioners.guest import vram
from tests.fixtures.corpus.samples import sample
from tests.unit.test_units import load_vm

# memory.total of the reference card, from a real capture (not typed in by hand).
# Sample (c) is `--format=csv,noheader` of name,memory.total,driver_version.
RTX5060TI_MIB = int(sample("nvidia-smi_query-gpu_csv_rtx5060ti.txt", "c").strip()
                    .splitlines()[-1].split(",")[1].split()[0])


def test_reference_card_memory_from_the_corpus():
    assert RTX5060TI_MIB == 16311


def test_default_split_fits():
    b = vram.compute_budget(RTX5060TI_MIB, 0.6, 4096)
    assert b.vllm_mib == 9787  # ceil(0.6 * 16311 = 9786.6)
    assert b.total_mib == 13883
    assert b.fits and b.headroom_mib == 2428
    assert "fits, 2428 MiB spare" in b.explain()


def test_vllm_default_share_plus_ollama_is_refused_with_numbers_and_fix():
    b = vram.compute_budget(RTX5060TI_MIB, 0.9, 4096)
    assert b.vllm_mib == 14680  # ceil(0.9 * 16311 = 14679.9)
    assert not b.fits and b.headroom_mib == -2465
    text = b.explain() + " " + b.remedy()
    for number in ("16311 MiB", "14680 MiB", "4096 MiB", "18776 MiB", "over by 2465 MiB"):
        assert number in text
    # the suggested values must themselves fit
    assert "gpu_memory_utilization to 0.74" in text
    assert vram.compute_budget(RTX5060TI_MIB, 0.74, 4096).fits
    assert not vram.compute_budget(RTX5060TI_MIB, 0.75, 4096).fits
    assert "vram_mib to 1631 or less" in text
    assert vram.compute_budget(RTX5060TI_MIB, 0.9, 1631).fits
    assert not vram.compute_budget(RTX5060TI_MIB, 0.9, 1632).fits


def test_exact_fit_is_allowed_one_mib_more_is_not():
    assert vram.compute_budget(10000, 0.5, 5000).fits
    assert not vram.compute_budget(10000, 0.5, 5001).fits


@pytest.mark.parametrize("args", [(0, 0.5, 0), (16311, 0, 0), (16311, 1.2, 0), (16311, 0.5, -1)])
def test_impossible_inputs_raise_deploy_error(args):
    with pytest.raises(DeployError):
        vram.compute_budget(*args)


def test_plan_budget_on_the_catalogs():
    assert vram.plan_budget(load_vm("infrastructure-catalog.yml")) == []
    assert vram.plan_budget(load_vm("lab/lab-catalog.yml")) == []


def test_plan_budget_refuses_0_9_share_plus_4096():
    vm = load_vm(vllm={"gpu_memory_utilization": 0.9}, ollama={"vram_mib": 4096})
    [change] = vram.plan_budget(vm)
    assert change.action == "refuse" and change.target == "vram"
    assert "18776 MiB of 16311 MiB" in change.reason
    with pytest.raises(DeployError) as err:
        vram.check_budget(vm)
    assert "over by 2465 MiB" in err.value.cause
    assert "gpu_memory_utilization" in err.value.remedy


def test_plan_budget_uses_the_live_gpu_memory_when_given():
    vm = load_vm()  # 0.6 share + 4096 MiB fits 16311 MiB ...
    assert vram.plan_budget(vm) == []
    [change] = vram.plan_budget(vm, gpu_memory_mib=8192)  # ... but not an 8 GiB card
    assert change.action == "refuse" and "of 8192 MiB" in change.reason
    assert vram.check_budget(vm).vllm_mib == 9787
