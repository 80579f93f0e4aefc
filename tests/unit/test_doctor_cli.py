"""Doctor CLI, transcripts, directory captures, live collection (with stub programs)."""
import json
import os
import stat
from pathlib import Path

import pytest

from provisioners import cli, doctor
from provisioners.errors import DeployError
from provisioners import redact as redaction
from tests.fixtures.corpus.samples import CORPUS, sample, text

TRANSCRIPTS = Path(__file__).resolve().parents[1] / "fixtures" / "transcripts"


def run_cli(argv, capsys):
    rc = cli.main(["doctor", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_from_transcript_json_failing(capsys):
    rc, out, _ = run_cli(["--from", str(TRANSCRIPTS / "rtx5060ti_closed_driver_recommended.txt"), "--json"], capsys)
    data = json.loads(out)
    assert set(data) == {"gpus", "findings"}
    assert data["gpus"] == [{"name": "NVIDIA GeForce RTX 5060 Ti", "pci_id": "10de:2d04", "memory_total_mib": None,
                             "driver_version": None, "open_kernel_module": None, "compute_capability": "12.0"}]
    assert [f["id"] for f in data["findings"]] == ["driver-not-loaded", "closed-driver-recommended"]
    for f in data["findings"]:
        assert set(f) == {"id", "severity", "evidence", "cause", "remedy"}
    assert "nvidia-driver-570-open" in data["findings"][1]["remedy"]
    assert rc == doctor.EXIT_FINDINGS


def test_from_transcript_json_healthy(capsys):
    rc, out, _ = run_cli(["--from", str(TRANSCRIPTS / "rtx5060ti_healthy.txt"), "--json"], capsys)
    data = json.loads(out)
    assert data == {"gpus": [{"name": "NVIDIA GeForce RTX 5060 Ti", "pci_id": "10de:2d04", "memory_total_mib": 16311,
                              "driver_version": "595.71.05", "open_kernel_module": None,
                              "compute_capability": "12.0"}], "findings": []}
    assert rc == 0


def test_raw_corpus_transcript_file(capsys):
    # this corpus file is itself a pasted transcript (lspci, dmesg, nvidia-smi sections)
    rc, out, _ = run_cli(["--from", str(CORPUS / "dmesg_blackwell_closed_module_requires_open.txt"), "--json"], capsys)
    data = json.loads(out)
    assert [f["id"] for f in data["findings"]] == ["closed-module-on-open-only-gpu"]
    assert data["gpus"][0]["pci_id"] == "10de:2c58" and data["gpus"][0]["open_kernel_module"] is False
    assert "nvidia-driver-580-open" in data["findings"][0]["remedy"]


def test_text_output(capsys):
    rc, out, _ = run_cli(["--from", str(TRANSCRIPTS / "rtx5060ti_closed_driver_recommended.txt")], capsys)
    assert "[warning] closed-driver-recommended" in out
    assert "NVIDIA GeForce RTX 5060 Ti  pci 10de:2d04" in out
    rc, out, _ = run_cli(["--from", str(TRANSCRIPTS / "rtx5060ti_healthy.txt")], capsys)
    assert "No known problem found." in out and rc == 0


def test_directory_of_captures(tmp_path, capsys):
    (tmp_path / "lspci.txt").write_text(text("lspci-nnk_rtx5060ti_nvidia_bound.txt"))
    (tmp_path / "ubuntu-drivers.txt").write_text(text("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt"))
    (tmp_path / "vllm.log").write_text(sample("vllm_blackwell_sm120_errors.txt", "c"))
    (tmp_path / "notes.md").write_text("rebooted twice, same problem\n")  # unknown name, no known wording
    rc, out, _ = run_cli([str(tmp_path), "--json"], capsys)
    assert [f["id"] for f in json.loads(out)["findings"]] == ["torch-lacks-gpu-arch", "closed-driver-recommended"]


@pytest.mark.parametrize("argv,msg", [
    ([], "exactly one source"),
    (["--local", "--from", "x"], "exactly one source"),
    (["--from", "/nonexistent/t.txt"], "not found"),
    (["/nonexistent-dir"], "not found"),
    (["--ssh", "bad target!"], "bad --ssh target"),
])
def test_operator_errors_are_clear(argv, msg, capsys):
    rc, out, err = run_cli(argv, capsys)
    assert rc == 1 and msg in err and "Traceback" not in err


def test_output_is_redacted(tmp_path, capsys):
    redaction.register_secret("hf_SECRETTOKEN123")
    try:
        t = tmp_path / "t.txt"
        t.write_text("$ journalctl -u vllm\n(EngineCore_0 pid=1) ValueError: Free memory on device cuda:0 "
                     "(1.00/15.93 GiB) on startup is less than desired GPU memory utilization (0.9, 14.34 GiB). "
                     "token hf_SECRETTOKEN123\n")
        rc, out, _ = run_cli(["--from", str(t), "--json"], capsys)
        assert "hf_SECRETTOKEN123" not in out and "***" in out
        assert json.loads(out)["findings"][0]["id"] == "vllm-insufficient-free-vram"
    finally:
        redaction._clear_for_tests()


def _stub(bin_dir: Path, name: str, fixture_text: str, rc: int = 0) -> None:
    data = bin_dir / f"{name}.out"
    data.write_text(fixture_text)
    script = bin_dir / name
    script.write_text(f"#!/bin/sh\ncat '{data}'\nexit {rc}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_local_collection_with_stub_programs(tmp_path, monkeypatch):
    # stub programs replay real corpus outputs; everything else is absent from PATH
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _stub(bin_dir, "lspci", text("lspci-nn_rtx5060ti_proxmox_and_iommu.txt").split("(b)")[0].split("\n", 1)[1])
    _stub(bin_dir, "ubuntu-drivers", text("ubuntu-drivers-devices_rtx5060ti_ppa_recommends_closed_570.txt"))
    _stub(bin_dir, "nvidia-smi", sample("nvidia-smi_failure_messages.txt", "2"), rc=6)
    _stub(bin_dir, "dmesg", "[    5.0] nvidia: module verification failed: signature and/or required key missing "
                            "- tainting kernel\n")
    for tool in ("grep", "tail", "cat"):
        real = next(Path(d) / tool for d in os.environ["PATH"].split(":") if (Path(d) / tool).exists())
        (bin_dir / tool).symlink_to(real)
    monkeypatch.setenv("PATH", str(bin_dir))
    captures = doctor.collect(doctor.local_runner(timeout_s=20))
    assert set(captures) == set(doctor.LIVE_COMMANDS)
    assert "No devices were found" in captures["nvidia-smi"]
    diag = doctor.diagnose(captures)
    assert diag.ids == ["driver-not-loaded", "closed-driver-recommended"]
    assert diag.gpus[0].pci_id == "10de:2d04"


def test_collect_uses_given_runner_and_keeps_errors():
    seen = []

    def runner(cmd):
        seen.append(cmd)
        if cmd.startswith("nvidia-smi 2>&1"):
            raise DeployError("ssh dropped")
        return ""

    caps = doctor.collect(runner)
    assert seen == list(doctor.LIVE_COMMANDS.values())
    assert caps["nvidia-smi"] == "ssh dropped"


def test_live_commands_are_read_only():
    writes = ("install", "remove", "purge", "rm ", "modprobe", "reboot", "systemctl restart", ">", "tee", "mokutil --import")
    for cmd in doctor.LIVE_COMMANDS.values():
        stripped = cmd.replace("2>&1", "").replace("2>/dev/null", "")
        assert not any(w in stripped for w in writes), cmd


def test_collect_session_uses_remote_session_run():
    class Result:
        def __init__(self, out):
            self.stdout, self.stderr = out, ""

    class FakeSession:
        def __init__(self):
            self.calls = []

        def run(self, cmd, check=True, timeout_s=600):
            self.calls.append((cmd, check))
            return Result(sample("nvidia-smi_failure_messages.txt", "4") if cmd.startswith("nvidia-smi 2>&1") else "")

    s = FakeSession()
    d = doctor.diagnose(doctor.collect_session(s))
    assert all(check is False for _, check in s.calls) and len(s.calls) == len(doctor.LIVE_COMMANDS)
    assert d.ids == ["driver-library-mismatch"]


def test_ssh_uses_remote_session(monkeypatch, capsys):
    import provisioners.remote as remote

    made = {}

    class Result:
        def __init__(self, out):
            self.stdout, self.stderr, self.exit_code = out, "", 0

    class FakeSession:
        def __init__(self, host, port, user, key_file, **kw):
            made.update(host=host, port=port, user=user, key_file=key_file, closed=False)

        def connect(self, wait_s=300):
            made["connected"] = True
            return self

        def run(self, cmd, check=True, timeout_s=600):
            assert check is False
            return Result(text("lspci-nnk_rtx5060ti_nvidia_bound.txt") if cmd.startswith("lspci") else
                          sample("nvidia-smi_failure_messages.txt", "1") if cmd.startswith("nvidia-smi 2>&1") else "")

        def close(self):
            made["closed"] = True

    monkeypatch.setattr(remote, "RemoteSession", FakeSession)
    rc, out, _ = run_cli(["--ssh", "ubuntu@127.0.0.1:2222", "-i", "/tmp/key", "--json"], capsys)
    assert (made["host"], made["port"], made["user"], made["key_file"]) == ("127.0.0.1", 2222, "ubuntu", "/tmp/key")
    assert made["connected"] and made["closed"]
    data = json.loads(out)
    assert [f["id"] for f in data["findings"]] == ["driver-not-loaded"] and rc == doctor.EXIT_FINDINGS
    assert data["gpus"][0]["pci_id"] == "10de:2d04"


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    p = subprocess.run([sys.executable, "-m", "provisioners", "doctor", "--from",
                        str(TRANSCRIPTS / "rtx5060ti_closed_driver_recommended.txt"), "--json"],
                       cwd=root, capture_output=True, text=True, timeout=60)
    assert p.returncode == doctor.EXIT_FINDINGS, p.stderr
    assert [f["id"] for f in json.loads(p.stdout)["findings"]] == ["driver-not-loaded", "closed-driver-recommended"]
