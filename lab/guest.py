"""One lab guest: a qemu-system-x86_64 process (TCG) booting the cached base image.

Per VM the lab keeps ``.lab/vm/<vmid>/``: ``disk.qcow2`` (a qcow2 overlay backed by the cached
``base.qcow2`` - fresh per created VM, deleted on destroy), ``seed.iso`` (NoCloud ``cidata``,
regenerated from the PVE config at every qemu start, as PVE regenerates its cloud-init drive),
``qemu.pid``, ``qmp.sock`` and ``qemu.log`` (qemu's own stderr). The serial console goes to
``.lab/guest-console.log`` (appended, across reboots).

Command line (measured recipe, ../shared/DESIGN.md §5): ``-accel tcg,thread=multi,tb-size=256
-cpu max -machine q35,smm=off`` - ``/dev/kvm`` on the lab machines is a PVM flavour that stock
Debian kernels hang on; direct ``-kernel/-initrd`` with ``root=/dev/vda``; hermetic user-mode
networking (issue #3: no test traffic leaves loopback/the guest): ``restrict=on`` cuts the guest
off from the host and the outside (slirp then drops every guest TCP/UDP flow - DNS to 10.0.2.3
included - except DHCP/TFTP and the explicit forwards; ``ipv6=off``; slirp's own address
moved to :data:`SLIRP_HOST`), ``hostfwd`` of
127.0.0.1:{ssh,vllm,ollama} to guest 22/8000/11434, and one ``guestfwd`` so the guest still
reaches the lab artefact server as ``http://10.0.2.2:BASE+80``; ``-fw_cfg
name=opt/lab/gpu,file=.lab/gpu-profile.json`` (guest: ``/sys/firmware/qemu_fw_cfg/by_name/opt/
lab/gpu/raw``). ``-no-reboot`` is deliberately absent: a reboot inside the guest resets the
machine in place, like a real VM.

qemu is a child of the lab server, started with ``PR_SET_PDEATHSIG=SIGTERM`` so it dies with the
server even on SIGKILL; ``lab down`` also checks the pidfiles. Facts: qemu-system-x86_64(1),
QMP reference (qemu.org/docs/master/interop/qemu-qmp-ref.html): ``qmp_capabilities``,
``query-status``, ``system_powerdown``, ``system_reset``, ``stop``, ``cont``, ``quit``.
"""
from __future__ import annotations

import ctypes
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab import cloudinit, state
from lab.image import BaseImage
from provisioners.errors import DeployError
from provisioners.redact import redact

QEMU = "qemu-system-x86_64"
#: relays one guest connection to the artefact server. ``guestfwd=...-cmd:`` (libslirp
#: ``slirp_add_exec``) spawns it per connection with the socket as stdin/stdout/stderr; the
#: ``tcp:``/chardev form would accept a single connection for the whole VM life (apt and pip
#: open many). socat(1) ``STDIO`` <-> ``TCP``; its own messages go to ``relay.log``, not into
#: the guest's HTTP stream.
RELAY = "socat"
#: slirp's own "host" address inside the guest network. Not the default 10.0.2.2: libslirp
#: refuses a ``guestfwd`` on its host (or DNS) address ("Conflicting/invalid host:port in guest
#: forwarding rule"), and 10.0.2.2 must stay the catalog's gateway + artefact server address.
#: slirp answers ARP for guestfwd addresses, so the guest's gateway 10.0.2.2 still resolves;
#: inside the guest, forwarded SSH connections come from this address.
SLIRP_HOST = "10.0.2.254"
#: guest RAM in MiB (env LAB_GUEST_MEMORY_MIB); the PVE ``memory`` of the VM is not used: the lab
#: machine has little RAM and TCG gains nothing from more
DEFAULT_MEMORY_MIB = 1024
DEFAULT_CPUS = 2
#: seconds qemu gets to come up (QMP answers, status running) before the start counts as failed
START_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the forked child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except OSError:
        pass


class Qmp:
    """Minimal synchronous QMP client over the guest's unix socket (one command per connection).

    Raises OSError/ConnectionError when qemu does not answer, RuntimeError on a QMP ``error``.
    """

    def __init__(self, path: Path, timeout: float = 5.0):
        self.path = Path(path)
        self.timeout = timeout

    def command(self, execute: str, **arguments) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(self.timeout)
            s.connect(str(self.path))
            f = s.makefile("rwb")
            self._read(f)  # greeting
            self._send(f, {"execute": "qmp_capabilities"})
            self._read(f)
            msg = {"execute": execute}
            if arguments:
                msg["arguments"] = arguments
            self._send(f, msg)
            reply = self._read(f)
            if "error" in reply:
                raise RuntimeError(f"QMP {execute}: {reply['error'].get('desc')}")
            return reply.get("return", {})

    @staticmethod
    def _send(f, msg: dict) -> None:
        f.write(json.dumps(msg).encode() + b"\n")
        f.flush()

    @staticmethod
    def _read(f) -> dict:
        while True:
            line = f.readline()
            if not line:
                raise ConnectionError("QMP socket closed")
            msg = json.loads(line)
            if "event" not in msg:  # events (RESET, POWERDOWN...) are not replies
                return msg


@dataclass
class GuestSettings:
    """What a guest is started with. Units: MiB, GiB, seconds; ports are 127.0.0.1 TCP."""

    vmid: int
    config: dict
    memory_mib: int = DEFAULT_MEMORY_MIB
    cpus: int = DEFAULT_CPUS
    disk_gib: int | None = None

    @classmethod
    def from_pve(cls, vmid: int, config: dict) -> "GuestSettings":
        """From a PVE VM config: the overlay takes the size of ``scsi0``/``virtio0``/... when it is
        larger than the base image (cloud-init's resizefs grows the ext4 at first boot)."""
        mem = int(os.environ.get("LAB_GUEST_MEMORY_MIB") or DEFAULT_MEMORY_MIB)
        cpus = int(os.environ.get("LAB_GUEST_CPUS") or DEFAULT_CPUS)
        return cls(vmid=int(vmid), config=dict(config), memory_mib=mem, cpus=cpus,
                   disk_gib=_boot_disk_gib(config))


def _boot_disk_gib(config: dict) -> int | None:
    for key in ("scsi0", "virtio0", "sata0", "ide0"):
        val = str(config.get(key) or "")
        for part in val.split(",")[1:]:
            if part.startswith("size="):
                size = part[5:]
                units = {"K": 1 / 2**20, "M": 1 / 1024, "G": 1, "T": 1024}
                try:
                    num = float(size[:-1]) * units[size[-1].upper()] if size[-1].isalpha() \
                        else float(size) / 2**30
                except (KeyError, ValueError):
                    return None
                return int(num) if num >= 1 else None
    return None


def _mac(config: dict) -> str | None:
    return cloudinit._mac_of(config.get("net0"))


class Guest:
    """The qemu process of one lab VM and its files.

    Args:
        vmid: PVE VM id.
        image: the cached base image (:func:`lab.image.build`).
        paths, ports: lab state paths and loopback ports (:mod:`lab.state`).
    """

    def __init__(self, vmid: int, image: BaseImage, paths: state.LabPaths | None = None,
                 ports: state.Ports | None = None):
        self.vmid = int(vmid)
        self.image = image
        self.paths = paths or state.paths()
        self.ports = ports or state.ports()
        self.dir = self.paths.vm_dir(self.vmid)
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None

    # ------------------------------------------------------------------ files
    @property
    def overlay(self) -> Path:
        return self.dir / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.dir / "seed.iso"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def qmp_path(self) -> Path:
        return self.dir / "qmp.sock"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    def ensure_overlay(self, disk_gib: int | None = None) -> Path:
        """Create ``disk.qcow2`` over the base image if it does not exist (kept across
        stop/start and reboot, like a real disk). Size: ``disk_gib`` GiB if larger than the base."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.overlay.exists():
            return self.overlay
        cmd = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2",
               "-b", str(self.image.qcow2), str(self.overlay) + ".tmp"]
        from lab.image import DISK_GIB
        if disk_gib and disk_gib > DISK_GIB:
            cmd.append(f"{disk_gib}G")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise DeployError(what=f"cannot create the disk of lab VM {self.vmid}",
                              cause=proc.stderr.strip(), remedy="check free disk space",
                              command=" ".join(cmd), exit_code=proc.returncode)
        os.replace(str(self.overlay) + ".tmp", self.overlay)
        return self.overlay

    def write_gpu_profile_default(self) -> Path:
        """Make sure ``.lab/gpu-profile.json`` exists (qemu refuses a missing fw_cfg file)."""
        p = self.paths.gpu_profile_json
        if not p.exists():
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"profile": None, "gpus": []}) + "\n")
        return p

    # ---------------------------------------------------------------- process
    @property
    def relay_log(self) -> Path:
        return self.dir / "relay.log"

    def netdev(self) -> str:
        """The ``-netdev user,...`` value: isolated (``restrict=on``), loopback-only ``hostfwd``s
        and a per-connection ``guestfwd`` from guest ``10.0.2.2:BASE+80`` to the artefact server
        on ``127.0.0.1:BASE+80``. Source: qemu-system-x86_64(1) ``-netdev user`` (``restrict``,
        ``hostfwd``, ``guestfwd=[tcp]:server:port-cmd:command``)."""
        p = self.ports
        relay = " ".join(shlex.quote(a) for a in (
            RELAY, "-lf", str(self.relay_log), "-", f"TCP:{state.LOOPBACK}:{p.artefacts}"))
        # ipv6=off: libslirp applies ``restrict`` to IPv4 (ip_input) but its ip6_input has no
        # such check; the lab guest is IPv4-only (catalog ipconfig0), so offer no IPv6 at all
        opts = ["user", "id=n0", "restrict=on", "ipv6=off", f"host={SLIRP_HOST}"]
        opts += [f"hostfwd=tcp:{state.LOOPBACK}:{host}-:{guest}"
                 for host, guest in ((p.ssh, 22), (p.vllm, 8000), (p.ollama, 11434))]
        # qemu option syntax: a literal comma inside a value is written ",,"
        opts.append(f"guestfwd=tcp:{state.GUEST_GATEWAY}:{p.artefacts}-cmd:"
                    + relay.replace(",", ",,"))
        return ",".join(opts)

    def command(self, settings: GuestSettings) -> list[str]:
        """The qemu command line (list of argv strings)."""
        nic = "virtio-net-pci,netdev=n0"
        mac = _mac(settings.config)
        if mac:
            nic += f",mac={mac}"
        return [
            QEMU, "-name", f"lab-vm{self.vmid},process=lab-vm{self.vmid}",
            "-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max", "-machine", "q35,smm=off",
            "-m", str(settings.memory_mib), "-smp", str(settings.cpus),
            "-nodefaults", "-display", "none",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0",
            "-drive", f"file={self.overlay},if=virtio,format=qcow2,discard=unmap",
            "-drive", f"file={self.seed},if=virtio,format=raw,readonly=on",
            "-netdev", self.netdev(), "-device", nic,
            "-device", "virtio-rng-pci",
            "-fw_cfg", f"name=opt/lab/gpu,file={self.write_gpu_profile_default()}",
            "-chardev", f"file,id=ser0,path={self.paths.console_log},append=on",
            "-serial", "chardev:ser0",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-pidfile", str(self.pidfile),
        ]

    def running(self) -> bool:
        """True while this object's qemu process is alive."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, settings: GuestSettings) -> int:
        """Write the seed, make the overlay if needed and start qemu; returns its pid once QMP
        reports ``running`` (the guest is then booting - SSH comes ≈ 1 min later on TCG).

        Raises DeployError ``start failed: QEMU exited with code N`` (PVE's wording) with qemu's
        stderr as cause when it does not come up within :data:`START_TIMEOUT_S` s.
        """
        if self.running():
            raise DeployError(what=f"VM {self.vmid} already running")
        if not shutil.which(QEMU):
            raise DeployError(what="start failed: qemu-system-x86_64 not found",
                              remedy="apt-get install qemu-system-x86 qemu-utils")
        if not shutil.which(RELAY):
            # qemu would start, but every guest connection to the artefact server would fail
            raise DeployError(what=f"start failed: {RELAY} not found (lab artefact relay)",
                              remedy=f"apt-get install {RELAY}")
        self.ensure_overlay(settings.disk_gib)
        cloudinit.write_iso(cloudinit.render(settings.config, self.vmid), self.seed)
        for stale in (self.qmp_path, self.pidfile):
            stale.unlink(missing_ok=True)
        cmd = self.command(settings)
        self.paths.console_log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.paths.console_log, "a") as con:
            con.write(f"\n===== lab: qemu start of VM {self.vmid} at {time.strftime('%F %T')} =====\n")
        log = open(self.qemu_log, "w")
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                         cwd=self.dir)
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.proc = None
                raise DeployError(
                    what=f"start failed: QEMU exited with code {code}",
                    cause=redact(self.qemu_log.read_text(errors="replace").strip()[-2000:]),
                    remedy="another process may hold a lab port "
                    f"({', '.join(str(v) for v in self.ports.as_dict().values())}); "
                    "see the cause above",
                    command=" ".join(cmd), exit_code=code,
                )
            try:
                if Qmp(self.qmp_path, timeout=2).command("query-status").get("status") == "running":
                    self.started_at = time.time()
                    return self.proc.pid
            except (OSError, ConnectionError, ValueError, RuntimeError):
                pass
            time.sleep(0.2)
        self.kill()
        raise DeployError(what="start failed: command 'qemu-system-x86_64' failed: got timeout",
                          cause=self.qemu_log.read_text(errors="replace")[-2000:],
                          remedy="the lab machine may be overloaded; retry")

    def qmp(self, execute: str, **arguments) -> dict:
        """Run one QMP command. Raises DeployError when qemu does not answer."""
        try:
            return Qmp(self.qmp_path).command(execute, **arguments)
        except (OSError, ConnectionError, ValueError, RuntimeError) as exc:
            raise DeployError(what=f"QMP {execute} to VM {self.vmid} failed", cause=str(exc)) from exc

    def wait_exit(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for qemu to exit; True when it did (or was not running)."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        self.proc = None
        self.pidfile.unlink(missing_ok=True)
        return True

    def powerdown(self, timeout: float) -> bool:
        """ACPI power button (QMP ``system_powerdown``); True when the guest powered off within
        ``timeout`` s. The guest's systemd takes ≈ 5-15 s under TCG."""
        if not self.running():
            return True
        try:
            self.qmp("system_powerdown")
        except DeployError:
            pass
        return self.wait_exit(timeout)

    def kill(self, grace: float = 5.0) -> None:
        """Stop qemu now: QMP ``quit``, then SIGTERM, then SIGKILL after ``grace`` s each."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                Qmp(self.qmp_path, timeout=2).command("quit")
            except (OSError, ConnectionError, ValueError, RuntimeError):
                pass
            if not self.wait_exit(grace) and self.proc is not None:
                self.proc.terminate()
                if not self.wait_exit(grace) and self.proc is not None:
                    self.proc.kill()
                    self.wait_exit(grace)
        self.proc = None
        self.pidfile.unlink(missing_ok=True)
        self.qmp_path.unlink(missing_ok=True)

    def reset(self) -> None:
        """Hard reset in place (QMP ``system_reset``), like PVE's ``status/reset``."""
        self.qmp("system_reset")

    def wipe(self) -> None:
        """Kill qemu and delete the VM's directory (overlay, seed...): the next VM with this id is
        a fresh machine (new SSH host keys, new machine-id)."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def pid_is_lab_qemu(pid: int, vm_dir: Path | None = None) -> bool:
    """True when ``pid`` is a live qemu-system process started by the lab (its cmdline names
    ``lab-vm``; with ``vm_dir``, also that directory's files)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    args = raw.split(b"\0")
    if not args or not args[0].endswith(b"qemu-system-x86_64"):
        return False
    text = raw.decode(errors="replace")
    if "lab-vm" not in text:
        return False
    return vm_dir is None or str(vm_dir) in text


def stray_qemus(paths: state.LabPaths | None = None) -> list[tuple[int, Path]]:
    """(pid, vm dir) of lab qemu processes recorded in ``.lab/vm/*/qemu.pid`` that still run."""
    paths = paths or state.paths()
    found = []
    for pidfile in sorted((paths.root / "vm").glob("*/qemu.pid")):
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_is_lab_qemu(pid, pidfile.parent):
            found.append((pid, pidfile.parent))
    return found


def kill_strays(paths: state.LabPaths | None = None, grace: float = 10.0) -> list[int]:
    """SIGTERM (then SIGKILL after ``grace`` s) every stray lab qemu; returns their pids."""
    killed = []
    for pid, _vm_dir in stray_qemus(paths):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        killed.append(pid)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and pid_is_lab_qemu(pid):
            time.sleep(0.2)
        if pid_is_lab_qemu(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return killed
