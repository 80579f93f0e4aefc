"""Fake GPU artefacts of the embedded lab, served to the guest over plain HTTP.

``build_all(state_dir, profile)`` lays out ``<state_dir>/artefacts/www/``:

- ``apt/``: signed apt repository (``deb [signed-by=...] http://10.0.2.2:PORT/apt stable main``),
  public key ``apt/lab-archive-key.asc``: ubuntu-drivers-common, nvidia-driver-NNN[-open],
  nvidia-dkms-NNN[-open], nvidia-utils-NNN, cuda-keyring, cuda-toolkit-12-8, cuda, cuda-drivers;
- ``cuda/repos/ubuntu2404/x86_64/``: NVIDIA's flat-repo shape (what cuda-keyring points at),
  with ``cuda-keyring_1.1-1_all.deb`` downloadable as from NVIDIA (and at ``cuda/``, where
  ``lab/lab-catalog.yml``'s ``keyring_url`` points);
- ``simple/`` + ``packages/``: PEP 503 index with the lab ``vllm`` wheel;
- ``ollama/ollama-linux-amd64.tgz`` (+ ``.sha256``).

The programs inside replay real outputs from ``../shared/corpus/`` for the profile the guest
reads from fw_cfg (see ``lab/artefacts/fakes/``). ``lab.artefacts.server.start`` serves the tree.

Guest-side runtime contract (what the fake programs read/write, all inside the guest):
``/sys/firmware/qemu_fw_cfg/by_name/opt/lab/gpu/raw`` or its boot-time copy
``/run/lab-gpu/hw.json`` (the profile), ``/run/nvidia-lab/state.json`` (the module "loaded" in
this boot, written by ``nvidia-lab-kmod.service`` of the nvidia-dkms package),
``/run/nvidia-lab/procs/<pid>.json`` (VRAM held by vLLM/Ollama), ``/etc/lab/faults/vllm-crash-once``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

from lab.profiles import Profile, get_profile

__all__ = ["build_all", "www_dir", "artefacts_dir", "BUILD_VERSION"]

#: bump when the layout changes in a way the hashed sources do not capture
BUILD_VERSION = 1
_SRC = Path(__file__).resolve().parent


def artefacts_dir(state_dir: Path) -> Path:
    """``<state_dir>/artefacts`` (or ``state_dir`` itself when it is already called ``artefacts``)."""
    state_dir = Path(state_dir)
    return state_dir if state_dir.name == "artefacts" else state_dir / "artefacts"


def www_dir(state_dir: Path) -> Path:
    """The served tree: ``<state_dir>/artefacts/www``."""
    return artefacts_dir(state_dir) / "www"


def _profile_from_files(state_dir: Path) -> str:
    """The lab's current profile name (``.lab/profile``, looked up from ``state_dir`` upwards)."""
    from lab.profiles import DEFAULT_PROFILE

    for d in (Path(state_dir), Path(state_dir).parent):
        f = d / "profile"
        if f.is_file() and f.read_text().strip():
            return f.read_text().strip()
    return DEFAULT_PROFILE


def cuda_repo_url(port: int) -> str:
    """Where cuda-keyring's apt source points (guest view through the qemu user-mode gateway)."""
    return f"http://10.0.2.2:{port}/cuda/repos/ubuntu2404/x86_64/"


def _inputs_hash(profile: Profile, port: int, fpr: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"v": BUILD_VERSION, "branches": profile.driver_branches, "fails": profile.driver_install_fails,
                         "port": port, "key": fpr}, sort_keys=True).encode())
    for src in sorted(_SRC.rglob("*.py")):
        if "__pycache__" in src.parts:
            continue
        h.update(src.relative_to(_SRC).as_posix().encode() + b"\0" + src.read_bytes() + b"\0")
    h.update(Path(_SRC.parent / "profiles.py").read_bytes())
    return h.hexdigest()


def build_all(state_dir: Path, profile: str | None = None, port: int | None = None) -> None:
    """Build (or keep, when nothing changed) every artefact for GPU profile ``profile``.

    Args:
        state_dir: the lab state directory (``.lab/``); output goes to ``<state_dir>/artefacts/``.
        profile: a name from :data:`lab.profiles.PROFILES`; None: the lab's current one
            (``.lab/profile`` next to or above ``state_dir``), else ``rtx5060ti``.
        port: the artefact server's port as the guest reaches it (default ``LAB_PORT_BASE``+80);
            baked into cuda-keyring's apt source.

    Idempotent: a stamp of the inputs (sources, profile's package behaviour, port, key) skips
    the build (milliseconds) when unchanged. The signing key is made once per state directory.

    Raises:
        DeployError: unknown profile, gpg missing or failing.
        subprocess.CalledProcessError: dpkg-deb failed.
    """
    from lab import state
    from lab.artefacts import aptrepo, debs, ollama_tarball, pipindex

    prof = get_profile(profile or _profile_from_files(state_dir))
    if port is None:
        port = state.port_base() + 80
    art = artefacts_dir(state_dir)
    art.mkdir(parents=True, exist_ok=True)
    home = art / "gnupg"
    fpr = aptrepo.ensure_key(home)
    stamp = _inputs_hash(prof, port, fpr)
    www = art / "www"
    if (www / ".stamp").exists() and (www / ".stamp").read_text().strip() == stamp:
        return
    new = Path(tempfile.mkdtemp(prefix="www.", dir=art))
    work = Path(tempfile.mkdtemp(prefix="build.", dir=art))
    try:
        apt = new / "apt"
        cuda_dir = new / "cuda" / "repos" / "ubuntu2404" / "x86_64"
        cuda_dir.mkdir(parents=True)
        apt.mkdir()
        (apt / "lab-archive-key.asc").write_bytes(aptrepo.export_key(home, fpr, armor=True))
        keyring = aptrepo.export_key(home, fpr, armor=False)
        built = [debs.build_deb(d, work / "tree", work / "debs") for d in debs.profile_debs(prof)]
        cuda_built = [debs.build_deb(d, work / "tree", work / "debs") for d in debs.cuda_debs(cuda_repo_url(port), keyring)]
        aptrepo.write_suite_repo(apt, [aptrepo.pool_path(apt, d) for d in built + cuda_built], home, fpr)
        flat = []
        for d in cuda_built:
            shutil.copy2(d, cuda_dir / d.name)
            flat.append(cuda_dir / d.name)
        aptrepo.write_flat_repo(cuda_dir, flat, home, fpr)
        # where lab/lab-catalog.yml's cuda keyring_url points (NVIDIA serves it inside the repo dir)
        keyring_deb = next(d for d in cuda_built if d.name.startswith("cuda-keyring_"))
        shutil.copy2(keyring_deb, new / "cuda" / keyring_deb.name)
        whl = pipindex.build_wheel(new / "packages")
        pipindex.write_index(new, [whl])
        ollama_tarball.write_tarball(new / "ollama")
        (new / "profile.json").write_text(prof.guest_hw_json())
        (new / ".stamp").write_text(stamp + "\n")
        new.chmod(0o755)
        old = art / "www.old"
        shutil.rmtree(old, ignore_errors=True)
        if www.exists():
            www.rename(old)
        new.rename(www)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if new.exists():
            shutil.rmtree(new, ignore_errors=True)
