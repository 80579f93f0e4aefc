"""Power actions on a VM, each a PVE task that is awaited and checked.

PVE API: ``POST /nodes/{node}/qemu/{vmid}/status/{start|stop|reboot}`` (``timeout`` seconds),
``GET .../status/current``. A start with a PCI device and much RAM is slow (PVE itself allows
4x its default with hostpci), so the start timeout comes from ``proxmox.start_timeout_s``.
"""
from __future__ import annotations

from typing import Any

from provisioners.proxmox import PveClient
from provisioners.vm.live import find_vm_node, vm_path

def task_margin(timeout_s: float) -> float:
    """Seconds a PVE task may need beyond the ``timeout`` it was given (task start-up, cleanup):
    10 % of it, between 1 and 30 s."""
    return min(30.0, max(1.0, 0.1 * timeout_s))

STOP_TIMEOUT_S = 120


def _node(client: PveClient, vmid: int) -> str:
    return find_vm_node(client, vmid) or client.node


def vm_status(client: PveClient, vm: Any) -> dict[str, Any]:
    """``GET /nodes/{node}/qemu/{vmid}/status/current`` of catalog VM ``vm`` (``status``
    running|stopped, ``qmpstatus``, ``uptime`` s, ``lock``...), or ``{"status": "absent"}``."""
    node = find_vm_node(client, vm.vmid)
    if node is None:
        return {"status": "absent"}
    return client.get(vm_path(node, vm.vmid) + "/status/current") or {}


def start_vm(client: PveClient, vmid: int, timeout_s: float, node: str | None = None) -> dict[str, Any]:
    """Start VMID and wait (``timeout_s`` seconds, passed to PVE as ``timeout`` too)."""
    node = node or _node(client, vmid)
    path = vm_path(node, vmid) + "/status/start"
    # A second start of a VM that is starting fails ("already running"): never sent blindly.
    upid = client.submit_task("POST", path, node=node, vmid=vmid, task_type="qmstart", timeout=int(timeout_s))
    return client.wait_task(upid, timeout_s + task_margin(timeout_s), f"start of VM {vmid}", command=f"POST {path}")


def stop_vm(client: PveClient, vmid: int, timeout_s: float = STOP_TIMEOUT_S, node: str | None = None) -> dict[str, Any]:
    """Hard-stop VMID (``status/stop``) and wait up to ``timeout_s`` seconds."""
    path = vm_path(node or _node(client, vmid), vmid) + "/status/stop"
    return client.run_task("POST", path, timeout_s + task_margin(timeout_s), f"stop of VM {vmid}",
                           idempotent=True, timeout=int(timeout_s))


def reboot_vm(client: PveClient, vm: Any, timeout_s: float) -> dict[str, Any]:
    """Reboot catalog VM ``vm`` through PVE (ACPI, ``status/reboot``; pending config is applied)
    and wait up to ``timeout_s`` seconds for the task. Raises DeployError (task failed/timed out)."""
    path = vm_path(_node(client, vm.vmid), vm.vmid) + "/status/reboot"
    return client.run_task("POST", path, timeout_s + task_margin(timeout_s), f"reboot of VM {vm.vmid}", timeout=int(timeout_s))
