"""``python -m provisioners plan [CATALOG] [--vm NAME|VMID] [--insecure]``: what a deploy would change.

Read-only (GET requests only). Prints the pre-flight findings that are not ``info`` and one line
per change (``create / update / needs-restart / refuse``), or ``No changes.``. Exit 0 when
``apply`` could go ahead; 1 when it would stop (a pre-flight ``error`` finding or a ``refuse``
change: the plan is still printed, then one line saying why) or on an error (catalog,
connection, credentials).
"""
from __future__ import annotations

import argparse
import sys

from provisioners.vm.cliargs import add_common, client, load
from provisioners.redact import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``[CATALOG] --vm --insecure``."""
    add_common(parser)


def run(args: argparse.Namespace) -> int:
    """Print the plan of each selected VM; returns 0, or 1 when ``apply`` would stop (pre-flight
    errors, refused changes). Raises DeployError (printed by the CLI)."""
    from provisioners.vm import plan_vm, preflight
    catalog, vms = load(args)
    pve = client(args, catalog)
    blocked: list[str] = []
    for vm in vms:
        print(redact(f"VM {vm.vmid} ({vm.name}) on {catalog.proxmox.node}:"))
        errors = 0
        for finding in preflight(pve, catalog, vm):
            if finding.severity != "info":
                print(redact(f"  {finding}"))
            errors += finding.severity == "error"
        changes = plan_vm(pve, catalog, vm)
        if not changes:
            print("  No changes.")
        for change in changes:
            print(redact(f"  {change}"))
        refused = sum(1 for c in changes if c.action == "refuse")
        if errors or refused:
            why = [f"{errors} pre-flight error(s)"] * bool(errors) + [f"{refused} refused change(s)"] * bool(refused)
            blocked.append(f"VM {vm.vmid} ({vm.name}): {' and '.join(why)}")
    for line in blocked:
        print(redact(f"apply would stop for {line}; fix them first"), file=sys.stderr)
    return 1 if blocked else 0
