"""The README troubleshooting tables: generated from real examples and the real error builders,
and the README holds exactly what the generator prints."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lab.artefacts import pipindex, programs
from lab.profiles import get_profile
from provisioners import cli
from provisioners import redact as redaction
from provisioners.doctor import FINDINGS, diagnose
from provisioners.doctor.examples import EXAMPLES
from provisioners.doctor.troubleshooting import (NO_CREDENTIALS, SYMPTOM_CHARS, TLS_TEXT, finding_rows,
                                                  markdown_table, pve_rows)
from provisioners.errors import DeployError
from provisioners.proxmox import credentials_from_env
from tests.fixtures.corpus.samples import samples

ROOT = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- troubleshooting:begin -->", "<!-- troubleshooting:end -->"


def test_every_finding_id_has_exactly_one_row():
    rows = finding_rows()
    assert [r.id for r in rows] == list(FINDINGS)
    table = markdown_table()
    for fid in FINDINGS:
        assert table.count(f"| `{fid}` |") == 1, fid
    for r in rows:
        assert r.symptom and r.cause and r.remedy
        assert len(r.symptom) <= SYMPTOM_CHARS


def test_readme_section_is_the_generated_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert readme.index("## Troubleshooting") < readme.index(BEGIN) < readme.index(END)
    section = readme[readme.index(BEGIN) + len(BEGIN):readme.index(END)]
    assert section == "\n" + markdown_table() + "\n", (
        "README.md's troubleshooting section is out of date: run `python -m provisioners doctor "
        "--troubleshooting` and paste its output between the troubleshooting:begin/end markers")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_produces_its_finding_with_quoted_evidence(example):
    assert example.id in FINDINGS
    found = [f for f in diagnose({example.capture: example.text}).findings if f.id == example.id]
    assert found, f"{example.source} no longer gives {example.id}"
    # the symptom is quoted from the example, never made up by the rule
    first = found[0].evidence.splitlines()[0]
    assert first[:40] in example.text


def test_every_example_names_its_source_kind():
    for e in EXAMPLES:
        assert e.source.startswith(("corpus: tests/fixtures/corpus/", "lab replay: lab/", "synthesised:")), e


@pytest.mark.parametrize("example", [e for e in EXAMPLES if e.source.startswith("corpus:")], ids=lambda e: e.id)
def test_corpus_examples_are_verbatim(example):
    m = re.match(r"corpus: tests/fixtures/corpus/(\S+) \((\w+)\)", example.source)
    assert m, example.source
    name, label = m.groups()
    sample = samples(name)[label]
    assert example.text == sample or example.text.strip() in sample


def _normalised(text: str) -> str:
    """pids and clock times vary between runs of the lab programs."""
    text = re.sub(r"\[\d+\]|pid=\d+", "[PID]", text)
    return re.sub(r"\d\d-\d\d \d\d:\d\d:\d\d", "TIME", text)


def test_secure_boot_example_is_the_lab_replay():
    (example,) = [e for e in EXAMPLES if e.id == "secure-boot-rejected-module"]
    assert example.source.startswith("lab replay: lab/artefacts/fakes/nvidia_kmod.py")
    kmod = programs.load("nvidia_kmod", DRIVER_VERSION="570.195.03", FLAVOUR="open", CUDA_VERSION="12.8")
    status, msgs = kmod.kernel_messages(get_profile("secure-boot").guest_hw(), "open", "570.195.03")
    assert status == "rejected"
    assert _normalised(example.text.strip()) == _normalised(msgs[0][1])


def test_vram_example_is_the_lab_replay(tmp_path):
    (example,) = [e for e in EXAMPLES if e.id == "vllm-insufficient-free-vram"]
    assert example.source.startswith("lab replay: lab/artefacts/vllm_pkg/")
    site = tmp_path / "site"
    for rel, data in pipindex.wheel_files().items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_bytes(data)
    run = tmp_path / "run"
    (run / "procs").mkdir(parents=True)
    (run / "state.json").write_text(json.dumps({"boot_id": "b", "version": "570.195.03", "branch": "570",
                                                "flavour": "open", "status": "ok", "cuda_version": "12.8"}))
    # the source says: Ollama holds 4000 MiB
    (run / "procs" / "4242.json").write_text(json.dumps({"pid": 4242, "name": "/usr/local/bin/ollama",
                                                         "used_mib": 4000, "type": "C", "static": True}))
    hw = tmp_path / "hw.json"
    hw.write_text(get_profile("rtx5060ti").guest_hw_json())
    env = dict(os.environ, LAB_GPU_HW=str(hw), LAB_NVIDIA_RUN=str(run), LAB_BOOT_ID="b", TZ="UTC",
               PYTHONPATH=str(site), VLLM_LAB_LOAD_DELAY_S="0.1", PYTHONUNBUFFERED="1")
    out = subprocess.run([sys.executable, "-m", "vllm.entrypoints.cli.main", "serve",
                          "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--port", "1"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    replay = _normalised(out.stdout)
    for line in example.text.splitlines():
        assert _normalised(line) in replay, line


def _fragments(text: str) -> list[str]:
    """The fixed words of a PVE message: the parts outside its quoted values."""
    return [f.strip() for f in re.split(r"'[^']*'", text) if len(f.strip()) > 3]


def test_pve_texts_are_pves_words_as_the_code_and_lab_know_them():
    corpus = (ROOT / "tests/fixtures/corpus/pve_passthrough_error_texts.md").read_text(encoding="utf-8")
    own = {ROOT / "provisioners/doctor/troubleshooting.py", ROOT / "provisioners/doctor/examples.py"}
    code = "\n".join(p.read_text(encoding="utf-8") for p in [*(ROOT / "provisioners").rglob("*.py"),
                                                             ROOT / "lab/gpupve.py"] if p not in own)
    code = re.sub(r'"\s*\n\s*"', "", code)  # join implicitly concatenated string literals
    quoted = [r.pve_text for r in pve_rows() if r.pve_text and r.pve_text != TLS_TEXT]
    assert len(quoted) >= 4
    for text in quoted:
        for fragment in _fragments(text):
            assert fragment in corpus, f"{fragment!r} is not PVE's wording (corpus)"
            assert fragment in code, f"{fragment!r} is not in provisioners/ or the lab's fake PVE"


def test_pve_rows_come_from_the_real_error_builders(monkeypatch):
    rows = pve_rows()
    assert len(rows) >= 8
    for r in rows:
        assert r.reported and r.remedy
    for var in [v for v in os.environ if v.startswith("PROXMOX_")]:
        monkeypatch.delenv(var)
    with pytest.raises(DeployError) as err:
        credentials_from_env()
    assert (err.value.what, err.value.cause, err.value.remedy) == (
        NO_CREDENTIALS.what, NO_CREDENTIALS.cause, NO_CREDENTIALS.remedy)
    reported = "\n".join(r.reported for r in rows)
    assert "IOMMU is off on node" in reported          # check_gpu, through _stop_on_errors
    assert "conflict: VMID 140 is used by" in reported  # check_vmid: an unmanaged VM is left alone
    assert "lacks Mapping.Use" in reported              # check_mapping


def test_cli_prints_the_table(capsys):
    assert cli.main(["doctor", "--troubleshooting"]) == 0
    assert capsys.readouterr().out == markdown_table() + "\n"


def test_cli_refuses_a_source_with_troubleshooting(capsys):
    assert cli.main(["doctor", "--troubleshooting", "--local"]) == 1
    assert "--troubleshooting takes no source" in capsys.readouterr().err


def test_table_is_redacted():
    table = markdown_table()
    assert "| `" in table and "win11-gaming" in table
    redaction.register_secret("win11-gaming")
    try:
        assert "win11-gaming" not in markdown_table()
    finally:
        redaction._clear_for_tests()
