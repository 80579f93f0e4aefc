"""Shared systemd and probing helpers for the guest services (vLLM, Ollama).

What lives here, and why it is shared:

- :func:`render` renders a jinja2 template from ``provisioners/templates/`` with filters that
  quote values the way systemd parses them (``sd_arg``) and the way ``EnvironmentFile=`` reads
  them (``env_quote``).
- :func:`probe` batches many read-only shell probes into ONE SSH round trip and splits the
  output back per probe (DESIGN.md section 6: facts in as few round trips as possible);
  :func:`probe_sha256` reads a ``sha256sum FILE`` probe.
- :class:`ServiceState` / :func:`parse_show` read ``systemctl show`` properties: active and
  enabled state, and ``MainPID`` + ``ActiveEnterTimestamp``, the two facts that prove a
  second run restarted nothing.
- :func:`install_file`, :func:`daemon_reload`, :func:`ensure_enabled`,
  :func:`ensure_running` are the check-then-act operations every service uses; each returns an
  :class:`~provisioners.results.OpResult` that is ``changed`` or ``ok`` with a reason;
  :func:`plan_service` is their plan side (the Changes they would make).
- :func:`verify_unit_offline` runs ``systemd-analyze verify`` on the host (tests) and treats
  ANY stderr as failure, because the tool exits 0 on unknown keys (systemd-analyze(1)).

``session`` everywhere is a :class:`provisioners.remote.RemoteSession`:
``run(cmd, sudo=, timeout_s=, check=, stream=, env=, input=) -> CommandResult`` and
``put_file(path, content, mode=, owner="user:group", sudo=) -> bool``; ``run`` wraps every
command in ``bash -c`` (also under sudo), so compound command lines are fine.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets as _random
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2

from provisioners.errors import DeployError
from provisioners.redact import redact
from provisioners.results import Change, OpResult

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"
MANAGED_MARKER = "Managed by the GPU LLM machine deployer; local edits are overwritten."

# systemctl show properties read by ServiceState (systemd.exec(5), org.freedesktop.systemd1(5)).
SHOW_PROPERTIES = (
    "LoadState",
    "ActiveState",
    "SubState",
    "UnitFileState",
    "MainPID",
    "ActiveEnterTimestamp",
    "NRestarts",
    "InvocationID",
    "Restart",
)

_SAFE_WORD = re.compile(r"^[A-Za-z0-9_@%+=:,./-]+$")


# ---------------------------------------------------------------------------------------------
# Rendering


def sd_arg(value: Any, always_quote: bool = False) -> str:
    """Quote ``value`` as ONE argument/assignment for a systemd unit line.

    systemd.service(5) "Command lines": words are split on whitespace, double quotes group,
    backslash escapes inside quotes, ``%`` starts a specifier (``%%`` is a literal ``%``) and
    ``$`` starts variable expansion (``$$`` is a literal ``$``). Raises ``ValueError`` on a
    newline, which cannot be represented on a unit line.
    """
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError(f"a systemd unit value cannot contain a newline: {text!r}")
    text = text.replace("%", "%%").replace("$", "$$")
    if not always_quote and _SAFE_WORD.match(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def env_quote(value: Any) -> str:
    """Quote ``value`` for a ``KEY=VALUE`` line of a systemd ``EnvironmentFile=``.

    systemd.exec(5) EnvironmentFile=: double-quoted values keep spaces and ``\\`` escapes
    ``"`` and ``\\``. Raises ``ValueError`` on a newline (it would start a new variable).
    """
    text = str(value)
    if "\n" in text or "\r" in text:
        raise ValueError("an environment file value cannot contain a newline")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
        undefined=jinja2.StrictUndefined,  # a missing catalog value is a bug, not an empty line
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["sd_arg"] = sd_arg
    env.filters["env_quote"] = env_quote
    return env


def render(template: str, **context: Any) -> str:
    """Render ``provisioners/templates/<template>`` with ``context`` (plus ``managed_marker``).

    Returns the text, ending in exactly one newline. Raises ``jinja2.UndefinedError`` when the
    template uses a name not in ``context`` (StrictUndefined: a silent empty value in a unit
    would be worse).
    """
    context.setdefault("managed_marker", MANAGED_MARKER)
    text = _environment().get_template(template).render(**context)
    return text.rstrip("\n") + "\n"


def sha256_text(text: str) -> str:
    """Hex sha256 of ``text`` as UTF-8: what ``sha256sum`` prints for the file we write."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Probing


@dataclass
class ProbeOutput:
    """One probe's result: its shell exit status and its stdout+stderr (merged, stripped)."""

    exit_code: int
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def build_probe_script(probes: dict[str, str], nonce: str) -> str:
    """Return the bash script that runs each probe in a subshell, framed by marker lines
    ``@@<nonce> begin NAME`` / ``@@<nonce> end NAME RC``. Probe names must be ``\\w+``."""
    parts = ["exec 2>&1"]
    for name, cmd in probes.items():
        if not re.fullmatch(r"\w+", name):
            raise ValueError(f"probe name must be a word: {name!r}")
        parts.append(f"printf '\\n@@{nonce} begin {name}\\n'")
        parts.append(f"( {cmd}\n) </dev/null")
        parts.append(f"printf '\\n@@{nonce} end {name} %d\\n' $?")
    return "\n".join(parts) + "\n"


def parse_probe_output(text: str, nonce: str) -> dict[str, ProbeOutput]:
    """Split the output of :func:`build_probe_script` back per probe name.

    A probe whose end marker is missing (the connection dropped, the script was killed) is
    absent from the result, so callers cannot mistake "not probed" for "empty".
    """
    out: dict[str, ProbeOutput] = {}
    current: str | None = None
    lines: list[str] = []
    begin = f"@@{nonce} begin "
    end = f"@@{nonce} end "
    for line in text.splitlines():
        if line.startswith(begin):
            current, lines = line[len(begin):].strip(), []
        elif line.startswith(end) and current is not None:
            name, _, rc = line[len(end):].strip().rpartition(" ")
            if name == current:
                out[name] = ProbeOutput(int(rc), "\n".join(lines).strip("\n"))
            current = None
        elif current is not None:
            lines.append(line)
    return out


def probe(session: Any, probes: dict[str, str], *, sudo: bool = True,
          timeout_s: float = 120) -> dict[str, ProbeOutput]:
    """Run every probe (name -> shell command) in ONE round trip; return name -> ProbeOutput.

    Probes must be read-only. They run under ``sudo`` by default so that root-only files
    (``/etc/vllm/vllm.env``) can be hashed; file CONTENTS of secret files are never probed.
    Raises :class:`DeployError` if the probe script itself could not run or a probe is missing
    from the output.
    """
    nonce = _random.token_hex(6)
    script = build_probe_script(probes, nonce)
    # RemoteSession.run already wraps the command in `bash -c`, so the script goes as is.
    result = session.run(script, sudo=sudo, timeout_s=timeout_s, check=False)
    parsed = parse_probe_output(result.stdout, nonce)
    missing = [name for name in probes if name not in parsed]
    if missing:
        raise DeployError(
            what=f"guest fact probes did not complete: {', '.join(missing)}",
            cause=redact((result.stderr or result.stdout)[-2000:]),
            remedy="check that the guest is reachable over SSH and that sudo works without a "
                   "password for the deploy user, then re-run",
            command="bash -c <probe script>",
            exit_code=result.exit_code,
        )
    return parsed


def probe_sha256(out: ProbeOutput) -> str | None:
    """The hash from a ``sha256sum FILE`` probe (its first word, 64 hex digits), or None when
    the probe failed or printed nothing (the file is absent)."""
    if not out.ok or not out.output.strip():
        return None
    return out.output.split()[0]


# ---------------------------------------------------------------------------------------------
# Service state


@dataclass(frozen=True)
class ServiceState:
    """``systemctl show`` facts of one unit.

    ``main_pid`` is 0 when no process runs; ``active_enter_timestamp`` is systemd's text
    (e.g. ``"Sun 2026-11-29 17:10:01 UTC"``) or ``""``; ``n_restarts`` counts automatic
    restarts by ``Restart=`` since the unit was last started by hand (systemd >= 235);
    ``restart`` is the unit's ``Restart=`` policy (``on-failure``, ``always``, ``no``).
    """

    unit: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    unit_file_state: str = ""
    main_pid: int = 0
    active_enter_timestamp: str = ""
    n_restarts: int | None = None
    invocation_id: str = ""
    restart: str = ""

    @property
    def exists(self) -> bool:
        return self.load_state == "loaded"

    @property
    def active(self) -> bool:
        return self.active_state == "active"

    @property
    def enabled(self) -> bool:
        return self.unit_file_state == "enabled"

    @property
    def identity(self) -> tuple[int, str]:
        """(MainPID, ActiveEnterTimestamp): equal before and after a run = not restarted."""
        return (self.main_pid, self.active_enter_timestamp)


def show_command(unit: str) -> str:
    """The read-only command whose output :func:`parse_show` reads."""
    return f"systemctl show {shlex.quote(unit)} -p {','.join(SHOW_PROPERTIES)}"


def parse_show(unit: str, text: str) -> ServiceState:
    """Parse ``KEY=VALUE`` lines of ``systemctl show -p ...`` into a :class:`ServiceState`."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()

    def _int(key: str) -> int | None:
        try:
            return int(values[key])
        except (KeyError, ValueError):
            return None

    return ServiceState(
        unit=unit,
        load_state=values.get("LoadState", ""),
        active_state=values.get("ActiveState", ""),
        sub_state=values.get("SubState", ""),
        unit_file_state=values.get("UnitFileState", ""),
        main_pid=_int("MainPID") or 0,
        active_enter_timestamp=values.get("ActiveEnterTimestamp", ""),
        n_restarts=_int("NRestarts"),
        invocation_id=values.get("InvocationID", ""),
        restart=values.get("Restart", ""),
    )


def service_state(session: Any, unit: str) -> ServiceState:
    """Read the unit's :class:`ServiceState` (one read-only round trip)."""
    result = session.run(show_command(unit), sudo=False, timeout_s=30, check=False)
    return parse_show(unit, result.stdout)


def invocation_journal_command(unit: str, pattern: str | None = None) -> str:
    """Shell (run as root): the log lines of the unit's CURRENT run (journal field
    ``_SYSTEMD_INVOCATION_ID`` = the unit's ``InvocationID``, systemd.journal-fields(7)), falling
    back to the unit's last 2000 lines; only lines matching the extended regex ``pattern`` when
    given. Always exits 0."""
    q = shlex.quote(unit)
    keep = f" | grep -E {shlex.quote(pattern)}" if pattern else ""
    return (f"inv=$(systemctl show -p InvocationID --value {q}); out=''; "
            f"if [ -n \"$inv\" ]; then out=$(journalctl --no-pager -o cat "
            f"_SYSTEMD_INVOCATION_ID=\"$inv\"); fi; "
            f"if [ -z \"$out\" ]; then out=$(journalctl -u {q} -n 2000 --no-pager -o cat); fi; "
            f"printf '%s\\n' \"$out\"{keep} || true")


def journal_tail(session: Any, unit: str, lines: int = 40) -> str:
    """The last ``lines`` journal lines of ``unit`` (for error evidence); ``""`` if unreadable."""
    result = session.run(f"journalctl -u {shlex.quote(unit)} -n {int(lines)} --no-pager -o cat",
                         sudo=True, timeout_s=30, check=False)
    return result.stdout


# ---------------------------------------------------------------------------------------------
# Operations (check-then-act; each returns an OpResult)


def _timed(name: str, status: str, reason: str, start: float, **details: Any) -> OpResult:
    return OpResult(name=name, status=status, reason=reason,  # type: ignore[arg-type]
                    duration_s=time.monotonic() - start, details=details)


def run_checked(session: Any, cmd: str, *, what: str, remedy: str, sudo: bool = True,
                timeout_s: float = 600, stream: bool = False, input: str | None = None) -> Any:
    """Run ``cmd``; on a non-zero exit raise :class:`DeployError` with the command, exit code and
    the last 40 lines of its output. Returns the CommandResult."""
    result = session.run(cmd, sudo=sudo, timeout_s=timeout_s, check=False, stream=stream,
                         input=input)
    if result.exit_code != 0:
        tail = redact("\n".join((result.stdout + "\n" + result.stderr).strip().splitlines()[-40:]))
        raise DeployError(what=what, cause=tail or "(no output)", remedy=remedy,
                          command=redact(cmd), exit_code=result.exit_code,
                          evidence={"output": tail})
    return result


def apt_install(session: Any, packages: Iterable[str]) -> None:
    """``apt-get update`` then ``apt-get install -y --no-install-recommends PACKAGES`` through
    :func:`provisioners.guest.bootstrap.apt_get` (non-interactive, waits for the dpkg lock).
    The update comes first because a fresh cloud image may have no package lists yet.
    Raises :class:`DeployError` naming the packages, with apt's output."""
    from provisioners.guest import bootstrap

    names = " ".join(shlex.quote(p) for p in packages)
    try:
        bootstrap.apt_get(session, "update")
        bootstrap.apt_get(session, f"install -y --no-install-recommends {names}")
    except DeployError as err:
        raise DeployError(
            what=f"installing {names} on the guest failed", cause=err.cause,
            remedy="check the guest's apt sources and network; if dpkg was interrupted, "
                   "`sudo dpkg --configure -a`, then re-run",
            evidence=err.evidence, command=err.command, exit_code=err.exit_code) from None


def install_file(session: Any, path: str, content: str, *, mode: int = 0o644,
                 owner: str = "root:root") -> OpResult:
    """Write ``content`` to ``path`` on the guest unless it is already identical.

    Delegates to ``session.put_file`` (which compares, writes atomically and sets mode/owner);
    reports ``changed`` or ``ok: up to date``. The content is never logged (it may hold secrets).
    """
    start = time.monotonic()
    changed = session.put_file(path, content, mode=mode, owner=owner, sudo=True)
    if changed:
        return _timed(f"write {path}", "changed", f"mode {mode:04o} owner {owner}", start)
    return _timed(f"write {path}", "ok", "up to date", start)


def daemon_reload(session: Any) -> OpResult:
    """``systemctl daemon-reload`` (call only after a unit or drop-in changed)."""
    start = time.monotonic()
    run_checked(session, "systemctl daemon-reload", what="systemctl daemon-reload failed",
                remedy="check the unit files with `systemd-analyze verify`", timeout_s=120)
    return _timed("systemctl daemon-reload", "changed", "unit files changed", start)


def ensure_enabled(session: Any, state: ServiceState) -> OpResult:
    """Enable ``state.unit`` for boot unless ``UnitFileState`` is already ``enabled``."""
    start = time.monotonic()
    name = f"enable {state.unit}"
    if state.enabled:
        return _timed(name, "ok", "already enabled", start)
    run_checked(session, f"systemctl enable {shlex.quote(state.unit)}",
                what=f"enabling {state.unit} failed",
                remedy=f"check `systemctl status {state.unit}` and the unit's [Install] section")
    return _timed(name, "changed", f"was {state.unit_file_state or 'not installed'}", start)


def ensure_running(session: Any, state: ServiceState, *, restart_reasons: Iterable[str]
                   ) -> OpResult:
    """Start the unit if it is not active; restart it only when ``restart_reasons`` is non-empty
    (its unit, environment or software changed). Otherwise ``ok`` and nothing is touched, so
    ``MainPID``/``ActiveEnterTimestamp`` stay the same (the idempotency proof)."""
    start = time.monotonic()
    reasons = [r for r in restart_reasons if r]
    unit = shlex.quote(state.unit)
    name = f"run {state.unit}"
    if not state.active:
        # `restart` also starts a unit in auto-restart/failed state, which `start` may not.
        run_checked(session, f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}",
                    what=f"starting {state.unit} failed",
                    remedy=f"read `journalctl -u {state.unit}` on the guest", timeout_s=300)
        return _timed(name, "changed", f"started (was {state.active_state or 'absent'})", start)
    if reasons:
        run_checked(session, f"systemctl restart {unit}", what=f"restarting {state.unit} failed",
                    remedy=f"read `journalctl -u {state.unit}` on the guest", timeout_s=300)
        return _timed(name, "changed", "restarted: " + ", ".join(reasons), start)
    return _timed(name, "ok", f"active since {state.active_enter_timestamp}, nothing changed",
                  start)


def plan_service(component: str, state: ServiceState, restart: list[str]) -> list[Change]:
    """The plan counterpart of :func:`ensure_enabled` + :func:`ensure_running`: the Changes
    (``component`` as their component) that bring ``state`` to enabled and active, or a
    ``needs-restart`` Change naming ``restart`` (the fields whose change the running service
    has not picked up yet) when it is already active. ``[]`` when nothing is to be done."""
    changes: list[Change] = []
    if not state.enabled:
        changes.append(Change("update", component, "enabled", state.unit_file_state or None,
                              "enabled"))
    if not state.active:
        changes.append(Change("update", component, "running", state.active_state or None,
                              "active", "start the service"))
    elif restart:
        changes.append(Change("needs-restart", component, "running", "active", "active",
                              "restart to apply: " + ", ".join(restart)))
    return changes


def service_checks(state: ServiceState) -> list[Any]:
    """Verify-ladder checks for one unit: active and enabled (evidence: the show properties)."""
    from provisioners.guest.base import Check

    evidence = "\n".join(f"{k}={v}" for k, v in (
        ("ActiveState", state.active_state), ("SubState", state.sub_state),
        ("UnitFileState", state.unit_file_state), ("MainPID", state.main_pid),
        ("ActiveEnterTimestamp", state.active_enter_timestamp),
        ("NRestarts", state.n_restarts)))
    return [
        Check(f"unit {state.unit} active", state.active, "active",
              f"{state.active_state} ({state.sub_state})", evidence),
        Check(f"unit {state.unit} enabled", state.enabled, "enabled",
              state.unit_file_state or "not installed", evidence),
    ]


# ---------------------------------------------------------------------------------------------
# Offline unit check (host side, used by tests)


def verify_unit_offline(files: dict[str, str], unit: str, executables: Iterable[str] = ()
                        ) -> tuple[bool, str]:
    """Run ``systemd-analyze verify`` on rendered unit files, on THIS host, without a guest.

    ``files`` maps absolute guest paths (``/etc/systemd/system/vllm.service``, drop-ins) to
    their text; ``unit`` is the path of the unit to verify; ``executables`` are absolute paths
    created as empty executables so that the ExecStart existence check passes. Everything is
    laid out under a temporary ``--root`` together with a copy of the host's
    ``/usr/lib/systemd/system`` (verify needs ``sysinit.target`` & co.).

    Returns ``(ok, output)``: ok only if the exit code is 0 AND stderr/stdout are empty, since
    ``systemd-analyze verify`` exits 0 on unknown keys (it only warns). Raises
    ``FileNotFoundError`` when ``systemd-analyze`` is not installed.
    """
    tool = shutil.which("systemd-analyze")
    if tool is None:
        raise FileNotFoundError("systemd-analyze not found (apt-get install systemd)")
    with tempfile.TemporaryDirectory(prefix="unit-verify-") as tmp:
        root = Path(tmp)
        system_units = Path("/usr/lib/systemd/system")
        if system_units.is_dir():
            shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
        for path, text in files.items():
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for exe in executables:
            target = root / exe.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("#!/bin/sh\n")
            os.chmod(target, 0o755)
        proc = subprocess.run(
            [tool, "verify", "--man=no", "--generators=no", f"--root={root}", unit],
            capture_output=True, text=True, timeout=60,
        )
    output = (proc.stdout + proc.stderr).replace(str(root), "")
    return proc.returncode == 0 and not output.strip(), output
