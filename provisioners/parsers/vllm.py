"""Parse a vLLM server log (``journalctl -u vllm``, ``docker logs``, ``vllm serve`` stdout).

Facts (real log: ``tests/fixtures/corpus/vllm_startup_log_v0.10.2_tinyllama.txt``)::

    (APIServer pid=291) INFO ... [api_server.py:1882] vLLM API server version 0.10.2
    (EngineCore_0 pid=357) INFO ... [gpu_worker.py:276] Available KV cache memory: 101.47 GiB
    (EngineCore_0 pid=357) INFO ... [kv_cache_utils.py:850] GPU KV cache size: 4,836,272 tokens
    (APIServer pid=291) INFO ... [api_server.py:1957] Starting vLLM API server 0 on http://0.0.0.0:8000

Errors (``VllmError.kind``):

- ``torch-lacks-gpu-arch``: ``... with CUDA capability sm_120 is not compatible with the current
  PyTorch installation.`` (torch/cuda/__init__.py warning) and ``CUDA error: no kernel image is
  available for execution on the device`` (vllm-project/vllm#21633, #14452, #19018).
- ``triton-no-c-compiler``: ``Failed to find C compiler. Please specify via CC environment
  variable.`` (triton/runtime/build.py; vllm-project/vllm#15329).
- ``insufficient-free-vram``: ``Free memory on device [cuda:0] (12.18/23.56 GiB) on startup is less
  than desired GPU memory utilization (0.92, 21.67 GiB). Decrease GPU memory utilization or
  reduce GPU memory used by other processes.`` - vLLM's own check, source:
  vllm-project/vllm ``vllm/v1/worker/gpu_worker.py`` (``init_device``, older releases) and
  ``vllm/v1/worker/utils.py`` ``request_memory()`` (newer; adds the device name); also torch's
  ``CUDA out of memory. Tried to allocate ...``.
- ``engine-init-failed``: ``Engine core initialization failed`` (the APIServer's summary line;
  the real cause is one of the above, printed earlier).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["VllmError", "VllmLog", "parse_log"]

_VERSION = re.compile(r"vLLM API server version (?P<v>\S+)|Initializing a V1 LLM engine \(v(?P<v2>[^)\s]+)\)")
_STARTING = re.compile(r"Starting vLLM API server(?: \d+)? on "
                       r"(?P<url>https?://(?P<host>[^\s:/]+|\[[^\]]+\]):(?P<port>\d+))")
_KV_MEM = re.compile(r"Available KV cache memory:\s*(?P<gib>[\d.]+)\s*GiB")
_KV_TOKENS = re.compile(r"GPU KV cache size:\s*(?P<tokens>[\d,]+)\s*tokens")
_MODEL_LOAD = re.compile(r"Model loading took (?P<gib>[\d.]+) GiB")
_FREE_MEM = re.compile(
    r"Free memory on device(?: (?P<device>\S+))? \((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup "
    r"is less than desired GPU memory utilization \((?P<util>[\d.]+), (?P<requested>[\d.]+) GiB\)")
_SM = re.compile(r"(?P<gpu>.+?) with CUDA capability (?P<sm>sm_\d+) is not compatible with the current "
                 r"PyTorch installation")
_SUPPORTS = re.compile(r"current PyTorch install supports CUDA capabilities (?P<list>(?:sm_\d+\s*)+)")
_RULES = [
    ("torch-lacks-gpu-arch", re.compile(r"is not compatible with the current PyTorch installation|"
                                        r"no kernel image is available for execution on the device")),
    ("triton-no-c-compiler", re.compile(r"Failed to find C compiler")),
    ("insufficient-free-vram", re.compile(r"on startup is less than desired GPU memory utilization|"
                                          r"CUDA out of memory\. Tried to allocate")),
    ("engine-init-failed", re.compile(r"Engine core initialization failed")),
]
_PREFIX = re.compile(r"^(?:[\w.-]+-\d+\s+\|\s*)?(?:\([\w ]+pid=\d+\)\s*)?")


@dataclass
class VllmError:
    """One recognised failure: ``kind`` (see module docstring), ``text`` (the log line, prefix
    removed), and what it names: ``gpu``/``sm`` (arch error), ``supported`` (torch's sm list),
    ``free_gib``/``total_gib``/``utilization``/``requested_gib`` (free-memory check, GiB)."""

    kind: str
    text: str
    gpu: str | None = None
    sm: str | None = None
    supported: list[str] = field(default_factory=list)
    free_gib: float | None = None
    total_gib: float | None = None
    utilization: float | None = None
    requested_gib: float | None = None


@dataclass
class VllmLog:
    """Facts from a vLLM log. ``api_url``/``host``/``port`` come from ``Starting vLLM API server
    ... on http://H:P`` (printed only after the model loaded, so ``None`` = never came up);
    ``kv_cache_gib`` (GiB), ``kv_cache_tokens``, ``model_load_gib`` (GiB); ``errors`` in log order
    with one entry per kind (the first occurrence)."""

    version: str | None = None
    api_url: str | None = None
    host: str | None = None
    port: int | None = None
    kv_cache_gib: float | None = None
    kv_cache_tokens: int | None = None
    model_load_gib: float | None = None
    errors: list[VllmError] = field(default_factory=list)

    @property
    def started(self) -> bool:
        """The API server reported it is listening."""
        return self.api_url is not None


def parse_log(text: str) -> VllmLog:
    """Parse a vLLM log into :class:`VllmLog` (pure; unknown lines ignored)."""
    log = VllmLog()
    seen: dict[str, VllmError] = {}
    for raw in (text or "").splitlines():
        line = _PREFIX.sub("", raw.strip())
        if not line:
            continue
        if log.version is None and (m := _VERSION.search(line)):
            log.version = m.group("v") or m.group("v2")
        if m := _STARTING.search(line):
            log.api_url, log.host, log.port = m.group("url"), m.group("host"), int(m.group("port"))
        if m := _KV_MEM.search(line):
            log.kv_cache_gib = float(m.group("gib"))
        if m := _KV_TOKENS.search(line):
            log.kv_cache_tokens = int(m.group("tokens").replace(",", ""))
        if m := _MODEL_LOAD.search(line):
            log.model_load_gib = float(m.group("gib"))
        if (m := _SUPPORTS.search(line)) and "torch-lacks-gpu-arch" in seen:
            seen["torch-lacks-gpu-arch"].supported = m.group("list").split()
        for kind, pattern in _RULES:
            if not pattern.search(line):
                continue
            err = seen.get(kind)
            if err is None:
                err = VllmError(kind=kind, text=line)
                seen[kind] = err
                log.errors.append(err)
            if kind == "torch-lacks-gpu-arch" and (s := _SM.search(line)):
                err.gpu, err.sm, err.text = s.group("gpu").strip(), s.group("sm"), line
            if kind == "insufficient-free-vram" and (f := _FREE_MEM.search(line)):
                err.free_gib, err.total_gib = float(f.group("free")), float(f.group("total"))
                err.utilization, err.requested_gib = float(f.group("util")), float(f.group("requested"))
                err.text = line
            break
    return log
