"""Power actions on a VM, each a PVE task that is awaited and checked.

PVE API: ``POST /nodes/{node}/qemu/{vmid}/status/{start|stop|reboot}`` (``timeout`` seconds),
``GET .../status/current``. A start with a PCI device and much RAM is slow (PVE itself allows
4x its default with hostpci), so the start timeout comes from ``proxmox.start_timeout_s``.
"""
from __future__ import annotations

from typing import Any

from provisioners.proxmox import PveClient
from provisioners.vm.live import find_vm_node, vm_path

#: Seconds PVE's task may need beyond the ``timeout`` it was given (task start-up, cleanup).
TASK_MARGIN_S = 30
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
    path = vm_path(node or _node(client, vmid), vmid) + "/status/start"
    return client.run_task("POST", path, timeout_s + TASK_MARGIN_S, f"start of VM {vmid}", timeout=int(timeout_s))


def stop_vm(client: PveClient, vmid: int, timeout_s: float = STOP_TIMEOUT_S, node: str | None = None) -> dict[str, Any]:
    """Hard-stop VMID (``status/stop``) and wait up to ``timeout_s`` seconds."""
    path = vm_path(node or _node(client, vmid), vmid) + "/status/stop"
    return client.run_task("POST", path, timeout_s + TASK_MARGIN_S, f"stop of VM {vmid}", timeout=int(timeout_s))


def reboot_vm(client: PveClient, vm: Any, timeout_s: float) -> dict[str, Any]:
    """Reboot catalog VM ``vm`` through PVE (ACPI, ``status/reboot``; pending config is applied)
    and wait up to ``timeout_s`` seconds for the task. Raises DeployError (task failed/timed out)."""
    path = vm_path(_node(client, vm.vmid), vm.vmid) + "/status/reboot"
    return client.run_task("POST", path, timeout_s + TASK_MARGIN_S, f"reboot of VM {vm.vmid}", timeout=int(timeout_s))
