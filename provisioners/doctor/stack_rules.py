"""Rules on the LLM stack: nvcc (CUDA toolkit), vLLM logs, Ollama CLI/journal, torch arch list."""
from __future__ import annotations

import re
from typing import Any

from provisioners.doctor.builder import Builder
from provisioners.gpus import gpu_info
from provisioners.parsers import nvcc as nvcc_parser
from provisioners.parsers import ollama as ollama_parser
from provisioners.parsers import vllm as vllm_parser


def read_nvcc(body: str, facts: dict[str, Any]) -> None:
    """``nvcc --version`` -> the toolkit version fact (compared with the GPU in the cross checks)."""
    v = nvcc_parser.parse_version(body)
    if v:
        facts.setdefault("nvcc", v)


def read_vllm(b: Builder, body: str) -> None:
    """vLLM log errors -> torch-lacks-gpu-arch, triton-no-c-compiler, vllm-insufficient-free-vram."""
    log = vllm_parser.parse_log(body)
    for err in log.errors:
        if err.kind == "torch-lacks-gpu-arch":
            if err.gpu:
                g = b.gpu(name=err.gpu, name_rank=2)
                if err.sm and not g.compute_capability and (m := re.fullmatch(r"sm_(\d+)(\d)", err.sm)):
                    g.compute_capability = f"{m.group(1)}.{m.group(2)}"
            b.add("torch-lacks-gpu-arch", err.text,
                  f"the PyTorch inside the vLLM environment has no kernels for this GPU"
                  f"{' (' + err.sm + ')' if err.sm else ''}: it was built for an older CUDA "
                  "(Blackwell sm_120 needs a CUDA 12.8+ build)",
                  "install a vLLM release whose torch lists the GPU's arch: check `python -c \"import torch; "
                  "print(torch.version.cuda, torch.cuda.get_arch_list())\"` shows sm_120 and CUDA >= 12.8 "
                  "(e.g. recent `pip install vllm` wheels, or torch from https://download.pytorch.org/whl/cu128)")
        elif err.kind == "triton-no-c-compiler":
            b.add("triton-no-c-compiler", err.text,
                  "Triton compiles a small C helper at first use and finds no C compiler (and needs the "
                  "Python headers)",
                  "`sudo apt-get install -y build-essential python3-dev` on the vLLM host, then restart vLLM")
        elif err.kind == "insufficient-free-vram":
            hint = ""
            if err.free_gib is not None and err.total_gib:
                fit = max(0.05, int((err.free_gib / err.total_gib - 0.02) * 100) / 100)
                hint = (f" (free {err.free_gib} of {err.total_gib} GiB: a utilization of at most {fit:.2f} "
                        "would fit now)")
            b.add("vllm-insufficient-free-vram", err.text,
                  "vLLM reserves --gpu-memory-utilization x total VRAM at start and refuses to start when "
                  "less than that is free; another process (Ollama keeping a model loaded, a second vLLM, "
                  "a desktop) holds the rest" + hint,
                  "lower `--gpu-memory-utilization`, or free the GPU first (`nvidia-smi` lists the users; "
                  "`ollama stop MODEL` or a short OLLAMA_KEEP_ALIVE), then restart vLLM")


def read_ollama(b: Builder, body: str, journal: bool) -> None:
    """Ollama journal (``inference compute``) and ``ollama ps`` -> GPUs and ollama-cpu-fallback."""
    if journal:
        entries = ollama_parser.parse_inference_compute(body)
        gpus = [e for e in entries if e["gpu"]]
        for e in gpus:
            g = b.gpu(bus=e.get("pci_id"), name=e.get("description"), name_rank=3)
            if e.get("compute") and re.fullmatch(r"\d+\.\d+", e["compute"]) and not g.compute_capability:
                g.compute_capability = e["compute"]
        no_avx = next((ln.strip() for ln in body.splitlines() if "minimum vector extensions" in ln), None)
        none_found = next((ln.strip() for ln in body.splitlines() if "no compatible GPUs were discovered" in ln), None)
        if no_avx or (none_found and not gpus):
            b.add("ollama-cpu-fallback", no_avx or none_found,
                  ("the VM's virtual CPU lacks the AVX extensions Ollama requires for GPU inference "
                   "(Proxmox default CPU type)") if no_avx else
                  "the Ollama server discovered no usable GPU and runs models on the CPU",
                  ("set the VM's CPU type to `host` (Proxmox: cpu=host), restart the VM and Ollama")
                  if no_avx else
                  "make sure `nvidia-smi` works, then `sudo systemctl restart ollama`")
        if entries and not gpus:
            skipped = ollama_parser.skipped_devices(body)
            line = next((ln.strip() for ln in body.splitlines() if "library=cpu" in ln), "library=cpu")
            b.add("ollama-cpu-fallback", line,
                  "the Ollama server found no usable GPU and runs models on the CPU"
                  + (f" (it skipped {skipped[0]['device']}: {skipped[0]['reason']})" if skipped else
                     " (driver not ready when the service started, or no GPU visible to it)"),
                  "make sure `nvidia-smi` works, then `sudo systemctl restart ollama` and look for "
                  "`inference compute ... library=CUDA` in `journalctl -u ollama`")
    for row in ollama_parser.parse_ps(body):
        cpu = row.get("cpu_percent")
        if cpu:
            line = next((ln.strip() for ln in body.splitlines() if row["name"] in ln and "%" in ln), row["name"])
            partial = cpu < 100
            b.add("ollama-cpu-fallback", line,
                  (f"model {row['name']} runs {cpu}% on the CPU: " +
                   ("it does not fit in the free VRAM (vLLM or another model holds the rest)" if partial else
                    "Ollama did not use the GPU (no GPU found at service start, or no VRAM free)")),
                  "free VRAM (lower vLLM's --gpu-memory-utilization, `ollama stop` other models) or use a "
                  "smaller model; if nvidia-smi works, `sudo systemctl restart ollama`")


def read_torch(b: Builder, body: str) -> None:
    """``torch.cuda.get_arch_list()`` output lacking a known GPU's sm_NN -> torch-lacks-gpu-arch."""
    archs = set(re.findall(r"sm_\d+", body))
    if not archs:
        return
    for g in b.gpus:
        info = gpu_info(g.pci_id)
        sm = info.sm if info else None
        if sm and sm not in archs:
            b.add("torch-lacks-gpu-arch", body.strip().splitlines()[-1][:300],
                  f"torch.cuda.get_arch_list() lacks {sm}, the architecture of {info.name}",
                  "install a torch/vLLM build for CUDA 12.8 or newer that lists the GPU's arch")
