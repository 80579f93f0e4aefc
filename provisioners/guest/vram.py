"""Plan-time GPU memory (VRAM) budget for vLLM and Ollama sharing one card.

vLLM reserves ``--gpu-memory-utilization`` x the GPU's TOTAL memory when it starts and fails
to start if that much is not free (vLLM docs, "Engine arguments": gpu_memory_utilization is
"the fraction of GPU memory to be used for the model executor ... a per-instance limit").
Ollama then needs room for its models next to it, or it falls back to the CPU. So the catalog
must satisfy::

    ceil(gpu_memory_utilization x gpu_memory_mib) + ollama.vram_mib <= gpu_memory_mib

All quantities are MiB (mebibytes), as nvidia-smi reports ``memory.total`` (16311 MiB on the
RTX 5060 Ti, corpus nvidia-smi_query-gpu_csv_rtx5060ti.txt). The vLLM share is rounded UP so
that a budget that fits on paper also fits the reservation vLLM makes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from provisioners.errors import DeployError
from provisioners.results import Change


@dataclass(frozen=True)
class VramBudget:
    """The VRAM split for one GPU, all in MiB.

    ``gpu_mib``: the card's memory.total; ``vllm_share``: gpu_memory_utilization (0..1];
    ``vllm_mib``: ceil(share x gpu_mib); ``ollama_mib``: Ollama's budget (0 without Ollama).
    """

    gpu_mib: int
    vllm_share: float
    vllm_mib: int
    ollama_mib: int

    @property
    def total_mib(self) -> int:
        return self.vllm_mib + self.ollama_mib

    @property
    def headroom_mib(self) -> int:
        """gpu_mib - total_mib; negative = over budget."""
        return self.gpu_mib - self.total_mib

    @property
    def fits(self) -> bool:
        return self.headroom_mib >= 0

    def max_share_for_ollama(self) -> float:
        """The largest gpu_memory_utilization (2 decimals, rounded down) that fits next to
        ``ollama_mib``; 0.0 if Ollama alone exceeds the card."""
        room = self.gpu_mib - self.ollama_mib
        if room <= 0:
            return 0.0
        share = math.floor(room / self.gpu_mib * 100) / 100
        while share > 0 and math.ceil(share * self.gpu_mib) > room:
            share = round(share - 0.01, 2)
        return max(share, 0.0)

    def explain(self) -> str:
        """One paragraph with the numbers, e.g. for a plan line or a refusal."""
        verdict = (f"fits, {self.headroom_mib} MiB spare" if self.fits
                   else f"over by {-self.headroom_mib} MiB")
        return (f"vLLM {self.vllm_share:g} x {self.gpu_mib} MiB = {self.vllm_mib} MiB + Ollama "
                f"{self.ollama_mib} MiB = {self.total_mib} MiB of {self.gpu_mib} MiB: {verdict}")

    def remedy(self) -> str:
        """How to make it fit (lower the vLLM share or the Ollama budget), with numbers."""
        max_ollama = self.gpu_mib - self.vllm_mib
        options = []
        share = self.max_share_for_ollama()
        if share > 0:
            options.append(f"lower vms[].stack.vllm.gpu_memory_utilization to {share:.2f} or less")
        if max_ollama > 0:
            options.append(f"lower vms[].stack.ollama.vram_mib to {max_ollama} or less")
        if not options:
            options.append("give Ollama a budget smaller than the GPU's memory")
        return ("in infrastructure-catalog.yml " + ", or ".join(options)
                + " (vLLM reserves its share of the GPU at start and fails if it is not free)")


def compute_budget(gpu_memory_mib: int, gpu_memory_utilization: float,
                   ollama_vram_mib: int = 0) -> VramBudget:
    """Pure: the :class:`VramBudget` for a GPU of ``gpu_memory_mib`` MiB, a vLLM share
    (fraction, 0 < share <= 1) and an Ollama budget in MiB (>= 0).

    Raises :class:`DeployError` for impossible inputs (non-positive GPU memory, a share outside
    (0, 1], a negative Ollama budget).
    """
    if gpu_memory_mib <= 0:
        raise DeployError(what=f"GPU memory must be positive, got {gpu_memory_mib} MiB",
                          remedy="set vms[].gpu.expected.memory_mib to the card's memory.total "
                                 "as nvidia-smi reports it (16311 for an RTX 5060 Ti)")
    if not 0 < gpu_memory_utilization <= 1:
        raise DeployError(what=f"vLLM gpu_memory_utilization {gpu_memory_utilization} is not a "
                               "fraction in (0, 1]",
                          remedy="set vms[].stack.vllm.gpu_memory_utilization to e.g. 0.6")
    if ollama_vram_mib < 0:
        raise DeployError(what=f"Ollama vram_mib {ollama_vram_mib} is negative",
                          remedy="set vms[].stack.ollama.vram_mib to 0 or more (MiB)")
    vllm_mib = math.ceil(round(gpu_memory_utilization * gpu_memory_mib, 6))
    return VramBudget(gpu_memory_mib, gpu_memory_utilization, vllm_mib, ollama_vram_mib)


def plan_budget(vm: Any, gpu_memory_mib: int | None = None) -> list[Change]:
    """Plan check for one catalog VM: ``[]`` if the budget fits, else one ``refuse`` Change
    whose reason shows the numbers (MiB) and how to fix them.

    ``vm`` is a catalog VM (``vm.stack.vllm.gpu_memory_utilization``,
    ``vm.stack.ollama.vram_mib``, ``vm.gpu.expected.memory_mib``); either stack entry may be
    None (not deployed). ``gpu_memory_mib`` overrides the catalog's expected memory with the
    live nvidia-smi value when known.
    """
    stack = vm.stack
    vllm = getattr(stack, "vllm", None)
    ollama = getattr(stack, "ollama", None)
    if vllm is None and ollama is None:
        return []
    gpu_mib = int(gpu_memory_mib or vm.gpu.expected.memory_mib)
    share = float(vllm.gpu_memory_utilization) if vllm is not None else 0.0
    ollama_mib = int(ollama.vram_mib) if ollama is not None else 0
    if vllm is None:
        if ollama_mib <= gpu_mib:
            return []
        return [Change("refuse", "vram", "ollama.vram_mib", ollama_mib, f"<= {gpu_mib}",
                       f"Ollama's budget {ollama_mib} MiB exceeds the GPU's {gpu_mib} MiB; "
                       f"lower vms[].stack.ollama.vram_mib")]
    budget = compute_budget(gpu_mib, share, ollama_mib)
    if budget.fits:
        return []
    return [Change("refuse", "vram", "budget", f"{budget.total_mib} MiB", f"<= {gpu_mib} MiB",
                   f"{budget.explain()}; {budget.remedy()}")]


def check_budget(vm: Any, gpu_memory_mib: int | None = None) -> VramBudget | None:
    """Like :func:`plan_budget` but raising: returns the fitting :class:`VramBudget` (None when
    neither vLLM nor Ollama is configured) or raises :class:`DeployError` with the numbers."""
    refusals = plan_budget(vm, gpu_memory_mib)
    if refusals:
        raise DeployError(what="the GPU memory budget of vLLM + Ollama does not fit the GPU",
                          cause=refusals[0].reason.split("; ")[0],
                          remedy=refusals[0].reason.split("; ", 1)[-1])
    vllm = getattr(vm.stack, "vllm", None)
    if vllm is None:
        return None
    ollama = getattr(vm.stack, "ollama", None)
    return compute_budget(int(gpu_memory_mib or vm.gpu.expected.memory_mib),
                          float(vllm.gpu_memory_utilization),
                          int(ollama.vram_mib) if ollama is not None else 0)
