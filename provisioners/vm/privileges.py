"""The least privileges an API token needs to deploy a catalog VM (for the README and pre-flight).

Derived from the ``permissions`` of each API method the deployer calls (PVE 9 API schema, as
shipped in fakepve's data) and qemu-server's ``check_vm_modify_config_perm`` /
``check_hostpci_perm``; proven by ``tests/unit/test_vm_apply.py::test_least_privilege_token_deploys``.
Create the role with :func:`pveum_commands`.
"""
from __future__ import annotations

from typing import Any

#: Privileges on the VM (``/vms/{vmid}``): create, configure (cloud-init, disks, CD-ROM for the
#: cloud-init drive, CPU, memory, network, options, hardware incl. hostpci), start/stop, read.
VM_PRIVILEGES = ("VM.Allocate", "VM.Audit", "VM.Config.Disk", "VM.Config.CDROM", "VM.Config.CPU",
                 "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Config.HWType",
                 "VM.Config.Cloudinit", "VM.PowerMgmt")


def token_privileges(catalog: Any, vm: Any) -> dict[str, tuple[str, ...]]:
    """ACL path -> privileges for catalog VM ``vm``.

    ``/``: Sys.Audit (``GET /nodes/{n}/hardware/pci``). The disk storage: Datastore.AllocateSpace
    + Audit. The image storage: Datastore.Audit (+ AllocateTemplate, and Sys.Modify on ``/`` or
    Sys.AccessNetwork on ``/nodes/{node}``, only if PVE must download the image). The mapping:
    Mapping.Use (it also lists the mapping; Mapping.Modify on ``/mapping/pci`` only to let the tool create it).
    VM.Config.Cloudinit and VM.Config.CDROM are what PVE checks for the cloud-init keys and drive
    (fakepve checks VM.Config.HWType for them).
    """
    image_storage = str(catalog.images[vm.image].cloud_image.volid).split(":", 1)[0]
    out: dict[str, tuple[str, ...]] = {
        "/": ("Sys.Audit",),
        f"/vms/{vm.vmid}": VM_PRIVILEGES,
        f"/storage/{vm.disk.storage}": ("Datastore.AllocateSpace", "Datastore.Audit"),
    }
    if vm.efidisk_storage != vm.disk.storage:
        out[f"/storage/{vm.efidisk_storage}"] = ("Datastore.AllocateSpace", "Datastore.Audit")
    out.setdefault(f"/storage/{image_storage}", ())
    out[f"/storage/{image_storage}"] = tuple(dict.fromkeys(out[f"/storage/{image_storage}"] + ("Datastore.Audit",)))
    if vm.gpu.mapping:
        out[f"/mapping/pci/{vm.gpu.mapping}"] = ("Mapping.Use",)
    return out


def pveum_commands(catalog: Any, vm: Any, token_id: str, role: str = "GpuLlmDeployer") -> list[str]:
    """Shell commands that create ``role`` and grant it to ``token_id`` (``user@realm!name``) per
    :func:`token_privileges` (one role holding the union; ``--propagate 0`` on ``/``)."""
    privs = sorted({p for ps in token_privileges(catalog, vm).values() for p in ps})
    cmds = [f"pveum role add {role} --privs '{','.join(privs)}'"]
    for path in token_privileges(catalog, vm):
        propagate = " --propagate 0" if path == "/" else ""
        cmds.append(f"pveum acl modify {path} --tokens '{token_id}' --roles {role}{propagate}")
    return cmds
