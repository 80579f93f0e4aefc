"""Field types of the catalog: annotated pydantic types whose validators explain mistakes.

Each validator runs *before* pydantic's strict type check and raises a ``PydanticCustomError``
whose context carries ``message``, ``expected`` and ``fix``;
:func:`provisioners.catalog.schema_issues.issue_from_pydantic` turns them into a
:class:`~provisioners.catalog.errors.CatalogIssue`.

Units are part of the type names: :data:`MiB` (PVE ``memory``, nvidia-smi memory), :data:`GiB`
(PVE disk sizes), :data:`Seconds`.
"""
from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le
from pydantic import BeforeValidator, Field, ValidationInfo
from pydantic_core import PydanticCustomError

from provisioners.catalog.errors import show
from provisioners.redact import register_secret


def fail(kind: str, message: str, expected: str = "", fix: str = "") -> PydanticCustomError:
    """The error a validator raises: pydantic error type ``kind`` with ``message``,
    ``expected`` and ``fix`` in its context."""
    # "{message}" as template: our texts may contain braces, which str.format would eat.
    return PydanticCustomError(kind, "{message}", {"message": message, "expected": expected, "fix": fix})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _need_str(value: Any, expected: str, fix: str = "") -> str:
    if not isinstance(value, str):
        if _is_number(value):
            raise fail("string_type", "YAML read this value as a number, not as text", expected,
                       fix or "put the value in double quotes")
        raise fail("string_type", f"{show(value)} is not a string", expected, fix)
    return value


def _text(kind: str, test: str | Callable[[str], bool], expected: str, fix: str = "", *, noun: str = "",
          lower: bool = False, quote_numbers: tuple[str, str] | None = None) -> Callable[[Any], str]:
    """A validator for a string that fully matches the regex ``test`` (or passes the predicate
    ``test``); returns it, lower-cased with ``lower`` (before matching).

    On a mismatch the message is ``<value> is not <noun>`` (default ``a valid <kind>``).
    ``quote_numbers=(prefix, note)``: a YAML number is refused with
    ``<prefix><value> is a YAML number, not a version string`` and the fix
    ``quote it: "<value>" <note>`` (unquoted versions lose digits: 0.10 reads as 0.1).
    """
    matches = re.compile(test).fullmatch if isinstance(test, str) else test
    noun = noun or f"a valid {kind.replace('_', ' ')}"

    def check(value: Any) -> str:
        if quote_numbers and _is_number(value):
            prefix, note = quote_numbers
            raise fail(kind, f"{prefix}{value!r} is a YAML number, not a version string", expected,
                       f'quote it: "{value}" {note}')
        text = _need_str(value, expected)
        if lower:
            text = text.lower()
        if not matches(text):
            raise fail(kind, f"{show(value)} is not {noun}", expected, fix)
        return text

    return check


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT])?(i?)([bB])?\s*$")
_UNIT_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def _size(unit: Literal["MiB", "GiB"]) -> Callable[[Any, ValidationInfo], Any]:
    """A validator for ``*_mib`` / ``*_gib`` integers that explains unit mistakes
    (``"50GB"`` -> ``memory_mib is an integer in MiB; 50 GiB = 51200``)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or "this field"
        if isinstance(value, bool):
            raise fail("int_type", f"{show(value)} is not an integer", f"an integer number of {unit}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            hint = f"{name} is an integer in {unit}"
            if match and match.group(2):
                number = float(match.group(1))
                mib = number * _UNIT_MIB[match.group(2).lower()]
                target = mib if unit == "MiB" else mib / 1024
                shown_unit = match.group(2).upper() + "iB"
                number_text = match.group(1)
                converted = math.ceil(target)
                exact = "" if target == converted else f" (rounded up from {target:g})"
                hint += f"; {number_text} {shown_unit} = {converted}{exact}"
            elif match:
                hint += f"; write it without quotes: {match.group(1)}"
            raise fail("int_type", f"{show(value)} is not an integer", f"an integer number of {unit}", hint)
        return value

    return check


def _url(kind: str = "url", schemes: tuple[str, ...] = ("http", "https")) -> Callable[[Any], str]:
    """A validator for an absolute URL with one of ``schemes``; a URL carrying a password is
    refused (and the password registered for redaction)."""
    expected = " or ".join(f"{s}://HOST[:PORT]/..." for s in schemes)

    def check(value: Any) -> str:
        text = _need_str(value, f"a URL, {expected}")
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname or any(c.isspace() for c in text):
            raise fail(kind, f"{show(value)} is not a valid URL", expected,
                       "PVE's API is served over https on port 8006" if schemes == ("https",) else "")
        if parts.password:
            register_secret(parts.password)
            raise fail("secret_in_catalog", "the URL carries a password; secrets never live in the catalog",
                       "a URL without user:password@", "remove the credentials from the URL")
        try:
            parts.port
        except ValueError:
            raise fail(kind, f"{show(value)} has an invalid port", expected) from None
        return text

    return check


def _resolve_path(value: Any, info: ValidationInfo) -> Path:
    """Relative paths resolve against the catalog file's directory (``context['base_dir']``,
    the working directory when validating without a file); ``~`` is expanded."""
    text = _need_str(value, "a file path (relative paths are relative to the catalog file; ~ is expanded)")
    if not text.strip():
        raise fail("path", "the path is empty", "a file path")
    bad = next((c for c in text if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        # A NUL cannot be in a file name at all; others are almost always a stray escape ("\t").
        raise fail("path", f"the path contains the control character U+{ord(bad):04X}", "a file path",
                   "remove it; in double quotes YAML reads \\t, \\0... as control characters")
    path = Path(text).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = Path(base) / path
    return Path(os.path.normpath(path))


def _ip(kind: str, cls: type, noun: str, expected: str,
        fix_for: Callable[[str, ValueError], str] = lambda text, err: "") -> Callable[[Any], Any]:
    """A validator that builds ``cls`` (an :mod:`ipaddress` class) from a string; on failure the
    message is ``<value> is not a valid <noun>: <ipaddress's reason>``."""

    def check(value: Any) -> Any:
        text = _need_str(value, expected)
        try:
            return cls(text)
        except ValueError as err:
            raise fail(kind, f"{show(value)} is not a valid {noun}: {err}", expected, fix_for(text, err)) from None

    return check


def _host_bits_fix(text: str, err: ValueError) -> str:
    if "host bits set" in str(err):
        return f"use the network address: {ipaddress.IPv4Network(text, strict=False)}"
    return ""


_INTERFACE_EXPECTED = "an IPv4 address with its prefix length, e.g. 192.168.0.140/24"
_interface_value = _ip("ip_interface", ipaddress.IPv4Interface, "IPv4 address/prefix", _INTERFACE_EXPECTED)


def _interface(value: Any) -> ipaddress.IPv4Interface:
    text = _need_str(value, _INTERFACE_EXPECTED)
    if "/" not in text:
        raise fail("ip_interface", f"{show(value)} has no prefix length", _INTERFACE_EXPECTED,
                   f"write it as {text}/24 (the prefix of network.subnet)")
    return _interface_value(value)


def _pci_address(value: Any) -> str:
    expected = 'a PCI address "DDDD:BB:SS" with an optional function ".F", e.g. "0000:01:00"'
    text = _need_str(value, expected, 'quote it: "0000:01:00"').lower()
    if re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}(\.[0-7])?", text):
        raise fail("pci_address", f"{show(value)} lacks the PCI domain", expected, f'write "0000:{text}"')
    if not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f](\.[0-7])?", text):
        raise fail("pci_address", f"{show(value)} is not a PCI address", expected,
                   "copy it from `lspci -D` on the PVE host (or /nodes/{node}/hardware/pci)")
    return text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.fullmatch(text))


def _is_port(text: str | None) -> bool:
    return bool(text) and text.isdigit() and 1 <= int(text) <= 65535


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(sep and host and _is_port(port) and _is_host(host))


def _is_jump_host(text: str) -> bool:
    m = re.fullmatch(r"(?:([a-z_][a-z0-9_.-]*)@)?([^:@\s]+)(?::(\d{1,5}))?", text)
    return bool(m and _is_host(m.group(2)) and (not m.group(3) or _is_port(m.group(3))))


def _volid(content: str | None) -> Callable[[Any], str]:
    """A validator for a PVE volume ID ``STORAGE:CONTENT/NAME`` (with ``content`` if given)."""
    expected = "a PVE volume ID STORAGE:CONTENT/NAME"
    if content:
        expected += f" with content '{content}', e.g. local:{content}/NAME"

    def check(value: Any) -> str:
        text = _need_str(value, expected)
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9._-]*):([a-z]+)/([^/\s]+)", text)
        if not m:
            raise fail("volid", f"{show(value)} is not a PVE volume ID", expected,
                       "see `pvesm list STORAGE` on the PVE host")
        if content and m.group(2) != content:
            raise fail("volid", f"{show(value)} has content '{m.group(2)}', not '{content}'", expected,
                       f"write {m.group(1)}:{content}/{m.group(3)}")
        return text

    return check


def _float_share(value: Any) -> Any:
    if isinstance(value, str):
        raise fail("float_type", f"{show(value)} is not a number", "a number in (0, 1], e.g. 0.6",
                   "write it without quotes; 0.6 = 60 % of the GPU's memory")
    return value


def _version(what: str, example: str) -> Callable[[Any], str]:
    """A validator for a pinned release version such as ``"0.10.2"`` (quoted in YAML)."""
    return _text("version", r"\d+(\.\d+)+([.+-]?[0-9A-Za-z][0-9A-Za-z.+-]*)?",
                 f"a version string such as \"{example}\"", noun=f"a valid {what}",
                 quote_numbers=(f"{what} ", "(unquoted, YAML reads 0.10 as 0.1)"))


Str = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Gt(0)]
#: A wait in seconds, at most a day: PVE's own task timeouts stop there (``qm start --timeout``
#: is 0-86400, qm(1)), and a larger value overflows the socket timeout of the HTTP client.
Seconds = Annotated[int, Gt(0), Le(86_400)]
Port = Annotated[int, Ge(1), Le(65535)]
MiB = Annotated[int, BeforeValidator(_size("MiB")), Gt(0)]
GiB = Annotated[int, BeforeValidator(_size("GiB")), Gt(0)]
FilePath = Annotated[Path, BeforeValidator(_resolve_path)]
Url = Annotated[str, BeforeValidator(_url())]
HttpsUrl = Annotated[str, BeforeValidator(_url("https_url", ("https",)))]
Sha256 = Annotated[str, BeforeValidator(_text(
    "sha256", r"[0-9a-f]{64}", "64 hex digits (sha256sum of the file)",
    "copy it from the SHA256SUMS published next to the file, or run sha256sum", lower=True))]
StorageId = Annotated[str, BeforeValidator(_text(
    "storage_id", r"[A-Za-z][A-Za-z0-9._-]*[A-Za-z0-9]", "a PVE storage ID such as local-lvm",
    "see `pvesm status` on the PVE host"))]
VmName = Annotated[str, BeforeValidator(_text(
    "vm_name", r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
    "a DNS name (letters, digits, '-'), as PVE requires for VM names"))]
NodeName = Annotated[str, BeforeValidator(_text(
    "node_name", r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?", "a PVE node name as in `pvecm nodes`"))]
LinuxUser = Annotated[str, BeforeValidator(_text(
    "user_name", r"[a-z_][a-z0-9_-]{0,31}", "a Linux user name such as ubuntu"))]
MappingId = Annotated[str, BeforeValidator(_text(
    "mapping_id", r"[A-Za-z][A-Za-z0-9_-]*", "a PVE resource mapping ID (Datacenter > Resource Mappings)"))]
BridgeName = Annotated[str, BeforeValidator(_text(
    "bridge", r"[A-Za-z][A-Za-z0-9_.-]{0,14}", "a Linux bridge name such as vmbr0"))]
ModelId = Annotated[str, BeforeValidator(_text(
    "model_id", r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?",
    "a Hugging Face model id ORG/NAME, e.g. Qwen/Qwen2.5-1.5B-Instruct"))]
AptName = Annotated[str, BeforeValidator(_text(
    "apt_name", r"[A-Za-z0-9][A-Za-z0-9._-]*", "a file-name-safe name (letters, digits, . _ -)"))]
PciAddress = Annotated[str, BeforeValidator(_pci_address)]
PciId = Annotated[str, BeforeValidator(_text(
    "pci_id", r"[0-9a-f]{4}:[0-9a-f]{4}", 'PCI "vendor:device" in hex, e.g. "10de:2d04" (RTX 5060 Ti)',
    "copy the [vvvv:dddd] pair from `lspci -nn` on the PVE host", noun="a PCI vendor:device id", lower=True))]
Bind = Annotated[str, BeforeValidator(_text(
    "bind", _is_host_port, 'HOST:PORT, e.g. "127.0.0.1:11434" (0.0.0.0 listens on every address)',
    noun="HOST:PORT"))]
Host = Annotated[str, BeforeValidator(_text(
    "host", _is_host, "a host name or IP address", noun="a host name or IP address"))]
JumpHost = Annotated[str, BeforeValidator(_text(
    "jump_host", _is_jump_host, "[USER@]HOST[:PORT], e.g. root@pve.example:22", noun="[USER@]HOST[:PORT]"))]
IPv4Addr = Annotated[ipaddress.IPv4Address, BeforeValidator(_ip(
    "ipv4_address", ipaddress.IPv4Address, "ipv4 address", "an IPv4 address, e.g. 192.168.0.1"))]
IPv4Net = Annotated[ipaddress.IPv4Network, BeforeValidator(_ip(
    "ip_network", ipaddress.IPv4Network, "IPv4 network", "an IPv4 network in CIDR form, e.g. 192.168.0.0/24",
    _host_bits_fix))]
IPv4If = Annotated[ipaddress.IPv4Interface, BeforeValidator(_interface)]
#: A PVE volume ID of an importable disk image, ``STORAGE:import/NAME``.
ImportVolid = Annotated[str, BeforeValidator(_volid("import"))]
#: A PVE volume ID of an ISO image, ``STORAGE:iso/NAME``.
IsoVolid = Annotated[str, BeforeValidator(_volid("iso"))]
#: CUDA toolkit series ``"MAJOR.MINOR"`` (``cuda-toolkit-X-Y``).
CudaVersion = Annotated[str, BeforeValidator(_text(
    "cuda_version", r"\d+\.\d+", 'CUDA "MAJOR.MINOR" as a quoted string, e.g. "12.8"',
    "name the toolkit series, e.g. \"12.8\" for cuda-toolkit-12-8", noun="a CUDA version",
    quote_numbers=("", "(unquoted, 12.10 would read as 12.1)")))]
VllmVersion = Annotated[str, BeforeValidator(_version("vLLM version", "0.10.2"))]
OllamaVersion = Annotated[str, BeforeValidator(_version("Ollama version", "0.12.9"))]
#: A share of the GPU's memory, a number in (0, 1].
Share = Annotated[float, BeforeValidator(_float_share), Gt(0), Le(1)]
