"""``python -m provisioners destroy [CATALOG] [--vm NAME|VMID] --yes-destroy``: remove VM(s) this tool created.

Without ``--yes-destroy`` nothing is contacted and the exit status is 1. A VM without the managed
marker is refused (left untouched, exit 1).
"""
from __future__ import annotations

import argparse

from provisioners.vm.cliargs import add_common, client, load
from provisioners.errors import DeployError
from provisioners.redact import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``[CATALOG] --vm --insecure --yes-destroy``."""
    add_common(parser)
    parser.add_argument("--yes-destroy", action="store_true", dest="yes_destroy",
                        help="confirm: stop and destroy the VM with its disks")


def run(args: argparse.Namespace) -> int:
    """Destroy each selected VM; returns 0. Raises DeployError (no confirmation, unmanaged VM, PVE error)."""
    from provisioners.vm import destroy_vm
    catalog, vms = load(args, check_files=False)
    if not args.yes_destroy:
        names = ", ".join(f"{vm.name} (VMID {vm.vmid})" for vm in vms)
        raise DeployError(f"refusing to destroy {names} without confirmation",
                          remedy="add --yes-destroy (make destroy-vm-llm-aimachine CONFIRM=yes)")
    pve = client(args, catalog)
    for vm in vms:
        print(redact(str(destroy_vm(pve, catalog, vm, confirm=True))))
    return 0
