"""The infrastructure catalog: YAML -> typed, validated model.

``load_catalog(path)`` reads ``infrastructure-catalog.yml`` (or another catalog) and returns a
:class:`Catalog` whose attribute names are exactly the YAML keys
(``cat.proxmox.endpoint``, ``cat.vms[0].gpu.expected.pci_id``,
``vm.stack.vllm.gpu_memory_utilization``). Any problem raises :class:`CatalogError`, which
carries one :class:`CatalogIssue` per problem with the field path, the YAML line:column
(1-based), what was expected and how to fix it; ``str(err)`` is one line per issue::

    lab/bad.yml:41:17: vms[0].memory_mib: "50GB" is not an integer (expected ...; fix: ...)

Units are part of the field names: ``*_mib`` MiB (PVE ``memory`` is MiB, nvidia-smi reports
MiB), ``*_gib`` GiB (PVE disk sizes), ``*_s`` seconds. Secrets never live in the catalog:
keys named like password/secret/token/api_key are rejected, pointing at the environment
variable to use instead (see :mod:`provisioners.secrets`).

Loading happens in three passes, so that every message can point at a line:

1. parse: PyYAML composes the node tree (line/column marks); duplicate mapping keys, which
   PyYAML would silently collapse to the last one, are reported; secret-looking keys are
   reported (and their values registered for redaction).
2. schema: pydantic v2 (``extra="forbid"``, strict types) checks types, formats and ranges.
3. cross-field checks on the validated model: VMIDs/names/IPs unique, IPs inside the subnet,
   image references, the vLLM + Ollama VRAM budget, and (unless ``check_files=False``) the
   files the catalog refers to (SSH keys, CA bundle).

Pass 3 runs only when pass 2 succeeded, so a catalog with schema errors may show further
cross-field errors once those are fixed.
"""
from __future__ import annotations

import base64
import difflib
import ipaddress
import math
import os
import re
import struct
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, ValidationInfo
from pydantic_core import PydanticCustomError

from provisioners.errors import DeployError
from provisioners.redact import redact, register_secret

#: The catalog the tool uses when none is named: ``<repo root>/infrastructure-catalog.yml``.
DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "infrastructure-catalog.yml"



def default_catalog_path() -> Path:
    """The catalog to use when none is named: ``$CATALOG`` when set and non-empty (as
    ``make ... CATALOG=PATH`` passes it), else :data:`DEFAULT_CATALOG`."""
    return Path(os.environ.get("CATALOG") or DEFAULT_CATALOG)


# --------------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class CatalogIssue:
    """One problem in a catalog.

    ``path`` is the field path as written in the YAML (``"vms[0].gpu.address"``; ``""`` for
    the document itself), ``line``/``col`` are 1-based positions in the file (0 when there is
    no position, e.g. the file cannot be read), ``message`` says what is wrong, ``expected``
    what the field must look like and ``fix`` what to change.
    """

    path: str
    line: int
    col: int
    message: str
    expected: str = ""
    fix: str = ""

    def format(self, file: str | os.PathLike[str] | None = None) -> str:
        """``FILE:LINE:COL: PATH: message (expected ...; fix: ...)``, redacted, one line."""
        where = str(file) if file is not None else "<catalog>"
        if self.line:
            where += f":{self.line}:{self.col}"
        parts = [where]
        if self.path:
            parts.append(self.path)
        text = ": ".join(parts) + ": " + self.message
        extra = [f"expected {self.expected}"] if self.expected else []
        if self.fix:
            extra.append(f"fix: {self.fix}")
        if extra:
            text += " (" + "; ".join(extra) + ")"
        return redact(" ".join(text.split()))


@dataclass
class CatalogError(DeployError):
    """The catalog at ``file`` is invalid; ``issues`` lists every problem found, in file order.

    ``str(err)`` is one line per issue (see :meth:`CatalogIssue.format`), which is what
    ``python -m provisioners validate`` prints.
    """

    issues: list[CatalogIssue] = field(default_factory=list)
    file: Path | None = None

    def __str__(self) -> str:
        if not self.issues:
            return self.what
        return "\n".join(issue.format(self.file) for issue in self.issues)


# ------------------------------------------------------------------- field validators
#
# Each validator runs *before* pydantic's strict type check and raises a PydanticCustomError
# whose context carries ``expected`` and ``fix``; _issue_from_pydantic() turns them into a
# CatalogIssue.


def _fail(kind: str, message: str, expected: str = "", fix: str = "") -> PydanticCustomError:
    # "{message}" as template: our texts may contain braces, which str.format would eat.
    return PydanticCustomError(kind, "{message}", {"message": message, "expected": expected, "fix": fix})


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else f'"{value}"'
    if value is None:
        text = "null"
    return text if len(text) <= 60 else text[:57] + "..."


def _need_str(value: Any, expected: str, fix: str = "") -> str:
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise _fail("string_type", "YAML read this value as a number, not as text", expected,
                        fix or "put the value in double quotes")
        raise _fail("string_type", f"{_show(value)} is not a string", expected, fix)
    return value


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT])?(i?)([bB])?\s*$")
_UNIT_MIB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def _size(unit: Literal["MiB", "GiB"]):
    """A validator for ``*_mib`` / ``*_gib`` integers that explains unit mistakes
    (``"50GB"`` -> ``memory_mib is an integer in MiB; 50 GiB = 51200``)."""

    def check(value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or "this field"
        if isinstance(value, bool):
            raise _fail("int_type", f"{_show(value)} is not an integer", f"an integer number of {unit}")
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
            raise _fail("int_type", f"{_show(value)} is not an integer", f"an integer number of {unit}", hint)
        return value

    return check


def _pattern(kind: str, regex: str, expected: str, fix: str = "", flags: int = 0, lower: bool = False):
    compiled = re.compile(regex, flags)

    def check(value: Any) -> str:
        text = _need_str(value, expected)
        if lower:
            text = text.lower()
        if not compiled.fullmatch(text):
            raise _fail(kind, f"{_show(value)} is not a valid {kind.replace('_', ' ')}", expected, fix)
        return text

    return check


def _url(kind: str = "url", schemes: tuple[str, ...] = ("http", "https")):
    expected = " or ".join(f"{s}://HOST[:PORT]/..." for s in schemes)

    def check(value: Any) -> str:
        text = _need_str(value, f"a URL, {expected}")
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname or any(c.isspace() for c in text):
            raise _fail(kind, f"{_show(value)} is not a valid URL", expected,
                        "PVE's API is served over https on port 8006" if schemes == ("https",) else "")
        if parts.password:
            register_secret(parts.password)
            raise _fail("secret_in_catalog", "the URL carries a password; secrets never live in the catalog",
                        "a URL without user:password@", "remove the credentials from the URL")
        try:
            parts.port
        except ValueError:
            raise _fail(kind, f"{_show(value)} has an invalid port", expected) from None
        return text

    return check


def _resolve_path(value: Any, info: ValidationInfo) -> Path:
    """Relative paths resolve against the catalog file's directory (``context['base_dir']``,
    the working directory when validating without a file); ``~`` is expanded."""
    text = _need_str(value, "a file path (relative paths are relative to the catalog file; ~ is expanded)")
    if not text.strip():
        raise _fail("path", "the path is empty", "a file path")
    path = Path(text).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = Path(base) / path
    return Path(os.path.normpath(path))


def _ipv4(kind: str, cls: type, expected: str, fix: str = ""):
    def check(value: Any):
        text = _need_str(value, expected)
        try:
            return cls(text)
        except ValueError as err:
            raise _fail(kind, f"{_show(value)} is not a valid {kind.replace('_', ' ')}: {err}", expected, fix) \
                from None

    return check


def _interface(value: Any) -> ipaddress.IPv4Interface:
    expected = "an IPv4 address with its prefix length, e.g. 192.168.0.140/24"
    text = _need_str(value, expected)
    if "/" not in text:
        raise _fail("ip_interface", f"{_show(value)} has no prefix length", expected,
                    f"write it as {text}/24 (the prefix of network.subnet)")
    try:
        return ipaddress.IPv4Interface(text)
    except ValueError as err:
        raise _fail("ip_interface", f"{_show(value)} is not a valid IPv4 address/prefix: {err}", expected) from None


def _network(value: Any) -> ipaddress.IPv4Network:
    expected = "an IPv4 network in CIDR form, e.g. 192.168.0.0/24"
    text = _need_str(value, expected)
    try:
        return ipaddress.IPv4Network(text)
    except ValueError as err:
        fix = ""
        if "host bits set" in str(err):
            fix = f"use the network address: {ipaddress.IPv4Network(text, strict=False)}"
        raise _fail("ip_network", f"{_show(value)} is not a valid IPv4 network: {err}", expected, fix) from None


def _version_text(what: str, example: str):
    regex = re.compile(r"\d+(\.\d+)+([.+-]?[0-9A-Za-z][0-9A-Za-z.+-]*)?")
    expected = f"a version string such as \"{example}\""

    def check(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            raise _fail("version", f"{what} {value!r} is a YAML number, not a version string", expected,
                        f'quote it: "{value}" (unquoted, YAML reads 0.10 as 0.1)')
        text = _need_str(value, expected)
        if not regex.fullmatch(text):
            raise _fail("version", f"{_show(value)} is not a valid {what}", expected)
        return text

    return check


def _cuda_version(value: Any) -> str:
    expected = 'CUDA "MAJOR.MINOR" as a quoted string, e.g. "12.8"'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise _fail("cuda_version", f"{value!r} is a YAML number, not a version string", expected,
                    f'quote it: "{value}" (unquoted, 12.10 would read as 12.1)')
    text = _need_str(value, expected)
    if not re.fullmatch(r"\d+\.\d+", text):
        raise _fail("cuda_version", f"{_show(value)} is not a CUDA version", expected,
                    "name the toolkit series, e.g. \"12.8\" for cuda-toolkit-12-8")
    return text


def _pci_address(value: Any) -> str:
    expected = 'a PCI address "DDDD:BB:SS" with an optional function ".F", e.g. "0000:01:00"'
    text = _need_str(value, expected, 'quote it: "0000:01:00"').lower()
    if re.fullmatch(r"[0-9a-f]{2}:[0-9a-f]{2}(\.[0-7])?", text):
        raise _fail("pci_address", f"{_show(value)} lacks the PCI domain", expected, f'write "0000:{text}"')
    if not re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f](\.[0-7])?", text):
        raise _fail("pci_address", f"{_show(value)} is not a PCI address", expected,
                    "copy it from `lspci -D` on the PVE host (or /nodes/{node}/hardware/pci)")
    return text


def _pci_id(value: Any) -> str:
    expected = 'PCI "vendor:device" in hex, e.g. "10de:2d04" (RTX 5060 Ti)'
    text = _need_str(value, expected)
    if not re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", text):
        raise _fail("pci_id", f"{_show(value)} is not a PCI vendor:device id", expected,
                    "copy the [vvvv:dddd] pair from `lspci -nn` on the PVE host")
    return text.lower()


def _host_port(value: Any) -> str:
    expected = 'HOST:PORT, e.g. "127.0.0.1:11434" (0.0.0.0 listens on every address)'
    text = _need_str(value, expected)
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or not _is_host(host):
        raise _fail("bind", f"{_show(value)} is not HOST:PORT", expected)
    return text


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return bool(_HOSTNAME_RE.fullmatch(text))


def _host(value: Any) -> str:
    expected = "a host name or IP address"
    text = _need_str(value, expected)
    if not _is_host(text):
        raise _fail("host", f"{_show(value)} is not a host name or IP address", expected)
    return text


def _jump_host(value: Any) -> str:
    expected = "[USER@]HOST[:PORT], e.g. root@pve.example:22"
    text = _need_str(value, expected)
    m = re.fullmatch(r"(?:([a-z_][a-z0-9_.-]*)@)?([^:@\s]+)(?::(\d{1,5}))?", text)
    if not m or not _is_host(m.group(2)) or (m.group(3) and not 1 <= int(m.group(3)) <= 65535):
        raise _fail("jump_host", f"{_show(value)} is not [USER@]HOST[:PORT]", expected)
    return text


def _volid(content: str | None):
    expected = "a PVE volume ID STORAGE:CONTENT/NAME"
    if content:
        expected += f" with content '{content}', e.g. local:{content}/NAME"

    def check(value: Any) -> str:
        text = _need_str(value, expected)
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9._-]*):([a-z]+)/([^/\s]+)", text)
        if not m:
            raise _fail("volid", f"{_show(value)} is not a PVE volume ID", expected,
                        "see `pvesm list STORAGE` on the PVE host")
        if content and m.group(2) != content:
            raise _fail("volid", f"{_show(value)} has content '{m.group(2)}', not '{content}'", expected,
                        f"write {m.group(1)}:{content}/{m.group(3)}")
        return text

    return check


def _float_share(value: Any) -> Any:
    if isinstance(value, str):
        raise _fail("float_type", f"{_show(value)} is not a number", "a number in (0, 1], e.g. 0.6",
                    "write it without quotes; 0.6 = 60 % of the GPU's memory")
    return value


# ----------------------------------------------------------------------------- types

Str = Annotated[str, Field(min_length=1)]
PositiveInt = Annotated[int, Gt(0)]
Seconds = Annotated[int, Gt(0)]
Port = Annotated[int, Ge(1), Le(65535)]
MiB = Annotated[int, BeforeValidator(_size("MiB")), Gt(0)]
GiB = Annotated[int, BeforeValidator(_size("GiB")), Gt(0)]
FilePath = Annotated[Path, BeforeValidator(_resolve_path)]
Url = Annotated[str, BeforeValidator(_url())]
HttpsUrl = Annotated[str, BeforeValidator(_url("https_url", ("https",)))]
Sha256 = Annotated[str, BeforeValidator(_pattern(
    "sha256", r"[0-9a-f]{64}", "64 hex digits (sha256sum of the file)",
    "copy it from the SHA256SUMS published next to the file, or run sha256sum", lower=True))]
StorageId = Annotated[str, BeforeValidator(_pattern(
    "storage_id", r"[A-Za-z][A-Za-z0-9._-]*[A-Za-z0-9]", "a PVE storage ID such as local-lvm",
    "see `pvesm status` on the PVE host"))]
VmName = Annotated[str, BeforeValidator(_pattern(
    "vm_name", r"(?=.{1,63}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*",
    "a DNS name (letters, digits, '-'), as PVE requires for VM names"))]
NodeName = Annotated[str, BeforeValidator(_pattern(
    "node_name", r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?", "a PVE node name as in `pvecm nodes`"))]
LinuxUser = Annotated[str, BeforeValidator(_pattern(
    "user_name", r"[a-z_][a-z0-9_-]{0,31}", "a Linux user name such as ubuntu"))]
MappingId = Annotated[str, BeforeValidator(_pattern(
    "mapping_id", r"[A-Za-z][A-Za-z0-9_-]*", "a PVE resource mapping ID (Datacenter > Resource Mappings)"))]
BridgeName = Annotated[str, BeforeValidator(_pattern(
    "bridge", r"[A-Za-z][A-Za-z0-9_.-]{0,14}", "a Linux bridge name such as vmbr0"))]
ModelId = Annotated[str, BeforeValidator(_pattern(
    "model_id", r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?",
    "a Hugging Face model id ORG/NAME, e.g. Qwen/Qwen2.5-1.5B-Instruct"))]
AptName = Annotated[str, BeforeValidator(_pattern(
    "apt_name", r"[A-Za-z0-9][A-Za-z0-9._-]*", "a file-name-safe name (letters, digits, . _ -)"))]
PciAddress = Annotated[str, BeforeValidator(_pci_address)]
PciId = Annotated[str, BeforeValidator(_pci_id)]
Bind = Annotated[str, BeforeValidator(_host_port)]
Host = Annotated[str, BeforeValidator(_host)]
JumpHost = Annotated[str, BeforeValidator(_jump_host)]
IPv4Addr = Annotated[ipaddress.IPv4Address, BeforeValidator(_ipv4(
    "ipv4_address", ipaddress.IPv4Address, "an IPv4 address, e.g. 192.168.0.1"))]
IPv4Net = Annotated[ipaddress.IPv4Network, BeforeValidator(_network)]
IPv4If = Annotated[ipaddress.IPv4Interface, BeforeValidator(_interface)]


class _Model(BaseModel):
    # strict: YAML already gives int/float/bool; lax coercion would turn "50" or true into ints.
    model_config = ConfigDict(extra="forbid", strict=True)


# ---------------------------------------------------------------------------- models


class ProxmoxSpec(_Model):
    """How to reach the Proxmox VE API. Credentials are not here: they come from the
    environment (``PROXMOX_*``, see :mod:`provisioners.secrets`)."""

    endpoint: HttpsUrl = Field(description="the PVE API URL, https://HOST:8006")
    node: NodeName = Field(description="the PVE node that holds the GPU")
    verify_tls: bool = Field(True, description="true or false (false also needs --insecure)")
    ca_file: FilePath | None = Field(None, description="a PEM CA bundle path, or null")
    timeout_s: Seconds = Field(60, description="HTTP timeout per API call in seconds")
    start_timeout_s: Seconds = Field(600, description="VM start timeout in seconds")

    @property
    def host(self) -> str:
        """The API host name or IP from ``endpoint``."""
        return urlsplit(self.endpoint).hostname or ""

    @property
    def port(self) -> int:
        """The API port from ``endpoint`` (PVE's default 8006 when the URL names none)."""
        return urlsplit(self.endpoint).port or 8006


class NetworkSpec(_Model):
    """The VM's IPv4 network (cloud-init ``ipconfig0`` / ``nameserver``) and PVE bridge."""

    subnet: IPv4Net = Field(description="the VM network in CIDR form, e.g. 192.168.0.0/24")
    gateway: IPv4Addr = Field(description="the default gateway, inside the subnet")
    dns: list[IPv4Addr] = Field(min_length=1, description="a list of DNS server IPv4 addresses")
    bridge: BridgeName = Field("vmbr0", description="the PVE bridge for net0, e.g. vmbr0")


class CloudImageSpec(_Model):
    """The cloud image imported as the boot disk (``scsi0: ...,import-from=<volid>``); fetched
    with ``download-url`` + checksum when the volume is absent (PVE >= 8.4)."""

    volid: Annotated[str, BeforeValidator(_volid("import"))] = Field(
        description="the PVE volume ID of the image, STORAGE:import/NAME")
    url: Url = Field(description="where the image is downloaded from, http(s)://...")
    sha256: Sha256 = Field(description="sha256 of the file at url, 64 hex digits")


class ImageSpec(_Model):
    """An OS image: the cloud image used for the VM and the installer ISO (reference only)."""

    cloud_image: CloudImageSpec = Field(description="volid, url and sha256 of the cloud image")
    iso: Annotated[str, BeforeValidator(_volid("iso"))] | None = Field(
        None, description="the installer ISO volume ID STORAGE:iso/NAME, or null")


class DiskSpec(_Model):
    """The boot disk: storage and size in GiB (PVE disk sizes are GiB; the tool never shrinks)."""

    storage: StorageId = Field(description="the PVE storage ID for the disk, e.g. local-lvm")
    size_gib: GiB = Field(description="the disk size, an integer in GiB (500 GiB = 500)")


class CloudInitSpec(_Model):
    """Cloud-init user settings (PVE ``ciuser`` / ``sshkeys``)."""

    user: LinuxUser = Field(description="the Linux user cloud-init creates, e.g. ubuntu")
    ssh_public_key_file: FilePath = Field(description="path to an OpenSSH public key file (*.pub)")


class SshSpec(_Model):
    """How the deployer reaches the guest over SSH."""

    host: Host | None = Field(None, description="a host name or IP, or null for the VM ip")
    port: Port = Field(22, description="the SSH port, 1-65535")
    private_key_file: FilePath = Field(description="path to the private key matching the public key")
    jump_host: JumpHost | None = Field(None, description="[USER@]HOST[:PORT] of a jump host, or null")


class ExpectedGpu(_Model):
    """What the guest must see: PCI id, name and memory as nvidia-smi reports them."""

    pci_id: PciId = Field(description='the PCI vendor:device id, e.g. "10de:2d04"')
    name: Str = Field(description="the GPU name as nvidia-smi prints it")
    memory_mib: MiB = Field(description="the GPU memory in MiB as nvidia-smi reports it, e.g. 16311")


class GpuSpec(_Model):
    """The passed-through GPU: ``hostpci0`` is ``mapping=<mapping>,pcie=1`` (API token) or
    ``host=<address>,pcie=1`` (root@pam only). ``address`` is also what pre-flight looks for in
    ``/nodes/{node}/hardware/pci``."""

    mapping: MappingId | None = Field(None, description="the PCI resource mapping ID, or null")
    address: PciAddress = Field(description='the PCI address on the host, e.g. "0000:01:00"')
    pcie: bool = Field(True, description="true (PCIe passthrough, needs q35) or false")
    expected: ExpectedGpu = Field(description="pci_id, name and memory_mib of the GPU")


class AptRepository(_Model):
    """An extra signed apt source: ``deb [signed-by=<key>] <url> <suite> <components...>``."""

    name: AptName = Field(description="a name for the sources/keyring files")
    url: Url = Field(description="the repository URL, http(s)://...")
    suite: Str = Field(description="the suite, e.g. noble or stable")
    components: list[Str] = Field(min_length=1, description="a list of components, e.g. [main]")
    key_url: Url = Field(description="URL of the repository's signing key (ASCII-armoured)")


class DriverSpec(_Model):
    """NVIDIA driver choice. Blackwell (RTX 50xx) needs the open kernel modules, branch >= 570
    (NVIDIA driver README, "Open Linux Kernel Modules")."""

    flavour: Literal["open", "closed"] = Field(description="open or closed (kernel modules)")
    min_branch: PositiveInt = Field(description="the lowest driver branch accepted, an integer such as 570")


class CudaSpec(_Model):
    """CUDA toolkit from NVIDIA's repository (``cuda-toolkit-X-Y``; sm_120 needs >= 12.8)."""

    version: Annotated[str, BeforeValidator(_cuda_version)] = Field(description='"X.Y", e.g. "12.8"')
    keyring_url: Url = Field(description="URL of NVIDIA's cuda-keyring .deb")


class VllmSpec(_Model):
    """vLLM in a venv, served as ``vllm serve MODEL --port PORT``."""

    version: Annotated[str, BeforeValidator(_version_text("vLLM version", "0.10.2"))] = Field(
        description='the pinned vLLM version, e.g. "0.10.2"')
    pip_index_url: Url = Field(description="the pip index URL, http(s)://...")
    extra_index_url: Url | None = Field(None, description="an extra pip index URL, or null")
    model: ModelId = Field(description="the Hugging Face model id, ORG/NAME")
    port: Port = Field(8000, description="the port vLLM listens on inside the VM, 1-65535")
    gpu_memory_utilization: Annotated[float, BeforeValidator(_float_share), Gt(0), Le(1)] = Field(
        description="the share of GPU memory vLLM reserves, a number in (0, 1]")
    max_model_len: PositiveInt = Field(4096, description="the context length in tokens, a positive integer")
    ready_timeout_s: Seconds = Field(1800, description="seconds to wait for /health after start")


class OllamaSpec(_Model):
    """Ollama from a pinned release tarball (checked by sha256), bound by ``OLLAMA_HOST``."""

    version: Annotated[str, BeforeValidator(_version_text("Ollama version", "0.12.9"))] = Field(
        description='the pinned Ollama version, e.g. "0.12.9"')
    url: Url = Field(description="the release tarball URL, http(s)://...")
    sha256: Sha256 = Field(description="sha256 of the tarball, 64 hex digits")
    bind: Bind = Field("127.0.0.1:11434", description="OLLAMA_HOST as HOST:PORT")
    vram_mib: MiB = Field(description="the VRAM budget for Ollama models in MiB")

    @property
    def bind_host(self) -> str:
        """The host part of ``bind`` (e.g. ``"127.0.0.1"``)."""
        return self.bind.rpartition(":")[0]

    @property
    def bind_port(self) -> int:
        """The port part of ``bind`` (e.g. ``11434``)."""
        return int(self.bind.rpartition(":")[2])


class StackSpec(_Model):
    """The guest software stack the guest components install and verify."""

    apt_repositories: list[AptRepository] = Field(default_factory=list,
                                                  description="a list of {name, url, suite, components, key_url}")
    driver: DriverSpec = Field(description="flavour and min_branch")
    cuda: CudaSpec = Field(description="version and keyring_url")
    vllm: VllmSpec = Field(description="the vLLM settings")
    ollama: OllamaSpec = Field(description="the Ollama settings")


class EndpointsSpec(_Model):
    """URLs the deployer uses from *outside* the VM (e.g. the lab's loopback port forwards).
    ``null`` means ``http://<vm ip>:<port>``."""

    vllm_url: Url | None = Field(None, description="the vLLM base URL seen from the deployer, or null")
    ollama_url: Url | None = Field(None, description="the Ollama base URL seen from the deployer, or null")


class VmSpec(_Model):
    """One VM: PVE settings (``memory_mib`` is PVE ``memory`` in MiB, ``disk.size_gib`` GiB),
    its GPU and the guest stack."""

    name: VmName = Field(description="the VM name, a DNS name such as vm-llm-aimachine")
    vmid: Annotated[int, Ge(100), Le(999_999_999)] = Field(description="the VMID, an integer 100-999999999")
    cores: PositiveInt = Field(description="the number of vCPU cores, a positive integer")
    memory_mib: MiB = Field(description="the RAM in MiB, an integer (50 GiB = 51200)")
    disk: DiskSpec = Field(description="storage and size_gib")
    efidisk_storage: StorageId = Field(description="the PVE storage ID for the EFI vars disk")
    image: Str = Field(description="a key of the top-level images section")
    ip: IPv4If = Field(description="the VM's IPv4 address with prefix, e.g. 192.168.0.140/24")
    cloud_init: CloudInitSpec = Field(description="user and ssh_public_key_file")
    ssh: SshSpec = Field(description="host, port, private_key_file, jump_host")
    gpu: GpuSpec = Field(description="mapping, address, pcie and expected")
    stack: StackSpec = Field(description="apt_repositories, driver, cuda, vllm, ollama")
    endpoints: EndpointsSpec = Field(default_factory=EndpointsSpec,
                                     description="vllm_url and ollama_url seen from the deployer")

    @property
    def ip_address(self) -> ipaddress.IPv4Address:
        """The VM's address without prefix (``ip`` is an ``IPv4Interface``)."""
        return self.ip.ip

    @property
    def prefixlen(self) -> int:
        """The prefix length of ``ip`` (e.g. 24)."""
        return self.ip.network.prefixlen

    @property
    def ssh_host(self) -> str:
        """Where the deployer connects over SSH: ``ssh.host``, else the VM's IP address."""
        return self.ssh.host or str(self.ip_address)

    @property
    def vllm_url(self) -> str:
        """The vLLM base URL as the deployer reaches it (no trailing slash):
        ``endpoints.vllm_url``, else ``http://<vm ip>:<stack.vllm.port>``."""
        return (self.endpoints.vllm_url or f"http://{self.ip_address}:{self.stack.vllm.port}").rstrip("/")

    @property
    def ollama_url(self) -> str:
        """The Ollama base URL as the deployer reaches it (no trailing slash):
        ``endpoints.ollama_url``, else ``http://<vm ip>:<bind port>``. With a loopback ``bind``
        the derived URL is not reachable from outside the VM; check Ollama over SSH then."""
        return (self.endpoints.ollama_url or f"http://{self.ip_address}:{self.stack.ollama.bind_port}").rstrip("/")


class Catalog(_Model):
    """The whole catalog. ``path`` is the file it was loaded from (absolute)."""

    version: Literal[1] = Field(description="1 (the catalog format version)")
    proxmox: ProxmoxSpec = Field(description="endpoint, node, verify_tls, ca_file, timeout_s, start_timeout_s")
    network: NetworkSpec = Field(description="subnet, gateway, dns, bridge")
    images: dict[Str, ImageSpec] = Field(min_length=1, description="image name -> {cloud_image, iso}")
    vms: list[VmSpec] = Field(min_length=1, description="a list of VMs")

    _path: Path | None = PrivateAttr(default=None)

    @property
    def path(self) -> Path | None:
        """The catalog file this model was loaded from (absolute), or None if built in code."""
        return self._path

    def vm(self, name_or_vmid: str | int) -> VmSpec:
        """The VM with this name or VMID (an int, or a string of digits).

        Raises:
            DeployError: no such VM; the message lists the VMs the catalog knows.
        """
        key = str(name_or_vmid).strip()
        for vm in self.vms:
            if vm.name == key or str(vm.vmid) == key:
                return vm
        known = ", ".join(f"{vm.name} (VMID {vm.vmid})" for vm in self.vms)
        raise DeployError(f"no VM '{key}' in the catalog {self._path or ''}".rstrip(),
                          cause=f"the catalog defines: {known}",
                          remedy="use one of those names or VMIDs, or add the VM to the catalog")

    def image_for(self, vm: VmSpec) -> ImageSpec:
        """The :class:`ImageSpec` that ``vm.image`` names (validated to exist at load time)."""
        return self.images[vm.image]


# ----------------------------------------------------------------------------- loading


def load_catalog(path: str | os.PathLike[str] | None = None, *, check_files: bool = True) -> Catalog:
    """Read, validate and return the catalog at ``path`` (default :data:`DEFAULT_CATALOG`).

    ``check_files=False`` skips the checks of referenced files (SSH keys, CA bundle), e.g. for
    ``plan`` on a machine that does not hold them.

    Raises:
        CatalogError: the file cannot be read, is not valid YAML, or fails any check; ``.issues``
            lists every problem found with its YAML line:column.
    """
    file = Path(path if path is not None else DEFAULT_CATALOG).expanduser()
    file = Path(os.path.abspath(file))
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _single(file, "", 0, 0, "catalog file not found",
                      fix="check the path, or name another catalog (CATALOG=PATH / -D catalog=PATH)") from None
    except IsADirectoryError:
        raise _single(file, "", 0, 0, "is a directory, not a catalog file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise _single(file, "", 0, 0, f"cannot read the catalog: {err}") from None
    return parse_catalog(text, file=file, check_files=check_files)


def parse_catalog(text: str, *, file: Path | None = None, check_files: bool = True) -> Catalog:
    """Like :func:`load_catalog` for catalog text; relative paths resolve against ``file``'s
    directory (the working directory when ``file`` is None).

    Raises:
        CatalogError: as :func:`load_catalog`.
    """
    try:
        # Compose first, construct second: the node tree keeps line:col marks and every
        # duplicate key (PyYAML's constructor silently keeps the last one).
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            # Before constructing: merge keys (<<) are flattened into the node tree in place.
            early = (_duplicate_keys(root) + _secret_keys(root) + _yaml11_booleans(root)
                     if isinstance(root, yaml.MappingNode) else [])
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        message = "YAML syntax error: " + " ".join(str(p) for p in (err.context, err.problem) if p)
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        fix = "see the YAML around this position (indentation, quotes, ':')"
        raise _single(file, "", line, col, message, fix=fix) from None
    except yaml.YAMLError as err:
        raise _single(file, "", 0, 0, f"not valid YAML: {err}") from None

    if root is None or data is None:
        raise _single(file, "", 1, 1, "the catalog is empty", expected="a mapping with version, proxmox, network, "
                      "images and vms")
    if not isinstance(root, yaml.MappingNode):
        raise _single(file, "", root.start_mark.line + 1, root.start_mark.column + 1,
                      "the catalog is not a mapping",
                      expected="a mapping with version, proxmox, network, images and vms")

    issues = early
    secret_paths = {i.path for i in issues if "looks like a secret" in i.message}

    base_dir = file.parent if file is not None else Path.cwd()
    catalog = None
    try:
        catalog = Catalog.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as err:
        seen: set[str] = set()
        for error in err.errors():
            issue = _issue_from_pydantic(error, root)
            if issue.path in seen or issue.path in secret_paths:
                continue
            seen.add(issue.path)
            issues.append(issue)

    issues = _merge_typos(issues)
    if catalog is not None and not issues:
        issues += _cross_checks(catalog, root, check_files)
    if issues:
        issues.sort(key=lambda i: (i.line, i.col))
        n = len(issues)
        raise CatalogError(f"{file or '<catalog>'}: {n} catalog error{'s' if n != 1 else ''}",
                           issues=issues, file=file)
    catalog._path = file
    return catalog


def _merge_typos(issues: list[CatalogIssue]) -> list[CatalogIssue]:
    """A misspelt key shows up twice (unknown 'memroy_mib' + missing 'memory_mib'); keep only
    the unknown-key issue, whose fix already names the right key."""
    suggested = set()
    for issue in issues:
        m = re.fullmatch(r"did you mean '(.+)'\?", issue.fix)
        if m and issue.message.startswith("unknown key"):
            parent = issue.path.rpartition(".")[0]
            suggested.add(f"{parent}.{m.group(1)}" if parent else m.group(1))
    return [i for i in issues if not (i.message.startswith("required key") and i.path in suggested)]


def _single(file: Path | None, path: str, line: int, col: int, message: str, expected: str = "",
            fix: str = "") -> CatalogError:
    issue = CatalogIssue(path, line, col, message, expected, fix)
    return CatalogError(f"{file or '<catalog>'}: {message}", issues=[issue], file=file)


# ------------------------------------------------------------------- node tree helpers

Loc = tuple[Any, ...]


def _loc_to_path(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(root: yaml.Node, loc: Loc) -> tuple[yaml.Node, yaml.Node | None, int]:
    """Follow ``loc`` down the node tree. Returns (deepest node reached, key node of the last
    mapping step taken, number of loc parts consumed)."""
    node, key_node, used = root, None, 0
    for part in loc:
        nxt = None
        if isinstance(node, yaml.MappingNode):
            # The last one: it is the value YAML keeps (and merged << keys come first).
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    nxt, key_node = v, k
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt, key_node = node.value[part], None
        if nxt is None:
            break
        node, used = nxt, used + 1
    return node, key_node, used


def _position(root: yaml.Node, loc: Loc, at_key: bool = False) -> tuple[int, int]:
    """1-based line:col for ``loc``: the value (or with ``at_key`` the key) when it exists, else
    the deepest existing parent."""
    node, key_node, used = _walk(root, loc)
    if used == len(loc) and at_key and key_node is not None:
        return _mark(key_node)
    return _mark(node)


def _yaml11_booleans(root: yaml.Node) -> list[CatalogIssue]:
    """yes/no/on/off (any case) and True/FALSE are booleans to PyYAML (YAML 1.1) but strings to
    YAML 1.2 tools; the project allows only true/false (as the .yamllint truthy rule does)."""
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                visit(v, loc + (getattr(k, "value", "?"),))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, loc + (i,))
        elif (isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool"
              and node.value not in ("true", "false")):
            meaning = "true" if node.value.lower() in ("yes", "on", "true", "y") else "false"
            issues.append(CatalogIssue(_loc_to_path(loc), *_mark(node), f"'{node.value}' is an ambiguous boolean",
                                       "true or false", f"write {meaning}"))

    visit(root, ())
    return issues


def _duplicate_keys(root: yaml.Node) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            first: dict[str, yaml.Node] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in first:
                        line = first[k.value].start_mark.line + 1
                        issues.append(CatalogIssue(
                            _loc_to_path(loc + (k.value,)), *_mark(k),
                            f"duplicate key '{k.value}' (first at line {line})",
                            "each key once per mapping",
                            "remove one of them; YAML would silently keep only the last"))
                    else:
                        first[k.value] = k
                    visit(v, loc + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, loc + (i,))

    visit(root, ())
    return issues


_SECRET_WORDS = {"password", "passwd", "secret", "token", "apikey", "credential", "credentials", "passphrase"}


def _secret_env_for(key: str) -> str | None:
    """The environment variable to use instead of a secret-looking catalog key, or None."""
    low = key.lower()
    parts = set(re.split(r"[_\-.\s]+", low))
    if "api_key" in low or "apikey" in parts or ("api" in parts and "key" in parts):
        return "VLLM_API_KEY"
    if not parts & _SECRET_WORDS:
        return None
    if "token" in parts and ({"hf", "hugging", "huggingface"} & parts or "hugging" in low):
        return "HF_TOKEN"
    if "password" in parts or "passwd" in parts or "passphrase" in parts:
        return "PROXMOX_PASSWORD"
    return "PROXMOX_TOKEN_SECRET"


def _secret_keys(root: yaml.Node) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if not isinstance(k, yaml.ScalarNode):
                    continue
                env = _secret_env_for(k.value)
                if env:
                    if isinstance(v, yaml.ScalarNode) and v.value:
                        register_secret(v.value)  # it may be echoed elsewhere; never print it
                    issues.append(CatalogIssue(
                        _loc_to_path(loc + (k.value,)), *_mark(k),
                        f"'{k.value}' looks like a secret; secrets never live in the catalog",
                        "no credentials in this file",
                        f"delete the key and export {env} (or put {env}=... in the 0600 file named by "
                        "DEPLOYER_SECRETS_FILE)"))
                else:
                    visit(v, loc + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                visit(item, loc + (i,))

    visit(root, ())
    return issues


# --------------------------------------------------------------- pydantic error -> issue


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model class whose fields are the keys at ``loc`` (``("vms", 0, "gpu")`` -> GpuSpec)."""
    model: Any = Catalog
    i = 0
    while i < len(loc):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(str(loc[i]))
        if info is None:
            return None
        tp = _unwrap(info.annotation)
        i += 1
        while typing.get_origin(tp) in (list, dict):
            tp = _unwrap(typing.get_args(tp)[-1])
            i += 1  # the list index / dict key
        model = tp
        if i > len(loc):
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _field_description(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    if model is not None and loc and str(loc[-1]) in model.model_fields:
        return model.model_fields[str(loc[-1])].description or ""
    return ""


_TYPE_NAMES = {"int_type": "an integer", "int_from_float": "an integer", "bool_type": "true or false",
               "string_type": "a string", "float_type": "a number", "list_type": "a list",
               "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping"}


def _issue_from_pydantic(error: dict[str, Any], root: yaml.Node) -> CatalogIssue:
    loc: Loc = tuple(error["loc"])
    kind = error["type"]
    ctx = error.get("ctx") or {}
    path = _loc_to_path(loc)
    expected = ctx.get("expected") or _field_description(loc)
    fix = ctx.get("fix", "")
    name = str(loc[-1]) if loc else ""

    if kind == "missing":
        line, col = _position(root, loc)
        parent = _loc_to_path(loc[:-1]) or "the top level"
        return CatalogIssue(path, line, col, f"required key '{name}' is missing", expected,
                            f"add '{name}: ...' under {parent}")
    if kind == "extra_forbidden":
        line, col = _position(root, loc, at_key=True)
        model = _model_at(loc[:-1])
        valid = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        fix = f"did you mean '{close[0]}'?" if close else "remove it"
        return CatalogIssue(path, line, col, f"unknown key '{name}'",
                            "one of: " + ", ".join(valid) if valid else "no such key", fix)

    line, col = _position(root, loc)
    value = error.get("input")
    if ctx.get("message"):
        message = ctx["message"]
    elif kind in _TYPE_NAMES:
        message = f"{_show(value)} is not {_TYPE_NAMES[kind]}"
        model = _model_at(loc) if kind in ("model_type", "model_attributes_type", "dict_type") else None
        if model is not None and not expected:
            expected = "a mapping with keys " + ", ".join(model.model_fields)
        if kind == "int_from_float" or (kind == "int_type" and isinstance(value, float)):
            fix = fix or f"write a whole number, e.g. {math.ceil(value) if isinstance(value, float) else 1}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        message = f"{_show(value)} is out of range: {error['msg'].replace('Input should be ', 'must be ')}"
    elif kind == "literal_error":
        message = f"{_show(value)} is not allowed: {error['msg'].replace('Input should be ', 'must be ')}"
    elif kind == "too_short" and not value:
        message = "has no entries"
        fix = fix or "add at least one entry"
    elif kind in ("too_short", "too_long"):
        message = error["msg"].replace("List should have", "needs").replace("Dictionary should have", "needs") \
            .replace("String should have", "needs").replace(" after validation", "")
    else:
        message = f"{_show(value)}: {error['msg']}"
    return CatalogIssue(path, line, col, message, expected, fix)


# ------------------------------------------------------------------------ cross checks


def _cross_checks(cat: Catalog, root: yaml.Node, check_files: bool) -> list[CatalogIssue]:
    issues: list[CatalogIssue] = []

    def add(loc: Loc, message: str, expected: str = "", fix: str = "", at_key: bool = False) -> None:
        issues.append(CatalogIssue(_loc_to_path(loc), *_position(root, loc, at_key), message, expected, fix))

    net = cat.network
    special = _special_addresses(net.subnet)
    if net.gateway not in net.subnet:
        add(("network", "gateway"), f"gateway {net.gateway} is outside the subnet {net.subnet}",
            f"an address inside {net.subnet}", "fix the gateway or the subnet")
    elif net.gateway in special:
        add(("network", "gateway"), f"gateway {net.gateway} is the {special[net.gateway]} address of {net.subnet}",
            f"a host address inside {net.subnet}")

    first_vmid: dict[int, int] = {}
    first_name: dict[str, int] = {}
    first_ip: dict[ipaddress.IPv4Address, int] = {}
    for i, vm in enumerate(cat.vms):
        here = ("vms", i)
        if vm.vmid in first_vmid:
            j = first_vmid[vm.vmid]
            add(here + ("vmid",), f"VMID {vm.vmid} is used twice (also vms[{j}] '{cat.vms[j].name}', "
                f"line {_position(root, ('vms', j, 'vmid'))[0]})", "a VMID unique in the catalog",
                "give each VM its own VMID")
        else:
            first_vmid[vm.vmid] = i
        if vm.name in first_name:
            j = first_name[vm.name]
            add(here + ("name",), f"VM name '{vm.name}' is used twice (also vms[{j}], line "
                f"{_position(root, ('vms', j, 'name'))[0]})", "a name unique in the catalog",
                "give each VM its own name")
        else:
            first_name[vm.name] = i

        ip = vm.ip_address
        if ip not in net.subnet:
            add(here + ("ip",), f"{vm.ip} is outside network.subnet {net.subnet}",
                f"an address inside {net.subnet}, e.g. {_example_host(net.subnet)}/{net.subnet.prefixlen}",
                "fix the VM ip or network.subnet")
        elif vm.ip.network != net.subnet:
            add(here + ("ip",), f"{vm.ip} has prefix /{vm.prefixlen} but network.subnet is {net.subnet}",
                f"{ip}/{net.subnet.prefixlen}", f"write {ip}/{net.subnet.prefixlen}")
        elif ip == net.gateway:
            add(here + ("ip",), f"{ip} is the gateway's address", "a free host address in the subnet",
                "pick another address")
        elif ip in special:
            add(here + ("ip",), f"{ip} is the {special[ip]} address of {net.subnet}",
                "a host address in the subnet", f"e.g. {_example_host(net.subnet)}/{net.subnet.prefixlen}")
        elif ip in first_ip:
            add(here + ("ip",), f"{ip} is also the address of vms[{first_ip[ip]}]", "an address unique in the catalog")
        else:
            first_ip[ip] = i

        if vm.image not in cat.images:
            add(here + ("image",), f"image '{vm.image}' is not defined",
                "one of the images keys: " + ", ".join(cat.images),
                f"add it under images or use one of: {', '.join(cat.images)}")

        vllm, ollama, gpu = vm.stack.vllm, vm.stack.ollama, vm.gpu.expected
        vllm_mib = math.ceil(vllm.gpu_memory_utilization * gpu.memory_mib)
        if vllm_mib + ollama.vram_mib > gpu.memory_mib:
            add(here + ("stack", "ollama", "vram_mib"),
                f"vLLM reserves {vllm.gpu_memory_utilization} x {gpu.memory_mib} MiB = {vllm_mib} MiB and Ollama's "
                f"budget is {ollama.vram_mib} MiB: {vllm_mib + ollama.vram_mib} MiB > the GPU's {gpu.memory_mib} MiB",
                f"vram_mib <= {max(gpu.memory_mib - vllm_mib, 0)}",
                "lower stack.vllm.gpu_memory_utilization or stack.ollama.vram_mib (vLLM fails to start, or "
                "Ollama falls back to CPU, when they do not fit)")
        bind_host = ollama.bind_host
        if bind_host not in ("0.0.0.0", "127.0.0.1", "localhost", "::", "[::]", str(ip)):
            add(here + ("stack", "ollama", "bind"), f"Ollama cannot bind {bind_host}: the VM's address is {ip}",
                f"127.0.0.1, 0.0.0.0 or {ip}", f"write {ip}:{ollama.bind_port}")
        if ollama.bind_port == vllm.port:
            add(here + ("stack", "ollama", "bind"), f"Ollama and vLLM both use port {vllm.port}",
                "different ports", "e.g. Ollama 11434, vLLM 8000")
        if ollama.bind_port == vm.ssh.port and not vm.ssh.host:
            add(here + ("stack", "ollama", "bind"), f"Ollama would use the SSH port {vm.ssh.port}",
                "a free port")

        if check_files:
            key = vm.cloud_init.ssh_public_key_file
            problem = _check_public_key(key)
            if problem:
                add(here + ("cloud_init", "ssh_public_key_file"), problem[0], "a readable OpenSSH public key file",
                    problem[1])
            priv = vm.ssh.private_key_file
            if not priv.is_file():
                add(here + ("ssh", "private_key_file"), f"{priv} does not exist", "the private key of the public key",
                    f"create a key pair with ssh-keygen -t ed25519 -f {priv}")
            elif not os.access(priv, os.R_OK):
                add(here + ("ssh", "private_key_file"), f"{priv} is not readable by this user",
                    "a readable private key", f"check the owner and mode of {priv}")

    ca = cat.proxmox.ca_file
    if check_files and ca is not None:
        if not ca.is_file():
            add(("proxmox", "ca_file"), f"{ca} does not exist", "a PEM CA bundle",
                "copy /etc/pve/pve-root-ca.pem from the PVE host, or set ca_file: null")
        elif not os.access(ca, os.R_OK):
            add(("proxmox", "ca_file"), f"{ca} is not readable by this user", "a readable PEM file")
    return issues


def _special_addresses(net: ipaddress.IPv4Network) -> dict[ipaddress.IPv4Address, str]:
    if net.prefixlen >= 31:
        return {}
    return {net.network_address: "network", net.broadcast_address: "broadcast"}


def _example_host(net: ipaddress.IPv4Network) -> ipaddress.IPv4Address:
    return net.network_address + (min(140, net.num_addresses - 2) if net.num_addresses > 2 else 0)


_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
              "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def _check_public_key(path: Path) -> tuple[str, str] | None:
    """None if ``path`` holds at least one OpenSSH public key line (``TYPE BASE64 [comment]``,
    format of ``ssh-keygen``/sshd ``authorized_keys``, see sshd(8) AUTHORIZED_KEYS FILE FORMAT),
    else (problem, fix). The file's content is never echoed: it might be a private key."""
    gen = f"create one with ssh-keygen -t ed25519 -f {path.with_suffix('') if path.suffix == '.pub' else path}"
    if not path.exists():
        return f"{path} does not exist", gen
    if not path.is_file():
        return f"{path} is not a file", "point at the .pub file"
    try:
        with path.open("rb") as fh:
            data = fh.read(65536)
    except OSError as err:
        return f"{path} cannot be read: {err.strerror}", f"check the owner and mode of {path}"
    text = data.decode("utf-8", "replace")
    if "PRIVATE KEY" in text:
        return f"{path} is a private key, not a public key", f"point at {path}.pub (never share the private key)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        return f"{path} is empty", gen
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] not in _KEY_TYPES:
            return f"{path} does not look like an OpenSSH public key", \
                f"expected lines 'TYPE BASE64 [comment]' with TYPE one of {', '.join(_KEY_TYPES[:3])}...; " \
                "use the .pub file written by ssh-keygen"
        try:
            blob = base64.b64decode(fields[1], validate=True)
            (n,) = struct.unpack(">I", blob[:4])
            ok = blob[4:4 + n].decode("ascii") == fields[0]
        except (ValueError, struct.error, UnicodeDecodeError):
            ok = False
        if not ok:
            return f"{path} holds a damaged {fields[0]} key (its base64 part does not decode to that key type)", \
                "regenerate the .pub with ssh-keygen -y -f PRIVATE_KEY"
    return None
