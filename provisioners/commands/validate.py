"""``python -m provisioners validate [CATALOG]`` - check a catalog without touching anything.

Prints ``OK: <file>: N VM(s): vm-llm-aimachine (VMID 140)`` and exits 0, or one line per
problem on stderr (``FILE:LINE:COL: PATH: message (expected ...; fix: ...)``) and exits 1.
The catalog is the argument, else ``$CATALOG``, else ``infrastructure-catalog.yml`` at the repo
root.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioners.catalog import CatalogError, default_catalog_path, load_catalog
from provisioners.errors import DeployError
from provisioners.redact import redact


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``[CATALOG]`` and ``--skip-file-checks`` to the ``validate`` sub-parser."""
    parser.add_argument("catalog", nargs="?", metavar="CATALOG", default=None,
                        help="catalog file (default: $CATALOG, else infrastructure-catalog.yml at the repo root)")
    parser.add_argument("--skip-file-checks", action="store_true",
                        help="do not check the files the catalog refers to (SSH keys, CA bundle), "
                             "e.g. on a machine that does not hold them")


def run(args: argparse.Namespace) -> int:
    """Validate; returns 0 (valid) or 1 (one line per issue printed on stderr). Never raises for
    a bad or missing catalog."""
    path = Path(args.catalog) if args.catalog else default_catalog_path()
    try:
        catalog = load_catalog(path, check_files=not getattr(args, "skip_file_checks", False))
    except CatalogError as err:
        for issue in err.issues:
            print(issue.format(err.file), file=sys.stderr)
        return 1
    except DeployError as err:
        print(redact(" ".join(str(err).split())), file=sys.stderr)
        return 1
    vms = ", ".join(f"{vm.name} (VMID {vm.vmid})" for vm in catalog.vms)
    print(redact(f"OK: {catalog.path}: {len(catalog.vms)} VM(s): {vms}"))
    return 0
