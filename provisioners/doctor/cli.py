"""``python -m provisioners doctor``: arguments and entry point."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioners.doctor.engine import diagnose
from provisioners.doctor.live import collect, local_runner, ssh_runner
from provisioners.doctor.model import EXIT_FINDINGS
from provisioners.errors import DeployError
from provisioners.redact import redact

__all__ = ["add_arguments", "run"]




def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m provisioners doctor``."""
    parser.add_argument("directory", nargs="?", metavar="DIR",
                        help="directory of captures named by command (nvidia-smi.txt, dmesg.txt, "
                             "ubuntu-drivers.txt, lspci.txt, nvcc.txt, journal-ollama.txt, vllm.log, ...)")
    parser.add_argument("--from", dest="transcript", metavar="TRANSCRIPT",
                        help="a pasted terminal transcript (commands on lines starting with '$ '); '-' = stdin")
    parser.add_argument("--local", action="store_true", help="collect the captures on this machine (read-only)")
    parser.add_argument("--ssh", metavar="USER@HOST[:PORT]", help="collect the captures over SSH (read-only)")
    parser.add_argument("--identity", "-i", default="~/.ssh/id_ed25519", help="SSH private key for --ssh")
    parser.add_argument("--save", metavar="DIR", help="also write the collected captures to DIR (with --local/--ssh)")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of text")
    parser.add_argument("--troubleshooting", action="store_true",
                        help="print the troubleshooting tables (Markdown: every finding the doctor knows and the "
                             "Proxmox failures the deployer explains, from real examples); needs no source")


def _read_directory(path: Path) -> dict[str, str]:
    if not path.is_dir():
        raise DeployError(f"capture directory {path} not found", cause="no such directory",
                          remedy="pass a directory of captures, or --from FILE for one transcript")
    captures = {}
    for f in sorted(path.iterdir()):
        if f.is_file():
            captures[f.name] = f.read_text(encoding="utf-8", errors="replace")
    if not captures:
        raise DeployError(f"capture directory {path} is empty", cause="no files to read",
                          remedy="save outputs as nvidia-smi.txt, dmesg.txt, lspci.txt, ... in it")
    return captures


def run(args: argparse.Namespace) -> int:
    """Run the doctor; prints text or JSON (redacted). Returns 0 (no finding) or 3 (findings).
    With ``--troubleshooting``: prints the README's troubleshooting Markdown and returns 0.

    Raises:
        DeployError: no or several sources given (or a source with --troubleshooting), unreadable
            input, SSH failure.
    """
    sources = [s for s in (args.directory, args.transcript, args.local or None, args.ssh) if s]
    if getattr(args, "troubleshooting", False):
        if sources:
            raise DeployError("--troubleshooting takes no source",
                              cause="it prints the tables from built-in examples, not a diagnosis",
                              remedy="run `python -m provisioners doctor --troubleshooting` alone")
        # imported here: it pulls in the Proxmox side, which a diagnosis does not need
        from provisioners.doctor.troubleshooting import markdown_table
        print(markdown_table())
        return 0
    if len(sources) != 1:
        raise DeployError("doctor needs exactly one source",
                          cause=f"got {len(sources)}: give DIR, --from TRANSCRIPT, --local or --ssh USER@HOST",
                          remedy="e.g. `python -m provisioners doctor --from pasted.txt --json`")
    if args.transcript:
        if args.transcript == "-":
            captures = {"transcript": sys.stdin.read()}
        else:
            p = Path(args.transcript)
            if not p.is_file():
                raise DeployError(f"transcript {p} not found", cause="no such file",
                                  remedy="save the pasted terminal output to a file and pass its path")
            captures = {"transcript": p.read_text(encoding="utf-8", errors="replace")}
    elif args.directory:
        p = Path(args.directory)
        captures = ({"transcript": p.read_text(encoding="utf-8", errors="replace")} if p.is_file()
                    else _read_directory(p))
    elif args.local:
        captures = collect(local_runner())
    else:
        runner, close = ssh_runner(args.ssh, args.identity)
        try:
            captures = collect(runner)
        finally:
            close()
    if getattr(args, "save", None) and (args.local or args.ssh):
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in captures.items():
            (out / f"{name}.txt").write_text(redact(text), encoding="utf-8")
    diag = diagnose(captures)
    print(diag.to_json() if args.json else diag.format_text())
    return EXIT_FINDINGS if diag.findings else 0
