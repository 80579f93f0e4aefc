"""Unit tests of provisioners.guest.units (+ the FakeSession the vLLM/Ollama tests share)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from provisioners.errors import DeployError
from provisioners.guest import units
from provisioners.remote import CommandResult

REPO = Path(__file__).resolve().parents[2]


def load_vm(catalog: str = "lab/lab-catalog.yml", **stack_updates: dict[str, Any]):
    """The first VM of a repo catalog, with ``stack.<component>`` fields replaced, e.g.
    ``load_vm(vllm={"gpu_memory_utilization": 0.9})`` (bypasses catalog validation on purpose:
    the plan must refuse what a catalog edit could still bring, e.g. a smaller live GPU)."""
    from provisioners.catalog import load_catalog

    vm = load_catalog(REPO / catalog, check_files=False).vms[0]
    stack = vm.stack
    for comp, fields in stack_updates.items():
        stack = stack.model_copy(update={comp: getattr(stack, comp).model_copy(update=fields)})
    return vm.model_copy(update={"stack": stack})


class FakeSession:
    """A RemoteSession stand-in: records every command and file write.

    ``probes``: probe name -> ``(exit_code, output)`` or a list of them (consumed one per
    probe round trip; the last one repeats). ``handler(cmd, input) -> (rc, stdout, stderr)``
    answers other commands (default: success, no output). ``put_file`` reports a change
    when content, mode or owner differ from what it holds (``files``).
    """

    def __init__(self, probes: dict[str, Any] | None = None,
                 handler: Callable[[str, Any], tuple[int, str, str]] | None = None,
                 files: dict[str, tuple[str, int, str]] | None = None) -> None:
        self.probes = dict(probes or {})
        self.handler = handler
        self.files = dict(files or {})
        self.commands: list[dict[str, Any]] = []
        self.writes: list[str] = []

    def _probe_value(self, name: str) -> tuple[int, str]:
        value = self.probes.get(name, (0, ""))
        if isinstance(value, list):
            return value.pop(0) if len(value) > 1 else value[0]
        return value

    def run(self, cmd: str, *, sudo: bool = False, timeout_s: float = 600, check: bool = True,
            stream: bool = False, env: Any = None, input: Any = None,
            idempotent: bool = True) -> CommandResult:
        self.commands.append({"cmd": cmd, "sudo": sudo, "input": input})
        markers = re.findall(r"@@(\w+) begin (\w+)", cmd)
        if markers:
            out = []
            for nonce, name in markers:
                rc, text = self._probe_value(name)
                out.append(f"\n@@{nonce} begin {name}\n{text}\n@@{nonce} end {name} {rc}\n")
            return CommandResult(cmd, 0, "".join(out), "", 0.01)
        rc, stdout, stderr = self.handler(cmd, input) if self.handler else (0, "", "")
        return CommandResult(cmd, rc, stdout, stderr, 0.01)

    def put_file(self, path: str, content: str, *, mode: int = 0o644,
                 owner: str = "root:root", sudo: bool = True) -> bool:
        new = (content, mode, owner)
        changed = self.files.get(path) != new
        self.files[path] = new
        if changed:
            self.writes.append(path)
        return changed

    def ran(self, pattern: str) -> list[str]:
        """Non-probe commands matching the regex ``pattern``."""
        return [c["cmd"] for c in self.commands
                if "@@" not in c["cmd"] and re.search(pattern, c["cmd"])]


# --- quoting -----------------------------------------------------------------------------------

def test_sd_arg_leaves_plain_words_and_quotes_the_rest():
    assert units.sd_arg("Qwen/Qwen2.5-1.5B-Instruct") == "Qwen/Qwen2.5-1.5B-Instruct"
    assert units.sd_arg("10.0.2.15") == "10.0.2.15"
    assert units.sd_arg("a b") == '"a b"'
    assert units.sd_arg('say "hi"') == '"say \\"hi\\""'
    # systemd specifiers and variables must be literal
    assert units.sd_arg("100%") == "100%%"
    assert units.sd_arg("$HOME") == '"$$HOME"'
    assert units.sd_arg("OLLAMA_HOST=0.0.0.0:11434", always_quote=True) == \
        '"OLLAMA_HOST=0.0.0.0:11434"'
    with pytest.raises(ValueError):
        units.sd_arg("a\nExecStartPre=/bin/evil")


def test_env_quote_escapes_and_refuses_newlines():
    assert units.env_quote('ab"c\\d') == '"ab\\"c\\\\d"'
    with pytest.raises(ValueError):
        units.env_quote("x\nOTHER=1")


def test_render_is_strict_about_missing_values():
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        units.render("ollama.service.j2", prefix="/usr/local")  # no `user`


# --- probe batching ------------------------------------------------------------------------------

def test_probe_script_runs_in_real_bash_and_splits_per_probe():
    script = units.build_probe_script(
        {"one": "echo hello; echo to-stderr >&2", "two": "printf 'x\\ny\\n'; exit 3",
         "three": "cat"},  # stdin must be closed, so `cat` ends at once
        "n0nce")
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20,
                          input="must not be read\n")
    parsed = units.parse_probe_output(proc.stdout, "n0nce")
    assert parsed["one"].exit_code == 0
    assert parsed["one"].output == "hello\nto-stderr"
    assert parsed["two"] == units.ProbeOutput(3, "x\ny")
    assert parsed["three"] == units.ProbeOutput(0, "")


def test_probe_with_a_missing_end_marker_is_an_error():
    class Truncated(FakeSession):
        def run(self, cmd, **kw):
            result = super().run(cmd, **kw)
            cut = result.stdout.rsplit("@@", 1)[0]  # the last end marker never arrived
            return CommandResult(cmd, 255, cut, "connection lost", 0.1)

    with pytest.raises(DeployError) as err:
        units.probe(Truncated({"a": (0, "x"), "b": (0, "y")}), {"a": "true", "b": "true"})
    assert "b" in err.value.what


# --- systemctl show ------------------------------------------------------------------------------

# Synthesised in the documented `systemctl show -p` KEY=VALUE shape (systemctl(1)); the host
# has no running systemd to capture from.
SHOW_ACTIVE = """LoadState=loaded
ActiveState=active
SubState=running
UnitFileState=enabled
MainPID=4242
ActiveEnterTimestamp=Sun 2026-11-29 17:10:01 UTC
NRestarts=1
InvocationID=0f1e2d3c4b5a69788796a5b4c3d2e1f0
Restart=on-failure
"""
SHOW_ABSENT = """LoadState=not-found
ActiveState=inactive
SubState=dead
UnitFileState=
MainPID=0
ActiveEnterTimestamp=
NRestarts=0
InvocationID=
Restart=no
"""


def test_parse_show():
    s = units.parse_show("vllm.service", SHOW_ACTIVE)
    assert s.active and s.enabled and s.exists
    assert s.identity == (4242, "Sun 2026-11-29 17:10:01 UTC")
    assert s.n_restarts == 1
    absent = units.parse_show("vllm.service", SHOW_ABSENT)
    assert not absent.exists and not absent.active and not absent.enabled
    assert absent.main_pid == 0


def test_ensure_running_touches_nothing_when_active_and_unchanged():
    session = FakeSession()
    state = units.parse_show("vllm.service", SHOW_ACTIVE)
    result = units.ensure_running(session, state, restart_reasons=[])
    assert result.status == "ok"
    assert session.commands == []


def test_ensure_running_restarts_when_something_changed_and_starts_when_inactive():
    session = FakeSession()
    state = units.parse_show("vllm.service", SHOW_ACTIVE)
    result = units.ensure_running(session, state, restart_reasons=["unit", ""])
    assert result.changed and "restarted: unit" in result.reason
    assert session.ran(r"systemctl restart vllm\.service")

    session = FakeSession()
    result = units.ensure_running(session, units.parse_show("vllm.service", SHOW_ABSENT),
                                  restart_reasons=[])
    assert result.changed and "started" in result.reason
    assert session.ran(r"systemctl restart vllm\.service")


def test_ensure_enabled():
    session = FakeSession()
    assert units.ensure_enabled(session, units.parse_show("x.service", SHOW_ACTIVE)).status == "ok"
    assert session.commands == []
    result = units.ensure_enabled(session, units.parse_show("x.service", SHOW_ABSENT))
    assert result.changed and session.ran(r"systemctl enable x\.service")


def test_failing_command_raises_with_command_exit_code_and_output():
    session = FakeSession(handler=lambda cmd, _: (1, "", "Failed to enable unit: Unit file "
                                                         "x.service does not exist."))
    with pytest.raises(DeployError) as err:
        units.ensure_enabled(session, units.parse_show("x.service", SHOW_ABSENT))
    assert err.value.exit_code == 1
    assert "systemctl enable" in err.value.command
    assert "does not exist" in err.value.cause


def test_install_file_reports_changed_then_ok():
    session = FakeSession()
    assert units.install_file(session, "/etc/x.conf", "a=1\n").changed
    again = units.install_file(session, "/etc/x.conf", "a=1\n")
    assert again.status == "ok" and again.reason == "up to date"
    assert session.files["/etc/x.conf"] == ("a=1\n", 0o644, "root:root")


# --- offline unit verification --------------------------------------------------------------------

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd)")


@needs_analyze
def test_verify_unit_offline_catches_an_unknown_key_although_exit_code_is_0():
    good = "[Service]\nExecStart=/usr/bin/true\n"
    ok, out = units.verify_unit_offline({"/etc/systemd/system/t.service": good},
                                        "/etc/systemd/system/t.service", ["/usr/bin/true"])
    assert ok, out
    bad = good + "Restart=on-failure\nRestartSecs=5\n"
    ok, out = units.verify_unit_offline({"/etc/systemd/system/t.service": bad},
                                        "/etc/systemd/system/t.service", ["/usr/bin/true"])
    assert not ok
    assert "RestartSecs" in out


@needs_analyze
def test_verify_unit_offline_catches_a_missing_executable():
    unit = "[Service]\nExecStart=/opt/nothing/bin/x\n"
    ok, out = units.verify_unit_offline({"/etc/systemd/system/t.service": unit},
                                        "/etc/systemd/system/t.service")
    assert not ok and "/opt/nothing/bin/x" in out
