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
    (None = pending delete), ``status`` ``running|stopped|...``, ``lock`` PVE's config lock or None."""

    vmid: int
    node: str
    config: dict[str, Any]
    pending: dict[str, Any] = field(default_factory=dict)
    status: str = "unknown"
    lock: str | None = None

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


def find_vm_node(client: PveClient, vmid: int) -> str | None:
    """The node that holds VMID ``vmid`` (a VM or container), or None if the VMID is free."""
    for item in client.get("/cluster/resources", type="vm") or []:
        if int(item.get("vmid", -1)) == int(vmid):
            return str(item.get("node") or client.node)
    return None


def read_live(client: PveClient, vmid: int) -> LiveVm | None:
    """The live VM with ``vmid`` anywhere in the cluster, or None. Reads only."""
    node = find_vm_node(client, vmid)
    if node is None:
        return None
    path = vm_path(node, vmid)
    try:
        config = client.get(path + "/config") or {}
    except PveApiError as err:
        if "does not exist" in err.message:
            return None
        raise
    pending: dict[str, Any] = {}
    for item in client.get(path + "/pending") or []:
        if item.get("delete"):
            pending[item["key"]] = None
        elif "pending" in item:
            pending[item["key"]] = item["pending"]
    status = client.get(path + "/status/current") or {}
    return LiveVm(vmid=int(vmid), node=node, config=config, pending=pending,
                  status=str(status.get("status", "unknown")), lock=status.get("lock") or config.get("lock"))
