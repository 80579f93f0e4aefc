"""A minimal ELF64 relocatable object that kmod's ``modinfo``/``depmod`` read as a kernel module.

The lab cannot build a real nvidia.ko (no GPU, no kernel headers needed for the demo), but the
product checks the flavour with ``modinfo -F license nvidia`` (``Dual MIT/GPL`` = open,
``NVIDIA`` = closed; DESIGN.md §4). kmod reads those fields from the ``.modinfo`` section:
NUL-separated ``key=value`` strings (kmod ``libkmod/libkmod-elf.c`` ``kmod_elf_get_modinfo_strings``).
A real ``insmod`` of this file fails (no ``.gnu.linkonce.this_module``); the lab "loads" the
module through the driver package's boot unit instead.
"""
from __future__ import annotations

import struct


def module_bytes(modinfo: list[tuple[str, str]]) -> bytes:
    """ELF64 little-endian ET_REL x86-64 bytes with ``.modinfo`` holding ``modinfo`` (in order).

    Layout: ELF header (64 B), ``.modinfo`` data, ``.shstrtab`` data, 8-aligned section header
    table with 3 entries (NULL, .modinfo, .shstrtab). Deterministic for equal input.
    """
    info = b"".join(f"{k}={v}".encode() + b"\0" for k, v in modinfo)
    shstr = b"\0.modinfo\0.shstrtab\0"
    off_info = 64
    off_shstr = off_info + len(info)
    off_sh = (off_shstr + len(shstr) + 7) & ~7
    ehdr = struct.pack(
        "<16sHHIQQQIHHHHHH",
        b"\x7fELF\x02\x01\x01" + b"\0" * 9,  # ELFCLASS64, little endian, EV_CURRENT, SYSV ABI
        1, 62, 1,                            # ET_REL, EM_X86_64, EV_CURRENT
        0, 0, off_sh,                        # entry, phoff, shoff
        0, 64, 0, 0, 64, 3, 2,               # flags, ehsize, phentsize, phnum, shentsize, shnum, shstrndx
    )

    def shdr(name, typ, flags, off, size, align):
        return struct.pack("<IIQQQQIIQQ", name, typ, flags, 0, off, size, 0, 0, align, 0)

    sections = (shdr(0, 0, 0, 0, 0, 0)
                + shdr(1, 1, 2, off_info, len(info), 1)          # .modinfo: PROGBITS, SHF_ALLOC
                + shdr(10, 3, 0, off_shstr, len(shstr), 1))      # .shstrtab: STRTAB
    body = ehdr + info + shstr
    return body + b"\0" * (off_sh - len(body)) + sections


def nvidia_modinfo(version: str, flavour: str) -> list[tuple[str, str]]:
    """The ``.modinfo`` fields of nvidia.ko: license ``Dual MIT/GPL`` (open) or ``NVIDIA`` (closed).

    Fields as real ``modinfo nvidia`` lists them (version, license, PCI display-class aliases,
    depends, name); no vermagic/signature: the lab module is unsigned, like a DKMS build.
    """
    return [
        ("version", version),
        ("license", "Dual MIT/GPL" if flavour == "open" else "NVIDIA"),
        ("alias", "pci:v000010DEd*sv*sd*bc03sc02i00*"),
        ("alias", "pci:v000010DEd*sv*sd*bc03sc00i00*"),
        ("depends", ""),
        ("retpoline", "Y"),
        ("name", "nvidia"),
    ]
