"""One SSH session to a guest VM (paramiko): key auth, host-key pinning, sudo, per-command
timeouts, live streaming and reconnect-and-resume.

Usage::

    with RemoteSession("192.168.0.140", 22, "ubuntu", Path("~/.ssh/id_ed25519"),
                       vm_identity="pve/140", vm_generation=vmgenid) as s:
        s.connect(wait_s=300)
        r = s.run("nvidia-smi -L", check=False)
        s.put_file("/etc/foo.conf", "x=1\\n", mode=0o644)

One :class:`RemoteSession` holds ONE SSH connection that every command of a run reuses
(each command is a new channel on the same transport).

Host-key pinning (trust on first use, per VM)
    The first host key seen for a VM identity is recorded in a JSON store
    (default ``.state/known_hosts.json``). A VM identity is ``vm_identity`` (which VM:
    e.g. ``"pve/140"``, the PVE node and VMID) plus ``vm_generation`` (which incarnation
    of it: PVE's ``vmgenid`` from ``GET /nodes/{node}/qemu/{vmid}/config``, which PVE
    regenerates when a VM is created; the lab uses the same field). Then:

    * same identity, same generation, same key -> accepted;
    * same identity, NEW generation (the VM was destroyed and re-created) -> the new key is
      pinned in place of the old one (logged with both fingerprints);
    * same identity, same generation, DIFFERENT key -> refused with
      :class:`HostKeyMismatchError` naming both fingerprints. Nothing is sent to that host.

    A jump host is pinned the same way under the identity ``"jump/HOST:PORT"``.

Commands
    :meth:`RemoteSession.run` wraps each command as
    ``timeout -k 10 T [sudo -n --] [env K=V ...] bash -c '<cmd>'`` so a hung remote command
    is killed on the guest too (exit 124/137 -> timeout error). ``sudo -n`` never prompts:
    a password prompt becomes :class:`SudoPasswordRequired`. As ``root`` no sudo is used.
    ``env`` values are visible in the guest's process list: never pass secrets there
    (write them with :meth:`put_file`).

Reconnect and resume
    If the connection is dead before or drops during a command, ``run`` reconnects once
    (waiting up to ``reconnect_wait_s``) and re-runs the command only when it is marked
    ``idempotent=True`` (the default: probes, and apply steps written check-then-act).
    A non-idempotent command is not re-run: :class:`ConnectionLostError` says so.

Every line given to ``log`` passes :func:`provisioners.redact.redact`; file contents written
with :meth:`put_file` are never logged.
"""
from __future__ import annotations

import base64
import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import select
import shlex
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from provisioners.errors import DeployError
from provisioners.redact import redact

_logger = logging.getLogger("provisioners.remote")

DEFAULT_STORE = Path(".state/known_hosts.json")
# Exit codes of coreutils `timeout`: 124 = TERM sent on time-out, 137 = KILL after -k.
_TIMEOUT_EXITS = (124, 137)
_TAIL_LINES = 40
_SUDO_PROMPT_MARKERS = ("a password is required", "a terminal is required")


# --------------------------------------------------------------------------------------------
# results and errors


@dataclass
class CommandResult:
    """Outcome of one remote command. ``command`` is the command as the caller wrote it
    (without the timeout/sudo wrapper), ``exit_code`` its exit status (-1 when the remote
    process died from a signal), ``stdout``/``stderr`` decoded UTF-8 text (invalid bytes
    replaced), ``duration_s`` wall-clock seconds."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def tail(self, n: int = _TAIL_LINES) -> str:
        """The last ``n`` lines of stdout then stderr, redacted (for errors and reports)."""
        lines = (self.stdout.splitlines() + self.stderr.splitlines())[-n:]
        return redact("\n".join(lines))


class RemoteCommandError(DeployError):
    """A remote command exited non-zero (or timed out). ``result`` is the
    :class:`CommandResult`; ``cause`` holds the last 40 output lines."""

    def __init__(self, host: str, result: CommandResult, *, what: str | None = None,
                 remedy: str = "", timed_out: bool = False) -> None:
        status = "timed out" if timed_out else f"exited {result.exit_code}"
        super().__init__(
            what=what or f"remote command on {host} {status}",
            cause=result.tail() or "(no output)",
            remedy=remedy or "read the output above; fix the cause on the VM, then re-run "
                             "(every step is check-then-act, a re-run resumes)",
            evidence={"stdout": redact(result.stdout[-20000:]),
                      "stderr": redact(result.stderr[-20000:])},
            command=redact(result.command),
            exit_code=result.exit_code,
        )
        self.result = result
        self.timed_out = timed_out


class SudoPasswordRequired(DeployError):
    """``sudo -n`` refused because the SSH user needs a password for sudo."""


class HostKeyMismatchError(DeployError):
    """The host presented a different key than the one pinned for the same VM identity."""


class ConnectionLostError(DeployError):
    """The SSH connection dropped during a command that is not safe to re-run."""


# --------------------------------------------------------------------------------------------
# host-key store


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style ``SHA256:<base64, no padding>`` fingerprint of a host key (as printed by
    ``ssh-keygen -lf``)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class KnownHostsStore:
    """JSON file of pinned host keys, one entry per VM identity::

        {"version": 1, "hosts": {"pve/140": {"generation": "...", "address": "h:22",
            "key_type": "ssh-ed25519", "key": "<base64>", "fingerprint": "SHA256:...",
            "pinned_at": "2026-01-01T00:00:00Z"}}}

    Writes are atomic (temp file + rename) under an ``flock`` on ``<file>.lock``.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _load(self) -> dict:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"version": 1, "hosts": {}}
        except (OSError, json.JSONDecodeError) as exc:
            raise DeployError(
                what=f"cannot read the pinned host keys in {self.path}",
                cause=str(exc),
                remedy=f"fix or remove {self.path} (it only holds public host keys; removing "
                       "it re-pins every VM on next use)") from exc
        data.setdefault("hosts", {})
        return data

    def get(self, identity: str) -> dict | None:
        """The pinned entry for ``identity`` or None."""
        return self._load()["hosts"].get(identity)

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def check_or_pin(self, identity: str, generation: str | None, address: str,
                     key: paramiko.PKey, log: Callable[[str], None]) -> None:
        """Accept ``key`` for ``identity`` (pinning it on first use or for a new generation)
        or raise :class:`HostKeyMismatchError`."""
        fp = fingerprint(key)
        gen = generation or ""
        with self._locked():
            data = self._load()
            entry = data["hosts"].get(identity)
            if entry is not None and entry.get("generation", "") == gen:
                if entry.get("key") == key.get_base64() and entry.get("key_type") == key.get_name():
                    return
                raise HostKeyMismatchError(
                    what=f"host key of {identity} at {address} changed - refusing to connect",
                    cause=(f"pinned {entry.get('key_type')} {entry.get('fingerprint')} "
                           f"(since {entry.get('pinned_at')}), host now presents "
                           f"{key.get_name()} {fp}; the VM identity (generation {gen or '-'}) "
                           "is the same, so this is not a re-created VM"),
                    remedy=(f"check the key on the VM console (`ssh-keygen -lf "
                            f"/etc/ssh/ssh_host_ed25519_key.pub`); if the change is expected, "
                            f"delete the entry '{identity}' from {self.path} and re-run. "
                            "Otherwise something may be intercepting the connection."),
                    evidence={"pinned": json.dumps(entry, indent=1), "presented": fp})
            if entry is not None:
                log(f"{identity}: VM re-created (generation {entry.get('generation') or '-'} -> "
                    f"{gen or '-'}); re-pinning host key {entry.get('fingerprint')} -> {fp}")
            else:
                log(f"{identity}: pinning host key {key.get_name()} {fp} (first use)")
            data["hosts"][identity] = {
                "generation": gen, "address": address, "key_type": key.get_name(),
                "key": key.get_base64(), "fingerprint": fp,
                "pinned_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".known_hosts.")
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh, indent=2, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, self.path)


class _PinningPolicy(paramiko.MissingHostKeyPolicy):
    """paramiko calls this for every connection because the client's own known-hosts table is
    kept empty; the decision is :meth:`KnownHostsStore.check_or_pin`."""

    def __init__(self, store: KnownHostsStore, identity: str, generation: str | None,
                 log: Callable[[str], None]) -> None:
        self.store, self.identity, self.generation, self.log = store, identity, generation, log

    def missing_host_key(self, client, hostname, key) -> None:  # noqa: D102 (paramiko API)
        self.store.check_or_pin(self.identity, self.generation, hostname, key, self.log)


def vm_generation(config: dict | None) -> str | None:
    """The creation marker of a PVE VM from its config (``GET /nodes/{node}/qemu/{vmid}/config``),
    for ``RemoteSession(vm_generation=...)``: ``"ctime=<epoch s>"`` from ``meta:
    creation-qemu=...,ctime=...`` (written once when PVE creates the VM), else
    ``"vmgenid=<uuid>"`` (regenerated on create, also on restore). None when neither is set."""
    if not config:
        return None
    for part in str(config.get("meta") or "").split(","):
        key, _, value = part.partition("=")
        if key.strip() == "ctime" and value.strip():
            return f"ctime={value.strip()}"
    gen = str(config.get("vmgenid") or "")
    if gen and gen not in ("0", "1"):
        return f"vmgenid={gen}"
    return None


# --------------------------------------------------------------------------------------------
# the session


def _parse_jump(spec: str, default_user: str) -> tuple[str, str, int]:
    """``[user@]host[:port]`` -> (user, host, port)."""
    user, _, rest = spec.rpartition("@")
    host, _, port = rest.partition(":")
    if not host:
        raise DeployError(what=f"invalid jump_host {spec!r}",
                          remedy="write it as user@host:port, e.g. root@pve.example:22")
    try:
        return user or default_user, host, int(port or 22)
    except ValueError:
        raise DeployError(what=f"invalid port in jump_host {spec!r}",
                          remedy="write it as user@host:port, e.g. root@pve.example:22") from None


class RemoteSession:
    """An SSH session to one VM.

    Args:
        host, port: where sshd listens (port default 22).
        user: login user (cloud-init ``ciuser``); commands with ``sudo=True`` use ``sudo -n``
            unless ``user`` is root.
        key_file: private key (``~`` expanded). Passwords are not supported.
        jump_host: optional ``user@host:port`` to tunnel through (same key file).
        known_hosts_store: JSON file of pinned keys (see module docstring).
        vm_identity: which VM (e.g. ``"pve/140"``); defaults to ``"HOST:PORT"``.
        vm_generation: which incarnation of it (PVE ``vmgenid``); a new value re-pins.
        connect_timeout_s: TCP/banner/auth timeout of one connection attempt, seconds.
        reconnect_wait_s: how long ``run`` waits for SSH when it reconnects, seconds.
        log: callable taking one already-redacted line; default: the
            ``provisioners.remote`` logger at INFO.
    """

    #: how the boot id is read (proc(5)); a class attribute so tests can simulate a reboot
    BOOT_ID_COMMAND = "cat /proc/sys/kernel/random/boot_id"

    def __init__(self, host: str, port: int = 22, user: str = "ubuntu",
                 key_file: Path | str = "~/.ssh/id_ed25519", *, jump_host: str | None = None,
                 known_hosts_store: Path | str = DEFAULT_STORE, vm_identity: str | None = None,
                 vm_generation: str | None = None, connect_timeout_s: float = 15.0,
                 reconnect_wait_s: float = 300.0,
                 log: Callable[[str], None] | None = None) -> None:
        self.host, self.port, self.user = host, int(port), user
        self.key_file = Path(key_file).expanduser()
        self.jump_host = jump_host
        self.store = KnownHostsStore(Path(known_hosts_store))
        self.vm_identity = vm_identity or f"{host}:{self.port}"
        self.vm_generation = vm_generation
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_wait_s = reconnect_wait_s
        self._log_fn = log or _logger.info
        self._client: paramiko.SSHClient | None = None
        self._jump: paramiko.SSHClient | None = None
        self._pkey: paramiko.PKey | None = None
        self._ever_connected = False
        self.commands_run = 0

    # -- logging ------------------------------------------------------------------------------

    def log(self, line: str) -> None:
        """Send one line (redacted here) to the session's log callable."""
        self._log_fn(redact(line))

    # -- connection -----------------------------------------------------------------------------

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connected(self) -> bool:
        """True while the SSH transport is up (a method: ``session.connected()``)."""
        t = self._client.get_transport() if self._client else None
        return bool(t and t.is_active())

    def _load_key(self) -> paramiko.PKey:
        if self._pkey is None:
            try:
                self._pkey = paramiko.PKey.from_path(self.key_file)
            except FileNotFoundError:
                raise DeployError(
                    what=f"SSH private key {self.key_file} not found",
                    remedy="set vms[].ssh.private_key_file in the catalog to the key whose "
                           "public half is in cloud_init.ssh_public_key_file") from None
            except paramiko.PasswordRequiredException:
                raise DeployError(
                    what=f"SSH private key {self.key_file} is encrypted",
                    remedy="use an unencrypted deploy key (the deployer does not prompt)") from None
            except (paramiko.SSHException, ValueError) as exc:
                raise DeployError(what=f"cannot load SSH private key {self.key_file}",
                                  cause=str(exc)) from None
        return self._pkey

    def _connect_once(self) -> None:
        pkey = self._load_key()
        sock = None
        if self.jump_host:
            juser, jhost, jport = _parse_jump(self.jump_host, self.user)
            if self._jump is None or not (self._jump.get_transport()
                                          and self._jump.get_transport().is_active()):
                self._jump = paramiko.SSHClient()
                self._jump.set_missing_host_key_policy(_PinningPolicy(
                    self.store, f"jump/{jhost}:{jport}", None, self.log))
                self._jump.connect(jhost, jport, juser, pkey=pkey, allow_agent=False,
                                   look_for_keys=False, timeout=self.connect_timeout_s,
                                   banner_timeout=self.connect_timeout_s,
                                   auth_timeout=self.connect_timeout_s)
            sock = self._jump.get_transport().open_channel(
                "direct-tcpip", (self.host, self.port), ("127.0.0.1", 0),
                timeout=self.connect_timeout_s)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(_PinningPolicy(
            self.store, self.vm_identity, self.vm_generation, self.log))
        try:
            client.connect(self.host, self.port, self.user, pkey=pkey, sock=sock,
                           allow_agent=False, look_for_keys=False,
                           timeout=self.connect_timeout_s, banner_timeout=self.connect_timeout_s,
                           auth_timeout=self.connect_timeout_s)
        except BaseException:
            client.close()
            raise
        # Keepalives let a dead peer (VM reset) surface as a closed transport.
        client.get_transport().set_keepalive(15)
        self._client = client
        self._ever_connected = True

    def connect(self, wait_s: float = 300.0) -> "RemoteSession":
        """Connect, retrying until SSH answers and accepts the key or ``wait_s`` seconds pass
        (a booting VM refuses connections, then may reject the key until cloud-init has
        installed it). Raises :class:`HostKeyMismatchError` at once, and
        :class:`DeployError` naming the last error after ``wait_s``."""
        if self.connected():
            return self
        deadline = time.monotonic() + wait_s
        attempt, last = 0, ""
        while True:
            attempt += 1
            try:
                self._connect_once()
                if attempt > 1:
                    self.log(f"SSH {self.user}@{self.host}:{self.port} up after {attempt} attempts")
                return self
            except DeployError:
                raise
            except paramiko.AuthenticationException as exc:
                last = f"authentication failed: {exc}"
            except (OSError, EOFError, paramiko.SSHException, socket.timeout) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() >= deadline:
                raise DeployError(
                    what=f"cannot reach SSH on {self.user}@{self.host}:{self.port} "
                         f"after {wait_s:.0f} s",
                    cause=last,
                    remedy="check that the VM is running and its IP/port are right, that the "
                           "catalog's public key matches private_key_file, and cloud-init's "
                           "progress on the VM console")
            time.sleep(min(3.0, max(0.1, deadline - time.monotonic())))

    def reconnect(self, wait_s: float | None = None) -> "RemoteSession":
        """Drop the current connection (if any) and connect again (waiting up to ``wait_s``
        seconds, default ``reconnect_wait_s``)."""
        self._close_client()
        return self.connect(wait_s=self.reconnect_wait_s if wait_s is None else wait_s)

    def _close_client(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        self._client = None

    def close(self) -> None:
        """Close the connection (and the jump host's)."""
        self._close_client()
        if self._jump is not None:
            with contextlib.suppress(Exception):
                self._jump.close()
            self._jump = None

    @property
    def transport(self) -> paramiko.Transport:
        """The live paramiko transport (connecting first if needed); shared with testinfra."""
        if not self.connected():
            self.connect(wait_s=self.reconnect_wait_s if self._ever_connected else 0)
        return self._client.get_transport()

    # -- commands ---------------------------------------------------------------------------------

    def wrap(self, cmd: str, *, sudo: bool = False, timeout_s: float = 600,
             env: dict[str, str] | None = None) -> str:
        """The exact command line sent for ``cmd`` (see module docstring)."""
        parts = [f"timeout -k 10 {max(1, int(timeout_s))}"]
        if sudo and self.user != "root":
            parts.append("sudo -n --")
        if env:
            parts.append("env " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in env.items()))
        parts.append("bash -c " + shlex.quote(cmd))
        return " ".join(parts)

    def run(self, cmd: str, *, sudo: bool = False, timeout_s: float = 600, check: bool = True,
            stream: bool = False, env: dict[str, str] | None = None,
            input: str | bytes | None = None, idempotent: bool = True) -> CommandResult:
        """Run ``cmd`` with bash on the guest and wait for it.

        Args:
            cmd: a bash command line (quote arguments with :func:`shlex.quote`).
            sudo: run as root through ``sudo -n``.
            timeout_s: seconds before the command is killed (on the guest, by ``timeout``).
            check: raise :class:`RemoteCommandError` if the exit status is not 0.
            stream: send every output line, timestamped, to ``log`` while it runs.
            env: extra environment variables (visible in the guest's process list).
            input: bytes/text written to the command's stdin (never logged).
            idempotent: safe to run again; allows one reconnect-and-re-run if the connection
                drops.

        Returns :class:`CommandResult`. Raises :class:`RemoteCommandError` (non-zero with
        ``check``, or time-out), :class:`SudoPasswordRequired`, :class:`ConnectionLostError`
        (dropped during a non-idempotent command, or again after the reconnect).
        """
        wrapped = self.wrap(cmd, sudo=sudo, timeout_s=timeout_s, env=env)
        data = input.encode() if isinstance(input, str) else input
        try:
            result = self._run_once(cmd, wrapped, timeout_s, stream, data)
        except _Dropped as dropped:
            if not idempotent and dropped.started:
                raise ConnectionLostError(
                    what=f"SSH connection to {self.host} lost while running a step that is not "
                         "safe to repeat automatically",
                    cause=str(dropped), command=redact(cmd),
                    remedy="re-run the deploy: it checks the state first and resumes") from None
            self.log(f"connection lost ({dropped}); reconnecting and re-running: {cmd[:120]}")
            self.reconnect()
            try:
                result = self._run_once(cmd, wrapped, timeout_s, stream, data)
            except _Dropped as again:
                raise ConnectionLostError(
                    what=f"SSH connection to {self.host} lost twice", cause=str(again),
                    command=redact(cmd),
                    remedy="check the VM's network and load, then re-run the deploy") from None
        self.commands_run += 1
        if sudo and self.user != "root" and result.exit_code == 1 and any(
                m in result.stderr for m in _SUDO_PROMPT_MARKERS):
            raise SudoPasswordRequired(
                what=f"sudo on {self.host} needs a password for {self.user}",
                cause=result.stderr.strip()[-500:], command=redact(cmd), exit_code=1,
                remedy=f"give {self.user} passwordless sudo (cloud-init's default user has "
                       f"`{self.user} ALL=(ALL) NOPASSWD:ALL`), e.g. a file in /etc/sudoers.d/")
        if result.exit_code in _TIMEOUT_EXITS and result.duration_s >= timeout_s - 1:
            raise RemoteCommandError(self.host, result, timed_out=True,
                                     what=f"remote command on {self.host} timed out after "
                                          f"{timeout_s:.0f} s",
                                     remedy="check what the command waits for on the VM; "
                                            "raise the step's timeout if it is just slow")
        if check and result.exit_code != 0:
            raise RemoteCommandError(self.host, result)
        return result

    def _run_once(self, cmd: str, wrapped: str, timeout_s: float, stream: bool,
                  data: bytes | None) -> CommandResult:
        try:
            transport = self.transport
        except DeployError as exc:
            if not self._ever_connected or isinstance(exc, HostKeyMismatchError):
                raise
            raise _Dropped(f"reconnect failed: {exc.what}", started=False) from None
        if stream:
            self.log(f"{_stamp()} {self.host} $ {cmd}")
        start = time.monotonic()
        try:
            chan = transport.open_session(timeout=self.connect_timeout_s)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _Dropped(f"cannot open a channel: {exc}", started=False) from None
        out, err = _LineSink(stream, self, ""), _LineSink(stream, self, "stderr: ")
        try:
            chan.exec_command(wrapped)
            if data:
                chan.sendall(data)
            chan.shutdown_write()
            hard_deadline = start + timeout_s + 30  # the guest's `timeout -k 10` fires first
            while True:
                progressed = False
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                    progressed = True
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                    progressed = True
                if chan.exit_status_ready() and not chan.recv_ready() \
                        and not chan.recv_stderr_ready():
                    break
                if time.monotonic() > hard_deadline:
                    raise _Dropped(f"no exit status {timeout_s + 30:.0f} s after start")
                if not progressed:
                    select.select([chan], [], [], 0.2)
            # exit-status may arrive before the last data; drain until EOF.
            chan.settimeout(5)
            with contextlib.suppress(socket.timeout):
                while (chunk := chan.recv(65536)):
                    out.feed(chunk)
            with contextlib.suppress(socket.timeout):
                while (chunk := chan.recv_stderr(65536)):
                    err.feed(chunk)
            code = chan.recv_exit_status()
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise _Dropped(f"{type(exc).__name__}: {exc}") from None
        finally:
            with contextlib.suppress(Exception):
                chan.close()
        if code == -1 and not (transport.is_active()):
            raise _Dropped("transport closed before the command ended")
        result = CommandResult(cmd, code, out.text(), err.text(), time.monotonic() - start)
        if stream:
            self.log(f"{_stamp()} {self.host} exit {code} after {result.duration_s:.1f} s")
        return result

    # -- files --------------------------------------------------------------------------------------

    def read_file(self, path: str, sudo: bool = False) -> str | None:
        """Text of remote file ``path`` (UTF-8, invalid bytes replaced) or None if it does not
        exist. Raises :class:`RemoteCommandError` on other errors (e.g. permission denied)."""
        q = shlex.quote(path)
        r = self.run(f"if [ -e {q} ]; then cat -- {q}; else exit 44; fi", sudo=sudo,
                     check=False, timeout_s=60)
        if r.exit_code == 44:
            return None
        if r.exit_code != 0:
            raise RemoteCommandError(self.host, r, what=f"cannot read {path} on {self.host}")
        return r.stdout

    def put_file(self, path: str, content: str | bytes, *, mode: int = 0o644,
                 owner: str = "root:root", sudo: bool = True) -> bool:
        """Make remote ``path`` hold exactly ``content`` with ``mode`` and ``owner``.

        Compares first (sha256, mode, owner) and writes only on a difference; the write goes
        to a temp file in the same directory (created 0700-readable only by the writer),
        gets owner and mode, then is renamed over ``path`` (atomic). The parent directory is
        created if missing. Content travels on stdin and is never logged.

        Returns True when anything changed (content, mode or owner), False when it already
        matched. Raises :class:`RemoteCommandError` on failure.
        """
        data = content.encode() if isinstance(content, str) else content
        want = hashlib.sha256(data).hexdigest()
        q = shlex.quote(path)
        probe = self.run(f"[ -f {q} ] && {{ sha256sum -- {q} | cut -d' ' -f1; "
                         f"stat -c '%a %U:%G' -- {q}; }} || true", sudo=sudo, timeout_s=60)
        lines = probe.stdout.split()
        if len(lines) == 3 and lines[0] == want and int(lines[1], 8) == mode \
                and lines[2] == owner:
            return False
        d = shlex.quote(os.path.dirname(path) or ".")
        script = (f"set -e; umask 077; mkdir -p -- {d}; "
                  f"tmp=$(mktemp {d}/.deployer.XXXXXXXX); trap 'rm -f \"$tmp\"' EXIT; "
                  f"cat > \"$tmp\"; chown {shlex.quote(owner)} \"$tmp\"; "
                  f"chmod {mode:o} \"$tmp\"; mv -f \"$tmp\" {q}; trap - EXIT")
        self.run(script, sudo=sudo, input=data, timeout_s=120)
        return True

    # -- reboots ------------------------------------------------------------------------------------

    def boot_id(self) -> str:
        """The guest kernel's boot id (``/proc/sys/kernel/random/boot_id``; changes on every
        boot, see proc(5))."""
        return self.run(self.BOOT_ID_COMMAND, timeout_s=30).stdout.strip()

    def wait_for_reboot(self, boot_id_before: str, timeout_s: float = 600) -> str:
        """Wait until the guest answers SSH with a boot id other than ``boot_id_before``;
        returns the new boot id. Raises :class:`DeployError` after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        self.log(f"{_stamp()} waiting for {self.host} to reboot (up to {timeout_s:.0f} s)")
        while True:
            self._close_client()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                self.connect(wait_s=left)
                now = self.run(self.BOOT_ID_COMMAND, timeout_s=30,
                               idempotent=False).stdout.strip()
                if now and now != boot_id_before:
                    self.log(f"{_stamp()} {self.host} is back (boot id {now[:8]})")
                    return now
            except (HostKeyMismatchError, SudoPasswordRequired):
                raise
            except DeployError:
                pass
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        raise DeployError(
            what=f"{self.host} did not come back from the reboot within {timeout_s:.0f} s",
            cause=f"boot id still {boot_id_before} or SSH unreachable",
            remedy="look at the VM console (PVE) for a hung shutdown or a boot problem")


class _Dropped(Exception):
    """Internal: the connection died; ``started`` False = before the command was sent (so
    re-running it is always safe)."""

    def __init__(self, message: str, started: bool = True) -> None:
        super().__init__(message)
        self.started = started


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%H:%M:%S")


class _LineSink:
    """Collects one output stream; when streaming, logs each complete line (``\\n`` or
    ``\\r`` - apt/dpkg progress uses ``\\r``) with a timestamp."""

    def __init__(self, stream: bool, session: RemoteSession, prefix: str) -> None:
        self.stream, self.session, self.prefix = stream, session, prefix
        self.chunks: list[bytes] = []
        self.partial = b""

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        if not self.stream:
            return
        self.partial += data
        *lines, self.partial = self.partial.replace(b"\r", b"\n").split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.session.log(f"{_stamp()} {self.session.host} | {self.prefix}{line}")

    def text(self) -> str:
        if self.stream and self.partial.strip():
            self.session.log(f"{_stamp()} {self.session.host} | {self.prefix}"
                             f"{self.partial.decode('utf-8', 'replace').rstrip()}")
            self.partial = b""
        return b"".join(self.chunks).decode("utf-8", "replace")


__all__ = ["RemoteSession", "CommandResult", "RemoteCommandError", "SudoPasswordRequired",
           "HostKeyMismatchError", "ConnectionLostError", "KnownHostsStore", "fingerprint",
           "DEFAULT_STORE", "vm_generation"]
