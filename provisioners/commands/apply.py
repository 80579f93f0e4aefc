"""``python -m provisioners apply [CATALOG] [--vm NAME|VMID] [--insecure]``: create/converge the VM(s).

Prints one line per operation (``changed`` / ``ok (reason)``) and exits 0; on failure the
DeployError (what PVE said, what was rolled back, what to check) is printed and the exit status is 1.
"""
from __future__ import annotations

import argparse

from provisioners.vm.cliargs import add_common, client, load
from provisioners.redact import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``[CATALOG] --vm --insecure``."""
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    """Apply each selected VM in catalog order; returns 0. Raises DeployError (printed by the CLI)."""
    from provisioners.vm import apply_vm
    catalog, vms = load(args)
    pve = client(args, catalog)
    for vm in vms:
        results = apply_vm(pve, catalog, vm)
        for result in results:
            print(redact(str(result)))
        changed = sum(1 for r in results if r.changed)
        print(redact(f"VM {vm.vmid} ({vm.name}): {changed} changed, {len(results) - changed} ok"))
    return 0
