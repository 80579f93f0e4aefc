"""provisioners.remote against a REAL OpenSSH server started by the test on 127.0.0.1.

The server runs ``/usr/sbin/sshd -D -f <tmp config> -p <free port>`` as the current user with
a temporary host key and AuthorizedKeysFile. Tests skip (with the reason) only when sshd is not
installed or cannot start. Host packages: openssh-server.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paramiko
import pytest

from provisioners.errors import DeployError
from provisioners.remote import (
    ConnectionLostError, HostKeyMismatchError, RemoteCommandError, RemoteSession,
    SudoPasswordRequired, fingerprint,
)

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """A throw-away sshd: ``start()``/``stop()``/``new_host_key()``; ``port``, ``key_file``
    (the client's private key), ``user``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.user = os.environ.get("USER") or subprocess.run(
            ["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        self.key_file = tmp / "client_ed25519"
        self.proc: subprocess.Popen | None = None
        self.extra_config = ""
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key_file)],
                       check=True)
        (tmp / "authorized_keys").write_text((tmp / "client_ed25519.pub").read_text())
        os.chmod(tmp / "authorized_keys", 0o600)
        self.new_host_key()

    def new_host_key(self) -> None:
        hk = self.tmp / "host_ed25519"
        for p in (hk, hk.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hk)], check=True)

    def host_fingerprint(self) -> str:
        return fingerprint(paramiko.PKey.from_path(self.tmp / "host_ed25519"))

    def start(self) -> None:
        cfg = self.tmp / "sshd_config"
        cfg.write_text(
            f"ListenAddress 127.0.0.1\nHostKey {self.tmp / 'host_ed25519'}\n"
            f"AuthorizedKeysFile {self.tmp / 'authorized_keys'}\n"
            f"PidFile {self.tmp / 'sshd.pid'}\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
            "MaxSessions 50\nMaxStartups 50\nLogLevel ERROR\n" + self.extra_config)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(cfg), "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(self.tmp / "sshd.log", "ab"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("sshd exited: " + (self.tmp / "sshd.log").read_text())
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def session(self, store: Path, **kw) -> RemoteSession:
        kw.setdefault("vm_identity", "test/1")
        kw.setdefault("connect_timeout_s", 5)
        kw.setdefault("reconnect_wait_s", 15)
        return RemoteSession("127.0.0.1", self.port, self.user, self.key_file,
                             known_hosts_store=store, **kw)


@pytest.fixture
def sshd(tmp_path):
    if not os.path.exists(SSHD) or not shutil.which("ssh-keygen"):
        pytest.skip("OpenSSH server not installed (apt-get install openssh-server)")
    if not shutil.which("pgrep") or not shutil.which("pkill"):
        pytest.skip("procps (pgrep/pkill) not installed")
    server = Sshd(tmp_path)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.skip(f"sshd cannot start here: {exc}")
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path):
    return tmp_path / "state" / "known_hosts.json"


def test_run_exit_codes_and_output(sshd, store):
    with sshd.session(store) as s:
        s.connect(wait_s=5)
        r = s.run("echo out; echo err >&2; exit 0")
        assert (r.exit_code, r.stdout, r.stderr) == (0, "out\n", "err\n")
        r = s.run("echo nope; exit 3", check=False)
        assert r.exit_code == 3 and not r.ok
        with pytest.raises(RemoteCommandError) as ei:
            s.run("for i in $(seq 1 100); do echo line$i; done; exit 7")
        err = ei.value
        assert err.exit_code == 7 and "exit 7" in err.command
        assert err.cause.splitlines()[-1] == "line100" and "line60" not in err.cause
        assert len(err.cause.splitlines()) == 40
        assert s.run("cat", input="from stdin").stdout == "from stdin"
        assert s.run("echo $FOO", env={"FOO": "a b'c"}).stdout == "a b'c\n"
        # one connection reused for every command
        t = s.transport
        s.run("true")
        assert s.transport is t


def test_timeout_kills_the_remote_command(sshd, store, tmp_path):
    marker = tmp_path / "still-running"
    with sshd.session(store) as s:
        s.connect(wait_s=5)
        start = time.monotonic()
        with pytest.raises(RemoteCommandError) as ei:
            s.run(f"sleep 30; touch {marker}", timeout_s=2)
        assert ei.value.timed_out and "timed out after 2 s" in str(ei.value)
        assert time.monotonic() - start < 15
        time.sleep(0.5)
        assert not subprocess.run(["pgrep", "-f", f"touch {marker}"],
                                  capture_output=True).stdout


def test_streaming_logs_timestamped_redacted_lines(sshd, store):
    from provisioners.redact import _clear_for_tests, register_secret
    lines: list[str] = []
    register_secret("s3cr3t-token")
    try:
        with sshd.session(store, log=lines.append) as s:
            s.connect(wait_s=5)
            s.run("echo first; sleep 0.3; printf 'prog 50%%\\rprog 100%%\\n';"
                  " echo 'key=s3cr3t-token' >&2", stream=True)
    finally:
        _clear_for_tests()
    text = "\n".join(lines)
    assert "s3cr3t-token" not in text and "key=***" in text
    body = [ln for ln in lines if " | " in ln]
    assert [ln.split(" | ", 1)[1] for ln in body] == [
        "first", "prog 50%", "prog 100%", "stderr: key=***"]
    assert all(len(ln.split()[0]) == 8 and ln.split()[0].count(":") == 2 for ln in body)


def test_put_and_read_file_atomic_and_idempotent(sshd, store, tmp_path):
    target = tmp_path / "etc" / "app" / "secret.env"
    owner = f"{sshd.user}:{subprocess.run(['id', '-gn'], capture_output=True, text=True).stdout.strip()}"
    lines: list[str] = []
    with sshd.session(store, log=lines.append) as s:
        s.connect(wait_s=5)
        assert s.read_file(str(target)) is None
        assert s.put_file(str(target), "TOKEN=hush-hush\n", mode=0o600, owner=owner, sudo=False)
        assert target.read_text() == "TOKEN=hush-hush\n"
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        assert not s.put_file(str(target), "TOKEN=hush-hush\n", mode=0o600, owner=owner,
                              sudo=False)
        assert s.put_file(str(target), "TOKEN=hush-hush\n", mode=0o640, owner=owner, sudo=False)
        assert s.put_file(str(target), b"TOKEN=other\n", mode=0o640, owner=owner, sudo=False)
        assert s.read_file(str(target)) == "TOKEN=other\n"
    assert [p.name for p in target.parent.iterdir()] == ["secret.env"]  # no temp left over
    assert "hush-hush" not in "\n".join(lines)


def test_pinning_first_use_changed_key_and_recreated_vm(sshd, store):
    lines: list[str] = []
    with sshd.session(store, vm_generation="gen-A", log=lines.append) as s:
        s.connect(wait_s=5)
    pinned = json.loads(store.read_text())["hosts"]["test/1"]
    assert pinned["fingerprint"] == sshd.host_fingerprint()
    assert pinned["generation"] == "gen-A"
    assert any("first use" in ln for ln in lines)

    old_fp = sshd.host_fingerprint()
    sshd.stop()
    sshd.new_host_key()
    sshd.start()
    new_fp = sshd.host_fingerprint()
    assert new_fp != old_fp
    with sshd.session(store, vm_generation="gen-A") as s:
        with pytest.raises(HostKeyMismatchError) as ei:
            s.connect(wait_s=5)
    msg = str(ei.value)
    assert old_fp in msg and new_fp in msg and "test/1" in msg
    assert json.loads(store.read_text())["hosts"]["test/1"]["fingerprint"] == old_fp

    lines.clear()
    with sshd.session(store, vm_generation="gen-B", log=lines.append) as s:
        s.connect(wait_s=5)
        assert s.run("echo hi").stdout == "hi\n"
    assert json.loads(store.read_text())["hosts"]["test/1"]["fingerprint"] == new_fp
    assert any("re-created" in ln and old_fp in ln and new_fp in ln for ln in lines)


def _kill_session_sshd(sshd: Sshd) -> None:
    """Kill the per-connection sshd children (not the listener) = a dropped connection."""
    out = subprocess.run(["pgrep", "-P", str(sshd.proc.pid)], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert pids, "no per-connection sshd found"
    for pid in pids:
        os.kill(pid, 9)


def test_reconnect_after_dropped_connection(sshd, store):
    lines: list[str] = []
    with sshd.session(store, log=lines.append) as s:
        s.connect(wait_s=5)
        first = s.transport
        _kill_session_sshd(sshd)
        time.sleep(0.3)
        assert s.run("echo again").stdout == "again\n"
        assert s.transport is not first
        # a drop DURING a command: idempotent -> re-run once
        _kill_later = subprocess.Popen(
            ["bash", "-c", f"sleep 1; pkill -9 -P {sshd.proc.pid}"])
        r = s.run("sleep 2; echo done", timeout_s=30)
        _kill_later.wait()
        assert r.stdout == "done\n"
        assert any("reconnecting and re-running" in ln for ln in lines)
        # not idempotent -> not re-run, clear error
        _kill_later = subprocess.Popen(
            ["bash", "-c", f"sleep 1; pkill -9 -P {sshd.proc.pid}"])
        with pytest.raises(ConnectionLostError) as ei:
            s.run("sleep 2; echo done", timeout_s=30, idempotent=False)
        _kill_later.wait()
        assert "not safe to repeat" in str(ei.value)


def test_connect_waits_for_ssh_then_fails_clearly(sshd, store):
    sshd.stop()
    with sshd.session(store) as s:
        start = time.monotonic()
        with pytest.raises(DeployError) as ei:
            s.connect(wait_s=2)
        assert 1.5 < time.monotonic() - start < 10
        assert "cannot reach SSH" in str(ei.value)
    # sshd comes up while we wait
    with sshd.session(store) as s:
        starter = subprocess.Popen(["sleep", "1.5"])
        starter.wait()
        sshd.start()
        s.connect(wait_s=10)
        assert s.run("echo up").stdout == "up\n"


def test_boot_id_and_wait_for_reboot_times_out_without_reboot(sshd, store):
    with sshd.session(store) as s:
        s.connect(wait_s=5)
        bid = s.boot_id()
        assert len(bid) == 36
        with pytest.raises(DeployError) as ei:
            s.wait_for_reboot(bid, timeout_s=2)
        assert "did not come back" in str(ei.value)


def test_sudo_password_required_is_a_clear_error(sshd, store, tmp_path):
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "sudo").write_text("#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n")
    (shim / "sudo").chmod(0o755)
    sshd.stop()
    sshd.extra_config = f"SetEnv PATH={shim}:/usr/bin:/bin\n"
    sshd.start()
    with sshd.session(store) as s:
        s.connect(wait_s=5)
        assert s.run("command -v sudo").stdout.strip() == str(shim / "sudo")
        # As root the session never uses sudo; after login, act as a non-root user would.
        s.user = "not-root"
        assert "sudo -n -- bash -c 'id -u'" in s.wrap("id -u", sudo=True)
        with pytest.raises(SudoPasswordRequired) as ei:
            s.run("id -u", sudo=True)
    assert "passwordless sudo" in str(ei.value)


def test_missing_key_file_is_a_deploy_error(sshd, store, tmp_path):
    s = RemoteSession("127.0.0.1", sshd.port, sshd.user, tmp_path / "nope",
                      known_hosts_store=store)
    with pytest.raises(DeployError) as ei:
        s.connect(wait_s=1)
    assert "not found" in str(ei.value)


def test_vm_generation_from_pve_config():
    from provisioners.remote import vm_generation
    # config shapes as PVE (and fakepve) write them on create
    assert vm_generation({"meta": "creation-qemu=9.0.2,ctime=1732890000",
                          "vmgenid": "3f1a0b5e-1111-4c1e-9d2a-9a3b6b7c8d9e"}) == "ctime=1732890000"
    assert vm_generation({"vmgenid": "3f1a0b5e-1111-4c1e-9d2a-9a3b6b7c8d9e"}) == \
        "vmgenid=3f1a0b5e-1111-4c1e-9d2a-9a3b6b7c8d9e"
    assert vm_generation({"vmgenid": "1"}) is None and vm_generation(None) is None


def test_wait_for_reboot_returns_when_the_host_is_back_with_a_new_boot_id(sshd, store, tmp_path):
    bid = tmp_path / "boot_id"
    bid.write_text("boot-1\n")
    lines: list[str] = []
    with sshd.session(store, log=lines.append) as s:
        s.BOOT_ID_COMMAND = f"cat {bid}"  # the host's real boot id cannot change in a test
        s.connect(wait_s=5)
        before = s.boot_id()
        # "reboot": SSH goes away, the boot id changes, SSH comes back 1.5 s later
        sshd.stop()
        bid.write_text("boot-2\n")
        restart = threading.Timer(1.5, sshd.start)
        restart.start()
        try:
            assert s.wait_for_reboot(before, timeout_s=30) == "boot-2"
        finally:
            restart.join()
        assert s.run("echo after").stdout == "after\n"
    assert any("is back" in ln for ln in lines)


def test_jump_host_tunnels_and_pins_both(sshd, store):
    with sshd.session(store, jump_host=f"{sshd.user}@127.0.0.1:{sshd.port}") as s:
        s.connect(wait_s=5)
        assert s.run("echo via-jump").stdout == "via-jump\n"
    hosts = json.loads(store.read_text())["hosts"]
    assert set(hosts) == {"test/1", f"jump/127.0.0.1:{sshd.port}"}
    assert hosts["test/1"]["fingerprint"] == hosts[f"jump/127.0.0.1:{sshd.port}"]["fingerprint"]
