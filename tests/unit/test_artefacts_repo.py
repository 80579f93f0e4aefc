"""The lab artefact tree: signed apt repositories, pip index, Ollama tarball, served on loopback."""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest
import yaml

from lab.artefacts import aptrepo, build_all, debs, ollama_tarball, server, www_dir

REPO = Path(__file__).resolve().parents[2]
SBIN_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A built artefact tree for rtx5060ti, served on a free loopback port."""
    state = tmp_path_factory.mktemp("labstate")
    port = free_port()
    build_all(state, "rtx5060ti", port=port)
    handle = server.start(state, "127.0.0.1", port)
    yield state, port
    handle.stop()


def test_build_is_idempotent_and_fast_when_nothing_changed(lab):
    state, port = lab
    www = www_dir(state)
    before = (www.stat().st_ino, (www / ".stamp").read_text())
    build_all(state, "rtx5060ti", port=port)
    assert (www.stat().st_ino, (www / ".stamp").read_text()) == before


def test_release_files_verify_with_the_lab_key(lab, tmp_path):
    state, _port = lab
    www = www_dir(state)
    keyring = tmp_path / "lab.gpg"
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "-o", str(keyring), str(www / "apt" / "lab-archive-key.asc")], check=True)
    for rel in ("apt/dists/stable", "cuda/repos/ubuntu2404/x86_64"):
        d = www / rel
        assert subprocess.run(["gpgv", "--keyring", str(keyring), str(d / "InRelease")], capture_output=True).returncode == 0
        assert subprocess.run(["gpgv", "--keyring", str(keyring), str(d / "Release.gpg"), str(d / "Release")],
                              capture_output=True).returncode == 0
    tampered = tmp_path / "Release"
    tampered.write_text((www / "apt/dists/stable/Release").read_text().replace("stable", "unstable"))
    assert subprocess.run(["gpgv", "--keyring", str(keyring), str(www / "apt/dists/stable/Release.gpg"), str(tampered)],
                          capture_output=True).returncode != 0


def _apt(root: Path, *args: str) -> subprocess.CompletedProcess:
    opts = ["-o", f"Dir={root}", "-o", "Dir::Bin::Methods=/usr/lib/apt/methods", "-o", f"Dir::State::status={root}/status",
            "-o", "Debug::NoLocking=1", "-o", "APT::Sandbox::User=root", "-o", "APT::Architecture=amd64",
            "-o", "Acquire::Languages=none"]
    return subprocess.run([args[0], *opts, *args[1:]], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not shutil.which("apt-get"), reason="needs apt-get")
def test_apt_get_update_against_the_lab_repos_in_a_temp_root(lab, tmp_path):
    state, port = lab
    root = tmp_path / "aptroot"
    for d in ("etc/apt/sources.list.d", "etc/apt/preferences.d", "etc/apt/trusted.gpg.d", "etc/apt/apt.conf.d",
              "var/lib/apt/lists/partial", "var/cache/apt/archives/partial"):
        (root / d).mkdir(parents=True)
    (root / "status").write_text("")
    key = root / "lab.asc"
    key.write_bytes((www_dir(state) / "apt" / "lab-archive-key.asc").read_bytes())
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by={key}] http://127.0.0.1:{port}/apt stable main\n"
        f"deb [signed-by={key}] http://127.0.0.1:{port}/cuda/repos/ubuntu2404/x86_64/ /\n")
    res = _apt(root, "apt-get", "update")
    assert res.returncode == 0 and "W:" not in res.stderr and "E:" not in res.stderr, res.stdout + res.stderr
    show = _apt(root, "apt-cache", "show", "nvidia-dkms-570-open")
    assert "Provides: nvidia-dkms-kernel" in show.stdout and "Version: 570.195.03-0ubuntu1" in show.stdout
    names = set(_apt(root, "apt-cache", "pkgnames").stdout.split())
    assert {"ubuntu-drivers-common", "nvidia-driver-570", "nvidia-driver-570-open", "nvidia-utils-570", "cuda-keyring",
            "cuda-toolkit-12-8", "cuda", "cuda-drivers"} <= names
    # unsigned / wrongly signed repos are refused
    (root / "etc/apt/sources.list").write_text(
        f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://127.0.0.1:{port}/apt stable main\n")
    bad = _apt(root, "apt-get", "update")
    assert "NO_PUBKEY" in bad.stderr or "not signed" in bad.stderr or bad.returncode != 0


def _extract(www: Path, pattern: str, dest: Path) -> Path:
    deb = next(www.glob(f"apt/pool/main/*/*/{pattern}"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


@pytest.mark.skipif(not shutil.which("modinfo", path=SBIN_PATH), reason="needs kmod (modinfo, depmod)")
@pytest.mark.parametrize("pkg,license", [("nvidia-dkms-570-open_*", "Dual MIT/GPL"), ("nvidia-dkms-570_*", "NVIDIA")])
def test_modinfo_reads_the_module_license(lab, tmp_path, pkg, license):
    state, _ = lab
    root = _extract(www_dir(state), pkg, tmp_path / "root")
    kver = "6.1.0-lab-amd64"
    mod_dir = root / "lib/modules" / kver / "updates/dkms"
    mod_dir.mkdir(parents=True)
    shutil.copy(next((root / "usr/src").glob("nvidia-*/nvidia.ko.lab")), mod_dir / "nvidia.ko")
    env = dict(os.environ, PATH=SBIN_PATH)
    subprocess.run(["depmod", "-b", str(root), kver], check=True, capture_output=True, env=env)
    out = subprocess.run(["modinfo", "-b", str(root), "-k", kver, "-F", "license", "nvidia"],
                         capture_output=True, text=True, env=env)
    assert out.stdout == license + "\n"
    ver = subprocess.run(["modinfo", "-b", str(root), "-k", kver, "-F", "version", "nvidia"], capture_output=True, text=True, env=env)
    assert ver.stdout == "570.195.03\n"


def test_driver_packages_have_the_real_relations(lab, tmp_path):
    state, _ = lab
    fields = subprocess.run(["dpkg-deb", "-f", str(next(www_dir(state).glob("apt/pool/main/n/nvidia-driver-570-open/*.deb")))],
                            capture_output=True, text=True, check=True).stdout
    assert "Depends: nvidia-dkms-570-open (= 570.195.03-0ubuntu1), nvidia-utils-570 (= 570.195.03-0ubuntu1)" in fields
    assert "Conflicts: nvidia-driver-570\n" in fields
    root = _extract(www_dir(state), "nvidia-dkms-570-open_*", tmp_path / "dkms")
    unit = (root / "lib/systemd/system/nvidia-lab-kmod.service").read_text()
    assert "ExecStart=/usr/lib/nvidia-lab/nvidia-lab-kmod load" in unit
    ctl = tmp_path / "ctl"
    subprocess.run(["dpkg-deb", "-e", str(next(www_dir(state).glob("apt/pool/main/n/nvidia-dkms-570-open/*.deb"))), str(ctl)], check=True)
    postinst = (ctl / "postinst").read_text()
    assert "/var/run/reboot-required" in postinst and "depmod" in postinst and "exit 10" not in postinst
    keyring = _extract(www_dir(state), "cuda-keyring_*", tmp_path / "kr")
    src = (keyring / "etc/apt/sources.list.d/cuda-ubuntu2404-x86_64.list").read_text()
    assert src == f"deb [signed-by=/usr/share/keyrings/cuda-archive-keyring.gpg] http://10.0.2.2:{lab[1]}/cuda/repos/ubuntu2404/x86_64/ /\n"
    assert (keyring / "usr/share/keyrings/cuda-archive-keyring.gpg").read_bytes()[:1] != b"-"   # binary keyring
    assert (www_dir(state) / "cuda" / "cuda-keyring_1.1-1_all.deb").exists()
    toolkit = _extract(www_dir(state), "cuda-toolkit-12-8_*", tmp_path / "tk")
    out = subprocess.run([sys.executable, str(toolkit / "usr/local/cuda-12.8/bin/nvcc"), "--version"], capture_output=True, text=True)
    assert "Cuda compilation tools, release 12.8, V12.8.93" in out.stdout


def test_driver_install_fails_profile_publishes_failing_lower_versions(tmp_path):
    build_all(tmp_path, "driver-install-fails", port=17080)
    www = www_dir(tmp_path)
    deb = next(www.glob("apt/pool/main/n/nvidia-dkms-570-open/*.deb"))
    ctl = tmp_path / "ctl"
    subprocess.run(["dpkg-deb", "-e", str(deb), str(ctl)], check=True)
    postinst = (ctl / "postinst").read_text()
    assert 'echo "Error! Bad return status for module build on kernel: $KVER (x86_64)"' in postinst
    assert "Consult /var/lib/dkms/nvidia/570.195.03/build/make.log for more information." in postinst
    assert "exit 10" in postinst and "make: *** [Makefile:82: modules] Error 2" in postinst
    bad = deb.name.split("_")[1]
    good = "570.195.03-0ubuntu1"
    assert subprocess.run(["dpkg", "--compare-versions", bad, "lt", good]).returncode == 0   # switching back upgrades
    # the failing postinst really fails the way dpkg reports (exit status 10), without touching the host
    script = postinst.replace("/var/lib/dkms", str(tmp_path / "dkms"))
    res = subprocess.run(["sh", "-c", script, "postinst", "configure"], capture_output=True, text=True)
    assert res.returncode == 10 and "Error! Bad return status" in res.stdout
    assert "fatal error" in next((tmp_path / "dkms").rglob("make.log")).read_text()


def test_debs_are_reproducible(tmp_path):
    d = debs.ubuntu_drivers_deb()
    a = debs.build_deb(d, tmp_path / "t1", tmp_path / "o1").read_bytes()
    b = debs.build_deb(d, tmp_path / "t2", tmp_path / "o2").read_bytes()
    assert a == b


@pytest.mark.slow
def test_pip_downloads_vllm_from_the_lab_index(lab, tmp_path):
    state, port = lab
    res = subprocess.run([sys.executable, "-m", "pip", "download", "vllm==0.10.2", "--no-deps", "--no-cache-dir",
                          "--disable-pip-version-check", "--index-url", f"http://127.0.0.1:{port}/simple", "-d", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    whl = tmp_path / "vllm-0.10.2-py3-none-any.whl"
    index = (www_dir(state) / "simple" / "vllm" / "index.html").read_text()
    assert f"#sha256={hashlib.sha256(whl.read_bytes()).hexdigest()}" in index


def test_ollama_tarball_is_deterministic_and_laid_out_like_the_release(lab):
    state, port = lab
    assert ollama_tarball.tarball_bytes() == ollama_tarball.tarball_bytes()
    served = urllib.request.urlopen(f"http://127.0.0.1:{port}/ollama/ollama-linux-amd64.tgz", timeout=10).read()
    assert hashlib.sha256(served).hexdigest() == ollama_tarball.tarball_sha256()
    with tarfile.open(www_dir(state) / "ollama" / "ollama-linux-amd64.tgz") as tf:
        names = tf.getnames()
        assert {"bin/ollama", "lib/ollama"} <= set(names)
        assert all(m.mtime == tf.getmembers()[0].mtime and m.uid == 0 for m in tf.getmembers())
    assert served[3] == 0 and served[4:8] == b"\0\0\0\0"   # gzip -n: no name, no mtime


def test_lab_catalog_pins_the_tarball_sha256():
    catalog = yaml.safe_load((REPO / "lab" / "lab-catalog.yml").read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "ollama" in node and isinstance(node["ollama"], dict) and "sha256" in node["ollama"]:
                found.append(node["ollama"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(catalog)
    assert found, "lab/lab-catalog.yml has no ollama sha256"
    for entry in found:
        assert entry["sha256"] == ollama_tarball.tarball_sha256()
        assert str(entry.get("version", ollama_tarball.OLLAMA_VERSION)) == ollama_tarball.OLLAMA_VERSION


def test_server_serves_index_and_404(lab):
    _state, port = lab
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/simple/vllm/", timeout=10).read().decode()
    assert re.search(r'href="\.\./\.\./packages/vllm-0\.10\.2-py3-none-any\.whl#sha256=[0-9a-f]{64}"', body)
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nope", timeout=10)


def test_key_is_made_once(tmp_path):
    assert aptrepo.ensure_key(tmp_path / "g") == aptrepo.ensure_key(tmp_path / "g")


def test_server_extra_dirs_do_not_escape(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "lab-debian-12.qcow2").write_bytes(b"QFI")
    (tmp_path / "secret").write_text("no")
    port = free_port()
    h = server.start(tmp_path / "st", "127.0.0.1", port, extra_dirs={"images": imgs})
    try:
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/images/lab-debian-12.qcow2", timeout=10).read() == b"QFI"
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/images/../secret", timeout=10)
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/images/%2e%2e/secret", timeout=10)
    finally:
        h.stop()


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="needs systemd-analyze")
def test_kmod_unit_verifies(lab, tmp_path):
    state, _ = lab
    root = _extract(www_dir(state), "nvidia-dkms-570-open_*", tmp_path / "root")
    unit = tmp_path / "nvidia-lab-kmod.service"
    unit.write_text((root / "lib/systemd/system/nvidia-lab-kmod.service").read_text()
                    .replace("/usr/lib/nvidia-lab/", f"{root}/usr/lib/nvidia-lab/"))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stderr == "", res.stderr   # it returns 0 on unknown keys: stderr counts


def test_signing_leaves_no_gpg_agent_running(tmp_path):
    """gpg starts a gpg-agent per home directory that used to outlive the lab and every test."""
    import subprocess

    build_all(tmp_path, "rtx5060ti", port=17080)
    home = str(tmp_path / "artefacts" / "gnupg")
    agents = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {home}"], capture_output=True, text=True)
    assert agents.stdout.strip() == "", f"gpg-agent still running for {home}: {agents.stdout}"
