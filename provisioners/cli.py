"""``python -m provisioners COMMAND`` - the parts of the tool that are not scenarios.

Each command lives in the module that owns it, as two functions:
``add_arguments(parser)`` and ``run(args) -> int`` (exit status). This table only wires them,
importing lazily so that one command's dependencies never slow or break another.
Operator errors (:class:`~provisioners.errors.DeployError`) are printed, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from provisioners.errors import DeployError
from provisioners.redact import redact

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("provisioners.commands.validate", "check a catalog; one line per error, exit 1 if any"),
    "plan": ("provisioners.commands.plan", "show what a deploy would change (changes nothing)"),
    "apply": ("provisioners.commands.apply", "create/converge the VM from the catalog"),
    "destroy": ("provisioners.commands.destroy", "destroy a VM this tool created (needs --yes-destroy)"),
    "doctor": ("provisioners.doctor", "diagnose a GPU LLM host from captured or live output"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser; only ``command``'s module is imported (for its own arguments)."""
    parser = argparse.ArgumentParser(prog="python -m provisioners", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if name == command:
            _load(module).add_arguments(p)
    return parser


def _load(module: str):
    return importlib.import_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(_load(args._module).run(args) or 0)
    except DeployError as err:
        print(redact(str(err)), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - a bug must still not print secrets or a traceback
        if os.environ.get("DEPLOYER_DEBUG"):
            print(redact(traceback.format_exc()), file=sys.stderr)
        print(redact(f"internal error in '{args.command}': {type(err).__name__}: {err}"), file=sys.stderr)
        print("  this is a bug in the deployer; rerun with DEPLOYER_DEBUG=1 for the (redacted) traceback "
              "and report it", file=sys.stderr)
        return 2
