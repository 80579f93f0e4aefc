"""Shared argument handling of the VM commands (``plan``, ``apply``, ``destroy``).

The catalog is the argument, else ``$CATALOG``, else ``infrastructure-catalog.yml``; ``--vm``
picks one VM by name or VMID (default: every VM of the catalog); ``--insecure`` (or
``PROXMOX_INSECURE=1``) turns TLS verification off with a warning. Credentials come from the
``PROXMOX_*`` environment (see :mod:`provisioners.proxmox`).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from provisioners.catalog import default_catalog_path, load_catalog


def add_common(parser: argparse.ArgumentParser) -> None:
    """``[CATALOG] [--vm NAME|VMID] [--insecure]``."""
    parser.add_argument("catalog", nargs="?", metavar="CATALOG", default=None,
                        help="catalog file (default: $CATALOG, else infrastructure-catalog.yml at the repo root)")
    parser.add_argument("--vm", default=None, metavar="NAME|VMID", help="only this VM (default: every VM)")
    parser.add_argument("--insecure", action="store_true",
                        help="do not verify the PVE API's TLS certificate (prints a warning; lab use only)")


def load(args: argparse.Namespace, *, check_files: bool = True) -> tuple[Any, list[Any]]:
    """(catalog, [VMs to act on]). Raises CatalogError / DeployError."""
    catalog = load_catalog(Path(args.catalog) if args.catalog else default_catalog_path(), check_files=check_files)
    vms = [catalog.vm(args.vm)] if args.vm else list(catalog.vms)
    return catalog, vms


def client(args: argparse.Namespace, catalog: Any):
    """A logged-in PVE client (raises DeployError)."""
    from provisioners.proxmox import connect
    return connect(catalog, insecure=bool(args.insecure))
