"""The lab's PEP 503 "simple" pip index holding a stdlib-only ``vllm`` wheel.

Wheel format: PEP 427 (``{dist}-{ver}.dist-info/`` with METADATA, WHEEL, entry_points.txt,
RECORD of ``path,sha256=<urlsafe b64 nopad>,size``). Index format: PEP 503 (``/simple/`` lists
projects, ``/simple/<normalised name>/`` links files with ``#sha256=`` fragments). The zip
entries get a fixed date so the wheel's bytes (and sha256) are stable.
"""
from __future__ import annotations

import base64
import hashlib
import html
import zipfile
from pathlib import Path

from lab.artefacts.programs import FAKES_DIR

VLLM_VERSION = "0.10.2"
PKG_DIR = Path(__file__).resolve().parent / "vllm_pkg"
_ZIP_DATE = (2025, 1, 1, 0, 0, 0)


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def wheel_files(version: str = VLLM_VERSION) -> dict[str, bytes]:
    """``{path in wheel: bytes}`` of the vllm wheel (without RECORD)."""
    files: dict[str, bytes] = {}
    for src in sorted(PKG_DIR.rglob("*.py")):
        rel = src.relative_to(PKG_DIR).as_posix()
        files[rel] = src.read_text().replace("@@VLLM_VERSION@@", version).encode()
    files["vllm/_lab_gpu.py"] = (b'"""Lab GPU hardware boundary (copy of lab/artefacts/fakes/_gpulab.py)."""\n'
                                 + (FAKES_DIR / "_gpulab.py").read_bytes())
    di = f"vllm-{version}.dist-info"
    files[f"{di}/METADATA"] = (f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                               "Summary: GPU LLM deployer lab stand-in for vLLM (stdlib only; serves the OpenAI-compatible endpoints)\n"
                               "Requires-Python: >=3.9\n").encode()
    files[f"{di}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: lab-artefacts\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{di}/entry_points.txt"] = b"[console_scripts]\nvllm = vllm.entrypoints.cli.main:main\n"
    return files


def build_wheel(out_dir: Path, version: str = VLLM_VERSION) -> Path:
    """Write ``vllm-<version>-py3-none-any.whl`` into ``out_dir``; deterministic bytes."""
    files = wheel_files(version)
    di = f"vllm-{version}.dist-info"
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in sorted(files.items()))
    record += f"{di}/RECORD,,\n"
    files[f"{di}/RECORD"] = record.encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    whl = out_dir / f"vllm-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(files, key=lambda p: (p.startswith(di), p)):  # dist-info last, as PEP 427 recommends
            info = zipfile.ZipInfo(path, _ZIP_DATE)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[path])
    return whl


def write_index(www: Path, wheels: list[Path]) -> None:
    """``www/simple/index.html`` and ``www/simple/<project>/index.html`` linking ``wheels`` (under ``www/packages/``)."""
    simple = www / "simple"
    projects: dict[str, list[Path]] = {}
    for whl in wheels:
        projects.setdefault(whl.name.split("-")[0].lower().replace("_", "-"), []).append(whl)
    simple.mkdir(parents=True, exist_ok=True)
    links = "".join(f'    <a href="{p}/">{p}</a>\n' for p in sorted(projects))
    (simple / "index.html").write_text(f"<!DOCTYPE html>\n<html>\n  <body>\n{links}  </body>\n</html>\n")
    for proj, files in projects.items():
        (simple / proj).mkdir(exist_ok=True)
        rows = "".join(
            f'    <a href="../../packages/{html.escape(f.name)}#sha256={hashlib.sha256(f.read_bytes()).hexdigest()}" '
            f'data-requires-python="&gt;=3.9">{html.escape(f.name)}</a>\n' for f in sorted(files))
        (simple / proj / "index.html").write_text(f"<!DOCTYPE html>\n<html>\n  <body>\n{rows}  </body>\n</html>\n")
