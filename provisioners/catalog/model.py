"""The catalog's pydantic v2 models: attribute names are exactly the YAML keys
(``cat.proxmox.endpoint``, ``cat.vms[0].gpu.expected.pci_id``); units are part of the field
names (``*_mib`` MiB, ``*_gib`` GiB, ``*_s`` seconds). Every model refuses unknown keys and
coerces nothing (``extra="forbid"``, ``strict=True``)."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from annotated_types import Ge, Gt, Le
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from provisioners.catalog.fields import (
    AptName,
    Bind,
    BridgeName,
    CudaVersion,
    FilePath,
    GiB,
    Host,
    HttpsUrl,
    ImportVolid,
    IPv4Addr,
    IPv4If,
    IPv4Net,
    IsoVolid,
    JumpHost,
    LinuxUser,
    MappingId,
    MiB,
    ModelId,
    NodeName,
    OllamaVersion,
    PciAddress,
    PciId,
    Port,
    PositiveInt,
    Seconds,
    Sha256,
    Share,
    StorageId,
    Str,
    Url,
    VllmVersion,
    VmName,
)
from provisioners.errors import DeployError


class _Model(BaseModel):
    # strict: YAML already gives int/float/bool; lax coercion would turn "50" or true into ints.
    model_config = ConfigDict(extra="forbid", strict=True)


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

    volid: ImportVolid = Field(
        description="the PVE volume ID of the image, STORAGE:import/NAME")
    url: Url = Field(description="where the image is downloaded from, http(s)://...")
    sha256: Sha256 = Field(description="sha256 of the file at url, 64 hex digits")


class ImageSpec(_Model):
    """An OS image: the cloud image used for the VM and the installer ISO (reference only)."""

    cloud_image: CloudImageSpec = Field(description="volid, url and sha256 of the cloud image")
    iso: IsoVolid | None = Field(
        None, description="the installer ISO volume ID STORAGE:iso/NAME, or null")


class DiskSpec(_Model):
    """The boot disk: storage and size in GiB (PVE disk sizes are GiB; the tool never shrinks)."""

    storage: StorageId = Field(description="the PVE storage ID for the disk, e.g. local-lvm")
    size_gib: GiB = Field(description="the disk size, an integer in GiB (500 GiB = 500)")


class CloudInitSpec(_Model):
    """Cloud-init user settings (PVE ``ciuser`` / ``sshkeys``)."""

    user: LinuxUser = Field(description="the Linux user cloud-init creates, e.g. ubuntu")
    ssh_public_key_file: FilePath = Field(description="path to an OpenSSH public key file (*.pub)")
    package_upgrade: bool = Field(True, description="PVE `ciupgrade`: upgrade all packages at first boot "
                                  "(slow on a fresh image; the lab turns it off)")


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

    version: CudaVersion = Field(description='"X.Y", e.g. "12.8"')
    keyring_url: Url = Field(description="URL of NVIDIA's cuda-keyring .deb")


class VllmSpec(_Model):
    """vLLM in a venv, served as ``vllm serve MODEL --port PORT``."""

    version: VllmVersion = Field(
        description='the pinned vLLM version, e.g. "0.10.2"')
    pip_index_url: Url = Field(description="the pip index URL, http(s)://...")
    extra_index_url: Url | None = Field(None, description="an extra pip index URL, or null")
    model: ModelId = Field(description="the Hugging Face model id, ORG/NAME")
    port: Port = Field(8000, description="the port vLLM listens on inside the VM, 1-65535")
    gpu_memory_utilization: Share = Field(
        description="the share of GPU memory vLLM reserves, a number in (0, 1]")
    max_model_len: PositiveInt = Field(4096, description="the context length in tokens, a positive integer")
    ready_timeout_s: Seconds = Field(1800, description="seconds to wait for /health after start")


class OllamaSpec(_Model):
    """Ollama from a pinned release tarball (checked by sha256), bound by ``OLLAMA_HOST``."""

    version: OllamaVersion = Field(
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
    # At most 4096: QEMU's q35 machine takes no more vCPUs (max_cpus in hw/i386/pc_q35.c of recent
    # QEMU); in practice PVE refuses more than the node has (pre-flight checks /nodes maxcpu).
    cores: Annotated[int, Gt(0), Le(4096)] = Field(
        description="the number of vCPU cores, a positive integer (at most the node's CPU count)")
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
