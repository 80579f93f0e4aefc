"""The lab's Ollama release tarball ``ollama-linux-amd64.tgz``: deterministic bytes, stable sha256.

Layout like the real release (``bin/ollama``, ``lib/ollama/``; Ollama's install.sh unpacks it
into ``/usr/local``). Determinism: entries sorted, mtime fixed, uid/gid 0 with empty owner
names, GNU tar format, gzip header without name and with mtime 0 (what ``gzip -n`` does).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

from lab.artefacts import programs

OLLAMA_VERSION = "0.12.9"
TARBALL_NAME = "ollama-linux-amd64.tgz"
_MTIME = 1735689600  # 2025-01-01T00:00:00Z


def tarball_entries(version: str = OLLAMA_VERSION) -> list[tuple[str, bytes | None, int]]:
    """``[(path, data or None for a directory, mode)]`` in archive order."""
    readme = (b"Lab build of the Ollama release layout: bin/ollama is a stdlib Python stand-in that\n"
              b"replays real Ollama outputs (see lab/artefacts/fakes/ollama.py). No GPU libraries here.\n")
    return [
        ("bin", None, 0o755),
        ("bin/ollama", programs.render("ollama", OLLAMA_VERSION=version).encode(), 0o755),
        ("lib", None, 0o755),
        ("lib/ollama", None, 0o755),
        ("lib/ollama/LAB-README.txt", readme, 0o644),
        ("lib/ollama/cuda_v12", None, 0o755),
        ("lib/ollama/cuda_v12/LAB-README.txt", readme, 0o644),
    ]


def tarball_bytes(version: str = OLLAMA_VERSION) -> bytes:
    """The .tgz bytes (identical for identical sources)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for path, data, mode in sorted(tarball_entries(version)):
            info = tarfile.TarInfo(path)
            info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = _MTIME, mode, 0, 0, "", ""
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, filename="", compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def tarball_sha256(version: str = OLLAMA_VERSION) -> str:
    """Hex sha256 of :func:`tarball_bytes` (what lab/lab-catalog.yml pins)."""
    return hashlib.sha256(tarball_bytes(version)).hexdigest()


def write_tarball(out_dir: Path, version: str = OLLAMA_VERSION) -> Path:
    """Write the tarball and ``<name>.sha256`` (``sha256sum`` format) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = tarball_bytes(version)
    path = out_dir / TARBALL_NAME
    path.write_bytes(data)
    (out_dir / (TARBALL_NAME + ".sha256")).write_text(f"{hashlib.sha256(data).hexdigest()}  {TARBALL_NAME}\n")
    return path


if __name__ == "__main__":  # `python -m lab.artefacts.ollama_tarball`: the sha256 to pin in lab/lab-catalog.yml
    print(tarball_sha256())
