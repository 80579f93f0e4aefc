"""The lab's signed apt repositories: ``/apt`` (suite ``stable``, component ``main``) and NVIDIA's
flat-repository shape for CUDA (``/cuda/repos/ubuntu2404/x86_64/``, ``deb [...] URL /``).

Index and signature format: Debian repository format (wiki.debian.org/DebianRepository/Format):
``Packages`` stanzas = the .deb control + ``Filename``/``Size``/``MD5sum``/``SHA256``;
``Release`` with ``MD5Sum``/``SHA256`` of the index files; ``InRelease`` (clear-signed) and
``Release.gpg`` (detached, armored). The lab signing key is generated ONCE per state directory
(``<state>/artefacts/gnupg``) with gpg(1) ``--quick-gen-key`` (ed25519, no passphrase, no expiry).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import time
from pathlib import Path

from lab.artefacts.debs import SOURCE_DATE_EPOCH
from provisioners.errors import DeployError

KEY_UID = "GPU LLM deployer lab archive <lab-archive@localhost>"


def _gpg(home: Path, *args: str, input: bytes | None = None) -> bytes:
    try:
        res = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--no-tty",
                              "--pinentry-mode", "loopback", "--passphrase", "", *args],
                             input=input, capture_output=True, check=False)
    except FileNotFoundError:
        raise DeployError(what="gpg is missing", cause="the lab signs its apt repository with gpg(1)",
                          remedy="apt-get install gnupg") from None
    finally:
        # gpg starts a gpg-agent per home that outlives the lab and every test; signing is rare
        # and the agent restarts in milliseconds, so never leave one behind.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False)
    if res.returncode != 0:
        raise DeployError(what=f"gpg {args[0]} failed", cause=res.stderr.decode(errors="replace")[-2000:],
                          remedy=f"check or delete {home} (the lab key is regenerated)")
    return res.stdout


def ensure_key(home: Path) -> str:
    """Create the lab archive key in ``home`` if absent; return its fingerprint (40 hex)."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o700)
    fpr_file = home / "lab-key.fpr"
    if fpr_file.exists():
        return fpr_file.read_text().strip()
    _gpg(home, "--quick-gen-key", KEY_UID, "ed25519", "sign", "never")
    out = _gpg(home, "--with-colons", "--list-secret-keys", KEY_UID).decode()
    fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
    fpr_file.write_text(fpr + "\n")
    return fpr


def export_key(home: Path, fpr: str, armor: bool) -> bytes:
    """The public key (``armor``: ASCII ``.asc``; else binary, the shape of ``cuda-archive-keyring.gpg``)."""
    return _gpg(home, *(["--armor"] if armor else []), "--export", fpr)


def _control_of(deb: Path) -> str:
    res = subprocess.run(["dpkg-deb", "--field", str(deb)], capture_output=True, text=True, check=True)
    return res.stdout.rstrip("\n")


def packages_index(repo_root: Path, debs: list[Path]) -> bytes:
    """``Packages`` text for ``debs`` (paths under ``repo_root``), sorted by file name."""
    stanzas = []
    for deb in sorted(debs, key=lambda p: p.name):
        data = deb.read_bytes()
        stanzas.append(_control_of(deb) + "\n"
                       + f"Filename: {deb.relative_to(repo_root).as_posix()}\n"
                       + f"Size: {len(data)}\n"
                       + f"MD5sum: {hashlib.md5(data).hexdigest()}\n"
                       + f"SHA256: {hashlib.sha256(data).hexdigest()}\n")
    return "\n".join(stanzas).encode()


def _gz(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0, filename="") as fh:
        fh.write(data)
    return buf.getvalue()


def release_text(fields: list[tuple[str, str]], files: dict[str, bytes]) -> str:
    """``Release`` with ``fields`` and MD5Sum/SHA256 of ``files`` (path relative to the Release's dir)."""
    lines = [f"{k}: {v}" for k, v in fields]
    lines.append("Date: " + time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime(SOURCE_DATE_EPOCH)))
    for title, fn in (("MD5Sum", hashlib.md5), ("SHA256", hashlib.sha256)):
        lines.append(f"{title}:")
        for name, data in sorted(files.items()):
            lines.append(f" {fn(data).hexdigest()} {len(data):>16} {name}")
    return "\n".join(lines) + "\n"


def sign_release(home: Path, fpr: str, release_dir: Path) -> None:
    """Write ``InRelease`` and ``Release.gpg`` next to ``release_dir/Release``."""
    rel = release_dir / "Release"
    (release_dir / "InRelease").write_bytes(_gpg(home, "--local-user", fpr, "--digest-algo", "SHA256", "--clearsign", "--output", "-", str(rel)))
    (release_dir / "Release.gpg").write_bytes(_gpg(home, "--local-user", fpr, "--digest-algo", "SHA256", "--armor", "--detach-sign", "--output", "-", str(rel)))


def write_suite_repo(root: Path, debs: list[Path], home: Path, fpr: str, suite: str = "stable", component: str = "main") -> None:
    """``root/dists/<suite>/...`` for ``debs`` already placed under ``root/pool/``; signed."""
    rel_dir = root / "dists" / suite
    bin_dir = rel_dir / component / "binary-amd64"
    bin_dir.mkdir(parents=True, exist_ok=True)
    pk = packages_index(root, debs)
    files = {f"{component}/binary-amd64/Packages": pk, f"{component}/binary-amd64/Packages.gz": _gz(pk)}
    for name, data in files.items():
        (rel_dir / name).write_bytes(data)
    (rel_dir / "Release").write_text(release_text(
        [("Origin", "GPU LLM deployer lab"), ("Label", "lab"), ("Suite", suite), ("Codename", suite),
         ("Architectures", "amd64 all"), ("Components", component),
         ("Description", "lab repository: fake NVIDIA driver, ubuntu-drivers, CUDA (replays real outputs)")], files))
    sign_release(home, fpr, rel_dir)


def write_flat_repo(root: Path, debs: list[Path], home: Path, fpr: str) -> None:
    """A flat repository (``deb URL /``) in ``root`` holding ``debs``; signed."""
    pk = packages_index(root, debs)
    files = {"Packages": pk, "Packages.gz": _gz(pk)}
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "Release").write_text(release_text(
        [("Origin", "GPU LLM deployer lab"), ("Label", "lab cuda"), ("Architecture", "x86_64"),
         ("Description", "lab CUDA repository (NVIDIA's ubuntu2404/x86_64 shape)")], files))
    sign_release(home, fpr, root)


def pool_path(root: Path, deb: Path) -> Path:
    """Move ``deb`` into ``root/pool/main/<p>/<package>/`` (Debian pool layout); returns the new path."""
    name = deb.name.split("_")[0]
    dest = root / "pool" / "main" / name[0] / name / deb.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(deb, dest)
    return dest
