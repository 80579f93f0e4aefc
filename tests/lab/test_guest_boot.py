"""The lab guest, driven through fakepve's PVE API alone (proxmoxer + the lab CA).

Boots (TCG, ≈ 35-60 s each on the lab machine): create+start, a reboot from inside the guest, a
reboot through the API, then destroy + re-create + start (fresh SSH host keys) - four boots.
Uses a running lab (``python -m lab up``) when there is one, otherwise starts one and stops it.
Times (boot-to-SSH, cloud-init done) are printed (``-s``) and written to ``.lab/boot-times.json``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import paramiko
import pytest
from proxmoxer import ProxmoxAPI

from lab import state

pytestmark = [pytest.mark.lab, pytest.mark.slow, pytest.mark.timeout(1200)]

VMID = 140
NODE = "pve1"
USER = "llmadmin"
TIMES: dict[str, float] = {}


def _lab(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lab", *args], cwd=state.REPO_ROOT, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(state.REPO_ROOT)})


@pytest.fixture(scope="module")
def lab():
    """The lab's ready.json (starting the lab if needed; stopped again if this test started it)."""
    paths = state.paths()
    # other lab test runs (other terminals, CI shards) wait here instead of sharing VM 140
    session = state.LabLock(paths.guest_session_lock).acquire(
        wait=1800, what="another lab test holds the guest VM")
    started = False
    if _lab("status").returncode != 0:
        proc = _lab("up")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        started = True
    info = json.loads(paths.ready.read_text())
    info["_started_here"] = started
    yield info
    if started:
        proc = _lab("down")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert not [p for p in _qemu_pids()], "lab down left a qemu behind"
    paths.root.joinpath("boot-times.json").write_text(json.dumps(TIMES, indent=1) + "\n")
    session.release()


@pytest.fixture(scope="module")
def pve(lab):
    password = os.environ.get("LAB_PVE_PASSWORD") or "lab-secret"
    return ProxmoxAPI("127.0.0.1", port=lab["ports"]["pve"], user="root@pam", password=password,
                      verify_ssl=lab["pve_ca"], timeout=60)


def _wait(pve, upid: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = pve.nodes(NODE).tasks(upid).status.get()
        if st["status"] == "stopped":
            log = pve.nodes(NODE).tasks(upid).log.get(limit=0)
            assert st["exitstatus"] == "OK", (st, log)
            return st
        time.sleep(0.5)
    raise AssertionError(f"task {upid} still running after {timeout} s")


def _qemu_pids() -> list[int]:
    """pids of this lab's qemu for VM 140 (a lab with another LAB_STATE_DIR is not ours)."""
    mine = str(state.paths().vm_dir(VMID)).encode()
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"qemu-system-x86_64") and f"lab-vm{VMID}".encode() in cmd and mine in cmd:
                out.append(int(p.name))
    return out


def _ssh(lab, timeout: float = 400) -> tuple[paramiko.SSHClient, float]:
    """Connect as the ciuser with the lab key; returns (client, seconds waited)."""
    key = paramiko.Ed25519Key.from_private_key_file(lab["ssh_key"])
    t0 = time.monotonic()
    last = None
    while time.monotonic() - t0 < timeout:
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect("127.0.0.1", port=lab["ports"]["ssh"], username=USER, pkey=key,
                           timeout=5, banner_timeout=10, auth_timeout=10, allow_agent=False,
                           look_for_keys=False)
            return client, time.monotonic() - t0
        except (paramiko.SSHException, OSError, EOFError) as exc:
            last = exc
            client.close()
            time.sleep(2)
    raise AssertionError(f"no SSH to the lab guest after {timeout} s: {last!r}")


def _run(client: paramiko.SSHClient, cmd: str, timeout: float = 300) -> tuple[int, str, str]:
    _in, out, err = client.exec_command(cmd, timeout=timeout)
    code = out.channel.recv_exit_status()
    return code, out.read().decode(), err.read().decode()


def _host_key(client) -> str:
    return client.get_transport().get_remote_server_key().get_base64()


def _boot_id(client) -> str:
    return _run(client, "cat /proc/sys/kernel/random/boot_id")[1].strip()


def _create_and_start(pve, lab) -> float:
    pub = Path(lab["ssh_key"] + ".pub").read_text()
    def exists():
        return any(int(v["vmid"]) == VMID for v in pve.nodes(NODE).qemu.get())

    if exists() and not lab["_started_here"]:
        # a lab someone else started: their VM 140 is theirs - wait for it to go, never delete it
        deadline = time.monotonic() + 1800
        while exists() and time.monotonic() < deadline:
            time.sleep(10)
        if exists():
            pytest.fail(f"VM {VMID} of another lab user still exists after 30 min")
    if exists():
        if pve.nodes(NODE).qemu(VMID).status.current.get()["status"] == "running":
            _wait(pve, pve.nodes(NODE).qemu(VMID).status.stop.post())
        _wait(pve, pve.nodes(NODE).qemu(VMID).delete(purge=1))
    upid = pve.nodes(NODE).qemu.post(
        vmid=VMID, name="vm-llm-aimachine", memory=1024, cores=2, machine="q35",
        scsihw="virtio-scsi-single",
        scsi0=f"local-lvm:0,import-from={lab['image']['volid']}", ide2="local-lvm:cloudinit",
        ciuser=USER, sshkeys=quote(pub, safe=""), ipconfig0="ip=10.0.2.15/24,gw=10.0.2.2",
        nameserver="10.0.2.3", ciupgrade=0, net0="virtio,bridge=vmbr0",
        tags="gpu-llm-deployer", description="managed-by: gpu-llm-deployer (lab test)")
    _wait(pve, upid)
    _wait(pve, pve.nodes(NODE).qemu(VMID).resize.put(disk="scsi0", size="8G"))
    t0 = time.monotonic()
    _wait(pve, pve.nodes(NODE).qemu(VMID).status.start.post(timeout=600))
    assert pve.nodes(NODE).qemu(VMID).status.current.get()["status"] == "running"
    assert len(_qemu_pids()) == 1
    return t0


@pytest.fixture(scope="module")
def booted(pve, lab):
    t0 = _create_and_start(pve, lab)
    client, _ = _ssh(lab)
    TIMES["boot_to_ssh_s"] = round(time.monotonic() - t0, 1)
    code, out, err = _run(client, "cloud-init status --wait")
    TIMES["cloud_init_done_s"] = round(time.monotonic() - t0, 1)
    print(f"\nlab guest: boot-to-SSH {TIMES['boot_to_ssh_s']} s, "
          f"cloud-init done {TIMES['cloud_init_done_s']} s")
    assert code == 0 and "status: done" in out, out + err
    yield client
    client.close()


def test_cloud_init_applied_pve_settings(booted, lab):
    code, out, err = _run(booted, "sudo -n true && hostname && id -un && ip -4 -o addr show eth0")
    assert code == 0, err
    assert "unable to resolve host" not in err  # manage_etc_hosts: true
    assert err == ""
    lines = out.split("\n")
    assert lines[0] == "vm-llm-aimachine" and lines[1] == USER
    assert "10.0.2.15/24" in lines[2]
    code, out, _ = _run(booted, "df -BG --output=size / | tail -1")
    assert int(out.strip().rstrip("G")) >= 7  # resized 8G overlay, grown by cloud-init resizefs


def test_guest_reads_gpu_profile_via_fw_cfg(booted, lab):
    code, out, err = _run(booted, "sudo cat /sys/firmware/qemu_fw_cfg/by_name/opt/lab/gpu/raw")
    assert code == 0, err
    assert json.loads(out) == json.loads(state.paths().gpu_profile_json.read_text())


def test_port_forwards_reach_the_guest(booted, lab):
    import socket
    # a listener on guest 8000 must answer on 127.0.0.1:BASE+800
    _run(booted, "nohup python3 -m http.server 8000 >/dev/null 2>&1 & sleep 2")
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{lab['ports']['vllm']}/", timeout=20).read()
    assert b"Directory listing" in body
    _run(booted, "pkill -f 'http.server 8000'")
    socket.create_connection(("127.0.0.1", lab["ports"]["ssh"]), timeout=5).close()


def test_guest_network_is_hermetic(booted, lab):
    """issue #3: the guest reaches the lab artefact server (guestfwd, several connections) and
    nothing else - not the host's other loopback services, not DNS, not the outside."""
    [pid] = _qemu_pids()
    netdev = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    netdev = netdev[netdev.index(b"-netdev") + 1].decode()
    # checked first so that a regression can never send this test's probes to the internet
    assert "restrict=on" in netdev.split(","), netdev
    for name in ("ssh", "vllm", "ollama"):  # qemu's hostfwd listeners: loopback only
        port = f"{lab['ports'][name]:04X}"
        listen = [ln.split()[1] for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]
                  if ln.split()[1].endswith(":" + port) and ln.split()[3] == "0A"]
        tcp6 = Path("/proc/net/tcp6")
        v6 = [ln for ln in (tcp6.read_text() if tcp6.exists() else "").splitlines()[1:]
              if ln.split()[1].endswith(":" + port) and ln.split()[3] == "0A"]
        assert listen == [f"0100007F:{port}"] and not v6, (name, listen, v6)
    art = f"http://10.0.2.2:{lab['ports']['artefacts']}/"
    for _ in range(3):  # a tcp:/chardev guestfwd would serve only the first connection
        code, out, err = _run(booted, f"curl -sS -m 20 -o /dev/null -w '%{{http_code}}' {art}")
        assert (code, out, err) == (0, "200", "")
    # host loopback services other than the forward: reachable as 10.0.2.2 without restrict=on
    code, _out, err = _run(booted, f"curl -sSk -m 5 https://10.0.2.2:{lab['ports']['pve']}/")
    assert code in (7, 28), err  # refused/timed out by slirp (0 without restrict=on)
    code, _out, err = _run(booted, "getent hosts deb.debian.org")
    assert code == 2  # no DNS (slirp drops it under restrict=on)
    code, _out, err = _run(booted, "curl -sS -m 5 http://deb.debian.org/")
    assert code == 6, err  # could not resolve host
    code, _out, err = _run(booted, "curl -sS -m 5 http://1.1.1.1/")
    assert code in (7, 28), err


def test_apt_update_talks_only_to_the_lab_repo(booted, lab):
    code, out, err = _run(booted, "grep -rhsE '^[^#]*(deb|URIs:)' /etc/apt/sources.list "
                                  "/etc/apt/sources.list.d/")
    assert (code, out) == (1, ""), out  # the image has no apt source of its own
    base = f"http://10.0.2.2:{lab['ports']['artefacts']}"
    code, out, err = _run(
        booted, f"curl -fsS -m 20 {base}/apt/lab-archive-key.asc | sudo gpg --dearmor "
        "--yes -o /usr/share/keyrings/lab.gpg && echo 'deb [signed-by=/usr/share/keyrings/lab.gpg]"
        f" {base}/apt stable main' | sudo tee /etc/apt/sources.list.d/lab.list")
    assert code == 0, err
    t0 = time.monotonic()
    code, out, err = _run(booted, "sudo DEBIAN_FRONTEND=noninteractive apt-get update", timeout=300)
    TIMES["apt_update_lab_repo_s"] = round(time.monotonic() - t0, 1)
    assert code == 0, out + err
    assert err == "", err  # no W:/E: (unreachable sources, missing Release...)
    fetched = [ln for ln in out.splitlines() if ln.startswith(("Get:", "Hit:", "Ign:", "Err:"))]
    assert fetched and all(f" {base}/apt " in ln for ln in fetched), out
    code, out, err = _run(booted, "apt-cache policy ubuntu-drivers-common")
    assert code == 0 and f"{base}/apt stable/main" in out, out + err


def test_reboot_from_inside_the_guest_resets_in_place(booted, lab, pve):
    pids = _qemu_pids()
    before = _boot_id(booted)
    booted.exec_command("sudo systemctl reboot")
    time.sleep(5)
    client, waited = _ssh(lab)
    try:
        TIMES["guest_reboot_to_ssh_s"] = round(waited + 5, 1)
        assert _boot_id(client) != before
        assert _qemu_pids() == pids  # same qemu process: reset in place
        assert pve.nodes(NODE).qemu(VMID).status.current.get()["status"] == "running"
    finally:
        client.close()


def test_reboot_through_the_api_restarts_qemu(lab, pve, booted):
    pids = _qemu_pids()
    client, _ = _ssh(lab)
    before = _boot_id(client)
    client.close()
    t0 = time.monotonic()
    _wait(pve, pve.nodes(NODE).qemu(VMID).status.reboot.post(timeout=120), timeout=200)
    client, _ = _ssh(lab)
    try:
        TIMES["api_reboot_to_ssh_s"] = round(time.monotonic() - t0, 1)
        assert _boot_id(client) != before
        new = _qemu_pids()
        assert len(new) == 1 and new != pids
    finally:
        client.close()


def test_destroy_wipes_and_recreate_is_a_fresh_machine(lab, pve, booted):
    client, _ = _ssh(lab)
    old_key = _host_key(client)
    old_machine = _run(client, "cat /etc/machine-id")[1].strip()
    client.close()
    vm_dir = state.paths().vm_dir(VMID)
    assert (vm_dir / "disk.qcow2").exists()
    _wait(pve, pve.nodes(NODE).qemu(VMID).status.shutdown.post(timeout=120), timeout=200)
    assert _qemu_pids() == []
    _wait(pve, pve.nodes(NODE).qemu(VMID).delete(purge=1, **{"destroy-unreferenced-disks": 1}))
    assert not vm_dir.exists()
    assert VMID not in [int(v["vmid"]) for v in pve.nodes(NODE).qemu.get()]

    _create_and_start(pve, lab)
    client, _ = _ssh(lab)
    try:
        assert _host_key(client) != old_key
        assert _run(client, "cat /etc/machine-id")[1].strip() != old_machine
    finally:
        client.close()
    _wait(pve, pve.nodes(NODE).qemu(VMID).status.stop.post())
    assert _qemu_pids() == []
    _wait(pve, pve.nodes(NODE).qemu(VMID).delete(purge=1))
    assert not vm_dir.exists()
