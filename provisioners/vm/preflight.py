"""Pre-flight checks for one catalog VM: read-only questions to PVE before anything changes.

Each check gives :class:`Finding` s; ``error`` findings stop an apply before its first write.
PVE sources: ``GET /nodes`` (status, mem/maxmem bytes), ``GET /nodes/{n}/hardware/pci``
(``id``, ``vendor``/``device`` as ``0x10de``, ``iommugroup``: -1 = no IOMMU),
``GET /cluster/mapping/pci``, ``GET /access/permissions``, ``GET /nodes/{n}/storage/{s}/status``
(bytes), ``GET /nodes/{n}/storage/{s}/content``, ``GET /cluster/resources?type=vm``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from provisioners.proxmox import PveApiError, PveClient
from provisioners.vm.desired import GiB, has_marker, image_volid, props, size_bytes
from provisioners.vm.live import read_live

Severity = Literal["error", "warning", "info"]
MiB = 1024 ** 2


@dataclass(frozen=True)
class Finding:
    """One pre-flight result: ``severity`` error|warning|info, ``message`` what was found,
    ``remedy`` what to do (empty for info)."""

    severity: Severity
    message: str
    remedy: str = ""

    def __str__(self) -> str:
        fix = f" -> {self.remedy}" if self.remedy else ""
        return f"{self.severity.upper():7} {self.message}{fix}"


def _hex(value: Any) -> str:
    """A PCI id as 4 lowercase hex digits: ``0x10de`` / ``10de`` / ``10DE`` -> ``10de``."""
    text = str(value or "").strip().lower()
    return text[2:] if text.startswith("0x") else text


def _functions(devices: list[dict[str, Any]], address: str) -> list[dict[str, Any]]:
    address = address.lower()
    return [d for d in devices if str(d.get("id", "")).lower() == address
            or str(d.get("id", "")).lower().startswith(address + ".")]


def check_node(client: PveClient) -> list[Finding]:
    for item in client.get("/nodes") or []:
        if item.get("node") == client.node:
            if item.get("status") != "online":
                return [Finding("error", f"node {client.node} is {item.get('status')}",
                                "bring the node online (check `pvecm status`) or fix proxmox.node")]
            return [Finding("info", f"node {client.node} is online")]
    return [Finding("error", f"node {client.node} is not in this cluster",
                    "set proxmox.node to one of: " + ", ".join(str(i.get("node")) for i in client.get("/nodes") or []))]


def check_gpu(client: PveClient, vm: Any) -> list[Finding]:
    """The GPU at ``gpu.address`` with ``gpu.expected.pci_id``, its IOMMU group and group mates."""
    gpu = vm.gpu
    want_vendor, _, want_device = str(gpu.expected.pci_id).lower().partition(":")
    # PVE's default class blacklist (05;06;0b) hides bridges: a root port sharing the group does
    # not go to the VM, so only endpoint devices are reported as group mates.
    devices = client.get(f"/nodes/{client.node}/hardware/pci") or []
    here = _functions(devices, gpu.address)
    match = [d for d in here if _hex(d.get("vendor")) == want_vendor and _hex(d.get("device")) == want_device]
    if not match:
        elsewhere = [d["id"] for d in devices if _hex(d.get("vendor")) == want_vendor
                     and _hex(d.get("device")) == want_device]
        found = ", ".join(f"{d['id']} [{_hex(d.get('vendor'))}:{_hex(d.get('device'))}]" for d in here) or "nothing"
        remedy = (f"the card is at {', '.join(elsewhere)}: set gpu.address accordingly" if elsewhere else
                  "check that the card is seated and visible on the node (`lspci -nn | grep -i nvidia`); "
                  "fix gpu.address / gpu.expected.pci_id in the catalog")
        return [Finding("error", f"GPU {gpu.expected.pci_id} ({gpu.expected.name}) not found at {gpu.address} on node "
                                 f"{client.node}: /hardware/pci shows {found}", remedy)]
    dev = match[0]
    out = [Finding("info", f"GPU {gpu.expected.pci_id} found at {dev['id']} ({dev.get('device_name', '')})")]
    group = int(dev.get("iommugroup", -1))
    if group == -1:
        out.append(Finding("error", f"IOMMU is off on node {client.node}: {dev['id']} has no IOMMU group "
                                    "(PVE will fail with 'cannot prepare PCI pass-through, IOMMU not present')",
                           "enable VT-d/AMD-Vi in the firmware and intel_iommu=on (Intel) on the kernel command line, "
                           "reboot; check `dmesg | grep -e DMAR -e IOMMU`"))
        return out
    mates = [d for d in devices if int(d.get("iommugroup", -2)) == group and d not in here]
    if mates:
        out.append(Finding("warning", f"IOMMU group {group} also holds " + ", ".join(
            f"{d['id']} ({d.get('device_name') or d.get('class')})" for d in mates),
            "all devices of a group go to the VM together; move the card to another slot or accept that"))
    else:
        out.append(Finding("info", f"IOMMU group {group} holds only the GPU's functions"))
    return out


def check_mapping(client: PveClient, vm: Any) -> list[Finding]:
    """With an API token the GPU must come from a cluster resource mapping (``Mapping.Use``)."""
    gpu = vm.gpu
    if client.credentials.may_set_raw_pci:
        return [Finding("info", f"root@pam password login: hostpci0 uses the raw address host={gpu.address}")]
    if not gpu.mapping:
        return [Finding("warning", "no gpu.mapping in the catalog and this login is not a root@pam password login: "
                                   "PVE refuses a raw address ('only root can set 'hostpci0' config for non-mapped "
                                   "devices')",
                        "create a PCI resource mapping (Datacenter > Resource Mappings) and set gpu.mapping, "
                        "or log in as root@pam with PROXMOX_PASSWORD")]
    mappings = {m.get("id"): m for m in client.get("/cluster/mapping/pci") or []}
    mapping = mappings.get(gpu.mapping)
    if mapping is None:
        if client.has_privilege("/mapping/pci", "Mapping.Modify"):
            return [Finding("info", f"PCI mapping '{gpu.mapping}' does not exist yet; it will be created for "
                                    f"{gpu.address} on node {client.node}")]
        return [Finding("error", f"PCI mapping '{gpu.mapping}' does not exist and {client.credentials.principal} "
                                 "may not create it (Mapping.Modify)",
                        f"create it in Datacenter > Resource Mappings for {gpu.address} on {client.node}, "
                        f"and grant Mapping.Use on /mapping/pci/{gpu.mapping}")]
    entries = [props("x," + str(m))[1] for m in mapping.get("map") or []]
    ours = [e for e in entries if e.get("node") == client.node]
    if not ours:
        return [Finding("error", f"PCI mapping '{gpu.mapping}' has no entry for node {client.node}",
                        "add this node's device to the mapping (Datacenter > Resource Mappings)")]
    paths = [p.lower() for e in ours for p in e.get("path", "").split(";")]
    address = gpu.address.lower()
    if not any(p == address or p.startswith(address + ".") for p in paths):
        return [Finding("error", f"PCI mapping '{gpu.mapping}' points at {', '.join(paths)} on {client.node}, "
                                 f"not at {gpu.address}",
                        "fix the mapping or gpu.address so they name the same device")]
    ids = {e.get("id", "").lower() for e in ours if e.get("id")}
    if ids and str(gpu.expected.pci_id).lower() not in ids:
        return [Finding("error", f"PCI mapping '{gpu.mapping}' expects device {', '.join(sorted(ids))}, the catalog "
                                 f"expects {gpu.expected.pci_id}",
                        "fix the mapping (Datacenter > Resource Mappings) or gpu.expected.pci_id")]
    out = [Finding("info", f"PCI mapping '{gpu.mapping}' -> {', '.join(paths)} on {client.node}")]
    if not client.has_privilege(f"/mapping/pci/{gpu.mapping}", "Mapping.Use"):
        out.append(Finding("error", f"{client.credentials.principal} lacks Mapping.Use on /mapping/pci/{gpu.mapping}",
                           f"pveum acl modify /mapping/pci/{gpu.mapping} --tokens '{client.credentials.principal}' "
                           "--roles PVEMappingUser"))
    return out


def check_storage(client: PveClient, storage: str, need_bytes: int, content: str, what: str) -> list[Finding]:
    try:
        status = client.get(f"/nodes/{client.node}/storage/{storage}/status") or {}
    except PveApiError as err:
        return [Finding("error", f"storage '{storage}' ({what}) is not usable on {client.node}: {err.message}",
                        "fix the storage name in the catalog (`pvesm status` lists them)")]
    if content not in str(status.get("content", "")).split(","):
        return [Finding("error", f"storage '{storage}' does not hold content '{content}' ({what})",
                        f"enable '{content}' for it (Datacenter > Storage > Edit > Content) or pick another")]
    avail = int(status.get("avail") or 0)
    if need_bytes and avail < need_bytes:
        return [Finding("error", f"storage '{storage}' has {avail / GiB:.1f} GiB free, {what} needs "
                                 f"{need_bytes / GiB:.1f} GiB", "free space or pick another storage")]
    return [Finding("info", f"storage '{storage}': {avail / GiB:.1f} GiB free ({what})")]


def check_memory(client: PveClient, vm: Any) -> list[Finding]:
    for item in client.get("/nodes") or []:
        if item.get("node") == client.node:
            free = int(item.get("maxmem") or 0) - int(item.get("mem") or 0)
            if free < int(vm.memory_mib) * MiB:
                return [Finding("error", f"node {client.node} has {free // MiB} MiB free memory, VM {vm.vmid} needs "
                                         f"{vm.memory_mib} MiB (all of it is pinned: balloon=0 with passthrough)",
                                "stop other guests or lower memory_mib")]
            return [Finding("info", f"node {client.node}: {free // MiB} MiB free memory")]
    return []


def check_cpus(client: PveClient, vm: Any) -> list[Finding]:
    """``vm.cores`` against the node's CPU count (``GET /nodes`` ``maxcpu``, logical CPUs): PVE
    refuses to start a VM with more vCPUs than that (qemu-server: "MAX n vcpus allowed per VM on
    this node"), which would only show after the VM was created."""
    for item in client.get("/nodes") or []:
        if item.get("node") == client.node and item.get("maxcpu"):
            have = int(item["maxcpu"])
            if int(vm.cores) > have:
                return [Finding("error", f"VM {vm.vmid} wants {vm.cores} cores, node {client.node} has {have} CPUs "
                                         "(PVE starts no VM with more vCPUs than the node has)",
                                f"lower cores to at most {have}")]
            return [Finding("info", f"node {client.node}: {have} CPUs")]
    return []


def check_image(client: PveClient, catalog: Any, vm: Any) -> list[Finding]:
    volid = image_volid(catalog, vm)
    storage = volid.split(":", 1)[0]
    try:
        content = client.get(f"/nodes/{client.node}/storage/{storage}/content", content="import") or []
    except PveApiError as err:
        return [Finding("error", f"cannot list storage '{storage}' for the cloud image: {err.message}",
                        "fix images.*.cloud_image.volid (a storage with content 'import')")]
    if any(item.get("volid") == volid for item in content):
        return [Finding("info", f"cloud image {volid} is present")]
    url = catalog.images[vm.image].cloud_image.url
    found = check_storage(client, storage, 0, "import", "cloud image")
    if found[0].severity == "error":
        return found
    return [Finding("info", f"cloud image {volid} is missing; it will be downloaded from {url} (sha256 checked by PVE)")]


def check_vmid(client: PveClient, vm: Any) -> tuple[list[Finding], Any]:
    live = read_live(client, vm.vmid)
    if live is None:
        return [Finding("info", f"VMID {vm.vmid} is free")], None
    if not has_marker(live.config):
        what = "a container" if live.kind == "lxc" else "a VM this tool did not create (no managed marker)"
        return [Finding("error", f"conflict: VMID {vm.vmid} is used by '{live.config.get('name', '?')}' on node "
                                 f"{live.node}, {what}; it is left untouched",
                        "choose a free vmid in the catalog, or remove/renumber that VM yourself")], live
    return [Finding("info", f"VMID {vm.vmid} is our VM ({live.status})")], live


def preflight(client: PveClient, catalog: Any, vm: Any) -> list[Finding]:
    """All pre-flight checks for catalog VM ``vm``; read-only (GETs only).

    Returns findings in check order; any ``error`` stops :func:`provisioners.vm.apply_vm`.
    Raises DeployError only when PVE cannot be asked at all.
    """
    findings = check_node(client)
    if findings[0].severity == "error":
        return findings
    vmid_findings, live = check_vmid(client, vm)
    findings += vmid_findings
    findings += check_gpu(client, vm)
    findings += check_mapping(client, vm)
    if live is None or (live.kind == "qemu" and has_marker(live.config)):
        findings += check_cpus(client, vm)
    if live is None:
        findings += check_storage(client, vm.disk.storage, int(vm.disk.size_gib) * GiB, "images",
                                  f"disk of {vm.disk.size_gib} GiB")
        if vm.efidisk_storage != vm.disk.storage:
            findings += check_storage(client, vm.efidisk_storage, 4 * MiB, "images", "EFI disk")
        findings += check_memory(client, vm)
        findings += check_image(client, catalog, vm)
    elif live.kind == "qemu" and has_marker(live.config):
        have = size_bytes(props(live.config.get("scsi0"))[1].get("size"))
        grow = int(vm.disk.size_gib) * GiB - have
        if have and grow > 0:
            findings += check_storage(client, vm.disk.storage, grow, "images", f"growing the disk by {grow / GiB:g} GiB")
        if not live.running:
            findings += check_memory(client, vm)
    return findings
