"""The plan for one catalog VM: desired config vs what PVE has, as a list of changes.

Actions (``provisioners.results.Change``): ``create`` (VMID free), ``update`` (applied at once:
a hot-pluggable key, a disk grow, starting a stopped VM, or any key of a stopped VM),
``needs-restart`` (written now, effective at the next start: CPU, memory, hostpci, cloud-init
on a running VM, or already pending), ``refuse`` (a disk shrink, a change that cannot be made in
place, or any change to a VM without our managed marker). An empty list means "no changes".
"""
from __future__ import annotations

from typing import Any

from provisioners.proxmox import PveClient
from provisioners.results import Change
from provisioners.vm.desired import MARKER_LINE, MARKER_TAG, compare, desired_config, has_marker
from provisioners.vm.live import LiveVm, read_live


def raw_pci(client: PveClient) -> bool:
    """True when this login may (and so will) attach the raw PCI address: root@pam ticket login."""
    return client.credentials.may_set_raw_pci


def target(vm: Any) -> str:
    return f"VM {vm.vmid}"


def diff_plan(catalog: Any, vm: Any, live: LiveVm | None, *, raw: bool) -> list[Change]:
    """The plan from an already-read live state (see :func:`plan_vm`)."""
    desired = desired_config(catalog, vm, raw_pci=raw)
    size_gib = int(vm.disk.size_gib)
    if live is None:
        gpu = desired["hostpci0"]
        return [Change("create", target(vm), "", None,
                       f"{vm.name}: {vm.cores} cores, {vm.memory_mib} MiB, {size_gib} GiB on {vm.disk.storage}, "
                       f"hostpci0 {gpu}", reason=f"VMID {vm.vmid} is free")]
    if not has_marker(live.config):
        return [Change("refuse", target(vm), "", live.config.get("name"), vm.name,
                       reason=f"VMID {vm.vmid} on node {live.node} is a VM this tool did not create "
                              f"(no '{MARKER_TAG}' tag and '{MARKER_LINE}' description line); "
                              "it is never changed: pick another vmid or remove that VM yourself")]
    changes: list[Change] = []
    pending_now = live.effective()
    for d in compare(desired, pending_now, size_gib):
        if d.kind == "fixed":
            changes.append(Change("refuse", target(vm), d.key, d.current, d.desired, reason=d.note))
        elif d.kind == "disk":
            if d.note == "shrink":
                changes.append(Change("refuse", target(vm), d.key, d.current, d.desired,
                                      reason="shrinking a disk is never done (data loss)"))
            else:
                changes.append(Change("update", target(vm), d.key, d.current, d.desired, reason="grow the disk"))
        elif d.kind == "restart" and live.running:
            changes.append(Change("needs-restart", target(vm), d.key, d.current, d.desired,
                                  reason=d.note or "takes effect at the next VM start"))
        else:
            changes.append(Change("update", target(vm), d.key, d.current, d.desired, reason=d.note))
    changed_keys = {c.field for c in changes}
    if live.running:
        # Written earlier but not yet in effect: the VM still runs with the old value.
        for d in compare(desired, live.config, size_gib):
            if d.kind == "restart" and d.key not in changed_keys and d.key in live.pending:
                changes.append(Change("needs-restart", target(vm), d.key, d.current, d.desired,
                                      reason="pending: written, takes effect at the next VM start"))
    elif live.status == "stopped":
        changes.append(Change("update", target(vm), "status", "stopped", "running", reason="start the VM"))
    return changes


def plan_vm(client: PveClient, catalog: Any, vm: Any) -> list[Change]:
    """Compare catalog VM ``vm`` with PVE; read-only (GETs only).

    Returns a list of :class:`~provisioners.results.Change` (empty = nothing to do).
    Raises DeployError (unreadable SSH key, PVE errors).
    """
    return diff_plan(catalog, vm, read_live(client, vm.vmid), raw=raw_pci(client))
