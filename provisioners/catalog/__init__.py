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
   reported (and their values registered for redaction). Hostile input is refused with a
   position before it can hurt: files over 1 MiB, bytes that are not UTF-8, control characters,
   nesting deeper than 64 levels, recursive or exploding aliases (``yamlpos.MAX_*``).
2. schema: pydantic v2 (``extra="forbid"``, strict types) checks types, formats and ranges.
3. cross-field checks on the validated model: VMIDs/names/IPs/GPUs unique, IPs inside the subnet,
   image references, the vLLM + Ollama VRAM budget, and (unless ``check_files=False``) the
   files the catalog refers to (SSH keys, CA bundle).

Pass 3 runs only when pass 2 succeeded, so a catalog with schema errors may show further
cross-field errors once those are fixed.

Modules: :mod:`.load` (the entry points), :mod:`.yamlpos` (YAML nodes and positions, pass 1),
:mod:`.model` and :mod:`.fields` (pass 2), :mod:`.schema_issues` (pydantic errors -> issues),
:mod:`.checks` (secret keys, pass 3), :mod:`.errors` (issues and the error).
"""
from __future__ import annotations

from provisioners.catalog.errors import CatalogError, CatalogIssue
from provisioners.catalog.fields import (
    AptName,
    Bind,
    BridgeName,
    FilePath,
    GiB,
    Host,
    HttpsUrl,
    IPv4Addr,
    IPv4If,
    IPv4Net,
    JumpHost,
    LinuxUser,
    MappingId,
    MiB,
    ModelId,
    NodeName,
    PciAddress,
    PciId,
    Port,
    PositiveInt,
    Seconds,
    Sha256,
    StorageId,
    Str,
    Url,
    VmName,
)
from provisioners.catalog.load import DEFAULT_CATALOG, default_catalog_path, load_catalog, parse_catalog
from provisioners.catalog.model import (
    AptRepository,
    Catalog,
    CloudImageSpec,
    CloudInitSpec,
    CudaSpec,
    DiskSpec,
    DriverSpec,
    EndpointsSpec,
    ExpectedGpu,
    GpuSpec,
    ImageSpec,
    NetworkSpec,
    OllamaSpec,
    ProxmoxSpec,
    SshSpec,
    StackSpec,
    VllmSpec,
    VmSpec,
)
from provisioners.catalog.yamlpos import Loc

__all__ = [
    "DEFAULT_CATALOG", "default_catalog_path", "load_catalog", "parse_catalog",
    "CatalogError", "CatalogIssue",
    "Catalog", "ProxmoxSpec", "NetworkSpec", "CloudImageSpec", "ImageSpec", "DiskSpec", "CloudInitSpec",
    "SshSpec", "ExpectedGpu", "GpuSpec", "AptRepository", "DriverSpec", "CudaSpec", "VllmSpec", "OllamaSpec",
    "StackSpec", "EndpointsSpec", "VmSpec",
    "Str", "PositiveInt", "Seconds", "Port", "MiB", "GiB", "FilePath", "Url", "HttpsUrl", "Sha256", "StorageId",
    "VmName", "NodeName", "LinuxUser", "MappingId", "BridgeName", "ModelId", "AptName", "PciAddress", "PciId",
    "Bind", "Host", "JumpHost", "IPv4Addr", "IPv4Net", "IPv4If", "Loc",
]
