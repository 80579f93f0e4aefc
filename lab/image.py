"""The lab's base guest image: Debian 12 (bookworm) built from Debian packages, cached by recipe.

Two cached stages under ``${XDG_CACHE_HOME:-~/.cache}/gpu-llm-deployer/lab-image/``:

1. ``rootfs-<hash>/`` - a debootstrap ``minbase`` tree with :data:`PACKAGES` and the chroot-side
   setup (en_US.UTF-8 locale, no SSH host keys, empty machine-id, NoCloud-only cloud-init). Keyed
   by the package part of the recipe; this is the slow stage (≈ 2-4 min, ≈ 1 GB).
2. ``<sha256 of recipe>/`` - the bootable artefacts: ``base.qcow2`` (ext4 made with
   ``mkfs.ext4 -d``, no partition table, no loop mounts), ``vmlinuz`` + ``initrd.img`` (for direct
   ``-kernel/-initrd`` boot, ``root=/dev/vda``), ``base.qcow2.sha256`` and ``recipe.json``. The
   recipe includes every file of ``lab/guestfs/`` (copied verbatim into the rootfs), so a change
   there rebuilds only this stage (seconds).

Both stages are built in a temporary directory and ``rename(2)``-d into place (atomic); a build
lock (``flock`` on ``lab-image/.build.lock``) serialises concurrent builders.

Facts: debootstrap(8); mke2fs(8) ``-d root-directory``; qemu-img(1) ``convert``; the measured
recipe in ../shared/DESIGN.md §5 (python3-cffi-backend is needed or debootstrap fails resolving
cloud-init's deps; the locale must exist or cloud-init ends in ``status: error``).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lab import state
from provisioners.errors import DeployError
from provisioners.redact import redact

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
#: bumped when the build steps below change in a way the other fields do not capture
BUILD_VERSION = 3
#: virtual size of the base disk in GiB (the ext4 is sparse; a bigger PVE disk is grown by
#: cloud-init's resizefs at first boot)
DISK_GIB = 6
PACKAGES = (
    "linux-image-amd64", "systemd-sysv", "udev", "openssh-server", "cloud-init",
    "python3", "python3-venv", "python3-dev", "python3-cffi-backend", "build-essential",
    "sudo", "iproute2", "ifupdown", "isc-dhcp-client", "ca-certificates", "locales",
    "zstd", "curl", "gnupg", "kmod", "pciutils",
    # logind needs dbus to act on the ACPI power button (PVE shutdown/reboot = system_powerdown)
    "dbus",
)
#: file name of the image as a PVE volume (``local:import/<name>``), referenced by the lab catalog
VOLUME_NAME = "lab-debian-12.qcow2"
VOLUME_ID = f"local:import/{VOLUME_NAME}"
GUESTFS_DIR = state.REPO_ROOT / "lab" / "guestfs"
_SKIP_NAMES = {"__pycache__", ".gitkeep"}

# Files written into the rootfs after debootstrap (stage 1). Part of the recipe hash.
_ROOTFS_FILES: dict[str, str] = {
    "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
    "etc/hostname": "lab-debian\n",
    "etc/hosts": "127.0.0.1 localhost\n",
    "etc/locale.gen": "en_US.UTF-8 UTF-8\n",
    "etc/default/locale": "LANG=en_US.UTF-8\n",
    "etc/network/interfaces": (
        "# cloud-init writes the guest's interface to interfaces.d/50-cloud-init\n"
        "source /etc/network/interfaces.d/*\n\nauto lo\niface lo inet loopback\n"
    ),
    "etc/apt/sources.list": (
        f"deb {MIRROR} {SUITE} main\n"
        f"deb {MIRROR} {SUITE}-updates main\n"
        f"deb http://deb.debian.org/debian-security {SUITE}-security main\n"
    ),
    # Only the lab's seed ISO: probing other datasources costs minutes under TCG.
    "etc/cloud/cloud.cfg.d/90_lab_datasource.cfg": "datasource_list: [ NoCloud, None ]\n",
    # Under TCG every fsck/apt timer steals seconds from the boot the tests wait for.
    "etc/apt/apt.conf.d/90lab-no-periodic": 'APT::Periodic::Enable "0";\n',
}
# Files written in stage 2 (cheap to change). Part of the full recipe hash.
_IMAGE_FILES: dict[str, str] = {
    # debootstrap copies the build host's resolv.conf; ifupdown without resolvconf ignores the
    # dns-nameservers cloud-init renders, so point at qemu user-mode networking's resolver. The
    # lab guest runs with restrict=on (lab/guest.py), where slirp silently drops DNS too: fail a
    # lookup in ~1 s instead of 10 s (resolv.conf(5) timeout/attempts); the lab uses IPs only.
    "etc/resolv.conf": ("# lab image: qemu user-mode networking resolver (unreachable under "
                        "restrict=on)\nnameserver 10.0.2.3\noptions timeout:1 attempts:1\n"),
    # Hermetic guest (issue #3): no apt source outside the lab; the product adds the lab repo.
    # (Stage 1 keeps the Debian mirror for debootstrap; it is replaced here, not there, so the
    # slow debootstrap stage stays cached.)
    "etc/apt/sources.list": "# lab image: no sources outside the lab (the deployer adds its own)\n",
}
#: directories emptied in stage 2 (apt sources that debootstrap may have written)
_IMAGE_EMPTIED_DIRS = ("etc/apt/sources.list.d",)
_CHROOT_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive LANG=C LC_ALL=C
locale-gen
update-locale LANG=en_US.UTF-8
# fresh per-instance identity: cloud-init makes new host keys, systemd a new machine-id
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer; do
  systemctl mask "$t" >/dev/null 2>&1 || true
done
passwd -l root >/dev/null
apt-get clean
rm -rf /var/log/*.log /var/cache/debconf/*-old /tmp/* /var/tmp/*
"""


@dataclass(frozen=True)
class BaseImage:
    """A built base image in the cache.

    Attributes:
        dir: the cache directory ``.../lab-image/<recipe hash>/``.
        qcow2: ``dir/base.qcow2`` (virtual size :data:`DISK_GIB` GiB, ext4 on the whole disk).
        kernel, initrd: for ``-kernel``/``-initrd``; boot with ``root=/dev/vda``.
        sha256: hex sha256 of ``base.qcow2`` (for the catalog's cloud image checksum).
        recipe_hash: the directory name.
    """

    dir: Path
    qcow2: Path
    kernel: Path
    initrd: Path
    sha256: str
    recipe_hash: str

    @property
    def size_bytes(self) -> int:
        """Size of ``base.qcow2`` on disk in bytes."""
        return self.qcow2.stat().st_size


def image_cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/gpu-llm-deployer/lab-image``."""
    return state.cache_root() / "lab-image"


def _guestfs_entries(root: Path = GUESTFS_DIR) -> list[tuple[str, str, int, bytes]]:
    """(relative path, kind, mode, content-or-link-target) of every entry under ``root``."""
    out: list[tuple[str, str, int, bytes]] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_NAMES)
        base = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            if name in _SKIP_NAMES or name.endswith(".pyc"):
                continue
            p = base / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if p.is_symlink():
                out.append((rel, "link", 0o777, os.readlink(p).encode()))
            elif p.is_dir():
                out.append((rel, "dir", st.st_mode & 0o7777, b""))
            else:
                out.append((rel, "file", st.st_mode & 0o7777, p.read_bytes()))
    return out


def rootfs_recipe() -> dict:
    """The part of the recipe that the debootstrap stage depends on (JSON-able)."""
    return {
        "build_version": BUILD_VERSION,
        "suite": SUITE,
        "mirror": MIRROR,
        "variant": "minbase",
        "packages": sorted(PACKAGES),
        "files": _ROOTFS_FILES,
        "chroot_script": _CHROOT_SCRIPT,
    }


def recipe(guestfs: Path = GUESTFS_DIR) -> dict:
    """The full recipe: rootfs recipe + disk size + sha256 of every ``lab/guestfs`` entry."""
    files = [
        {"path": rel, "kind": kind, "mode": oct(mode), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, kind, mode, data in _guestfs_entries(guestfs)
    ]
    return {"rootfs": rootfs_recipe(), "disk_gib": DISK_GIB, "image_files": _IMAGE_FILES,
            "emptied_dirs": list(_IMAGE_EMPTIED_DIRS), "guestfs": files}


def _hash(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def recipe_hash(guestfs: Path = GUESTFS_DIR) -> str:
    """sha256 (hex) of :func:`recipe` - the cache directory name."""
    return _hash(recipe(guestfs))


def _log(msg: str) -> None:
    print(redact(f"[lab image] {msg}"), file=sys.stderr, flush=True)


def _run(cmd: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
        raise DeployError(
            what=f"building the lab base image failed: {what}",
            cause=redact(tail) or "no output",
            remedy="check network access to deb.debian.org and free disk space in "
            f"{image_cache_dir()}; the host needs debootstrap, e2fsprogs and qemu-utils "
            "(apt-get install debootstrap e2fsprogs qemu-utils) and must run as root",
            command=" ".join(cmd),
            exit_code=proc.returncode,
        )
    return proc


def _check_host() -> None:
    missing = [t for t in ("debootstrap", "mkfs.ext4", "qemu-img", "chroot") if not shutil.which(t)]
    if missing:
        raise DeployError(
            what="cannot build the lab base image",
            cause=f"missing host tools: {', '.join(missing)}",
            remedy="apt-get install debootstrap e2fsprogs qemu-utils",
        )
    if os.geteuid() != 0:
        raise DeployError(
            what="cannot build the lab base image",
            cause="debootstrap and chroot need root",
            remedy="run `python -m lab image` as root (or in the CI container)",
        )


class _BuildLock:
    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # blocks: a parallel builder finishes the same work
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _build_rootfs(cache: Path) -> Path:
    """Stage 1: debootstrap + chroot setup, cached as ``rootfs-<hash>/``."""
    final = cache / f"rootfs-{_hash(rootfs_recipe())[:16]}"
    if (final / ".complete").exists():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-rootfs-", dir=cache))
    try:
        tree = tmp / "rootfs"
        _log(f"debootstrap {SUITE} from {MIRROR} (first build only; a few minutes)")
        t0 = time.monotonic()
        _run(["debootstrap", "--variant=minbase", "--components=main",
              "--include=" + ",".join(PACKAGES), SUITE, str(tree), MIRROR],
             "debootstrap", env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        _log(f"debootstrap done in {time.monotonic() - t0:.0f} s")
        for rel, text in _ROOTFS_FILES.items():
            p = tree / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        _run(["chroot", str(tree), "/bin/sh", "-c", _CHROOT_SCRIPT], "chroot setup")
        (tree / ".complete").write_text(json.dumps(rootfs_recipe(), sort_keys=True))
        os.rename(tree, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _copy_guestfs(src: Path, dest_root: Path) -> None:
    """Copy ``lab/guestfs`` verbatim (modes, symlinks) into the rootfs, owned by root."""
    for rel, kind, mode, data in _guestfs_entries(src):
        dest = dest_root / rel
        if kind == "dir":
            dest.mkdir(parents=True, exist_ok=True)
            os.chmod(dest, mode)
        elif kind == "link":
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():
                dest.unlink()
            os.symlink(data.decode(), dest)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                dest.unlink()
            dest.write_bytes(data)
            os.chmod(dest, mode)
        os.lchown(dest, 0, 0)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load(final: Path, rhash: str) -> BaseImage:
    return BaseImage(
        dir=final, qcow2=final / "base.qcow2", kernel=final / "vmlinuz",
        initrd=final / "initrd.img", sha256=(final / "base.qcow2.sha256").read_text().split()[0],
        recipe_hash=rhash,
    )


def cached_image(guestfs: Path = GUESTFS_DIR) -> BaseImage | None:
    """The cached image for the current recipe, or None when it is not built yet."""
    rhash = recipe_hash(guestfs)
    final = image_cache_dir() / rhash
    if (final / "base.qcow2.sha256").exists():
        return _load(final, rhash)
    return None


def build(guestfs: Path = GUESTFS_DIR, *, force: bool = False) -> BaseImage:
    """Return the base image for the current recipe, building it when it is not cached.

    Args:
        guestfs: the tree copied verbatim into ``/`` of the image (default ``lab/guestfs``).
        force: rebuild stage 2 even when cached (stage 1 is still reused).

    Returns: :class:`BaseImage`.
    Raises: DeployError (missing host tools, not root, debootstrap/mkfs/qemu-img failure - the
    failing command, its exit status and output tail are in the error).
    """
    rhash = recipe_hash(guestfs)
    cache = image_cache_dir()
    final = cache / rhash
    if not force and (final / "base.qcow2.sha256").exists():
        return _load(final, rhash)
    _check_host()
    cache.mkdir(parents=True, exist_ok=True)
    with _BuildLock(cache / ".build.lock"):
        if not force and (final / "base.qcow2.sha256").exists():
            return _load(final, rhash)
        rootfs = _build_rootfs(cache)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-image-", dir=cache))
        try:
            tree = tmp / "rootfs"
            _run(["cp", "-a", "--reflink=auto", str(rootfs), str(tree)], "copy rootfs")
            (tree / ".complete").unlink(missing_ok=True)
            for rel in _IMAGE_EMPTIED_DIRS:
                d = tree / rel
                d.mkdir(parents=True, exist_ok=True)
                for entry in d.iterdir():
                    entry.unlink()
            for rel, text in _IMAGE_FILES.items():
                p = tree / rel
                if p.is_symlink():
                    p.unlink()
                p.write_text(text)
            _copy_guestfs(guestfs, tree)
            out = tmp / "out"
            out.mkdir()
            kernels = sorted((tree / "boot").glob("vmlinuz-*"))
            initrds = sorted((tree / "boot").glob("initrd.img-*"))
            if not kernels or not initrds:
                raise DeployError(
                    what="building the lab base image failed: no kernel/initrd in the rootfs",
                    cause=f"{tree / 'boot'} has no vmlinuz-*/initrd.img-*",
                    remedy=f"remove {rootfs} and rebuild (`python -m lab image --force`)",
                )
            shutil.copyfile(kernels[-1], out / "vmlinuz")
            shutil.copyfile(initrds[-1], out / "initrd.img")
            raw = tmp / "base.raw"
            _log("mkfs.ext4 -d (no loop mount)")
            _run(["mkfs.ext4", "-q", "-F", "-L", "labroot", "-d", str(tree), str(raw),
                  f"{DISK_GIB}G"], "mkfs.ext4")
            _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                  str(out / "base.qcow2")], "qemu-img convert")
            raw.unlink()
            shutil.rmtree(tree)
            digest = _sha256_file(out / "base.qcow2")
            (out / "base.qcow2.sha256").write_text(f"{digest}  base.qcow2\n")
            (out / "recipe.json").write_text(json.dumps(recipe(guestfs), indent=1, sort_keys=True))
            os.chmod(out / "base.qcow2", 0o444)  # overlays rely on it never changing
            if final.exists():
                shutil.rmtree(final)
            os.rename(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    img = _load(final, rhash)
    _log(f"image ready: {img.qcow2} ({img.size_bytes / 2**20:.0f} MiB, sha256 {img.sha256})")
    return img


def prune(keep: BaseImage) -> list[Path]:
    """Remove cached images and debootstrap trees other than ``keep``'s (returns what went)."""
    removed = []
    current_rootfs = f"rootfs-{_hash(rootfs_recipe())[:16]}"
    for d in image_cache_dir().iterdir():
        stale_image = len(d.name) == 64 and d != keep.dir
        stale_rootfs = d.name.startswith("rootfs-") and d.name != current_rootfs
        if d.is_dir() and (stale_image or stale_rootfs):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed
