"""Live collection of the captures with read-only commands (this machine or SSH)."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any, Callable

from provisioners.errors import DeployError

__all__ = ["LIVE_COMMANDS", "collect", "collect_session", "local_runner", "ssh_runner"]


#: capture name -> read-only shell command. Each runs with a timeout; failures are captured as text.
LIVE_COMMANDS: dict[str, str] = {
    "nvidia-smi": "nvidia-smi 2>&1",
    "nvidia-smi-query": ("nvidia-smi --query-gpu=index,name,pci.bus_id,driver_version,memory.total,"
                         "memory.used,compute_cap --format=csv 2>&1"),
    "lspci": "lspci -nnk 2>&1",
    "dmesg": ("(dmesg 2>/dev/null || sudo -n dmesg 2>/dev/null || journalctl -k -b --no-pager 2>&1) | "
              "grep -iE 'nvrm|nvidia|nouveau|vfio|iommu|dmar|amd-vi|lockdown|module verification|"
              "Key was rejected|Xid' | tail -n 400"),
    "ubuntu-drivers": "ubuntu-drivers devices 2>&1",
    "modinfo": "modinfo nvidia 2>&1 | grep -E '^(filename|version|license):'",
    "proc-driver": "cat /proc/driver/nvidia/version 2>&1",
    "mokutil": "mokutil --sb-state 2>&1",
    "nvcc": "(/usr/local/cuda/bin/nvcc --version || nvcc --version) 2>&1",
    "journal-ollama": "journalctl -u ollama --no-pager -n 300 2>&1",
    "ollama": "(ollama --version; ollama ps) 2>&1",
    "vllm": "journalctl -u vllm --no-pager -n 400 2>&1",
}


def collect(run_command: Callable[[str], str], commands: dict[str, str] | None = None) -> dict[str, str]:
    """Run the read-only :data:`LIVE_COMMANDS` through ``run_command(cmd) -> output text`` and
    return the captures. A command that fails contributes its error text (the doctor reads
    ``command not found`` and similar as what they are)."""
    out: dict[str, str] = {}
    for name, cmd in (commands or LIVE_COMMANDS).items():
        try:
            out[name] = run_command(cmd)
        except DeployError as err:
            out[name] = str(err)
    return out


def collect_session(session: Any, timeout_s: float = 60.0) -> dict[str, str]:
    """:func:`collect` over an open :class:`provisioners.remote.RemoteSession` (what a deploy step
    holds when it fails): ``diagnose(collect_session(session))``."""
    return collect(session_runner(session, timeout_s))


def session_runner(session: Any, timeout_s: float = 60.0) -> Callable[[str], str]:
    """``run_command`` over an open :class:`provisioners.remote.RemoteSession`: the command's
    stdout + stderr, whatever its exit status (timeout in seconds)."""
    def _run(cmd: str) -> str:
        r = session.run(cmd, check=False, timeout_s=timeout_s)
        return r.stdout + r.stderr
    return _run


def local_runner(timeout_s: float = 60.0) -> Callable[[str], str]:
    """``run_command`` for this machine: ``bash -c`` with a timeout (seconds)."""
    shell = shutil.which("bash") or "/bin/bash"

    def _run(cmd: str) -> str:
        try:
            p = subprocess.run([shell, "-c", cmd], capture_output=True, text=True, timeout=timeout_s,
                               errors="replace")
        except subprocess.TimeoutExpired:
            return f"(timed out after {timeout_s:.0f} s)"
        return p.stdout + p.stderr
    return _run


def ssh_runner(target: str, key_file: str, port: int | None = None,
               timeout_s: float = 60.0):
    """``(run_command, close)`` over SSH with :class:`provisioners.remote.RemoteSession`
    (``target`` = ``user@host[:port]``; key auth; host key pinned in .state/known_hosts.json).

    Raises:
        DeployError: bad target, or the connection/authentication fails.
    """
    from provisioners.remote import RemoteSession

    m = re.fullmatch(r"(?:(?P<user>[^@\s]+)@)?(?P<host>[^:@\s]+|\[[^\]]+\])(?::(?P<port>\d+))?", target or "")
    if not m:
        raise DeployError(f"bad --ssh target {target!r}", cause="expected user@host or user@host:port",
                          remedy="e.g. --ssh ubuntu@192.0.2.10")
    session = RemoteSession(m.group("host").strip("[]"), int(port or m.group("port") or 22),
                            m.group("user") or "ubuntu", key_file)
    session.connect(wait_s=30)
    return session_runner(session, timeout_s), session.close
