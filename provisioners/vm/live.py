"""What exists on PVE for a catalog VM: read-only queries.

Sources: ``GET /cluster/resources?type=vm`` (every VM of the cluster, any node),
``GET /nodes/{node}/qemu/{vmid}/config``, ``.../pending``, ``.../status/current``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from provisioners.proxmox import PveApiError, PveClient


@dataclass
class LiveVm:
    """A VM as PVE shows it. ``config`` is the current config, ``pending`` key -> new value
    (None = pending delete), ``status`` ``running|stopped|...``, ``lock`` PVE's config lock or None,
    ``kind`` ``qemu`` or ``lxc`` (a container holding the VMID)."""

    vmid: int
    node: str
    config: dict[str, Any]
    pending: dict[str, Any] = field(default_factory=dict)
    status: str = "unknown"
    lock: str | None = None
    kind: str = "qemu"

    @property
    def running(self) -> bool:
        return self.status == "running"

    def effective(self) -> dict[str, Any]:
        """The config the next start will use: ``config`` with ``pending`` applied."""
        out = dict(self.config)
        for key, value in self.pending.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = value
        return out


def vm_path(node: str, vmid: int) -> str:
    """``/nodes/{node}/qemu/{vmid}``."""
    return f"/nodes/{node}/qemu/{vmid}"


def find_vm_item(client: PveClient, vmid: int) -> dict[str, Any] | None:
    """The ``/cluster/resources?type=vm`` entry of VMID ``vmid`` (a VM ``type: qemu`` or a
    container ``type: lxc``), or None if the VMID is free."""
    for item in client.get("/cluster/resources", type="vm") or []:
        if int(item.get("vmid", -1)) == int(vmid):
            return item
    return None


def find_vm_node(client: PveClient, vmid: int) -> str | None:
    """The node that holds VMID ``vmid`` (a VM or container), or None if the VMID is free."""
    item = find_vm_item(client, vmid)
    return None if item is None else str(item.get("node") or client.node)


def read_live(client: PveClient, vmid: int) -> LiveVm | None:
    """The live VM with ``vmid`` anywhere in the cluster, or None. Reads only.
    A container holding the VMID comes back as a LiveVm with ``kind == "lxc"`` and no config
    of ours (so it is never touched)."""
    item = find_vm_item(client, vmid)
    if item is None:
        return None
    node = str(item.get("node") or client.node)
    if item.get("type") == "lxc":
        return LiveVm(vmid=int(vmid), node=node, config={"name": item.get("name", "")},
                      status=str(item.get("status", "unknown")), kind="lxc")
    path = vm_path(node, vmid)
    try:
        config = client.get(path + "/config") or {}
    except PveApiError as err:
        if "does not exist" in err.message:
            return None
        raise
    pending: dict[str, Any] = {}
    for entry in client.get(path + "/pending") or []:
        if entry.get("delete"):
            pending[entry["key"]] = None
        elif "pending" in entry:
            pending[entry["key"]] = entry["pending"]
    status = client.get(path + "/status/current") or {}
    return LiveVm(vmid=int(vmid), node=node, config=config, pending=pending,
                  status=str(status.get("status", "unknown")), lock=status.get("lock") or config.get("lock"))
