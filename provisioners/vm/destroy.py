"""Destroy a VM this tool created: needs an explicit confirmation and our managed marker.

PVE API: ``POST .../status/stop`` then ``DELETE /nodes/{node}/qemu/{vmid}?purge=1&destroy-unreferenced-disks=1``
(``purge`` also removes it from backup jobs, replication and HA), both tasks awaited.
"""
from __future__ import annotations

import time
from typing import Any

from provisioners.errors import DeployError
from provisioners.proxmox import PveClient
from provisioners.results import OpResult
from provisioners.vm.desired import has_marker
from provisioners.vm.live import read_live, vm_path
from provisioners.vm.power import stop_vm

DESTROY_TIMEOUT_S = 300


def _exists(client: PveClient, vmid: int) -> bool | None:
    """True if VM ``vmid`` exists, False if not, None if PVE cannot be asked. Never raises."""
    try:
        return read_live(client, vmid) is not None
    except DeployError:
        return None


def _left_unknown(left: bool | None) -> str:
    return "it is gone after all" if left is False else "whether it still exists is unknown"


def destroy_vm(client: PveClient, catalog: Any, vm: Any, confirm: bool) -> OpResult:
    """Stop and destroy catalog VM ``vm`` with its disks.

    Returns OpResult ``changed`` (destroyed) or ``ok`` (already absent).
    Raises DeployError: ``confirm`` is false (nothing is read or changed), or the VM lacks our
    managed marker (it is left untouched), or a PVE task failed.
    """
    if not confirm:
        raise DeployError(f"refusing to destroy VM {vm.vmid} ({vm.name}) without confirmation",
                          remedy="run again with --yes-destroy (make destroy-vm-llm-aimachine CONFIRM=yes)")
    start = time.monotonic()
    live = read_live(client, vm.vmid)
    if live is None:
        return OpResult(f"VM {vm.vmid} destroy", "ok", "does not exist")
    if not has_marker(live.config):
        raise DeployError(f"refusing to destroy VM {vm.vmid} ('{live.config.get('name', '?')}')",
                          cause="it was not created by this tool (no managed marker)",
                          remedy="it is left untouched; remove it yourself if that is really wanted")
    stopped = False
    try:
        if live.running:
            stop_vm(client, vm.vmid, node=live.node)
            stopped = True
        upid = client.delete(vm_path(live.node, vm.vmid), purge=1, **{"destroy-unreferenced-disks": 1})
        client.wait_task(str(upid), DESTROY_TIMEOUT_S, f"destroy of VM {vm.vmid}",
                         command=f"DELETE {vm_path(live.node, vm.vmid)}")
    except DeployError as err:
        # Say what state the VM is left in: the operator asked for it gone and it is not.
        left = _exists(client, vm.vmid)
        state = ("it was stopped and still exists" if stopped else "it still exists") if left else _left_unknown(left)
        raise DeployError(f"destroy of VM {vm.vmid} ({vm.name}) failed; {state}: {err.what}", cause=err.cause,
                          remedy="\n  ".join(r for r in (err.remedy, "run the destroy again once the cause is "
                                                                     "fixed; it starts from what PVE has") if r),
                          evidence=dict(err.evidence), command=err.command) from None
    return OpResult(f"VM {vm.vmid} destroy", "changed", f"{vm.name} stopped and destroyed with its disks",
                    time.monotonic() - start)
