"""Where the lab keeps its state, which loopback ports it uses, and the one-lab-per-machine lock.

Layout (all under the repo's ``.lab/``, git-ignored; see docs/ARCHITECTURE.md "The lab"):

- ``.lab/lock``               flock: one lab (one qemu guest) per machine
- ``.lab/lab.pid``            pid of the background ``python -m lab up`` server
- ``.lab/lab.log``            its log
- ``.lab/ready.json``         written by the server once every endpoint answers
- ``.lab/ssh/id_ed25519[.pub]`` the lab key pair (generated once)
- ``.lab/pve/``               fakepve TLS CA + server cert, fakepve state
- ``.lab/vm/<vmid>/``         per-VM guest files: qcow2 overlay, NoCloud seed ISO, qemu pidfile,
                              QMP socket
- ``.lab/guest-console.log``  the serial console of the running guest
- ``.lab/profile``            name of the current GPU profile
- ``.lab/gpu-profile.json``   the profile's hardware facts, passed to the guest via fw_cfg

Ports (TCP on 127.0.0.1, ``BASE`` from env ``LAB_PORT_BASE``, default 17000):
fakepve https ``BASE+6``, artefact HTTP ``BASE+80``, guest SSH ``BASE+22``, vLLM ``BASE+800``,
Ollama ``BASE+434``.
"""
from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from provisioners.errors import DeployError

#: repo root (the directory holding ``lab/``)
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PORT_BASE = 17000
LOOPBACK = "127.0.0.1"
#: address of the host as seen from the guest through qemu user-mode networking (slirp default)
GUEST_GATEWAY = "10.0.2.2"
#: address slirp hands the guest; the lab catalog puts it in ipconfig0
GUEST_ADDRESS = "10.0.2.15"
GUEST_PREFIX = 24
GUEST_DNS = "10.0.2.3"


@dataclass(frozen=True)
class Ports:
    """Loopback TCP ports of one lab. All derived from ``base`` (env ``LAB_PORT_BASE``)."""

    base: int

    @property
    def pve(self) -> int:
        """fakepve HTTPS API (``https://127.0.0.1:BASE+6/api2/json``)."""
        return self.base + 6

    @property
    def ssh(self) -> int:
        """guest sshd (guest port 22)."""
        return self.base + 22

    @property
    def artefacts(self) -> int:
        """lab artefact HTTP server; the guest reaches it as ``http://10.0.2.2:BASE+80``."""
        return self.base + 80

    @property
    def vllm(self) -> int:
        """guest port 8000 (vLLM)."""
        return self.base + 800

    @property
    def ollama(self) -> int:
        """guest port 11434 (Ollama)."""
        return self.base + 434

    def as_dict(self) -> dict[str, int]:
        """``{"pve": .., "ssh": .., "artefacts": .., "vllm": .., "ollama": ..}``."""
        return {n: getattr(self, n) for n in ("pve", "ssh", "artefacts", "vllm", "ollama")}


def port_base() -> int:
    """``LAB_PORT_BASE`` from the environment (default 17000).

    Raises DeployError when it is not an integer in 1024..64000 (BASE+800 must stay < 65536).
    """
    raw = os.environ.get("LAB_PORT_BASE", "").strip()
    if not raw:
        return DEFAULT_PORT_BASE
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 1024 <= value <= 64000:
        raise DeployError(
            what=f"LAB_PORT_BASE={raw!r} is not usable",
            cause="the lab needs ports BASE+6 .. BASE+800 on 127.0.0.1",
            remedy="set LAB_PORT_BASE to an integer between 1024 and 64000, or unset it (17000)",
        )
    return value


def ports() -> Ports:
    """The lab's ports for the current environment."""
    return Ports(port_base())


@dataclass(frozen=True)
class LabPaths:
    """Paths of one lab state directory (default ``<repo>/.lab``, env ``LAB_STATE_DIR``)."""

    root: Path

    @property
    def lock(self) -> Path:
        return self.root / "lock"

    @property
    def guest_session_lock(self) -> Path:
        """flock held by a lab test (or demo) for as long as it uses the guest VM, so two test
        runs never share/destroy each other's VM 140: ``LabLock(paths.guest_session_lock)
        .acquire(wait=...)``. Independent of ``lock`` (held by the lab server itself)."""
        return self.root / "guest-session.lock"

    @property
    def pidfile(self) -> Path:
        return self.root / "lab.pid"

    @property
    def log(self) -> Path:
        return self.root / "lab.log"

    @property
    def ready(self) -> Path:
        return self.root / "ready.json"

    @property
    def ssh_dir(self) -> Path:
        return self.root / "ssh"

    @property
    def ssh_key(self) -> Path:
        """private key (OpenSSH format, ed25519); ``.pub`` next to it."""
        return self.ssh_dir / "id_ed25519"

    @property
    def pve_dir(self) -> Path:
        return self.root / "pve"

    @property
    def pve_ca(self) -> Path:
        """PEM CA certificate clients pass as ``verify=`` to reach fakepve over TLS."""
        return self.pve_dir / "ca.pem"

    @property
    def console_log(self) -> Path:
        return self.root / "guest-console.log"

    @property
    def profile(self) -> Path:
        return self.root / "profile"

    @property
    def gpu_profile_json(self) -> Path:
        return self.root / "gpu-profile.json"

    @property
    def artefacts_dir(self) -> Path:
        return self.root / "artefacts"

    def vm_dir(self, vmid: int) -> Path:
        """per-VM guest files (overlay, seed, pidfile, qmp socket); wiped on destroy."""
        return self.root / "vm" / str(int(vmid))


def paths() -> LabPaths:
    """Lab paths for the current environment (``LAB_STATE_DIR`` overrides ``<repo>/.lab``)."""
    override = os.environ.get("LAB_STATE_DIR")
    return LabPaths(Path(override).resolve() if override else REPO_ROOT / ".lab")


def cache_root() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/gpu-llm-deployer`` (base image cache lives below it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpu-llm-deployer"


class LabLock:
    """Exclusive, non-blocking ``flock(2)`` on ``.lab/lock``: one lab (one qemu guest) per machine.

    Use as a context manager or call :meth:`acquire` / :meth:`release`. ``acquire(wait=s)`` polls
    for up to ``s`` seconds. The lock dies with the process that holds it (kernel-released), so a
    crashed lab never blocks the next one.

    Raises DeployError when another process holds it (and names that process's pid when known).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0, what: str = "another lab is running on this machine",
                ) -> "LabLock":
        import time

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                    os.close(fd)
                    raise DeployError(
                        what=what,
                        cause=f"{self.path} is locked" + (f" by pid {holder}" if holder else ""),
                        remedy="stop it with `python -m lab down` (or wait for its tests), "
                        "then retry",
                    ) from None
                time.sleep(0.5)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "LabLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
