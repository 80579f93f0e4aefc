"""The Proxmox VM of a catalog entry: pre-flight, plan, apply (with rollback), destroy, power.

Public entry points (callers: ``provisioners.commands.*``, steps, the guest stack):
``preflight(client, catalog, vm) -> list[Finding]``, ``plan_vm(client, catalog, vm) -> list[Change]``,
``apply_vm(client, catalog, vm) -> list[OpResult]``, ``destroy_vm(client, catalog, vm, confirm) -> OpResult``,
``reboot_vm(client, vm, timeout_s)``, ``vm_status(client, vm) -> dict``. ``client`` comes from
:func:`provisioners.proxmox.connect`.
"""
from provisioners.vm.apply import apply_vm, rollback
from provisioners.vm.desired import MARKER_LINE, MARKER_TAG, desired_config, has_marker
from provisioners.vm.destroy import destroy_vm
from provisioners.vm.plan import plan_vm
from provisioners.vm.power import reboot_vm, vm_status
from provisioners.vm.preflight import Finding, preflight

__all__ = ["Finding", "MARKER_LINE", "MARKER_TAG", "apply_vm", "desired_config", "destroy_vm", "has_marker",
           "plan_vm", "preflight", "reboot_vm", "rollback", "vm_status"]
