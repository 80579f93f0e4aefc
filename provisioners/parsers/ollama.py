"""Parse Ollama outputs: ``ollama --version``, ``ollama list``, ``ollama ps``, the server
journal's ``inference compute`` lines, and ``GET /api/version``.

Formats from ``tests/fixtures/corpus/ollama_*`` (sources there) and ollama/ollama ``cmd/cmd.go``
(column headers ``NAME ID SIZE MODIFIED`` / ``NAME ID SIZE PROCESSOR CONTEXT UNTIL``; versions
before ~0.6 have no CONTEXT column) and ``server/routes.go``.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Any

__all__ = ["OllamaVersion", "parse_version_output", "parse_list", "parse_ps", "parse_processor",
           "parse_inference_compute", "parse_api_version", "skipped_devices"]


@dataclass
class OllamaVersion:
    """``ollama --version``: ``server_version`` (``None`` when no server answered),
    ``client_version`` (the CLI's own version), ``server_reachable`` (False when it printed
    ``could not connect to a running Ollama instance``)."""

    server_version: str | None
    client_version: str | None
    server_reachable: bool


def parse_version_output(text: str) -> OllamaVersion:
    """Parse ``ollama --version`` / ``ollama -v``. With a reachable server of the same version
    only ``ollama version is X`` is printed, so the client version is X too."""
    server = re.search(r"ollama version is (\S+)", text or "")
    client = re.search(r"client version is (\S+)", text or "")
    unreachable = bool(re.search(r"could not connect to a running Ollama instance", text or ""))
    server_version = server.group(1) if server and not unreachable else None
    client_version = client.group(1) if client else server_version
    return OllamaVersion(server_version=server_version, client_version=client_version,
                         server_reachable=not unreachable and server is not None)


def _table(text: str, first_col: str = "NAME") -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("$") or line.startswith("#"):
            continue
        cells = re.split(r"\s{2,}|\t+", line)
        if cells and cells[0] == first_col:
            header = [c.strip().lower() for c in cells]
            continue
        if header is None:
            continue
        if len(cells) < len(header) - 1:
            continue
        rows.append(dict(zip(header, (c.strip() for c in cells))))
    return rows


def parse_list(text: str) -> list[dict[str, str]]:
    """``ollama list`` -> ``[{"name", "id", "size", "modified"}]`` (size as printed, e.g.
    ``"1.3 GB"``: decimal GB from Ollama's ``format.HumanBytes``). Header only -> ``[]``."""
    return _table(text)


def parse_processor(value: str | None) -> tuple[int | None, int | None]:
    """``"100% GPU"`` -> ``(0, 100)``; ``"100% CPU"`` -> ``(100, 0)``; ``"48%/52% CPU/GPU"`` ->
    ``(48, 52)``. Returns ``(cpu_percent, gpu_percent)``, ``(None, None)`` if unrecognised."""
    v = (value or "").strip()
    m = re.fullmatch(r"(\d+)%\s*/\s*(\d+)%\s+CPU/GPU", v)
    if m:
        return int(m.group(1)), int(m.group(2))
    m = re.fullmatch(r"(\d+)%\s+(CPU|GPU)", v)
    if m:
        pct = int(m.group(1))
        return (pct, 100 - pct) if m.group(2) == "CPU" else (100 - pct, pct)
    return None, None


def parse_ps(text: str) -> list[dict[str, Any]]:
    """``ollama ps`` -> ``[{"name", "id", "size", "processor", "context"?, "until",
    "cpu_percent", "gpu_percent"}]`` (percent ints from :func:`parse_processor`)."""
    rows: list[dict[str, Any]] = []
    for row in _table(text):
        cpu, gpu = parse_processor(row.get("processor"))
        rows.append({**row, "cpu_percent": cpu, "gpu_percent": gpu})
    return rows


def _kv(line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        tokens = shlex.split(line, posix=True)
    except ValueError:
        tokens = line.split()
    for tok in tokens:
        if "=" in tok:
            k, v = tok.split("=", 1)
            out[k.strip()] = v
    return out


def parse_inference_compute(journal: str) -> list[dict[str, Any]]:
    """The GPUs (or CPU) the Ollama server found, from its log (``journalctl -u ollama``).

    Accepts the new format (>= ~0.12: ``library=CUDA compute=12.0 name=CUDA0
    description="NVIDIA GeForce RTX 5060 Ti" ... total="15.9 GiB"``) and the old one (``library=cuda
    compute=7.5 driver=11.7 name="Tesla T4" total="7.5 GiB"``). Each dict has every key=value of
    the line (strings as printed) plus ``library`` (as printed), ``gpu`` (bool: library is not
    ``cpu``), and ``description`` (falls back to ``name`` for the old format). ``total`` /
    ``available`` stay strings with their unit (GiB).
    """
    found: list[dict[str, Any]] = []
    for raw in (journal or "").splitlines():
        if "inference compute" not in raw and not re.search(r"\blibrary=\S+.*\bcompute=", raw):
            continue
        kv = _kv(raw.replace("…", " "))
        if "library" not in kv:
            continue
        lib = kv["library"]
        entry: dict[str, Any] = dict(kv)
        entry["library"] = lib
        entry["gpu"] = lib.lower() != "cpu"
        if not entry.get("description") and lib.lower() != "cpu" and kv.get("name", "").lower() != "cuda0":
            entry["description"] = kv.get("name")
        entry["compute"] = kv.get("compute") or None
        found.append(entry)
    return found


def skipped_devices(journal: str) -> list[dict[str, str]]:
    """``skipping CUDA device ... compute capability not in compiled architectures`` lines:
    ``[{"device", "cc", "reason"}]`` (ollama's GPU discovery; corpus sample (e))."""
    out = []
    for raw in (journal or "").splitlines():
        if "skipping" in raw and "device" in raw and "msg=" in raw:
            kv = _kv(raw)
            out.append({"device": kv.get("device", ""), "cc": kv.get("cc", ""), "reason": kv.get("msg", "")})
    return out


def parse_api_version(text: str) -> str | None:
    """``GET /api/version`` body ``{"version": "0.5.1"}`` -> ``"0.5.1"``; ``None`` if the text is
    not that JSON (prompt lines before the JSON are skipped)."""
    body = text or ""
    for m in re.finditer(r"\{", body):
        try:
            obj, _ = json.JSONDecoder().raw_decode(body[m.start():])
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("version") is not None:
            return str(obj["version"])
    return None
