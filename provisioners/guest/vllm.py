"""Guest component ``vllm``: vLLM in a venv, served by systemd, ready on ``/health``.

Shape (see :mod:`provisioners.guest.base`): ``facts`` (one batched round trip) -> ``plan``
(pure) -> ``apply`` (each step ``changed`` or ``ok``) -> ``verify`` (read-only).

What it installs, and why:

- system user ``vllm`` (no login shell, home ``/var/lib/vllm`` which holds the model cache);
- apt ``build-essential python3-dev python3-venv curl``: Triton JIT-compiles a C helper at
  first use and fails with "Failed to find C compiler" without gcc and Python headers (corpus
  vllm_triton_no_c_compiler.txt, vllm-project/vllm#15329); curl is the readiness probe;
- venv ``/opt/vllm`` and ``pip install vllm==<version>`` from the catalog's index (plus the
  extra index, e.g. PyTorch's cu128 wheels for sm_120), only when the installed version differs;
- ``/etc/vllm/vllm.env`` (0600 root; systemd reads ``EnvironmentFile=`` as root before dropping
  to ``User=vllm``) holding ``VLLM_API_KEY`` and ``HF_TOKEN``: secrets never appear in the unit;
- ``vllm.service`` from ``templates/vllm.service.j2``: ``vllm serve MODEL --host <VM ip>
  --port P --gpu-memory-utilization F --max-model-len N [--api-key ${VLLM_API_KEY}]``,
  ``Restart=on-failure``; enabled; restarted ONLY when the unit, the env file or the vLLM version
  changed (a second run keeps MainPID and ActiveEnterTimestamp);
- readiness: ``/health`` polled from inside the guest with backoff up to ``ready_timeout_s``
  (connection refused while the model loads is normal: uvicorn starts after the engine,
  corpus vllm_startup_log_v0.10.2_tinyllama.txt), then ``/v1/models`` with
  ``Authorization: Bearer <key>`` must list the model (corpus vllm_v1_models_and_health_responses.txt).
"""
from __future__ import annotations

import json
import re
import shlex
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

from provisioners.errors import DeployError
from provisioners.guest import bootstrap, units, vram
from provisioners.guest.base import Check, Facts
from provisioners.parsers import vllm as vllm_log
from provisioners.redact import redact, register_secret
from provisioners.results import Change, OpResult
from provisioners.verify import ladder_step

USER = "vllm"
HOME = "/var/lib/vllm"
VENV = "/opt/vllm"
UNIT = "vllm.service"
UNIT_PATH = "/etc/systemd/system/vllm.service"
ENV_PATH = "/etc/vllm/vllm.env"
APT_PACKAGES = ("build-essential", "python3-dev", "python3-venv", "curl")
RESTART_SEC = 5
# Log lines the GPU check and diagnosis read (provisioners.parsers.vllm); uvicorn access lines
# ("GET /health ...") are left out so a long-running server's journal stays small.
JOURNAL_PATTERN = ("KV cache|API server|Model loading|not compatible|no kernel image|C compiler|"
                   "Free memory on device|out of memory|Engine core initialization failed|Error")
# Readiness backoff between /health polls, seconds (doubling, capped).
POLL_FIRST_S = 2.0
POLL_MAX_S = 30.0

_VERSION_CMD = (f"{VENV}/bin/python -c "
                + shlex.quote("import importlib.metadata as m; print(m.version('vllm'))"))
_TORCH_ARCH_CMD = (f"{VENV}/bin/python -c "
                   + shlex.quote("import torch; print(' '.join(torch.cuda.get_arch_list()))"))


@dataclass(frozen=True)
class VllmSettings:
    """The catalog's vLLM settings plus where it listens. ``port``: TCP; ``ready_timeout_s``:
    seconds; ``gpu_memory_utilization``: fraction of the GPU's total memory vLLM reserves."""

    version: str
    pip_index_url: str
    extra_index_url: str | None
    model: str
    host: str
    port: int
    gpu_memory_utilization: float
    max_model_len: int
    ready_timeout_s: float

    @classmethod
    def from_vm(cls, vm: Any) -> "VllmSettings":
        """Read ``vm.stack.vllm`` and the VM address (``vm.ip_address``, the catalog ``ip``
        without its prefix length)."""
        c = vm.stack.vllm
        host = getattr(vm, "ip_address", None) or str(vm.ip).split("/")[0]
        extra = getattr(c, "extra_index_url", None)
        return cls(version=str(c.version), pip_index_url=str(c.pip_index_url),
                   extra_index_url=str(extra) if extra else None, model=str(c.model),
                   host=str(host), port=int(c.port),
                   gpu_memory_utilization=float(c.gpu_memory_utilization),
                   max_model_len=int(c.max_model_len), ready_timeout_s=float(c.ready_timeout_s))

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


def _secret(name: str) -> str | None:
    """A secret from :mod:`provisioners.secrets` (registered for redaction), or None when unset.
    A broken secrets file raises :class:`DeployError` (never silently "no key")."""
    from provisioners import secrets

    return secrets.get_secret(name) or None


class VllmComponent:
    """The ``vllm`` guest component for one catalog VM.

    ``api_key`` / ``hf_token``: the secrets (None = not configured; without a key vLLM serves
    ``/v1`` unauthenticated). ``gpu_memory_mib``: the live GPU memory (MiB) for the VRAM budget,
    default the catalog's expected value. ``sleep`` / ``clock`` are injectable for tests.
    """

    name = "vllm"

    def __init__(self, vm: Any, *, api_key: str | None = None, hf_token: str | None = None,
                 gpu_memory_mib: int | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.vm = vm
        self.settings = VllmSettings.from_vm(vm)
        self.api_key = api_key or None
        self.hf_token = hf_token or None
        register_secret(self.api_key)
        register_secret(self.hf_token)
        self.gpu_memory_mib = gpu_memory_mib
        self._sleep = sleep
        self._clock = clock

    @classmethod
    def from_catalog(cls, vm: Any, **kwargs: Any) -> "VllmComponent":
        """Build with the secrets ``VLLM_API_KEY`` and ``HF_TOKEN`` from provisioners.secrets."""
        return cls(vm, api_key=_secret("VLLM_API_KEY"), hf_token=_secret("HF_TOKEN"), **kwargs)

    # -- desired state --------------------------------------------------------------------------

    def unit_text(self) -> str:
        """The rendered ``vllm.service`` (no secret in it: the key is ``${VLLM_API_KEY}``)."""
        s = self.settings
        return units.render("vllm.service.j2", model=s.model, host=s.host, port=s.port,
                            gpu_memory_utilization=f"{s.gpu_memory_utilization:g}",
                            max_model_len=s.max_model_len, api_key=bool(self.api_key),
                            user=USER, home=HOME, venv=VENV, env_file=ENV_PATH,
                            restart_sec=RESTART_SEC)

    def env_text(self) -> str:
        """The rendered ``/etc/vllm/vllm.env`` (holds secrets: never log it)."""
        return units.render("vllm.env.j2", secrets={"VLLM_API_KEY": self.api_key,
                                                    "HF_TOKEN": self.hf_token})

    # -- facts ----------------------------------------------------------------------------------

    @staticmethod
    def probes() -> dict[str, str]:
        """The read-only probes ``facts`` batches into one round trip (run as root)."""
        pkgs = " ".join(APT_PACKAGES)
        return {
            "user": f"getent passwd {USER}",
            "packages": f"{bootstrap.DPKG_QUERY} {pkgs}",
            "venv": f"test -x {VENV}/bin/python && echo present",
            "version": _VERSION_CMD,
            "unit": f"sha256sum {UNIT_PATH}",
            "env": f"stat -c '%a %U:%G' {ENV_PATH} && sha256sum {ENV_PATH}",
            "service": units.show_command(UNIT),
        }

    @staticmethod
    def parse_facts(raw: dict[str, units.ProbeOutput]) -> Facts:
        """Pure: probe outputs -> :class:`Facts` values ``user`` (bool), ``packages_missing``
        (list), ``venv`` (bool), ``version`` (str|None), ``unit_sha`` / ``env_sha`` (hex|None),
        ``env_mode`` (e.g. ``"600"``), ``env_owner`` (``"root:root"``), ``service``
        (:class:`units.ServiceState`)."""
        values: dict[str, Any] = {}
        values["user"] = raw["user"].ok and raw["user"].output.startswith(f"{USER}:")
        status = bootstrap.parse_dpkg_query(raw["packages"].output)
        values["packages_missing"] = [p for p in APT_PACKAGES
                                      if not bootstrap.is_installed(status.get(p, ("", ""))[0])]
        values["venv"] = raw["venv"].ok
        version = raw["version"].output.strip().splitlines()
        values["version"] = version[-1].strip() if raw["version"].ok and version else None
        values["unit_sha"] = units.probe_sha256(raw["unit"])
        env_lines = raw["env"].output.splitlines()
        values["env_mode"], values["env_owner"], values["env_sha"] = None, None, None
        if raw["env"].ok and len(env_lines) >= 2:
            mode_owner = env_lines[0].split()
            if len(mode_owner) == 2:
                values["env_mode"], values["env_owner"] = mode_owner
            values["env_sha"] = env_lines[1].split()[0]
        values["service"] = units.parse_show(UNIT, raw["service"].output)
        return Facts(values=values, raw={k: v.output for k, v in raw.items()})

    def facts(self, session: Any) -> Facts:
        """Probe the guest (one round trip, read-only)."""
        return self.parse_facts(units.probe(session, self.probes()))

    # -- plan -----------------------------------------------------------------------------------

    def plan(self, facts: Facts) -> list[Change]:
        """Pure: what would change, and why. ``[]`` = converged. Includes the VRAM budget
        refusal (:func:`provisioners.guest.vram.plan_budget`)."""
        v = facts.values
        s = self.settings
        changes: list[Change] = list(vram.plan_budget(self.vm, self.gpu_memory_mib))
        if not v["user"]:
            changes.append(Change("create", "vllm", "user", None, USER,
                                  f"system user, home {HOME}, no login shell"))
        if v["packages_missing"]:
            changes.append(Change("create", "vllm", "apt packages", None,
                                  " ".join(v["packages_missing"]),
                                  "Triton JIT needs a C compiler and Python headers"))
        if not v["venv"]:
            changes.append(Change("create", "vllm", "venv", None, VENV))
        restart: list[str] = []
        if v["version"] != s.version:
            changes.append(Change("create" if v["version"] is None else "update", "vllm",
                                  "version", v["version"], s.version, "pinned in the catalog"))
            restart.append("version")
        if v["unit_sha"] != units.sha256_text(self.unit_text()):
            changes.append(Change("create" if v["unit_sha"] is None else "update", "vllm",
                                  "unit", None if v["unit_sha"] is None else "differs",
                                  UNIT_PATH, "rendered from the catalog"))
            restart.append("unit")
        if (v["env_sha"] != units.sha256_text(self.env_text()) or v["env_mode"] != "600"
                or v["env_owner"] != "root:root"):
            changes.append(Change("create" if v["env_sha"] is None else "update", "vllm",
                                  "environment file",
                                  None if v["env_sha"] is None
                                  else f"differs (mode {v['env_mode']}, {v['env_owner']})",
                                  f"{ENV_PATH} 0600 root:root", "secrets for the service"))
            restart.append("environment file")
        changes.extend(units.plan_service("vllm", v["service"], restart))
        return changes

    # -- apply ----------------------------------------------------------------------------------

    def apply(self, session: Any, facts: Facts, changes: list[Change]) -> list[OpResult]:
        """Carry out ``changes`` check-then-act, then wait for readiness.

        Returns one :class:`OpResult` per operation. Raises :class:`DeployError` on a
        ``refuse`` change (nothing is done), a failing command (with its output), or when the
        server is not ready within ``ready_timeout_s``.
        """
        refusals = [c for c in changes if c.action == "refuse"]
        if refusals:
            raise DeployError(what="vLLM plan refused", cause="; ".join(c.reason for c in refusals),
                              remedy="fix infrastructure-catalog.yml as the reason says")
        v = facts.values
        results: list[OpResult] = []
        results.append(self._ensure_user(session, v["user"]))
        results.append(self._ensure_packages(session, v["packages_missing"]))
        results.append(self._ensure_venv(session, v["venv"]))
        version = self._ensure_version(session, v["version"])
        results.append(version)
        env = units.install_file(session, ENV_PATH, self.env_text(), mode=0o600,
                                 owner="root:root")
        results.append(env)
        unit = units.install_file(session, UNIT_PATH, self.unit_text(), mode=0o644,
                                  owner="root:root")
        results.append(unit)
        if unit.changed:
            results.append(units.daemon_reload(session))
        service: units.ServiceState = v["service"]
        results.append(units.ensure_enabled(session, service))
        reasons = [name for name, r in (("version", version), ("unit", unit),
                                        ("environment file", env)) if r.changed]
        results.append(units.ensure_running(session, service, restart_reasons=reasons))
        results.append(self.wait_ready(session))
        return results

    def _ensure_user(self, session: Any, exists: bool) -> OpResult:
        start = time.monotonic()
        if exists:
            return OpResult(f"user {USER}", "ok", "exists")
        units.run_checked(
            session, f"useradd --system --user-group --home-dir {HOME} --create-home "
                     f"--shell /usr/sbin/nologin {USER}",
            what=f"creating the system user {USER} failed",
            remedy="check /etc/passwd and useradd's message above")
        return OpResult(f"user {USER}", "changed", f"created, home {HOME}",
                        time.monotonic() - start)

    def _ensure_packages(self, session: Any, missing: list[str]) -> OpResult:
        start = time.monotonic()
        if not missing:
            return OpResult("apt " + " ".join(APT_PACKAGES), "ok", "installed")
        units.apt_install(session, missing)
        return OpResult("apt " + " ".join(missing), "changed", "installed",
                        time.monotonic() - start)

    def _ensure_venv(self, session: Any, exists: bool) -> OpResult:
        start = time.monotonic()
        if exists:
            return OpResult(f"venv {VENV}", "ok", "exists")
        units.run_checked(session, f"python3 -m venv {VENV}",
                          what=f"creating the venv {VENV} failed",
                          remedy="python3-venv must be installed (apt)")
        return OpResult(f"venv {VENV}", "changed", "created", time.monotonic() - start)

    def pip_command(self) -> str:
        """The pip command that installs the pinned vLLM from the configured index(es);
        plain-http indexes get ``--trusted-host`` (pip ignores them otherwise)."""
        s = self.settings
        cmd = (f"{VENV}/bin/pip install --disable-pip-version-check --no-input "
               f"--index-url {shlex.quote(s.pip_index_url)}")
        if s.extra_index_url:
            cmd += f" --extra-index-url {shlex.quote(s.extra_index_url)}"
        # pip ignores a plain-http index unless its host is trusted (an air-gapped mirror,
        # the lab's index); https indexes are verified as usual.
        for url in (s.pip_index_url, s.extra_index_url):
            parts = urlsplit(url or "")
            if parts.scheme == "http" and parts.netloc:
                cmd += f" --trusted-host {shlex.quote(parts.netloc.rpartition('@')[2])}"
        return cmd + f" {shlex.quote('vllm==' + s.version)}"

    def _ensure_version(self, session: Any, installed: str | None) -> OpResult:
        start = time.monotonic()
        want = self.settings.version
        if installed == want:
            return OpResult(f"vllm {want}", "ok", "installed")
        units.run_checked(session, self.pip_command(),
                          what=f"pip install vllm=={want} failed",
                          remedy="check pip_index_url/extra_index_url in the catalog and that "
                                 "the guest reaches them; the output above names the package",
                          timeout_s=3600, stream=True)
        return OpResult(f"vllm {want}", "changed", f"installed (was {installed or 'absent'})",
                        time.monotonic() - start)

    # -- readiness --------------------------------------------------------------------------------

    def health_probes(self) -> dict[str, str]:
        """Probes for one readiness poll: the unit's state and ``/health``'s HTTP code
        (``000`` + curl exit 7 = connection refused, i.e. still loading)."""
        url = shlex.quote(self.settings.base_url + "/health")
        return {
            "service": units.show_command(UNIT),
            "health": f"code=$(curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 {url}); "
                      f"rc=$?; echo \"$code $rc\"; exit 0",
        }

    def wait_ready(self, session: Any) -> OpResult:
        """Poll ``/health`` (inside the guest) with backoff until HTTP 200, then check that
        ``/v1/models`` lists the model. Stops early if systemd reports the unit ``failed``.
        Raises :class:`DeployError` with the journal tail on failure or after
        ``ready_timeout_s`` seconds."""
        start = self._clock()
        deadline = start + self.settings.ready_timeout_s
        delay = POLL_FIRST_S
        polls = 0
        while True:
            polls += 1
            out = units.probe(session, self.health_probes(), timeout_s=60)
            state = units.parse_show(UNIT, out["service"].output)
            code, _, curl_rc = out["health"].output.strip().partition(" ")
            if code == "200":
                break
            if state.active_state == "failed":
                raise self._not_ready(session, f"{UNIT} failed ({state.sub_state}) while "
                                               "loading", code, curl_rc)
            if self._clock() >= deadline:
                raise self._not_ready(
                    session, f"/health not 200 after {self.settings.ready_timeout_s:.0f} s "
                             f"(last: {_describe_health(code, curl_rc)}, unit "
                             f"{state.active_state}/{state.sub_state})", code, curl_rc)
            self._sleep(max(0.0, min(delay, deadline - self._clock())))
            delay = min(delay * 2, POLL_MAX_S)
        ok, detail, _ = self.models_check(session)
        if not ok:
            raise DeployError(what=f"vLLM is up but does not serve {self.settings.model}",
                              cause=detail,
                              remedy="check `model` in the catalog and the unit's ExecStart; "
                                     f"`journalctl -u {UNIT}` on the guest",
                              evidence={"GET /v1/models": detail})
        waited = self._clock() - start
        return OpResult(f"{UNIT} ready", "ok",
                        f"/health 200 after {waited:.0f} s ({polls} polls), /v1/models lists "
                        f"{self.settings.model}", waited)

    def _not_ready(self, session: Any, cause: str, code: str, curl_rc: str) -> DeployError:
        journal = redact(units.journal_tail(session, UNIT, 60))
        found = vllm_log.parse_log(journal).errors
        if found:
            cause += "; the log shows: " + "; ".join(f"{e.kind}: {e.text[:200]}" for e in found)
        return DeployError(
            what=f"vLLM did not become ready on {self.settings.base_url}",
            cause=cause,
            remedy="read the journal below: 'Failed to find C compiler' -> build-essential; "
                   "'no kernel image is available' / sm_120 -> a vLLM/torch built for CUDA "
                   ">= 12.8; out of memory -> lower gpu_memory_utilization or max_model_len; "
                   "a slow model download -> raise ready_timeout_s",
            evidence={f"journalctl -u {UNIT}": journal},
            command=f"curl {self.settings.base_url}/health",
            exit_code=int(curl_rc) if curl_rc.isdigit() else None)

    def models_check(self, session: Any) -> tuple[bool, str, list[str]]:
        """GET ``/v1/models`` from inside the guest, with ``Authorization: Bearer <key>`` when a
        key is configured (sent on curl's stdin via ``-H @-``: never on a command line).
        Returns ``(model listed, detail text, model ids)``."""
        url = shlex.quote(self.settings.base_url + "/v1/models")
        header = f"Authorization: Bearer {self.api_key}\n" if self.api_key else ""
        cmd = f"curl -sS --max-time 30 -w '\\n%{{http_code}}' {'-H @- ' if header else ''}{url}"
        result = session.run(cmd, sudo=False, timeout_s=60, check=False,
                             input=header or None)
        body, _, code = result.stdout.rstrip("\n").rpartition("\n")
        ids = parse_model_ids(body)
        ok = code == "200" and self.settings.model in ids
        detail = redact(f"HTTP {code or '?'} (curl exit {result.exit_code}); models: "
                        f"{', '.join(ids) or '(none)'}; body: {body[:500]}{result.stderr[:300]}")
        return ok, detail, ids

    # -- verify -----------------------------------------------------------------------------------

    def verify_probes(self) -> dict[str, str]:
        """Read-only probes of :meth:`verify` (one round trip)."""
        base = self.settings.base_url
        probes = {
            "service": units.show_command(UNIT),
            "health": self.health_probes()["health"],
            "version": _VERSION_CMD,
            "compute_cap": "nvidia-smi --query-gpu=compute_cap --format=csv,noheader",
            "torch_arch": _TORCH_ARCH_CMD,
            "journal": units.invocation_journal_command(UNIT, JOURNAL_PATTERN),
        }
        if self.api_key:
            probes["unauthorized"] = (f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 "
                                      f"{shlex.quote(base + '/v1/models')}")
        return probes

    def verify(self, session: Any) -> list[Check]:
        """Read-only checks: unit active + enabled, installed version, ``/health`` 200,
        ``/v1/models`` lists the model (with the key), the key is enforced (401 without it),
        and ``sm_120`` in ``torch.cuda.get_arch_list()`` on a compute-capability-12 GPU."""
        out = units.probe(session, self.verify_probes(), timeout_s=120)
        models = self.models_check(session)
        return self.checks_from(out, models)

    def checks_from(self, out: dict[str, units.ProbeOutput],
                    models: tuple[bool, str, list[str]]) -> list[Check]:
        """Pure: probe outputs (+ the ``models_check`` result) -> checks."""
        s = self.settings
        state = units.parse_show(UNIT, out["service"].output)
        checks = units.service_checks(state)
        checks.append(Check(f"unit {UNIT} Restart=on-failure", state.restart == "on-failure",
                            "on-failure", state.restart or "(unknown)", out["service"].output))
        version = out["version"].output.strip().splitlines()
        got = version[-1] if out["version"].ok and version else "not installed"
        checks.append(Check(f"venv {VENV} holds vllm {s.version}", got == s.version, s.version,
                            got, out["version"].output))
        code, _, curl_rc = out["health"].output.strip().partition(" ")
        checks.append(Check(f"GET {s.base_url}/health", code == "200", "HTTP 200",
                            _describe_health(code, curl_rc), out["health"].output))
        ok, detail, ids = models
        checks.append(Check(f"GET {s.base_url}/v1/models lists the model", ok, s.model,
                            ", ".join(ids) or "(none)", detail))
        key_check = "vLLM API key enforced on /v1 (no key -> 401)"
        if "unauthorized" in out:
            code = out["unauthorized"].output.strip()
            checks.append(Check(key_check, code == "401", "HTTP 401", f"HTTP {code}",
                                out["unauthorized"].output))
        else:
            # Without a key anyone who reaches the VM's address can use the GPU: a failure.
            checks.append(Check(key_check, False, "HTTP 401",
                                "no VLLM_API_KEY configured: /v1 is open", "set VLLM_API_KEY "
                                "(environment or DEPLOYER_SECRETS_FILE) and re-run the deploy"))
        checks.append(gpu_check(out["journal"].output))
        checks.append(self.arch_check(out["compute_cap"], out["torch_arch"]))
        return checks

    def arch_check(self, compute_cap: units.ProbeOutput, torch_arch: units.ProbeOutput) -> Check:
        """``sm_<major><minor>`` must be in torch's arch list on compute capability 12.x GPUs
        (corpus vllm_blackwell_sm120_errors.txt: "no kernel image is available"). Without torch
        in the venv (the lab's fake vLLM) the check says "skipped: torch not installed"."""
        name = "torch supports the GPU (sm_120 in torch.cuda.get_arch_list())"
        cc = _compute_capability(compute_cap.output if compute_cap.ok else "", self.vm)
        if cc is None:
            return Check(name, False, "a compute capability", "unknown",
                         compute_cap.output)
        arch = "sm_" + cc.replace(".", "")
        if not cc.startswith("12."):
            return Check(name, True, "only checked on compute capability 12.x",
                         f"skipped: compute capability {cc}", compute_cap.output)
        if not torch_arch.ok:
            if "No module named 'torch'" in torch_arch.output:
                return Check(name, True, arch, "skipped: torch not installed",
                             torch_arch.output)
            return Check(name, False, arch, "torch failed to report its arch list",
                         torch_arch.output)
        archs = torch_arch.output.split()
        return Check(name, arch in archs, arch, " ".join(archs), torch_arch.output)


def component(catalog: Any, vm: Any) -> VllmComponent:
    """The factory :mod:`provisioners.pipeline` calls: the component for catalog VM ``vm``
    with the secrets from :mod:`provisioners.secrets` (``catalog`` is unused: everything
    comes from ``vm``)."""
    return VllmComponent.from_catalog(vm)


@ladder_step("vllm", "vllm service")
def verify_checks(host: Any, session: Any, vm: Any) -> list[Check]:
    """Verify-ladder rung (``provisioners.verify.VERIFY_LADDER``): vLLM's checks for ``vm``, or
    ``[]`` when the catalog does not deploy vLLM. ``host`` (testinfra) is unused: one batched
    ``systemctl show`` + curl probe gives active/enabled and the endpoints in one round trip."""
    if getattr(vm.stack, "vllm", None) is None:
        return []
    return VllmComponent.from_catalog(vm).verify(session)


def gpu_check(journal: str) -> Check:
    """Pure: vLLM's engine runs on the GPU in its current run: the log shows the GPU KV cache
    (``Available KV cache memory: X GiB`` from gpu_worker.py and/or ``GPU KV cache size: N
    tokens``, printed after the model loaded on the GPU; corpus
    vllm_startup_log_v0.10.2_tinyllama.txt) and none of the known failures
    (:mod:`provisioners.parsers.vllm`: sm_120 / no kernel image, no C compiler, VRAM)."""
    log = vllm_log.parse_log(journal)
    name = "vLLM runs on the GPU (journal: GPU KV cache, no CUDA errors)"
    if log.errors:
        return Check(name, False, "GPU KV cache and no errors",
                     "; ".join(f"{e.kind}: {e.text[:160]}" for e in log.errors), journal)
    if log.kv_cache_tokens is None and log.kv_cache_gib is None:
        return Check(name, False, "GPU KV cache and no errors",
                     "no 'Available KV cache memory' / 'GPU KV cache size' line in the journal "
                     "of the current run", journal)
    parts = [f"{log.kv_cache_gib:g} GiB" if log.kv_cache_gib is not None else "",
             f"{log.kv_cache_tokens} tokens" if log.kv_cache_tokens is not None else ""]
    return Check(name, True, "GPU KV cache and no errors",
                 "GPU KV cache " + ", ".join(p for p in parts if p), journal)


def parse_model_ids(body: str) -> list[str]:
    """Model ids from an OpenAI ``/v1/models`` body (``{"object":"list","data":[{"id":..}]}``);
    ``[]`` for anything else (e.g. ``{"error":"Unauthorized"}``)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return []
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        return []
    return [str(m["id"]) for m in data["data"] if isinstance(m, dict) and "id" in m]


def _describe_health(code: str, curl_rc: str) -> str:
    if code == "200":
        return "HTTP 200"
    if curl_rc == "7":
        return "connection refused (still loading, or not listening on this address)"
    if curl_rc == "28":
        return "timed out"
    if code and code != "000":
        return f"HTTP {code}" + (" (engine dead)" if code == "503" else "")
    return f"curl exit {curl_rc}"


def _compute_capability(nvidia_smi_output: str, vm: Any) -> str | None:
    """``"12.0"``-style compute capability: nvidia-smi's ``compute_cap`` query when it answers,
    else the GPU knowledge base (:mod:`provisioners.gpus`) by the catalog's PCI id."""
    match = re.search(r"^\s*(\d+\.\d+)\s*$", nvidia_smi_output, re.MULTILINE)
    if match:
        return match.group(1)
    from provisioners import gpus

    info = gpus.gpu_info(str(vm.gpu.expected.pci_id))
    return info.compute_capability if info else None
