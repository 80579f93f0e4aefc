"""Ollama component: templates, sha256 refusal, plan decisions from real outputs, GPU check
from real journal lines, apply idempotency."""
from __future__ import annotations

import hashlib
import shutil

import pytest

from provisioners.errors import DeployError
from provisioners.guest import ollama, units
from provisioners.guest.units import ProbeOutput
from tests.fixtures.corpus.samples import sample
from tests.unit.test_units import SHOW_ABSENT, SHOW_ACTIVE, FakeSession, load_vm

# dpkg-query line captured on the build host (Debian 12), same format string as the probe.
CURL_II = "ii  curl 7.88.1-10+deb12u14"
TARBALL_SHA = hashlib.sha256(b"pretend tarball").hexdigest()

VERSION_SAMPLES = sample("ollama_cli_version_list_ps_outputs.txt", "a")
# (a) has two captures: the server down, then up (same version 0.12.9)
VERSION_DOWN = "\n".join(VERSION_SAMPLES.splitlines()[2:4])
VERSION_UP = VERSION_SAMPLES.splitlines()[-2]
VERSION_MISMATCH = "\n".join(sample("ollama_cli_version_list_ps_outputs.txt", "c")
                             .splitlines()[2:4])
LIST = "\n".join(sample("ollama_cli_version_list_ps_outputs.txt", "d").splitlines()[1:4])
SMI_FAIL = sample("nvidia-smi_failure_messages.txt", "1").strip()
# nvidia-smi -L shape (nvidia-smi(1)); synthesised with the reference card's name.
SMI_L = "GPU 0: NVIDIA GeForce RTX 5060 Ti (UUID: GPU-00000000-0000-0000-0000-000000000000)"

JOURNAL = sample("ollama_journal_gpu_discovery_lines.txt", "a").splitlines()[0]  # L4, CUDA
JOURNAL_CPU = sample("ollama_journal_gpu_discovery_lines.txt", "d").strip()
JOURNAL_OLD = sample("ollama_journal_gpu_discovery_lines.txt", "f").strip()  # library=cuda


def vm_with(**ollama_fields):
    fields = {"sha256": TARBALL_SHA}
    fields.update(ollama_fields)
    return load_vm("lab/lab-catalog.yml", ollama=fields)


def component(vm=None) -> ollama.OllamaComponent:
    clock = {"now": 0.0}

    def sleep(s):
        clock["now"] += s

    return ollama.OllamaComponent(vm or vm_with(), sleep=sleep, clock=lambda: clock["now"])


def fresh_probes():
    return {"nvidia_smi": (0, SMI_L), "curl": (0, CURL_II), "user": (2, ""),
            "groups": (1, "id: 'ollama': no such user"), "gpu_groups": (0, "render\nvideo"),
            "version": (127, "bash: line 1: /usr/local/bin/ollama: No such file or directory"),
            "unit": (1, "sha256sum: x: No such file or directory"),
            "override": (1, "sha256sum: x: No such file or directory"),
            "service": (0, SHOW_ABSENT)}


def converged_probes(comp):
    return {"nvidia_smi": (0, SMI_L), "curl": (0, CURL_II),
            "user": (0, "ollama:x:997:997::/usr/share/ollama:/bin/false"),
            "groups": (0, "ollama render video"), "gpu_groups": (0, "render\nvideo"),
            "version": (0, VERSION_UP),
            "unit": (0, f"{units.sha256_text(comp.unit_text())}  {ollama.UNIT_PATH}"),
            "override": (0, f"{units.sha256_text(comp.override_text())}  x"),
            "service": (0, SHOW_ACTIVE)}


def facts_of(comp, probes):
    return comp.parse_facts({k: ProbeOutput(*v) for k, v in probes.items()})


# --- templates --------------------------------------------------------------------------------------

def test_override_sets_ollama_host_from_the_catalog():
    assert component(vm_with(bind="127.0.0.1:11434")).override_text().splitlines()[-2:] == [
        "[Service]", 'Environment="OLLAMA_HOST=127.0.0.1:11434"']
    assert 'Environment="OLLAMA_HOST=0.0.0.0:11434"' in component().override_text()


def test_unit_is_the_install_sh_unit_enabled_for_multi_user():
    text = component().unit_text().splitlines()
    for line in ("ExecStart=/usr/local/bin/ollama serve", "User=ollama", "Group=ollama",
                 "After=network-online.target", "WantedBy=multi-user.target"):
        assert line in text
    # the bind lives only in the drop-in
    assert not any("OLLAMA_HOST" in line for line in text if not line.startswith("#"))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_unit_and_drop_in_pass_systemd_analyze_verify():
    comp = component()
    ok, out = units.verify_unit_offline(
        {ollama.UNIT_PATH: comp.unit_text(), ollama.OVERRIDE_PATH: comp.override_text()},
        ollama.UNIT_PATH, [ollama.BINARY])
    assert ok, out


def test_connect_address_for_wildcard_and_specific_binds():
    assert component(vm_with(bind="0.0.0.0:11434")).settings.connect_host_port == \
        "127.0.0.1:11434"
    assert component(vm_with(bind="10.0.2.15:11500")).settings.connect_host_port == \
        "10.0.2.15:11500"


# --- plan -----------------------------------------------------------------------------------------

def test_plan_on_a_fresh_guest():
    comp = component()
    changes = comp.plan(facts_of(comp, fresh_probes()))
    fields = {c.field: c for c in changes}
    assert set(fields) == {"user", "version", "unit", "override", "enabled", "running"}
    assert fields["version"].action == "create" and fields["version"].desired == "0.12.9"


def test_plan_refuses_while_nvidia_smi_fails():
    comp = component()
    probes = fresh_probes()
    probes["nvidia_smi"] = (9, SMI_FAIL)
    changes = comp.plan(facts_of(comp, probes))
    [refusal] = [c for c in changes if c.action == "refuse"]
    assert refusal.field == "driver" and "couldn't communicate" in refusal.current
    session = FakeSession()
    with pytest.raises(DeployError) as err:
        comp.apply(session, facts_of(comp, probes), changes)
    assert "driver" in err.value.cause
    assert session.commands == [] and session.writes == []


def test_plan_refuses_the_placeholder_sha256_only_when_it_must_download():
    comp = component(vm_with(sha256="0" * 64))
    [refusal] = [c for c in comp.plan(facts_of(comp, fresh_probes())) if c.action == "refuse"]
    assert refusal.field == "sha256"
    assert comp.plan(facts_of(comp, converged_probes(comp))) == []


def test_plan_on_a_converged_guest_is_empty_and_reads_the_version_from_real_output():
    comp = component()
    facts = facts_of(comp, converged_probes(comp))
    assert facts.values["version"] == "0.12.9"
    assert comp.plan(facts) == []
    # server stopped: the client version still counts as installed
    probes = converged_probes(comp)
    probes["version"] = (0, VERSION_DOWN)
    assert facts_of(comp, probes).values["version"] == "0.12.9"


def test_plan_upgrades_when_the_binary_is_another_version():
    comp = component()
    probes = converged_probes(comp)
    probes["version"] = (0, VERSION_MISMATCH)  # server 0.6.2, client 0.4.7
    changes = comp.plan(facts_of(comp, probes))
    by_field = {c.field: c for c in changes}
    assert by_field["version"].current == "0.4.7"
    assert by_field["running"].action == "needs-restart"


def test_plan_adds_missing_gpu_groups():
    comp = component()
    probes = converged_probes(comp)
    probes["groups"] = (0, "ollama")
    probes["gpu_groups"] = (0, "video")  # no render group on this guest
    [change] = comp.plan(facts_of(comp, probes))
    assert change.field == "groups" and change.desired == "video"


# --- sha256 -----------------------------------------------------------------------------------------

def test_sha_mismatch_is_refused_with_both_hashes_and_nothing_extracted():
    comp = component()
    wrong = hashlib.sha256(b"something else").hexdigest()

    def handler(cmd, _):
        if "curl -fsSL" in cmd:
            return 0, wrong + "\n", ""
        return 0, "", ""

    session = FakeSession(handler=handler)
    probes = fresh_probes()
    with pytest.raises(DeployError) as err:
        comp.apply(session, facts_of(comp, probes), comp.plan(facts_of(comp, probes)))
    assert TARBALL_SHA in err.value.cause and wrong in err.value.cause
    assert "refusing" in err.value.what
    assert session.ran(r"tar ") == []
    assert session.ran(r"rm -f .*ollama-0\.12\.9-ollama-linux-amd64\.tgz")
    assert ollama.UNIT_PATH not in session.files


def test_download_and_install_commands():
    comp = component()
    dl = comp.download_command()
    assert "curl -fsSL" in dl and "http://10.0.2.2:17080/ollama/ollama-linux-amd64.tgz" in dl
    assert TARBALL_SHA in dl  # a cached file with the right hash is not fetched again
    assert "| sh" not in dl and "tar" not in dl
    inst = comp.install_command()
    # libraries first, the binary last: an interrupted install still reads as "old version"
    assert inst.index("/usr/local/lib/ollama") < inst.index("mv -f /usr/local/bin/ollama.new")


# --- GPU line ---------------------------------------------------------------------------------------

def test_gpu_check_on_real_journal_lines():
    assert ollama.gpu_check(JOURNAL).passed
    assert "compute=8.9" in ollama.gpu_check(JOURNAL).actual
    assert ollama.gpu_check(JOURNAL_OLD).passed  # pre-0.12 lowercase library=cuda
    cpu = ollama.gpu_check(JOURNAL_CPU)
    assert not cpu.passed
    assert "library=cpu" in cpu.actual and "systemctl restart ollama" in cpu.actual
    assert not ollama.gpu_check("").passed


def apply_session(comp, probes, gpu_answers):
    """FakeSession for apply: download hash ok, API answers, journal answers in turn."""
    answers = list(gpu_answers)

    def handler(cmd, _):
        if "curl -fsSL" in cmd:
            return 0, TARBALL_SHA + "\n", ""
        if "/api/version" in cmd:
            return 0, '{"version":"0.12.9"}', ""
        if "inference compute" in cmd:
            return 0, answers.pop(0) if len(answers) > 1 else answers[0], ""
        return 0, "", ""

    return FakeSession(probes, handler)


def test_apply_on_a_fresh_guest_installs_and_checks_the_gpu():
    comp = component()
    probes = fresh_probes()
    session = apply_session(comp, probes, [JOURNAL])
    results = comp.apply(session, facts_of(comp, probes), comp.plan(facts_of(comp, probes)))
    assert session.ran(r"useradd --system --user-group --create-home --home-dir "
                       r"/usr/share/ollama --shell /bin/false ollama")
    assert session.ran(r"usermod -a -G \$g ollama")
    [tar] = session.ran(r"tar -C ")
    assert session.files[ollama.OVERRIDE_PATH][0].count("OLLAMA_HOST=0.0.0.0:11434") == 1
    assert session.ran(r"systemctl restart ollama\.service")
    assert results[-1].name == "ollama.service gpu" and results[-1].status == "ok"
    # the sha was checked before the tarball was extracted
    order = [c["cmd"] for c in session.commands]
    assert order.index(next(c for c in order if "curl -fsSL" in c)) < order.index(tar)


def test_second_apply_changes_nothing():
    comp = component()
    probes = converged_probes(comp)
    session = apply_session(comp, probes, [JOURNAL])
    session.files = {ollama.UNIT_PATH: (comp.unit_text(), 0o644, "root:root"),
                     ollama.OVERRIDE_PATH: (comp.override_text(), 0o644, "root:root")}
    results = comp.apply(session, facts_of(comp, probes), comp.plan(facts_of(comp, probes)))
    assert [r for r in results if r.changed] == []
    assert session.ran(r"systemctl (restart|start|enable|daemon-reload)|curl -fsSL|tar |useradd") \
        == []


def test_cpu_fallback_is_restarted_once_then_passes():
    comp = component()
    probes = converged_probes(comp)
    session = apply_session(comp, probes, [JOURNAL_CPU, JOURNAL])
    results = comp.ensure_gpu(session)
    assert [r.status for r in results] == ["changed", "ok"]
    assert "library=cpu" in results[0].reason
    assert len(session.ran(r"systemctl restart ollama\.service")) == 1


def test_cpu_fallback_that_survives_a_restart_fails_with_the_remedy():
    comp = component()
    session = apply_session(comp, converged_probes(comp), [JOURNAL_CPU])
    with pytest.raises(DeployError) as err:
        comp.ensure_gpu(session)
    assert "nvidia-smi" in err.value.remedy and "systemctl restart ollama" in err.value.remedy
    assert len(session.ran(r"systemctl restart ollama\.service")) == 1


# --- verify -----------------------------------------------------------------------------------------

def outputs(**overrides):
    out = {"service": (0, SHOW_ACTIVE), "version": (0, VERSION_UP), "list": (0, LIST),
           "api_version": (0, '{"version":"0.12.9"}'), "gpu": (0, JOURNAL)}
    out.update(overrides)
    return {k: ProbeOutput(*v) for k, v in out.items()}


def test_verify_all_green_on_real_outputs():
    checks = component().checks_from(outputs())
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert [c.name for c in checks][:2] == ["unit ollama.service active", "unit ollama.service enabled"]


@pytest.mark.parametrize("override,failing", [
    ({"version": (0, VERSION_DOWN)}, "ollama --version"),
    ({"version": (0, VERSION_MISMATCH)}, "ollama --version"),
    ({"list": (1, "Error: could not connect to ollama app, is it running?")}, "ollama list"),
    ({"api_version": (7, "curl: (7) Failed to connect")},
     "GET http://127.0.0.1:11434/api/version"),
    ({"api_version": (0, '{"version":"0.5.1"}')}, "GET http://127.0.0.1:11434/api/version"),
    ({"gpu": (0, JOURNAL_CPU)}, "Ollama uses the GPU (journal: inference compute library=CUDA)"),
])
def test_verify_names_the_failing_check(override, failing):
    checks = component().checks_from(outputs(**override))
    assert [c.name for c in checks if not c.passed] == [failing]


def test_verify_checks_rung_is_one_round_trip():
    vm = vm_with()
    session = FakeSession({k: (v.exit_code, v.output) for k, v in outputs().items()})
    checks = ollama.verify_checks(None, session, vm)
    assert checks and all(c.passed for c in checks)
    assert len(session.commands) == 1 and all(c["sudo"] for c in session.commands)


def test_rungs_are_on_the_verify_ladder_and_run_through_run_ladder():
    from provisioners import verify

    verify.load_extensions()
    groups = {(s.group, s.name) for s in verify.VERIFY_LADDER}
    assert ("ollama", "ollama service") in groups and ("vllm", "vllm service") in groups
    session = FakeSession({k: (v.exit_code, v.output) for k, v in outputs().items()})
    checks = verify.run_ladder(session, None, vm_with(), "ollama", host=object())
    assert [c.name for c in checks][:2] == ["unit ollama.service active", "unit ollama.service enabled"]
    assert all(c.passed for c in checks), verify.summary(checks)


# --- the download/install shell, run for real against a loopback HTTP server ------------------------

@pytest.fixture
def tarball_server(tmp_path):
    """(base url, request counter) of a 127.0.0.1 server holding a real Ollama-layout tarball."""
    import http.server
    import io
    import tarfile
    import threading

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in (("bin/ollama", b"#!/bin/sh\necho 'ollama version is 0.12.9'\n",
                                  0o755), ("lib/ollama/libggml-base.so", b"\x7fELF", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    hits = {"n": 0}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits["n"] += 1
            if self.path != "/ollama-linux-amd64.tgz":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}", hits, hashlib.sha256(blob).hexdigest()
    httpd.shutdown()


def local_bash(cmd: str):
    import subprocess

    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl missing")
def test_download_install_shell_for_real(tmp_path, monkeypatch, tarball_server):
    base, hits, sha = tarball_server
    monkeypatch.setattr(ollama, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(ollama, "PREFIX", str(tmp_path / "usr"))
    monkeypatch.setattr(ollama, "BINARY", str(tmp_path / "usr/bin/ollama"))
    (tmp_path / "usr/lib/ollama").mkdir(parents=True)
    (tmp_path / "usr/lib/ollama/stale-from-old-version.so").write_text("old")

    missing = component(vm_with(url=base + "/nope.tgz", sha256=sha))
    proc = local_bash(missing.download_command())
    assert proc.returncode != 0 and "404" in proc.stderr  # a failed download fails

    comp = component(vm_with(url=base + "/ollama-linux-amd64.tgz", sha256=sha))
    proc = local_bash(comp.download_command())
    assert proc.returncode == 0 and proc.stdout.strip() == sha
    n = hits["n"]
    assert local_bash(comp.download_command()).stdout.strip() == sha
    assert hits["n"] == n  # cached with the right hash: not fetched again

    proc = local_bash(comp.install_command())
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "usr/bin/ollama").stat().st_mode & 0o111
    assert (tmp_path / "usr/lib/ollama/libggml-base.so").exists()
    assert not (tmp_path / "usr/lib/ollama/stale-from-old-version.so").exists()
    assert not (tmp_path / "cache/ollama-stage").exists()
    assert not list((tmp_path / "cache").iterdir())  # tarball removed after install
