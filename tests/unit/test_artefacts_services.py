"""The lab's fake vLLM (pip wheel) and Ollama (release tarball) run on the host, on loopback only."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lab.artefacts import ollama_tarball, pipindex, programs
from lab.profiles import get_profile

CORPUS = Path(__file__).resolve().parents[1] / "fixtures" / "corpus"
BOOT = "11111111-2222-3333-4444-555555555555"
OK = {"boot_id": BOOT, "version": "570.195.03", "branch": "570", "flavour": "open", "status": "ok", "cuda_version": "12.8"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_env(tmp_path: Path, driver_ok: bool = True, procs: list[dict] | None = None, profile: str = "rtx5060ti") -> dict:
    run = tmp_path / "run"
    (run / "procs").mkdir(parents=True, exist_ok=True)
    if driver_ok:
        (run / "state.json").write_text(json.dumps(OK))
    for p in procs or []:
        (run / "procs" / f"{p['pid']}.json").write_text(json.dumps(dict(p, static=True)))
    hw = tmp_path / "hw.json"
    hw.write_text(get_profile(profile).guest_hw_json())
    return dict(os.environ, LAB_GPU_HW=str(hw), LAB_NVIDIA_RUN=str(run), LAB_BOOT_ID=BOOT, TZ="UTC")


def get(url: str, headers: dict | None = None, data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}: {proc.stdout.read() if proc.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("port never opened")


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out or ""


# ---------------------------------------------------------------- vLLM
@pytest.fixture(scope="module")
def vllm_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vllm_site")
    for rel, data in pipindex.wheel_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def vllm(vllm_path: Path, env: dict, *args: str, delay: str = "0.8") -> subprocess.Popen:
    env = dict(env, PYTHONPATH=str(vllm_path), VLLM_LAB_LOAD_DELAY_S=delay, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_vllm_logs_non_default_args_like_the_corpus(vllm_path):
    sys.path.insert(0, str(vllm_path))
    try:
        from vllm.entrypoints.cli import main as cli
    finally:
        sys.path.remove(str(vllm_path))
    line = next(line for line in (CORPUS / "vllm_startup_log_v0.10.2_tinyllama.txt").read_text().splitlines() if "non-default args" in line)
    ns = cli.parser().parse_args(["serve", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--host", "0.0.0.0",
                                  "--gpu-memory-utilization", "0.85", "--enforce-eager"])
    assert "non-default args: %s" % cli.non_default_args(ns) == line.split("] ", 1)[1]
    ns = cli.parser().parse_args(["serve", "m", "--port", "8001", "--api-key", "k3y", "--served-model-name", "x"])
    assert list(cli.non_default_args(ns)) == ["model_tag", "port", "api_key", "model", "served_model_name"]


def test_vllm_serves_after_load_with_api_key(tmp_path, vllm_path):
    port = free_port()
    proc = vllm(vllm_path, lab_env(tmp_path), "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "--host", "127.0.0.1",
                "--port", str(port), "--api-key", "s3cret-key", "--served-model-name", "tiny", delay="1.5")
    try:
        time.sleep(0.5)
        with pytest.raises(OSError):          # still "loading the model": connection refused
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        wait_port(port, proc)
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/health") == (200, b"")
        assert get(base + "/version") == (200, b'{"version":"0.10.2"}')
        assert get(base + "/v1/models") == (401, b'{"error":"Unauthorized"}')
        assert get(base + "/v1/models", {"Authorization": "Bearer wrong"})[0] == 401
        code, body = get(base + "/v1/models", {"Authorization": "Bearer s3cret-key"})
        models = json.loads(body)
        assert code == 200 and models["object"] == "list"
        entry = models["data"][0]
        assert (entry["id"], entry["root"], entry["owned_by"], entry["max_model_len"]) == (
            "tiny", "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "vllm", 2048)
        assert set(entry["permission"][0]) >= {"allow_sampling", "organization", "is_blocking"}
        req = json.dumps({"model": "tiny", "prompt": "Hello", "max_tokens": 5}).encode()
        hdr = {"Authorization": "Bearer s3cret-key", "Content-Type": "application/json"}
        c1, b1 = get(base + "/v1/completions", hdr, req)
        c2, b2 = get(base + "/v1/completions", hdr, req)
        assert c1 == 200 and b1 == b2 and len(json.loads(b1)["choices"][0]["text"].split()) == 5
    finally:
        out = stop(proc)
    assert "Starting vLLM API server 0 on http://127.0.0.1:%d" % port in out
    assert re.search(r"^\(APIServer pid=\d+\) INFO \d\d-\d\d \d\d:\d\d:\d\d \[api_server.py:1882\] vLLM API server version 0.10.2$", out, re.M)
    assert out.index("Model loading took") < out.index("Starting vLLM API server")


def test_vllm_refuses_when_gpu_memory_is_not_free(tmp_path, vllm_path):
    env = lab_env(tmp_path, procs=[{"pid": 4242, "name": "/usr/local/bin/ollama", "used_mib": 4000, "type": "C"}])
    proc = vllm(vllm_path, env, "m", "--port", str(free_port()))
    out = stop_after_exit(proc)
    assert proc.returncode == 1
    # (16311 - 15 - 4000) MiB free of 16311 MiB; 0.9 requested (vllm/v1/worker/gpu_worker.py wording)
    assert ("ValueError: Free memory on device (12.01/15.93 GiB) on startup is less than desired GPU memory "
            "utilization (0.9, 14.34 GiB). Decrease GPU memory utilization or reduce GPU memory used by other processes.") in out


def stop_after_exit(proc: subprocess.Popen, timeout: float = 30) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


def test_vllm_fails_without_a_loaded_driver(tmp_path, vllm_path):
    proc = vllm(vllm_path, lab_env(tmp_path, driver_ok=False), "m", "--port", str(free_port()))
    out = stop_after_exit(proc)
    assert proc.returncode == 1
    assert "RuntimeError: Found no NVIDIA driver on your system." in out and "Process EngineCore_0:" in out


def test_vllm_crash_once_fault(tmp_path, vllm_path):
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "vllm-crash-once").write_text("")
    port = free_port()
    env = dict(lab_env(tmp_path), VLLM_LAB_FAULT_DIR=str(faults))
    proc = vllm(vllm_path, env, "m", "--port", str(port), "--host", "127.0.0.1")
    wait_port(port, proc)
    stop_after_exit(proc)
    assert proc.returncode == 1
    assert not (faults / "vllm-crash-once").exists()
    proc = vllm(vllm_path, env, "m", "--port", str(port), "--host", "127.0.0.1")   # the next one stays up
    try:
        wait_port(port, proc)
        time.sleep(2.5)
        assert proc.poll() is None
    finally:
        stop(proc)


# ---------------------------------------------------------------- Ollama
def ollama_prog(tmp_path: Path) -> Path:
    p = tmp_path / "ollama"
    p.write_text(programs.render("ollama", OLLAMA_VERSION=ollama_tarball.OLLAMA_VERSION))
    p.chmod(0o755)
    return p


def test_ollama_version_without_server_replays_corpus(tmp_path):
    env = dict(lab_env(tmp_path), OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    res = subprocess.run([sys.executable, str(ollama_prog(tmp_path)), "--version"], capture_output=True, text=True, env=env, timeout=30)
    text = (CORPUS / "ollama_cli_version_list_ps_outputs.txt").read_text()
    block = text.split("$ ollama --version\n", 1)[1].split("    server running", 1)[0]
    assert res.stdout == block


def test_ollama_tables_use_tabwriter_layout_of_the_corpus():
    mod = programs.load("ollama", OLLAMA_VERSION="0.12.9")
    text = (CORPUS / "ollama_cli_version_list_ps_outputs.txt").read_text()
    listing = text.split("$ ollama list\n", 1)[1].split("\n\n", 1)[0] + "\n"
    rows = [re.split(r" {2,}", line) for line in listing.splitlines()]
    assert mod.tabwrite(rows) == listing
    assert mod.human_bytes(1321098329) == "1.3 GB" and mod.human_bytes(4920753328) == "4.9 GB"
    assert mod.tabwrite([["NAME", "ID", "SIZE", "MODIFIED"]]) == "NAME    ID    SIZE    MODIFIED\n"


@pytest.mark.parametrize("driver_ok", [True, False])
def test_ollama_serve_api_and_cli(tmp_path, driver_ok):
    port = free_port()
    env = dict(lab_env(tmp_path, driver_ok=driver_ok), OLLAMA_HOST=f"127.0.0.1:{port}", OLLAMA_MODELS=str(tmp_path / "models"))
    prog = ollama_prog(tmp_path)

    def cli(*args: str) -> str:
        res = subprocess.run([sys.executable, str(prog), *args], capture_output=True, text=True, env=env, timeout=30)
        assert res.returncode == 0, res.stderr
        return res.stdout

    srv = subprocess.Popen([sys.executable, str(prog), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, srv)
        base = f"http://127.0.0.1:{port}"
        assert get(base + "/") == (200, b"Ollama is running")
        assert get(base + "/api/version") == (200, b'{"version":"0.12.9"}')
        assert get(base + "/api/tags") == (200, b'{"models":[]}')
        assert get(base + "/api/ps") == (200, b'{"models":[]}')
        assert cli("--version") == "ollama version is 0.12.9\n"
        assert cli("list") == "NAME    ID    SIZE    MODIFIED\n"
        assert cli("ps") == "NAME    ID    SIZE    PROCESSOR    CONTEXT    UNTIL\n"
        assert cli("pull", "llama3.2:1b").splitlines()[-1] == "success "
        assert re.match(r"^NAME {11}ID {14}SIZE {6}MODIFIED\nllama3\.2:1b {4}[0-9a-f]{12} {4}1\.3 GB {4}.* ago\n$", cli("list"))
        answer = cli("run", "llama3.2:1b", "Why is the sky blue?")
        assert answer == cli("run", "llama3.2:1b", "Why is the sky blue?") and answer.strip()
        ps = cli("ps").splitlines()
        assert ps[1].split("    ")[3].strip() == ("100% GPU" if driver_ok else "100% CPU")
        assert "4096" in ps[1] and ps[1].endswith("minutes from now")
        tags = json.loads(get(base + "/api/ps")[1])["models"][0]
        assert tags["size_vram"] == (tags["size"] if driver_ok else 0)
    finally:
        log = stop(srv)
    assert f'msg="Listening on 127.0.0.1:{port} (version 0.12.9)"' in log
    line = next(line for line in log.splitlines() if 'msg="inference compute"' in line)
    if driver_ok:
        assert re.search(r'level=INFO source=types\.go:42 msg="inference compute" id=GPU-\S+ filter_id="" library=CUDA '
                         r'compute=12\.0 name=CUDA0 description="NVIDIA GeForce RTX 5060 Ti" libdirs=ollama,cuda_v12 '
                         r'driver=12\.8 pci_id=0000:01:00\.0 type=discrete total="15\.9 GiB" available="\d+\.\d GiB"$', line)
    else:
        assert re.search(r'msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama '
                         r'driver="" pci_id="" type="" total="[\d.]+ GiB" available="[\d.]+ GiB"$', line)


def test_ollama_host_parsing():
    mod = programs.load("ollama", OLLAMA_VERSION="0.12.9")
    for value, expected in (("", ("127.0.0.1", 11434)), ("0.0.0.0", ("0.0.0.0", 11434)),
                            ("10.0.2.15:11434", ("10.0.2.15", 11434)), ("http://127.0.0.1:9/", ("127.0.0.1", 9))):
        os.environ["OLLAMA_HOST"] = value
        try:
            assert mod.host_port() == expected
        finally:
            del os.environ["OLLAMA_HOST"]
