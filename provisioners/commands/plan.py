"""``python -m provisioners plan [CATALOG] [--vm NAME|VMID] [--insecure]``: what a deploy would change.

Read-only (GET requests only). Prints the pre-flight findings that are not ``info`` and one line
per change (``create / update / needs-restart / refuse``), or ``No changes.``; exit 0, or 1 on
an error (catalog, connection, credentials).
"""
from __future__ import annotations

import argparse

from provisioners.vm.cliargs import add_common, client, load
from provisioners.redact import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``[CATALOG] --vm --insecure``."""
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    """Print the plan of each selected VM; returns 0. Raises DeployError (printed by the CLI)."""
    from provisioners.vm import plan_vm, preflight
    catalog, vms = load(args)
    pve = client(args, catalog)
    for vm in vms:
        print(redact(f"VM {vm.vmid} ({vm.name}) on {catalog.proxmox.node}:"))
        for finding in preflight(pve, catalog, vm):
            if finding.severity != "info":
                print(redact(f"  {finding}"))
        changes = plan_vm(pve, catalog, vm)
        if not changes:
            print("  No changes.")
        for change in changes:
            print(redact(f"  {change}"))
    return 0
