"""Capture naming, pasted-transcript splitting and wording sniffing.

A capture is ``name -> text``; the name says which command printed it (:func:`capture_kind`). A
capture may be a pasted transcript: ``$ `` lines open sections whose command is recognised by
:func:`command_kind`; text outside any recognised command is read by its wording
(:func:`sniff_kinds`)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

__all__ = ["capture_kind", "command_kind", "split_transcript", "sniff_kinds", "sections"]


#: capture kind -> name prefixes (after lower-casing; ``_``/``.``/``-`` separate the rest).
_KIND_PREFIXES: list[tuple[str, tuple[str, ...]]] = [
    ("journal-ollama", ("journal-ollama", "journal_ollama", "ollama_journal", "ollama-journal",
                        "journalctl-u-ollama", "ollama.log", "ollama-serve")),
    ("journal-vllm", ("journal-vllm", "journal_vllm")),
    ("nvidia-smi", ("nvidia-smi", "nvidia_smi", "nvidiasmi")),
    ("ubuntu-drivers", ("ubuntu-drivers", "ubuntu_drivers")),
    ("proc-driver", ("proc-driver", "proc_driver", "nvidia-version")),
    ("dmesg", ("dmesg", "journal-kernel", "journalctl-k", "kern", "kernel")),
    ("lspci", ("lspci",)),
    ("nvcc", ("nvcc",)),
    ("modinfo", ("modinfo",)),
    ("modprobe", ("modprobe", "insmod")),
    ("mokutil", ("mokutil", "secureboot", "secure-boot", "secure_boot")),
    ("ollama", ("ollama",)),
    ("vllm", ("vllm",)),
    ("torch", ("torch",)),
    ("pve", ("pve", "qm", "task", "proxmox")),
]


def capture_kind(name: str) -> str | None:
    """Capture kind for a file/capture name (``"nvidia-smi.txt"`` -> ``"nvidia-smi"``,
    ``"vllm.log"`` -> ``"vllm"``, ``"journal-ollama.txt"`` -> ``"journal-ollama"``); ``None`` if
    unknown. ``journal-vllm`` is analysed as ``vllm``."""
    n = Path(name).name.lower()
    for kind, prefixes in _KIND_PREFIXES:
        for p in prefixes:
            if n == p or n.startswith(p) and (len(n) == len(p) or n[len(p)] in "._- "):
                return "vllm" if kind == "journal-vllm" else kind
    return None


_PROMPT = re.compile(r"^\s*(?:\((?:[a-z]|\d{1,2})\)\s*)?(?:[\w.-]+@[\w.-]+(?::[^\s$]*)?\s*)?\$\s+(?P<cmd>\S.*)$")


def command_kind(command: str) -> str | None:
    """Capture kind of a shell command line (``"sudo dmesg | grep -i nvrm"`` -> ``"dmesg"``,
    ``"journalctl -u ollama -b"`` -> ``"journal-ollama"``, ``"/usr/local/cuda/bin/nvcc -V"`` ->
    ``"nvcc"``); ``None`` for commands the doctor does not read."""
    first = command.split("|")[0]
    try:
        words = shlex.split(first)
    except ValueError:
        words = first.split()
    while words and (words[0] in ("sudo", "env", "command", "time", "-n", "-E") or "=" in words[0]
                     or words[0].startswith("-") and words[0] != "-"):
        words.pop(0)
    if not words:
        return None
    prog = words[0].rsplit("/", 1)[-1]
    rest = " ".join(words[1:])
    if prog == "journalctl":
        if re.search(r"(?:-u|--unit)[= ]?ollama", rest):
            return "journal-ollama"
        if re.search(r"(?:-u|--unit)[= ]?vllm", rest):
            return "vllm"
        if re.search(r"(?:^|\s)(?:-k|--dmesg)\b", rest):
            return "dmesg"
        return None
    if prog in ("docker", "podman") and "logs" in words and "vllm" in rest:
        return "vllm"
    if prog in ("python", "python3") and ("torch" in rest or "vllm" in rest):
        return "vllm" if re.search(r"-m vllm|vllm\.entrypoints", rest) else "torch"
    if prog == "cat" and "/proc/driver/nvidia/version" in rest:
        return "proc-driver"
    if prog == "curl" and "/api/" in rest:
        return "ollama"
    table = {"nvidia-smi": "nvidia-smi", "dmesg": "dmesg", "ubuntu-drivers": "ubuntu-drivers",
             "lspci": "lspci", "nvcc": "nvcc", "modinfo": "modinfo", "modprobe": "modprobe",
             "insmod": "modprobe", "mokutil": "mokutil", "ollama": "ollama", "vllm": "vllm",
             "qm": "pve", "pvesh": "pve"}
    return table.get(prog)


def split_transcript(text: str, default_kind: str | None = None) -> list[tuple[str | None, str, str]]:
    """Split a pasted terminal transcript at lines starting with ``$ `` (a ``user@host:~$ ``
    prompt is accepted too). Returns ``[(kind, command, output), ...]``; text before the first
    prompt gets ``default_kind`` and command ``""``. Unknown commands have kind ``None``. Comment
    lines (``# ...``) are dropped: none of the tools read here prints them."""
    sections: list[tuple[str | None, str, list[str]]] = [(default_kind, "", [])]
    for line in (text or "").splitlines():
        m = _PROMPT.match(line)
        if m:
            cmd = m.group("cmd").strip()
            sections.append((command_kind(cmd), cmd, []))
        elif not re.match(r"^\s*#(?:\s|$)", line):  # a pasted note or comment, not output
            sections[-1][2].append(line)
    return [(k, c, "\n".join(body)) for k, c, body in sections if c or any(x.strip() for x in body)]


_SNIFF: list[tuple[str, re.Pattern[str]]] = [
    ("dmesg", re.compile(r"NVRM: (?!version)|Key was rejected by service|module verification failed|"
                         r"fallen off the bus|unsigned module loading is restricted")),
    ("proc-driver", re.compile(r"^NVRM version: NVIDIA UNIX", re.M)),
    ("nvidia-smi", re.compile(r"NVIDIA-SMI|No devices were found|couldn't communicate with the NVIDIA driver|"
                              r"Failed to initialize NVML|<nvidia_smi_log|Unable to determine the device handle")),
    ("ubuntu-drivers", re.compile(r"^== /sys/devices/\S+ ==$", re.M)),
    ("lspci", re.compile(r"^\S*[0-9a-f]{2}:[0-9a-f]{2}\.[0-7] .*\[[0-9a-f]{4}\]: .*\[10de:[0-9a-f]{4}\]", re.M)),
    ("nvcc", re.compile(r"Cuda compilation tools, release")),
    ("journal-ollama", re.compile(r'msg="inference compute"|^NAME\s+ID\s+SIZE\s+PROCESSOR', re.M)),
    ("vllm", re.compile(r"vLLM API server|EngineCore|Failed to find C compiler|less than desired GPU memory "
                        r"utilization|not compatible with the current PyTorch installation|"
                        r"no kernel image is available for execution")),
    ("pve", re.compile(r"cannot prepare PCI pass-through|IOMMU not present|already in use by VMID|"
                       r"failed to open /dev/vfio/|is not viable")),
    ("modinfo", re.compile(r"^(?:license:\s*)?(?:Dual MIT/GPL|NVIDIA)\s*$", re.M)),
]


def sniff_kinds(text: str) -> list[str]:
    """Capture kinds whose unmistakable wording appears in ``text`` - for captures whose name
    says nothing (``"kernel log"`` excerpts, ``verify:...`` evidence, ``apt output``)."""
    return [kind for kind, pattern in _SNIFF if pattern.search(text or "")]


def sections(captures: dict[str, str]) -> list[tuple[str, str, str]]:
    """``[(kind, command, body)]`` of every capture: named captures and transcript sections by
    their command; unnamed text by its wording (:func:`sniff_kinds`). Unknown commands are dropped."""
    out: list[tuple[str, str, str]] = []
    for name, text in captures.items():
        named = capture_kind(name)
        for kind, cmd, body in split_transcript(text or "", named):
            if kind:
                out.append((kind, cmd, body))
            elif not cmd:
                # unnamed text outside any recognised command: read it by its wording
                out.extend((k, "", body) for k in sniff_kinds(body))
    return out
