"""Checks beyond the schema: secret-looking keys (on the YAML node tree, before the schema),
and cross-field checks on the validated :class:`~provisioners.catalog.model.Catalog` - unique
VMIDs/names/IPs, gateway and VM addresses inside ``network.subnet``, image references, the
vLLM + Ollama VRAM budget (MiB), Ollama's bind address/port, and the files the catalog names
(SSH keys, CA bundle)."""
from __future__ import annotations

import base64
import ipaddress
import os
import re
import stat
import struct
from pathlib import Path

import yaml

from provisioners.catalog.errors import CatalogIssue
from provisioners.catalog.model import Catalog, NetworkSpec, VmSpec
from provisioners.catalog.yamlpos import Loc, children, loc_to_path, mark, position
from provisioners.guest.vram import compute_budget
from provisioners.redact import register_secret

# ------------------------------------------------------------------------- secret keys

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


def secret_keys(root: yaml.Node) -> list[CatalogIssue]:
    """Every key named like a secret (password, token, api_key, ...), reported at the key with
    the environment variable to use instead (see :mod:`provisioners.secrets`). The value is
    registered for redaction and never echoed; keys below a secret key are not inspected."""
    issues: list[CatalogIssue] = []

    def visit(node: yaml.Node, loc: Loc) -> None:
        for k, child, child_loc in children(node, loc):
            if k is not None and not isinstance(k, yaml.ScalarNode):
                continue
            env = _secret_env_for(k.value) if k is not None else None
            if env:
                if isinstance(child, yaml.ScalarNode) and child.value:
                    register_secret(child.value)  # it may be echoed elsewhere; never print it
                issues.append(CatalogIssue(
                    loc_to_path(child_loc), *mark(k),
                    f"'{k.value}' looks like a secret; secrets never live in the catalog",
                    "no credentials in this file",
                    f"delete the key and export {env} (or put {env}=... in the 0600 file named by "
                    "DEPLOYER_SECRETS_FILE)"))
            else:
                visit(child, child_loc)

    visit(root, ())
    return issues


# ------------------------------------------------------------------------ cross checks


class _Issues(list[CatalogIssue]):
    """Issues positioned in the YAML tree ``root``."""

    def __init__(self, root: yaml.Node) -> None:
        super().__init__()
        self.root = root

    def add(self, loc: Loc, message: str, expected: str = "", fix: str = "", at_key: bool = False) -> None:
        self.append(CatalogIssue(loc_to_path(loc), *position(self.root, loc, at_key), message, expected, fix))

    def line(self, loc: Loc) -> int:
        """The line where the value at ``loc`` is (for messages naming another entry)."""
        return position(self.root, loc)[0]


def cross_checks(cat: Catalog, root: yaml.Node, check_files: bool) -> list[CatalogIssue]:
    """The cross-field checks on a catalog that passed the schema, positioned in ``root``.
    ``check_files=False`` skips the checks of referenced files (SSH keys, CA bundle)."""
    issues = _Issues(root)
    net = cat.network
    special = _special_addresses(net.subnet)
    _check_gateway(issues, net, special)

    first_vmid: dict[int, int] = {}
    first_name: dict[str, int] = {}
    first_ip: dict[ipaddress.IPv4Address, int] = {}
    first_gpu: dict[str, int] = {}
    for i, vm in enumerate(cat.vms):
        here = ("vms", i)
        _check_gpu_unique(issues, here, vm, cat, first_gpu)
        if vm.vmid in first_vmid:
            j = first_vmid[vm.vmid]
            issues.add(here + ("vmid",), f"VMID {vm.vmid} is used twice (also vms[{j}] '{cat.vms[j].name}', "
                       f"line {issues.line(('vms', j, 'vmid'))})", "a VMID unique in the catalog",
                       "give each VM its own VMID")
        else:
            first_vmid[vm.vmid] = i
        if vm.name in first_name:
            j = first_name[vm.name]
            issues.add(here + ("name",), f"VM name '{vm.name}' is used twice (also vms[{j}], line "
                       f"{issues.line(('vms', j, 'name'))})", "a name unique in the catalog",
                       "give each VM its own name")
        else:
            first_name[vm.name] = i

        _check_vm_ip(issues, here, vm, net, special, first_ip)
        if vm.image not in cat.images:
            issues.add(here + ("image",), f"image '{vm.image}' is not defined",
                       "one of the images keys: " + ", ".join(cat.images),
                       f"add it under images or use one of: {', '.join(cat.images)}")
        _check_vram_budget(issues, here, vm)
        _check_ollama_bind(issues, here, vm)
        if check_files:
            _check_key_files(issues, here, vm)

    ca = cat.proxmox.ca_file
    if check_files and ca is not None:
        _check_readable(issues, ("proxmox", "ca_file"), ca, "a PEM CA bundle",
                        "copy /etc/pve/pve-root-ca.pem from the PVE host, or set ca_file: null",
                        "a readable PEM file")
    return list(issues)


def _check_gpu_unique(issues: _Issues, here: Loc, vm: VmSpec, cat: Catalog, first: dict[str, int]) -> None:
    """One GPU per VM: the deployer starts every VM it creates, and PVE refuses to start a second
    VM with a PCI device another running VM holds (qemu-server: "PCI device '...' already in use
    by VMID ..."), which would only show after that VM was created."""
    gpu = vm.gpu
    # "0000:01:00" passes every function of the device, "0000:01:00.0" one: both hold the device.
    device = gpu.address.split(".")[0]
    keys = [("address", f"address:{device}")] + ([("mapping", f"mapping:{gpu.mapping}")] if gpu.mapping else [])
    for field, key in keys:
        if key in first:
            j = first[key]
            shown = device if field == "address" else gpu.mapping
            issues.add(here + ("gpu", field), f"GPU {field} {shown} is also given to vms[{j}] '{cat.vms[j].name}' "
                       f"(line {issues.line(('vms', j, 'gpu', field))})", "a GPU of its own for each VM",
                       "give each VM its own GPU; PVE starts only one VM holding a PCI device")
            return
    for _, key in keys:
        first[key] = first.get(key, int(here[1]))


def _check_gateway(issues: _Issues, net: NetworkSpec, special: dict[ipaddress.IPv4Address, str]) -> None:
    if net.gateway not in net.subnet:
        issues.add(("network", "gateway"), f"gateway {net.gateway} is outside the subnet {net.subnet}",
                   f"an address inside {net.subnet}", "fix the gateway or the subnet")
    elif net.gateway in special:
        issues.add(("network", "gateway"),
                   f"gateway {net.gateway} is the {special[net.gateway]} address of {net.subnet}",
                   f"a host address inside {net.subnet}")


def _check_vm_ip(issues: _Issues, here: Loc, vm: VmSpec, net: NetworkSpec,
                 special: dict[ipaddress.IPv4Address, str], first_ip: dict[ipaddress.IPv4Address, int]) -> None:
    """The VM's address: inside the subnet with its prefix, not the gateway, network or
    broadcast address, and not another VM's (``first_ip``: address -> index of its VM)."""
    ip = vm.ip_address
    loc = here + ("ip",)
    example = f"{_example_host(net.subnet)}/{net.subnet.prefixlen}"
    if ip not in net.subnet:
        issues.add(loc, f"{vm.ip} is outside network.subnet {net.subnet}",
                   f"an address inside {net.subnet}, e.g. {example}", "fix the VM ip or network.subnet")
    elif vm.ip.network != net.subnet:
        issues.add(loc, f"{vm.ip} has prefix /{vm.prefixlen} but network.subnet is {net.subnet}",
                   f"{ip}/{net.subnet.prefixlen}", f"write {ip}/{net.subnet.prefixlen}")
    elif ip == net.gateway:
        issues.add(loc, f"{ip} is the gateway's address", "a free host address in the subnet",
                   "pick another address")
    elif ip in special:
        issues.add(loc, f"{ip} is the {special[ip]} address of {net.subnet}",
                   "a host address in the subnet", f"e.g. {example}")
    elif ip in first_ip:
        issues.add(loc, f"{ip} is also the address of vms[{first_ip[ip]}]", "an address unique in the catalog")
    else:
        first_ip[ip] = here[1]


def _check_vram_budget(issues: _Issues, here: Loc, vm: VmSpec) -> None:
    """vLLM reserves ``gpu_memory_utilization`` x the GPU's memory (MiB, rounded up); Ollama's
    ``vram_mib`` must fit in what is left. The arithmetic is :func:`compute_budget`'s, so the
    catalog and the plan-time check agree to the MiB."""
    vllm, ollama, gpu = vm.stack.vllm, vm.stack.ollama, vm.gpu.expected
    budget = compute_budget(gpu.memory_mib, vllm.gpu_memory_utilization, ollama.vram_mib)
    if not budget.fits:
        issues.add(here + ("stack", "ollama", "vram_mib"),
                   f"vLLM reserves {vllm.gpu_memory_utilization} x {gpu.memory_mib} MiB = {budget.vllm_mib} MiB and "
                   f"Ollama's budget is {ollama.vram_mib} MiB: {budget.total_mib} MiB > the GPU's "
                   f"{gpu.memory_mib} MiB",
                   f"vram_mib <= {max(gpu.memory_mib - budget.vllm_mib, 0)}",
                   "lower stack.vllm.gpu_memory_utilization or stack.ollama.vram_mib (vLLM fails to start, or "
                   "Ollama falls back to CPU, when they do not fit)")


def _check_ollama_bind(issues: _Issues, here: Loc, vm: VmSpec) -> None:
    """Ollama binds an address the VM has, and a port neither vLLM nor sshd uses."""
    vllm, ollama, ip = vm.stack.vllm, vm.stack.ollama, vm.ip_address
    loc = here + ("stack", "ollama", "bind")
    bind_host = ollama.bind_host
    if bind_host not in ("0.0.0.0", "127.0.0.1", "localhost", "::", "[::]", str(ip)):
        issues.add(loc, f"Ollama cannot bind {bind_host}: the VM's address is {ip}",
                   f"127.0.0.1, 0.0.0.0 or {ip}", f"write {ip}:{ollama.bind_port}")
    if ollama.bind_port == vllm.port:
        issues.add(loc, f"Ollama and vLLM both use port {vllm.port}", "different ports", "e.g. Ollama 11434, vLLM 8000")
    if ollama.bind_port == vm.ssh.port and not vm.ssh.host:
        issues.add(loc, f"Ollama would use the SSH port {vm.ssh.port}", "a free port")


def _check_key_files(issues: _Issues, here: Loc, vm: VmSpec) -> None:
    key = vm.cloud_init.ssh_public_key_file
    problem = _check_public_key(key)
    if problem:
        issues.add(here + ("cloud_init", "ssh_public_key_file"), problem[0], "a readable OpenSSH public key file",
                   problem[1])
    priv = vm.ssh.private_key_file
    loc = here + ("ssh", "private_key_file")
    before = len(issues)
    _check_readable(issues, loc, priv, "the private key of the public key",
                    f"create a key pair with ssh-keygen -t ed25519 -f {priv}", "a readable private key",
                    f"check the owner and mode of {priv}")
    if len(issues) == before and _looks_public(priv):
        issues.add(loc, f"{priv} is a public key, not the private key", "the private key of the public key",
                   f"point at {priv.with_suffix('') if priv.suffix == '.pub' else 'the file without .pub'}")


def _looks_public(path: Path) -> bool:
    """True if ``path`` starts like an OpenSSH public key line (``ssh-ed25519 AAAA...``)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64).decode("ascii", "replace").split()
    except OSError:
        return False
    return bool(head) and head[0] in _KEY_TYPES


def _not_a_file(path: Path) -> str | None:
    """Why ``path`` is not a regular file (``"... does not exist"``, ``"... is a directory"``...), or
    None. Never raises: a name too long for the file system or a loop of links is a reason too."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return f"{path} does not exist"
    except (OSError, ValueError) as err:
        return f"{path} cannot be looked at: {getattr(err, 'strerror', None) or err}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory, not a file"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"  # a FIFO or device would block or mislead the reads
    return None


def _check_readable(issues: _Issues, loc: Loc, path: Path, expected: str, fix_missing: str,
                    expected_readable: str, fix_unreadable: str = "") -> None:
    """``path`` is a file this user can read."""
    problem = _not_a_file(path)
    if problem:
        issues.add(loc, problem, expected, fix_missing if problem.endswith("does not exist") else "")
    elif not os.access(path, os.R_OK):
        issues.add(loc, f"{path} is not readable by this user", expected_readable, fix_unreadable)


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
    problem = _not_a_file(path)
    if problem:
        return problem, gen if problem.endswith("does not exist") else "point at the .pub file"
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
