"""vLLM component: rendered unit/env file, plan decisions from facts, apply idempotency,
readiness polling and verify checks - on real outputs where they exist."""
from __future__ import annotations

import json
import shutil

import pytest

from provisioners.errors import DeployError
from provisioners.guest import units, vllm
from provisioners.guest.units import ProbeOutput
from provisioners.redact import _clear_for_tests, redact
from tests.fixtures.corpus.samples import sample
from tests.unit.test_units import SHOW_ABSENT, SHOW_ACTIVE, FakeSession, load_vm

API_KEY = "sk-test-0123456789abcdef"
HF_TOKEN = "hf_TESTtokenABCDEFGHIJKLMNOP"

# Captured on the build host (Debian 12) with exactly the probe commands vllm.py runs.
DPKG_ALL = ("ii  build-essential 12.9\nii  curl 7.88.1-10+deb12u14\n"
            "ii  python3-dev 3.11.2-1+b1\nii  python3-venv 3.11.2-1+b1")
DPKG_NONE = ("dpkg-query: no packages found matching build-essential\n"
             "dpkg-query: no packages found matching python3-dev\n"
             "dpkg-query: no packages found matching python3-venv\n"
             "ii  curl 7.88.1-10+deb12u14")
NO_VLLM = ("Traceback (most recent call last):\n  ...\nimportlib.metadata.PackageNotFoundError: "
           "No package metadata was found for vllm")
STARTUP_LOG = sample("vllm_startup_log_v0.10.2_tinyllama.txt")  # real v0.10.2 start on a GPU
NO_TORCH = ("Traceback (most recent call last):\n  File \"<string>\", line 1, in <module>\n"
            "ModuleNotFoundError: No module named 'torch'")


@pytest.fixture(autouse=True)
def _clean_secrets():
    _clear_for_tests()
    yield
    _clear_for_tests()


def component(vm=None, **kw) -> vllm.VllmComponent:
    kw.setdefault("api_key", API_KEY)
    kw.setdefault("hf_token", HF_TOKEN)
    return vllm.VllmComponent(vm or load_vm("infrastructure-catalog.yml"), **kw)


def fresh_probes() -> dict:
    return {"user": (2, ""), "packages": (1, DPKG_NONE), "venv": (1, ""),
            "version": (1, NO_VLLM), "unit": (1, "sha256sum: /etc/systemd/system/vllm.service: "
                                                  "No such file or directory"),
            "env": (1, "stat: cannot statx '/etc/vllm/vllm.env': No such file or directory"),
            "service": (0, SHOW_ABSENT)}


def converged_probes(comp: vllm.VllmComponent) -> dict:
    return {"user": (0, "vllm:x:998:998::/var/lib/vllm:/usr/sbin/nologin"),
            "packages": (0, DPKG_ALL), "venv": (0, "present"), "version": (0, "0.10.2"),
            "unit": (0, f"{units.sha256_text(comp.unit_text())}  {vllm.UNIT_PATH}"),
            "env": (0, f"600 root:root\n{units.sha256_text(comp.env_text())}  {vllm.ENV_PATH}"),
            "service": (0, SHOW_ACTIVE)}


def facts_of(probes: dict):
    return vllm.VllmComponent.parse_facts({k: ProbeOutput(*v) for k, v in probes.items()})


# --- rendering -------------------------------------------------------------------------------------

@pytest.mark.parametrize("catalog,host,model", [
    ("infrastructure-catalog.yml", "192.168.0.140", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("lab/lab-catalog.yml", "10.0.2.15", "Qwen/Qwen2.5-0.5B-Instruct"),
])
def test_unit_renders_catalog_values(catalog, host, model):
    text = component(load_vm(catalog)).unit_text()
    [exec_start] = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    assert exec_start == (f"ExecStart=/opt/vllm/bin/vllm serve {model} --host {host} --port 8000"
                          " --gpu-memory-utilization 0.6 --max-model-len 4096")
    # the key reaches vLLM as VLLM_API_KEY from the env file; on the command line it would be in `ps`
    assert "api-key" not in exec_start
    for line in ("Restart=on-failure", "RestartSec=5", "After=network-online.target",
                 "Wants=network-online.target", "WantedBy=multi-user.target", "User=vllm",
                 "EnvironmentFile=/etc/vllm/vllm.env"):
        assert line in text.splitlines()


def test_unit_follows_catalog_changes():
    vm = load_vm(vllm={"port": 8123, "gpu_memory_utilization": 0.45, "max_model_len": 2048})
    text = component(vm).unit_text()
    assert "--port 8123 --gpu-memory-utilization 0.45 --max-model-len 2048" in text


def test_secrets_are_in_the_env_file_only():
    comp = component()
    unit = comp.unit_text()
    assert API_KEY not in unit and HF_TOKEN not in unit
    env = comp.env_text()
    assert f'VLLM_API_KEY="{API_KEY}"' in env.splitlines()
    assert f'HF_TOKEN="{HF_TOKEN}"' in env.splitlines()
    # constructing the component registered both for redaction
    assert redact(f"key {API_KEY} token {HF_TOKEN}") == "key *** token ***"


def test_without_a_key_there_is_no_api_key_flag_and_no_empty_variable():
    comp = component(api_key=None, hf_token=None)
    assert "--api-key" not in comp.unit_text()
    assert "VLLM_API_KEY" not in comp.env_text() and "HF_TOKEN" not in comp.env_text()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
@pytest.mark.parametrize("catalog", ["infrastructure-catalog.yml", "lab/lab-catalog.yml"])
def test_rendered_unit_passes_systemd_analyze_verify(catalog):
    comp = component(load_vm(catalog))
    ok, out = units.verify_unit_offline({vllm.UNIT_PATH: comp.unit_text()}, vllm.UNIT_PATH,
                                        [f"{vllm.VENV}/bin/vllm"])
    assert ok, out


# --- plan from facts ---------------------------------------------------------------------------------

def test_plan_on_a_fresh_guest_creates_everything():
    comp = component()
    changes = comp.plan(facts_of(fresh_probes()))
    fields = {c.field: c for c in changes}
    assert set(fields) == {"user", "apt packages", "venv", "version", "unit",
                           "environment file", "enabled", "running"}
    assert fields["apt packages"].desired == "build-essential python3-dev python3-venv"
    assert fields["version"].action == "create" and fields["version"].desired == "0.10.2"
    assert fields["running"].action == "update"


def test_plan_on_a_converged_guest_is_empty():
    comp = component()
    assert comp.plan(facts_of(converged_probes(comp))) == []


def test_plan_names_what_differs_and_asks_for_a_restart():
    comp = component()
    probes = converged_probes(comp)
    probes["version"] = (0, "0.10.1")
    probes["env"] = (0, f"644 root:root\n{units.sha256_text(comp.env_text())}  x")
    changes = comp.plan(facts_of(probes))
    by_field = {c.field: c for c in changes}
    assert by_field["version"].current == "0.10.1" and by_field["version"].action == "update"
    assert "mode 644" in by_field["environment file"].current
    assert by_field["running"].action == "needs-restart"
    assert "version" in by_field["running"].reason
    assert "environment file" in by_field["running"].reason


def test_a_new_api_key_changes_the_env_file_not_the_unit():
    probes = converged_probes(component())
    changes = component(api_key="sk-rotated-key-9876543210").plan(facts_of(probes))
    assert {c.field for c in changes} == {"environment file", "running"}


def test_plan_refuses_an_over_budget_vram_split():
    comp = component(gpu_memory_mib=8192)  # live card smaller than the catalog expects
    changes = comp.plan(facts_of(converged_probes(comp)))
    assert [c.action for c in changes] == ["refuse"]
    with pytest.raises(DeployError) as err:
        comp.apply(FakeSession(), facts_of(converged_probes(comp)), changes)
    assert "MiB" in err.value.cause


# --- apply -----------------------------------------------------------------------------------------

def ready_session(comp, probes: dict, health=None) -> FakeSession:
    """A session whose readiness probe answers 200 and whose /v1/models lists the model."""
    models = sample("vllm_v1_models_and_health_responses.txt", "b").splitlines()[1]
    body = models.replace("Qwen/Qwen2.5-7B-Instruct", comp.settings.model)

    def handler(cmd, _input):
        if "/v1/models" in cmd:
            return 0, body + "\n200", ""
        return 0, "", ""

    p = dict(probes)
    p["health"] = health or (0, "200 0")
    return FakeSession(p, handler)


def test_apply_on_a_fresh_guest():
    comp = component()
    probes = fresh_probes()
    session = ready_session(comp, probes)
    results = comp.apply(session, facts_of(probes), comp.plan(facts_of(probes)))
    names = [r.name for r in results if r.changed]
    assert "user vllm" in names and "venv /opt/vllm" in names and "vllm 0.10.2" in names
    assert session.ran(r"useradd --system .*--home-dir /var/lib/vllm .*--shell "
                       r"/usr/sbin/nologin vllm")
    assert session.ran(r"apt-get .*install .*build-essential python3-dev python3-venv")
    [pip] = session.ran(r"pip install")
    assert ("--index-url https://pypi.org/simple --extra-index-url "
            "https://download.pytorch.org/whl/cu128 vllm==0.10.2") in pip
    assert session.files[vllm.ENV_PATH][1:] == (0o600, "root:root")
    assert session.files[vllm.UNIT_PATH][1:] == (0o644, "root:root")
    assert session.ran("daemon-reload") and session.ran(r"systemctl enable vllm\.service")
    assert session.ran(r"systemctl restart vllm\.service")
    assert results[-1].name == "vllm.service ready"


def test_second_apply_changes_and_restarts_nothing():
    comp = component()
    probes = converged_probes(comp)
    files = {vllm.UNIT_PATH: (comp.unit_text(), 0o644, "root:root"),
             vllm.ENV_PATH: (comp.env_text(), 0o600, "root:root")}
    session = ready_session(comp, probes)
    session.files = files
    results = comp.apply(session, facts_of(probes), [])
    assert [r for r in results if r.changed] == []
    assert session.ran(r"systemctl (restart|start|daemon-reload|enable)") == []
    assert session.ran(r"pip|apt-get|useradd") == []


def test_a_version_change_reinstalls_and_restarts_once():
    comp = component()
    probes = converged_probes(comp)
    probes["version"] = (0, "0.10.1")
    session = ready_session(comp, probes)
    session.files = {vllm.UNIT_PATH: (comp.unit_text(), 0o644, "root:root"),
                     vllm.ENV_PATH: (comp.env_text(), 0o600, "root:root")}
    results = comp.apply(session, facts_of(probes), comp.plan(facts_of(probes)))
    [run] = [r for r in results if r.name == "run vllm.service"]
    assert run.changed and run.reason == "restarted: version"
    assert len(session.ran(r"systemctl restart")) == 1


def test_the_key_is_sent_on_stdin_never_on_a_command_line():
    comp = component()
    session = ready_session(comp, converged_probes(comp))
    ok, _, ids = comp.models_check(session)
    assert ok and ids == [comp.settings.model]
    [call] = [c for c in session.commands if "/v1/models" in c["cmd"]]
    assert "-H @-" in call["cmd"]
    assert call["input"] == f"Authorization: Bearer {API_KEY}\n"
    assert all(API_KEY not in c["cmd"] for c in session.commands)


# --- readiness -------------------------------------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


def test_wait_ready_tolerates_connection_refused_while_loading():
    clock = Clock()
    comp = component(sleep=clock.sleep, clock=clock)
    session = ready_session(comp, {"service": (0, SHOW_ACTIVE)},
                            health=[(0, "000 7"), (0, "000 7"), (0, "000 7"), (0, "200 0")])
    result = comp.wait_ready(session)
    assert result.status == "ok" and "4 polls" in result.reason
    assert clock.sleeps == [2.0, 4.0, 8.0]  # backoff


def test_wait_ready_stops_when_systemd_gave_up():
    clock = Clock()
    comp = component(sleep=clock.sleep, clock=clock)
    failed = SHOW_ACTIVE.replace("ActiveState=active", "ActiveState=failed").replace(
        "SubState=running", "SubState=failed")
    triton = sample("vllm_triton_no_c_compiler.txt")
    session = ready_session(comp, {"service": (0, failed)}, health=(0, "000 7"))
    session.handler = lambda cmd, _: (0, triton, "") if "journalctl" in cmd else (0, "", "")
    with pytest.raises(DeployError) as err:
        comp.wait_ready(session)
    assert "failed" in err.value.cause
    assert "Failed to find C compiler" in err.value.evidence["journalctl -u vllm.service"]
    assert "build-essential" in err.value.remedy


def test_wait_ready_times_out_after_ready_timeout_s():
    clock = Clock()
    comp = component(sleep=clock.sleep, clock=clock)
    session = ready_session(comp, {"service": (0, SHOW_ACTIVE)}, health=(0, "000 7"))
    with pytest.raises(DeployError) as err:
        comp.wait_ready(session)
    assert clock.now == comp.settings.ready_timeout_s == 1800
    assert "connection refused" in err.value.cause
    assert max(clock.sleeps) == vllm.POLL_MAX_S


def test_wait_ready_fails_when_the_model_is_not_served():
    comp = component()
    session = ready_session(comp, {"service": (0, SHOW_ACTIVE)})
    session.handler = lambda cmd, _: (0, '{"error":"Unauthorized"}\n401', "")
    with pytest.raises(DeployError) as err:
        comp.wait_ready(session)
    assert "HTTP 401" in err.value.cause


# --- verify ------------------------------------------------------------------------------------------

def test_parse_model_ids_on_real_responses():
    a = sample("vllm_v1_models_and_health_responses.txt", "a").splitlines()
    body = next(line for line in a if line.startswith('{"object"'))
    assert vllm.parse_model_ids(body) == ["acegpt13bchat"]
    assert vllm.parse_model_ids('{"error":"Unauthorized"}') == []
    assert vllm.parse_model_ids("") == []


def verify_outputs(**overrides) -> dict:
    out = {"service": (0, SHOW_ACTIVE), "health": (0, "200 0"), "version": (0, "0.10.2"),
           "compute_cap": (0, "12.0"), "torch_arch": (1, NO_TORCH), "unauthorized": (0, "401"),
           "journal": (0, STARTUP_LOG)}
    out.update(overrides)
    return {k: ProbeOutput(*v) for k, v in out.items()}


def test_verify_all_green_and_torch_skipped_honestly():
    comp = component()
    checks = comp.checks_from(verify_outputs(), (True, "HTTP 200", [comp.settings.model]))
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    [arch] = [c for c in checks if "sm_120" in c.name]
    assert arch.actual == "skipped: torch not installed"
    assert {c.name for c in checks} >= {"unit vllm.service active", "unit vllm.service enabled",
                                        "unit vllm.service Restart=on-failure",
                                        "venv /opt/vllm holds vllm 0.10.2",
                                        "vLLM API key enforced on /v1 (no key -> 401)"}
    [gpu] = [c for c in checks if c.name.startswith("vLLM runs on the GPU")]
    assert gpu.actual == "GPU KV cache 101.47 GiB, 4836272 tokens"


def test_verify_fails_on_a_torch_without_sm_120():
    # the arch list printed by the incompatible torch in corpus sample (a)
    line = next(x for x in sample("vllm_blackwell_sm120_errors.txt", "a").splitlines()
                if "supports CUDA capabilities" in x)
    archs = line.split("capabilities", 1)[1].strip(" .")
    comp = component()
    check = comp.arch_check(ProbeOutput(0, "12.0"), ProbeOutput(0, archs))
    assert not check.passed and check.expected == "sm_120" and "sm_90" in check.actual
    good = comp.arch_check(ProbeOutput(0, "12.0"), ProbeOutput(0, archs + " sm_100 sm_120"))
    assert good.passed


def test_verify_reports_each_failure():
    comp = component()
    checks = comp.checks_from(
        verify_outputs(service=(0, SHOW_ABSENT), health=(0, "000 7"), version=(1, NO_VLLM),
                       unauthorized=(0, "200"), journal=(0, "")),
        (False, "HTTP 000", []))
    failed = {c.name for c in checks if not c.passed}
    assert failed == {"unit vllm.service active", "unit vllm.service enabled",
                      "unit vllm.service Restart=on-failure", "venv /opt/vllm holds vllm 0.10.2",
                      "vLLM runs on the GPU (journal: GPU KV cache, no CUDA errors)",
                      "GET http://192.168.0.140:8000/health",
                      "GET http://192.168.0.140:8000/v1/models lists the model",
                      "vLLM API key enforced on /v1 (no key -> 401)"}


def test_verify_checks_rung_runs_in_one_probe_round_trip_plus_the_keyed_request(monkeypatch):
    monkeypatch.setattr(vllm, "_secret", lambda name: API_KEY if name == "VLLM_API_KEY" else None)
    vm = load_vm("infrastructure-catalog.yml")
    comp = component(vm)
    session = ready_session(comp, {k: (v.exit_code, v.output) for k, v in
                                   verify_outputs().items()})
    checks = vllm.verify_checks(None, session, vm)
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    probes, requests = session.commands
    assert "@@" in probes["cmd"] and "systemctl show vllm.service" in probes["cmd"]
    assert requests["cmd"].startswith("curl ") and "/v1/models" in requests["cmd"]


def test_json_fixture_is_real():
    # guard: the model list used above is the real vLLM response shape
    body = sample("vllm_v1_models_and_health_responses.txt", "b").splitlines()[1]
    assert json.loads(body)["data"][0]["owned_by"] == "vllm"


def test_compute_capability_falls_back_to_the_gpu_knowledge_base():
    # e.g. an nvidia-smi without the compute_cap query field: the catalog's 10de:2d04 -> 12.0
    comp = component()
    check = comp.arch_check(ProbeOutput(2, 'Field "compute_cap" is not a valid field to query.'),
                            ProbeOutput(1, NO_TORCH))
    assert check.expected == "sm_120" and check.actual == "skipped: torch not installed"
    older = comp.arch_check(ProbeOutput(0, "8.9"), ProbeOutput(1, NO_TORCH))
    assert older.passed and older.actual == "skipped: compute capability 8.9"


def test_secrets_come_from_provisioners_secrets_and_a_broken_file_is_not_ignored(
        monkeypatch, tmp_path):
    monkeypatch.setenv("VLLM_API_KEY", API_KEY)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("DEPLOYER_SECRETS_FILE", raising=False)
    comp = vllm.VllmComponent.from_catalog(load_vm())
    assert comp.api_key == API_KEY and comp.hf_token is None
    loose = tmp_path / "secrets.env"
    loose.write_text("HF_TOKEN=hf_abc\n")
    loose.chmod(0o644)
    monkeypatch.setenv("DEPLOYER_SECRETS_FILE", str(loose))
    monkeypatch.delenv("VLLM_API_KEY")
    with pytest.raises(DeployError):
        vllm.VllmComponent.from_catalog(load_vm())


def test_pip_command_trusts_only_plain_http_indexes():
    https = component().pip_command()
    assert "--trusted-host" not in https
    lab = component(load_vm("lab/lab-catalog.yml")).pip_command()
    assert lab.endswith("--index-url http://10.0.2.2:17080/simple --trusted-host 10.0.2.2:17080 "
                        "vllm==0.10.2")


# --- the readiness/model shell, run for real against a loopback server ------------------------------

class LocalSession:
    """Runs commands with the local bash (no sudo): only for loopback-only commands."""

    host, user = "local", "root"

    def __init__(self):
        self.commands = []

    def run(self, cmd, *, sudo=False, timeout_s=600, check=True, stream=False, env=None,
            input=None, idempotent=True):
        import subprocess
        import time as _t

        from provisioners.remote import CommandResult

        self.commands.append(cmd)
        start = _t.monotonic()
        p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, input=input,
                           timeout=timeout_s)
        return CommandResult(cmd, p.returncode, p.stdout, p.stderr, _t.monotonic() - start)


@pytest.fixture
def fake_vllm_http():
    """A 127.0.0.1 server with vLLM's /health and key-guarded /v1/models behaviour (corpus
    vllm_api_key_and_health_behaviour.txt)."""
    import http.server
    import threading

    body = sample("vllm_v1_models_and_health_responses.txt", "b").splitlines()[1].replace(
        "Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-1.5B-Instruct").encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                data, code = b'{"error":"Unauthorized"}', 401
            else:
                data, code = body, 200
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_port
    httpd.shutdown()


def loopback(comp, port):
    import dataclasses

    comp.settings = dataclasses.replace(comp.settings, host="127.0.0.1", port=port)
    return comp


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_health_and_models_shell_for_real(fake_vllm_http):
    import socket

    with socket.socket() as s:  # a port nobody listens on: "connection refused" while loading
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    session = LocalSession()
    refused = loopback(component(), closed).health_probes()["health"]
    assert session.run(refused).stdout.strip() == "000 7"
    up = loopback(component(), fake_vllm_http)
    assert session.run(up.health_probes()["health"]).stdout.strip() == "200 0"

    ok, detail, ids = up.models_check(session)
    assert ok and ids == ["Qwen/Qwen2.5-1.5B-Instruct"], detail
    assert API_KEY not in " ".join(session.commands)
    wrong = loopback(component(api_key="sk-wrong-key-000000"), fake_vllm_http)
    ok, detail, ids = wrong.models_check(session)
    assert not ok and "HTTP 401" in detail and ids == []


@pytest.mark.parametrize("corpus,label,kind", [
    ("vllm_blackwell_sm120_errors.txt", "b", "torch-lacks-gpu-arch"),
    ("vllm_triton_no_c_compiler.txt", "all", "triton-no-c-compiler"),
])
def test_gpu_check_fails_on_real_engine_errors(corpus, label, kind):
    check = vllm.gpu_check(STARTUP_LOG + sample(corpus, label))
    assert not check.passed and kind in check.actual


def test_gpu_check_accepts_the_kv_cache_memory_line_alone():
    line = next(x for x in STARTUP_LOG.splitlines() if "Available KV cache memory" in x)
    check = vllm.gpu_check(line)
    assert check.passed and check.actual == "GPU KV cache 101.47 GiB"
    assert not vllm.gpu_check("(APIServer pid=1) INFO [api_server.py:1882] vLLM API server "
                              "version 0.10.2").passed


def test_verify_without_an_api_key_fails_the_key_check():
    comp = component(api_key=None)
    assert "unauthorized" not in comp.verify_probes()
    out = verify_outputs()
    del out["unauthorized"]
    checks = comp.checks_from(out, (True, "HTTP 200", [comp.settings.model]))
    assert [c.name for c in checks if not c.passed] == [
        "vLLM API key enforced on /v1 (no key -> 401)"]
