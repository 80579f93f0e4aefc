"""lab.state (ports, lock), lab.image (recipe hash, guestfs copy), lab.guest (qemu command line),
lab.server (CA, server cert, SSH key) - no VM needed."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from lab import guest, image, server, state
from lab.image import BaseImage
from provisioners.errors import DeployError


def test_ports_follow_lab_port_base(monkeypatch):
    monkeypatch.delenv("LAB_PORT_BASE", raising=False)
    assert state.ports().as_dict() == {"pve": 17006, "ssh": 17022, "artefacts": 17080,
                                       "vllm": 17800, "ollama": 17434}
    monkeypatch.setenv("LAB_PORT_BASE", "20000")
    assert state.ports().ssh == 20022
    monkeypatch.setenv("LAB_PORT_BASE", "70000")
    with pytest.raises(DeployError, match="LAB_PORT_BASE"):
        state.ports()


def test_lab_lock_is_exclusive(tmp_path):
    first = state.LabLock(tmp_path / "lock").acquire()
    try:
        with pytest.raises(DeployError) as err:
            state.LabLock(tmp_path / "lock").acquire()
        assert f"pid {os.getpid()}" in str(err.value)
    finally:
        first.release()
    state.LabLock(tmp_path / "lock").acquire().release()  # free again


def test_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert image.image_cache_dir() == tmp_path / "gpu-llm-deployer" / "lab-image"


def test_recipe_hash_covers_guestfs_content_and_modes(tmp_path):
    fs = tmp_path / "guestfs"
    (fs / "usr/local/bin").mkdir(parents=True)
    tool = fs / "usr/local/bin/lspci"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    h1 = image.recipe_hash(fs)
    assert h1 == image.recipe_hash(fs)
    tool.chmod(0o644)
    h2 = image.recipe_hash(fs)
    tool.write_text("#!/bin/sh\necho ho\n")
    h3 = image.recipe_hash(fs)
    (fs / "usr/local/bin/__pycache__").mkdir()
    (fs / "usr/local/bin/__pycache__/x.pyc").write_bytes(b"junk")
    assert len({h1, h2, h3}) == 3
    assert image.recipe_hash(fs) == h3  # caches are not part of the recipe
    assert image.recipe_hash(tmp_path / "missing") != h3


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_guestfs_is_copied_verbatim(tmp_path):
    fs = tmp_path / "guestfs"
    (fs / "etc/lab").mkdir(parents=True)
    (fs / "etc/lab/x.json").write_text("{}")
    (fs / "etc/lab/tool").write_text("#!/bin/sh\n")
    (fs / "etc/lab/tool").chmod(0o750)
    os.symlink("tool", fs / "etc/lab/link")
    root = tmp_path / "rootfs"
    (root / "etc/lab").mkdir(parents=True)
    (root / "etc/lab/x.json").write_text("old")
    image._copy_guestfs(fs, root)
    assert (root / "etc/lab/x.json").read_text() == "{}"
    assert stat.S_IMODE((root / "etc/lab/tool").stat().st_mode) == 0o750
    assert os.readlink(root / "etc/lab/link") == "tool"
    assert (root / "etc/lab/tool").stat().st_uid == 0


def _guest(tmp_path) -> guest.Guest:
    img = BaseImage(dir=tmp_path, qcow2=tmp_path / "base.qcow2", kernel=tmp_path / "vmlinuz",
                    initrd=tmp_path / "initrd.img", sha256="0" * 64, recipe_hash="x")
    return guest.Guest(140, img, state.LabPaths(tmp_path / ".lab"), state.Ports(17000))


def test_qemu_command_line_follows_the_measured_recipe(tmp_path):
    g = _guest(tmp_path)
    cfg = {"net0": "virtio=BC:24:11:00:01:40,bridge=vmbr0", "scsi0": "local-lvm:vm-140-disk-0,size=8G"}
    cmd = g.command(guest.GuestSettings.from_pve(140, cfg))
    line = " ".join(cmd)
    assert cmd[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=multi,tb-size=256 -cpu max -machine q35,smm=off" in line
    assert "-m 1024 -smp 2" in line
    assert "root=/dev/vda" in line and "console=ttyS0" in line
    for host, port in ((17022, 22), (17800, 8000), (17434, 11434)):
        assert f"hostfwd=tcp:127.0.0.1:{host}-:{port}" in line
    assert "mac=bc:24:11:00:01:40" in line
    assert f"name=opt/lab/gpu,file={tmp_path / '.lab' / 'gpu-profile.json'}" in line
    assert "-no-reboot" not in cmd  # a reboot inside the guest must reboot
    assert "-daemonize" not in cmd  # qemu stays our child (dies with the lab)
    assert (tmp_path / ".lab" / "gpu-profile.json").exists()


def _netdev_opts(cmd: list[str]) -> list[str]:
    """The ``-netdev`` value split like qemu's option parser (",," is a literal comma)."""
    value = cmd[cmd.index("-netdev") + 1]
    return [o.replace("\0", ",") for o in value.replace(",,", "\0").split(",")]


def test_guest_network_is_hermetic(tmp_path):
    """issue #3: restrict=on, forwards bound to loopback only, one guestfwd to the artefacts."""
    g = _guest(tmp_path)
    cmd = g.command(guest.GuestSettings.from_pve(140, {}))
    assert cmd.count("-netdev") == 1 and not any(a.startswith("-nic") for a in cmd)
    opts = _netdev_opts(cmd)
    assert opts[0] == "user" and "restrict=on" in opts and "ipv6=off" in opts
    assert "host=10.0.2.254" in opts  # qemu refuses a guestfwd on slirp's own (default) address
    hostfwds = sorted(o for o in opts if o.startswith("hostfwd="))
    assert hostfwds == ["hostfwd=tcp:127.0.0.1:17022-:22", "hostfwd=tcp:127.0.0.1:17434-:11434",
                        "hostfwd=tcp:127.0.0.1:17800-:8000"]
    guestfwds = [o for o in opts if o.startswith("guestfwd=")]
    assert len(guestfwds) == 1
    # cmd: (one process per connection), not a tcp:/chardev target (one connection per VM life)
    assert guestfwds[0].startswith("guestfwd=tcp:10.0.2.2:17080-cmd:")
    assert guestfwds[0].endswith(" - TCP:127.0.0.1:17080")
    assert not [o for o in opts if o.split("=")[0] not in
                ("user", "id", "restrict", "ipv6", "host", "hostfwd", "guestfwd")]


def test_qemu_accepts_the_netdev(tmp_path):
    """qemu itself parses the -netdev (paused, no machine, no guest; ports far from any lab)."""
    import shutil
    import subprocess
    if not shutil.which(guest.QEMU):
        pytest.skip("qemu-system-x86_64 not installed")
    g = guest.Guest(140, _guest(tmp_path).image, state.LabPaths(tmp_path / ".lab"),
                    state.Ports(int(os.environ.get("LAB_TEST_NETDEV_BASE", "63000"))))
    proc = subprocess.run([guest.QEMU, "-S", "-machine", "none", "-nodefaults", "-display", "none",
                           "-netdev", g.netdev(), "-qmp", "stdio"], input='{"execute": "qmp_capabilities"}\n'
                          '{"execute": "quit"}\n', capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "Conflicting" not in proc.stderr and "Invalid" not in proc.stderr


def test_guestfwd_relay_carries_several_http_connections(tmp_path):
    """Run the guestfwd command the way libslirp does (socket on stdin/stdout/stderr, one process
    per connection) against a local HTTP server: two connections, both complete."""
    import http.server
    import shlex
    import shutil
    import socket
    import subprocess
    import threading
    if not shutil.which(guest.RELAY):
        pytest.fail(f"{guest.RELAY} is a lab host package (lab/host-packages.txt)")
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "index.html").write_bytes(b"lab artefacts " * 5000)  # > one socket buffer
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "www"))  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        g = guest.Guest(140, _guest(tmp_path).image, state.LabPaths(tmp_path / ".lab"),
                        state.Ports(httpd.server_address[1] - 80))
        g.dir.mkdir(parents=True)
        fwd = [o for o in _netdev_opts(g.command(guest.GuestSettings.from_pve(140, {})))
               if o.startswith("guestfwd=")][0]
        argv = shlex.split(fwd.split("-cmd:", 1)[1])  # g_shell_parse_argv follows sh quoting
        for _ in range(2):
            ours, theirs = socket.socketpair()
            relay = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=theirs)
            theirs.close()
            ours.sendall(b"GET /index.html HTTP/1.0\r\nHost: 10.0.2.2\r\n\r\n")
            data = b""
            ours.settimeout(10)
            while chunk := ours.recv(65536):
                data += chunk
            ours.close()
            assert relay.wait(timeout=10) == 0
            assert data.startswith(b"HTTP/1.0 200") and data.endswith(b"lab artefacts " * 5000)
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_image_has_no_apt_source_outside_the_lab():
    rec = image.recipe()
    sources = rec["image_files"]["etc/apt/sources.list"]
    assert not [ln for ln in sources.splitlines() if ln.strip() and not ln.startswith("#")]
    assert "etc/apt/sources.list.d" in rec["emptied_dirs"]
    assert "python3-venv" in image.PACKAGES and "build-essential" in image.PACKAGES


@pytest.mark.parametrize("cfg,gib", [
    ({"scsi0": "local-lvm:vm-140-disk-0,size=8G"}, 8),
    ({"scsi0": "local-lvm:vm-140-disk-0,iothread=1,size=20480M"}, 20),
    ({"virtio0": "local:140/vm-140-disk-0.qcow2,size=1T"}, 1024),
    ({"scsi0": "local-lvm:vm-140-disk-0"}, None),
    ({}, None),
])
def test_overlay_size_from_pve_disk(cfg, gib):
    assert guest._boot_disk_gib(cfg) == gib


def test_lab_ca_signs_the_server_cert_and_ssh_key_is_made_once(tmp_path):
    from cryptography import x509
    paths = state.LabPaths(tmp_path / ".lab")
    cert_p, _key_p = server.issue_server_cert(paths)
    ca = x509.load_pem_x509_certificate(paths.pve_ca.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_p.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    before = paths.pve_ca.read_bytes()
    server.issue_server_cert(paths)
    assert paths.pve_ca.read_bytes() == before  # the CA is made once

    import paramiko
    key = server.ensure_ssh_key(paths)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = paramiko.Ed25519Key.from_private_key_file(str(key))
    pub = Path(str(key) + ".pub").read_text().split()
    assert pub[0] == "ssh-ed25519" and pub[1] == loaded.get_base64()
    first = key.read_bytes()
    server.ensure_ssh_key(paths)
    assert key.read_bytes() == first


def test_pve_password_default_and_secret(monkeypatch):
    from provisioners import redact
    monkeypatch.delenv("LAB_PVE_PASSWORD", raising=False)
    assert server.pve_password() == "lab-secret"
    monkeypatch.setenv("LAB_PVE_PASSWORD", "s3cret-for-lab")
    assert server.pve_password() == "s3cret-for-lab"
    assert "s3cret-for-lab" not in redact.redact("pw s3cret-for-lab")
    redact._clear_for_tests()


def test_children_die_with_the_lab_process(tmp_path):
    """qemu is started with PR_SET_PDEATHSIG: a SIGKILLed lab server leaves no orphan."""
    import signal
    import subprocess
    import sys
    import time
    code = (
        "import subprocess, sys, time\n"
        "from lab.guest import _die_with_parent\n"
        "p = subprocess.Popen(['sleep', '300'], preexec_fn=_die_with_parent)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                              cwd=state.REPO_ROOT, env={**os.environ, "PYTHONPATH": str(state.REPO_ROOT)})
    child = int(parent.stdout.readline())
    assert Path(f"/proc/{child}").exists()
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            st = Path(f"/proc/{child}/stat").read_text().split()[2]
        except OSError:
            break
        if st == "Z":  # reaped by init later; it is dead
            break
        time.sleep(0.05)
    else:
        os.kill(child, signal.SIGKILL)
        raise AssertionError("child outlived its SIGKILLed parent")
